"""The perceptual full-reference metrics SR papers report beside PSNR/SSIM: LPIPS (AlexNet) and DISTS.

Both are distances (0 for identical images, lower is better), computed per image on [0, 1] RGB NCHW
images by torchmetrics's own networks, called directly so that a batch gives one value per image:

* ``lpips``: LPIPS v0.1 of Zhang et al. (2018) with the AlexNet backbone, the variant papers report:
  torchmetrics's ``_LPIPS(net="alex")`` (``torchmetrics.functional.image.lpips``, a port of the reference
  ``lpips`` package). Its inputs are mapped from [0, 1] to the [-1, 1] the network expects
  (``normalize=True``). The network needs images of at least 31x31 pixels.
* ``dists``: DISTS of Ding et al. (2020): torchmetrics's ``DISTSNetwork``
  (``torchmetrics.functional.image.dists``, a port of the reference ``DISTS_pytorch``). It takes [0, 1]
  inputs and normalises them with the ImageNet statistics itself.

The learned weights ship inside torchmetrics (``lpips_models/alex.pth``: LPIPS v0.1's linear layers;
``dists_models/weights.pt``: DISTS's alpha and beta); both files are byte-identical to those of the reference
packages (lpips 0.1.4, DISTS_pytorch 0.1; SHA-256 compared). The backbones are torchvision's ImageNet
files, which fastsr cannot ship and torchmetrics would download inside its constructors: AlexNet
``alexnet-owt-7be5be79.pth`` for LPIPS, VGG16 ``vgg16-397923af.pth`` for DISTS, the files the reference
packages load too. fastsr loads them by its one rule (``fastsr.pretrained``: the torch hub cache, else a
download that gives up in seconds, or a local file given as ``weights``; only torchvision's own ``.pth``, as
its SHA-256 identifies it, or a ``.safetensors`` copy) and hands them to torchmetrics's networks. With those
weights the values are the reference implementations': with one random backbone loaded into both, fastsr's
LPIPS and DISTS equalled lpips 0.1.4's and DISTS_pytorch 0.1's on blurred and noisy photographs to 2e-9 (a
one-off check; neither package is a dependency). With the real backbones it could not be run (no network
here); torchmetrics's own tests compare against the reference packages.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Literal
from unittest import mock

import torch
from torch import Tensor, nn

from fastsr.errors import WeightsUnavailable
from fastsr.pretrained import ImageNetFile, vgg_features

PERCEPTUAL_METRICS = ("lpips", "dists")

# How a user passes a local copy of a metric's backbone file, to `fastsr eval` and to a run's validation.
WEIGHTS_OPTION = "--metric-weights {metric}=/path/to/{file} (train.metric_weights=[{metric}=...] for validation)"


class MetricWeightsUnavailable(WeightsUnavailable):
    """A perceptual metric's backbone weights could not be loaded; the one-line message says what to
    download and where to put it."""


def _backbone_file(metric: str, what: str, file: str) -> ImageNetFile:
    return ImageNetFile(what, file, WEIGHTS_OPTION.format(metric=metric, file=file), MetricWeightsUnavailable)


# torchvision's files (named by the first hex digits of their SHA-256) that torchmetrics's networks load.
BACKBONES: dict[str, ImageNetFile] = {
    "lpips": _backbone_file("lpips", "LPIPS's AlexNet ImageNet weights", "alexnet-owt-7be5be79.pth"),
    "dists": _backbone_file("dists", "DISTS's VGG16 ImageNet weights", "vgg16-397923af.pth"),
}


class PerceptualMetric:
    """A perceptual distance: ``metric(sr, hr)`` with both N x 3 x H x W float in [0, 1] on ``device``
    gives the N per-image values (float32, on ``device``). Frozen and in eval mode; no autograd."""

    name: str
    lower_is_better = True
    min_size = 1  # the smallest height and width the network takes

    def __init__(self, network: nn.Module, device: str | torch.device):
        self.device = torch.device(device)
        self.network = network.to(self.device).eval().requires_grad_(False)

    def __call__(self, sr: Tensor, hr: Tensor) -> Tensor:
        if sr.shape != hr.shape or sr.dim() != 4 or sr.shape[1] != 3:
            raise ValueError(f"{self.name}: expected sr and hr both shaped (N, 3, H, W), got sr {tuple(sr.shape)} "
                             f"and hr {tuple(hr.shape)}")
        if min(sr.shape[-2:]) < self.min_size:
            raise ValueError(f"{self.name}: images must be at least {self.min_size}x{self.min_size} pixels, "
                             f"got {sr.shape[-2]}x{sr.shape[-1]}")
        with torch.inference_mode():
            # one value per image: the networks return (N, 1, 1, 1) or, squeezed, a 0-d tensor for N = 1
            return self._distance(sr.float(), hr.float()).reshape(sr.shape[0])

    def _distance(self, sr: Tensor, hr: Tensor) -> Tensor:
        raise NotImplementedError


class LPIPS(PerceptualMetric):
    """LPIPS v0.1, AlexNet backbone (see the module docstring)."""

    name = "lpips"
    min_size = 31  # AlexNet's stride-4 11x11 conv then two 3x3 stride-2 max-pools must leave a pixel

    def __init__(self, backbone: dict[str, Tensor], device: str | torch.device):
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        # The linear layers come from torchmetrics's alex.pth; `pnet_rand` keeps it from downloading the
        # AlexNet, whose ImageNet weights are copied into its slices here instead.
        network = _NoTrainLpips(net="alex", pnet_rand=True)
        for stage in network.net.children():
            stage.load_state_dict({k: backbone[k] for k in stage.state_dict()})
        super().__init__(network, device)

    @staticmethod
    def backbone_keys() -> list[str]:
        """The AlexNet ``features`` keys LPIPS uses: its five convolutions."""
        return [f"{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")]

    def _distance(self, sr: Tensor, hr: Tensor) -> Tensor:
        return self.network(sr, hr, normalize=True)


class DISTS(PerceptualMetric):
    """DISTS (see the module docstring)."""

    name = "dists"

    def __init__(self, backbone: dict[str, Tensor], device: str | torch.device):
        from torchmetrics.functional.image import dists

        features = vgg_features(16)
        features.load_state_dict(backbone)
        # DISTSNetwork takes `vgg16(weights=VGG16_Weights.DEFAULT).features`, a download inside its
        # constructor; it is handed the stack loaded above instead. Its alpha/beta load from torchmetrics.
        with mock.patch.object(dists, "vgg16", lambda weights: SimpleNamespace(features=features)):
            network = dists.DISTSNetwork()
        super().__init__(network, device)

    @staticmethod
    def backbone_keys() -> list[str]:
        """The VGG16 ``features`` keys: all thirteen convolutions."""
        return list(vgg_features(16).state_dict())

    def _distance(self, sr: Tensor, hr: Tensor) -> Tensor:
        return self.network(sr, hr)


_METRICS: dict[str, type[LPIPS | DISTS]] = {"lpips": LPIPS, "dists": DISTS}


def build_perceptual_metric(name: Literal["lpips", "dists"], device: str | torch.device,
                            weights: str | os.PathLike | None = None) -> PerceptualMetric:
    """The metric ``name`` on ``device``, its backbone from ``weights`` (torchvision's ``.pth`` named in
    ``BACKBONES``, or a ``.safetensors`` copy: a full-model or a ``features``-only state dict) or, when that
    is None, from the torch hub cache or a download.

    Raises:
        ValueError: an unknown ``name``.
        MetricWeightsUnavailable: the backbone weights cannot be had; the message says where to put them.
    """
    if name not in _METRICS:
        raise ValueError(f"unknown perceptual metric {name!r}; valid: {', '.join(PERCEPTUAL_METRICS)}")
    file = BACKBONES[name]
    state = file.from_hub() if weights is None else file.from_file(weights)
    source = file.url if weights is None else str(weights)
    metric = _METRICS[name]
    return metric(file.features(state, metric.backbone_keys(), source), device)
