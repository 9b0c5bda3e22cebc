"""The VGG19 perceptual loss: torchvision's ImageNet VGG19 cut at a layer, and the `vgg` loss term.

The weights are torchvision's `VGG19_Weights.IMAGENET1K_V1` (from the torch hub cache, else downloaded) or a
file the user names; nothing a user hands in is unpickled (a `.pth` only when its SHA-256 says it is
torchvision's own file).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fastsr.config import Invalid
from fastsr.errors import WeightsUnavailable
from fastsr.losses.pixel import PIXEL_KINDS, pixel_loss
from fastsr.losses.terms import LOSS_TERMS, TermConfig
from fastsr.pretrained import VGG_CFGS, ImageNetFile, vgg_features

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg19_layer_ends() -> dict[str, int]:
    """Map ``conv{b}_{i}`` / ``relu{b}_{i}`` to the length of the ``features`` prefix ending there.

    conv5_4 -> 35 (``features[:35]``, before its ReLU, as in ESRGAN); relu5_4 -> 36
    (``features[:36]``, SRGAN's phi_5,4).
    """
    ends: dict[str, int] = {}
    block, conv, index = 1, 0, 0
    for v in VGG_CFGS[19]:
        if v == "M":
            block, conv, index = block + 1, 0, index + 1
        else:
            conv += 1
            ends[f"conv{block}_{conv}"] = index + 1
            ends[f"relu{block}_{conv}"] = index + 2
            index += 2
    return ends


VGG19_LAYERS: dict[str, int] = _vgg19_layer_ends()


class VGGWeightsUnavailable(WeightsUnavailable):
    """The VGG19 ImageNet weights could not be loaded (no network, missing or unreadable file)."""


# torchvision names its files by the first hex digits of their SHA-256: vgg19-dcbb9e9d.pth.
VGG19_SHA256_PREFIX = "dcbb9e9d"


def _vgg19_file() -> ImageNetFile:
    """torchvision's VGG19 IMAGENET1K_V1 file and the loss-section key that names a local copy (built when
    used, from the prefix above)."""
    file = f"vgg19-{VGG19_SHA256_PREFIX}.pth"
    return ImageNetFile("VGG19 ImageNet weights", file, f"loss.vgg_weights=/path/to/{file}", VGGWeightsUnavailable)


class VGGFeatures(nn.Module):
    """Frozen VGG19 feature extractor truncated at ``layer``: [0, 1] RGB -> feature map.

    ``layer`` is ``conv{b}_{i}`` (the conv output, before its ReLU, as ESRGAN uses) or
    ``relu{b}_{i}`` (after it; SRGAN's phi_{b,i}) for any of VGG19's 16 convs; see
    ``VGG19_LAYERS``. The input is normalised inside with the ImageNet mean/std, so callers pass
    the project's [0, 1] images. Parameters never require grad and the module stays in eval mode
    whatever ``.train()`` is called with (a loss network must not change while it is used).

    Args:
        layer: where to cut the network.
        weights: "imagenet" for torchvision's ``VGG19_Weights.IMAGENET1K_V1`` (from the torch hub
            cache if present, else downloaded); a path to that ``vgg19-dcbb9e9d.pth`` file (a
            state dict of the full torchvision vgg19 or of its ``features`` alone); or ``None``
            for random initialisation, which is meaningless as a perceptual loss and exists for
            tests only.

    Raises:
        ValueError: unknown ``layer``.
        VGGWeightsUnavailable: the weights cannot be obtained; the message says where to put them.
    """

    def __init__(self, layer: str = "conv5_4", weights: str | os.PathLike | None = "imagenet"):
        super().__init__()
        if layer not in VGG19_LAYERS:
            raise ValueError(
                f"unknown VGG19 layer {layer!r}; valid layers: {', '.join(VGG19_LAYERS)}"
            )
        self.layer = layer
        self.features = vgg_features(19)[: VGG19_LAYERS[layer]]
        if weights is not None:
            if weights == "imagenet":
                state = _vgg19_file().from_hub()
                source = "the torchvision IMAGENET1K_V1 weights"
            else:
                state = _vgg19_file().from_file(weights)
                source = str(weights)
            self._load(state, source)
        self.register_buffer(
            "mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _load(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Copy the truncated stack's weights from a full-model (``features.N.*``) or
        features-only (``N.*``) vgg19 state dict."""
        self.features.load_state_dict(_vgg19_file().features(state, self.features.state_dict(), source))

    def train(self, mode: bool = True) -> VGGFeatures:
        """Ignore ``mode``: the feature extractor is always in eval mode."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] -> the VGG19 feature map at ``layer``, (N, C, H', W')."""
        return self.features((x - self.mean) / self.std)


class PerceptualLoss(nn.Module):
    """MSE (or L1) between VGG19 features of ``sr`` and ``hr`` (Johnson et al.; SRGAN's content loss with
    MSE, ESRGAN's with L1 before the ReLU).

    The HR features are computed under ``torch.no_grad()`` (they are a fixed target); gradients
    flow to ``sr`` only. Unscaled: SRGAN's 1/12.75 rescaling, if wanted, belongs in the term's weight.
    ``layer`` and ``weights`` as for ``VGGFeatures``.
    """

    def __init__(self, layer: str = "conv5_4", weights: str | os.PathLike | None = "imagenet",
                 criterion: str = "mse"):
        super().__init__()
        if criterion not in PIXEL_KINDS:
            raise ValueError(f"unknown feature criterion {criterion!r}; valid: {', '.join(PIXEL_KINDS)}")
        self.vgg = VGGFeatures(layer, weights)
        self.criterion = criterion

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """Scalar feature distance of ``sr`` to ``hr``, both (N, 3, H, W) in [0, 1]; gradients reach ``sr`` only."""
        with torch.no_grad():
            target = self.vgg(hr)
        return pixel_loss(self.vgg(sr), target, self.criterion)


def check_vgg_layer(key: str, layer: str) -> None:
    """`Invalid(key, ...)` unless `layer` names a VGG19 layer, with the closest one."""
    if layer not in VGG19_LAYERS:
        close = difflib.get_close_matches(layer, VGG19_LAYERS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; one of {', '.join(VGG19_LAYERS)}"
        raise Invalid(key, f"{layer!r} is not a VGG19 layer{hint}")


@dataclass
class VGGTermConfig(TermConfig):
    """The `vgg` loss term's recipe keys (feature layer and distance), besides `weight` and `label`."""

    layer: str = "conv5_4"  # `conv5_4`: before its ReLU (ESRGAN); `relu5_4`: after it (SRGAN's phi_5,4)
    criterion: Literal["mse", "l1"] = "mse"  # SRGAN: mse; ESRGAN: l1

    def check(self) -> None:
        """`weight` >= 0; `layer` one of ``VGG19_LAYERS``."""
        super().check()
        check_vgg_layer("layer", self.layer)


@LOSS_TERMS.register("vgg", VGGTermConfig)
class VGGTerm(nn.Module):
    """The perceptual term: VGG19 features of SR against those of HR. Its network runs under the step's
    autocast; the weights come from the loss section's `vgg_weights` (`random`: untrained, for benchmarks
    and tests only), shared by every VGG term of a run."""

    fp32 = False  # runs a network: under autocast, on the generator's output as it is
    shared = ("vgg_weights",)  # loss-section keys this term is built with

    def __init__(self, config: VGGTermConfig, vgg_weights: str):
        super().__init__()
        self.loss = PerceptualLoss(config.layer, None if vgg_weights == "random" else vgg_weights, config.criterion)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, critic) -> torch.Tensor:
        """The perceptual loss (a scalar) of `sr` against `hr`, both (N, 3, H, W) in [0, 1]; `critic` is unused."""
        return self.loss(sr, hr)
