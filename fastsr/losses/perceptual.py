"""The VGG19 perceptual loss: torchvision's ImageNet VGG19 cut at a layer (or at several, weighted, as
Real-ESRGAN's perceptual loss takes them), and the `vgg` loss term.

The weights are torchvision's `VGG19_Weights.IMAGENET1K_V1` (from the torch hub cache, else downloaded) or a
file the user names; nothing a user hands in is unpickled (a `.pth` only when its SHA-256 says it is
torchvision's own file).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
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
    """Frozen VGG19 feature extractor truncated at ``layer``: [0, 1] RGB -> feature map (or, for several
    layers, one forward to the deepest of them -> each one's feature map).

    ``layer`` is ``conv{b}_{i}`` (the conv output, before its ReLU, as ESRGAN uses) or
    ``relu{b}_{i}`` (after it; SRGAN's phi_{b,i}) for any of VGG19's 16 convs; see
    ``VGG19_LAYERS``. The input is normalised inside with the ImageNet mean/std, so callers pass
    the project's [0, 1] images. Parameters never require grad and the module stays in eval mode
    whatever ``.train()`` is called with (a loss network must not change while it is used).

    Args:
        layer: where to cut the network: a layer name (``forward`` returns its feature map), or an
            iterable of names (``forward`` returns ``{name: feature map}`` in the network's order, from
            one pass through ``features``, cut after the deepest; the ReLU right after a ``conv`` output
            that is taken works out of place, so the map taken is the conv's).
        weights: "imagenet" for torchvision's ``VGG19_Weights.IMAGENET1K_V1`` (from the torch hub
            cache if present, else downloaded); a path to that ``vgg19-dcbb9e9d.pth`` file (a
            state dict of the full torchvision vgg19 or of its ``features`` alone); or ``None``
            for random initialisation, which is meaningless as a perceptual loss and exists for
            tests only.

    Raises:
        ValueError: unknown ``layer`` (or none given).
        VGGWeightsUnavailable: the weights cannot be obtained; the message says where to put them.
    """

    def __init__(self, layer: str | Iterable[str] = "conv5_4", weights: str | os.PathLike | None = "imagenet"):
        super().__init__()
        names = [layer] if isinstance(layer, str) else list(dict.fromkeys(layer))
        if not names:
            raise ValueError(f"no VGG19 layer given; valid layers: {', '.join(VGG19_LAYERS)}")
        for name in names:
            if name not in VGG19_LAYERS:
                raise ValueError(
                    f"unknown VGG19 layer {name!r}; valid layers: {', '.join(VGG19_LAYERS)}"
                )
        names.sort(key=VGG19_LAYERS.__getitem__)
        # `layer` as given for one name; the names in the network's order for several
        self.layer = layer if isinstance(layer, str) else tuple(names)
        self.features = vgg_features(19)[: VGG19_LAYERS[names[-1]]]
        # prefix length -> the name of the output taken there (several layers only)
        self._taken = {} if isinstance(layer, str) else {VGG19_LAYERS[name]: name for name in names}
        for end in self._taken:
            if end < len(self.features) and isinstance(self.features[end], nn.ReLU):
                self.features[end].inplace = False  # it would overwrite the conv output taken before it
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

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Images (N, 3, H, W) in [0, 1] -> the VGG19 feature map at ``layer``, (N, C, H', W'); for several
        layers, ``{name: feature map}`` in the network's order."""
        x = (x - self.mean) / self.std
        if not self._taken:
            return self.features(x)
        taken = {}
        for end, module in enumerate(self.features, start=1):
            x = module(x)
            if end in self._taken:
                taken[self._taken[end]] = x
        return taken


class PerceptualLoss(nn.Module):
    """MSE (or L1) between VGG19 features of ``sr`` and ``hr`` (Johnson et al.; SRGAN's content loss with
    MSE, ESRGAN's with L1 before the ReLU), at one layer or a weighted sum over several.

    ``layer`` is a layer name, or a mapping ``{name: weight}`` (Real-ESRGAN's ``layer_weights``, e.g.
    ``{"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1, "conv4_4": 1, "conv5_4": 1}`` with ``criterion="l1"``):
    the loss is then ``sum_k w_k * criterion(phi_k(sr), phi_k(hr))``, each criterion a mean over its own
    feature map, as BasicSR's ``PerceptualLoss`` computes it, from one VGG19 forward per image batch.
    The HR features are computed under ``torch.no_grad()`` (they are a fixed target); gradients
    flow to ``sr`` only. Unscaled: SRGAN's 1/12.75 rescaling, if wanted, belongs in the term's weight.
    ``weights`` as for ``VGGFeatures``.

    Raises:
        ValueError: unknown criterion or layer, an empty mapping, a negative (or NaN) layer weight.
    """

    def __init__(self, layer: str | Mapping[str, float] = "conv5_4",
                 weights: str | os.PathLike | None = "imagenet", criterion: str = "mse"):
        super().__init__()
        if criterion not in PIXEL_KINDS:
            raise ValueError(f"unknown feature criterion {criterion!r}; valid: {', '.join(PIXEL_KINDS)}")
        self.layer_weights: dict[str, float] | None = None
        if not isinstance(layer, str):
            self.layer_weights = {name: float(w) for name, w in layer.items()}
            bad = next((name for name, w in self.layer_weights.items() if not w >= 0), None)
            if bad is not None:
                raise ValueError(f"VGG19 layer {bad!r} has a negative weight ({self.layer_weights[bad]})")
        self.vgg = VGGFeatures(layer if isinstance(layer, str) else tuple(self.layer_weights), weights)
        self.criterion = criterion

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """Scalar feature distance of ``sr`` to ``hr``, both (N, 3, H, W) in [0, 1]; gradients reach ``sr`` only."""
        with torch.no_grad():
            target = self.vgg(hr)
        features = self.vgg(sr)
        if self.layer_weights is None:
            return pixel_loss(features, target, self.criterion)
        total = None
        for name, feature in features.items():  # the network's order, as BasicSR sums them
            weight = self.layer_weights[name]
            value = pixel_loss(feature, target[name], self.criterion)
            value = value if weight == 1 else weight * value
            total = value if total is None else total + value
        return total


def check_vgg_layer(key: str, layer: str) -> None:
    """`Invalid(key, ...)` unless `layer` names a VGG19 layer, with the closest one."""
    if layer not in VGG19_LAYERS:
        close = difflib.get_close_matches(layer, VGG19_LAYERS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; one of {', '.join(VGG19_LAYERS)}"
        raise Invalid(key, f"{layer!r} is not a VGG19 layer{hint}")


_DEFAULT_LAYER = "conv5_4"


@dataclass
class VGGTermConfig(TermConfig):
    """The `vgg` loss term's recipe keys (feature layer(s) and distance), besides `weight` and `label`."""

    layer: str = _DEFAULT_LAYER  # `conv5_4`: before its ReLU (ESRGAN); `relu5_4`: after it (SRGAN's phi_5,4)
    # Several layers, each with its weight, in place of `layer`: sum_k w_k * criterion(phi_k(SR), phi_k(HR)),
    # e.g. Real-ESRGAN's {conv1_2: 0.1, conv2_2: 0.1, conv3_4: 1, conv4_4: 1, conv5_4: 1} (criterion l1)
    layers: dict[str, float] | None = None
    criterion: Literal["mse", "l1"] = "mse"  # SRGAN: mse; ESRGAN: l1

    def check(self) -> None:
        """`weight` >= 0; `layer` one of ``VGG19_LAYERS``; `layers`, when set: not empty, VGG19 layers with
        weights >= 0, and `layer` left at its default."""
        super().check()
        check_vgg_layer("layer", self.layer)
        if self.layers is None:
            return
        if self.layer != _DEFAULT_LAYER:
            raise Invalid("layers", f"replaces `layer` (here {self.layer!r}): give one of them")
        if not self.layers:
            raise Invalid("layers", "is empty: give at least one `layer_name: weight` (or leave `layers` out "
                                    "and give `layer`)")
        for name, weight in self.layers.items():
            check_vgg_layer("layers", name)
            if not weight >= 0:
                raise Invalid(f"layers.{name}", f"must not be negative (got {weight})")


@LOSS_TERMS.register("vgg", VGGTermConfig)
class VGGTerm(nn.Module):
    """The perceptual term: VGG19 features of SR against those of HR, at `layer` or weighted over `layers`
    (one VGG19 forward per batch either way). Its network runs under the step's autocast; the weights come
    from the loss section's `vgg_weights` (`random`: untrained, for benchmarks and tests only), shared by
    every VGG term of a run."""

    fp32 = False  # runs a network: under autocast, on the generator's output as it is
    shared = ("vgg_weights",)  # loss-section keys this term is built with

    def __init__(self, config: VGGTermConfig, vgg_weights: str):
        super().__init__()
        layer = config.layer if config.layers is None else config.layers
        self.loss = PerceptualLoss(layer, None if vgg_weights == "random" else vgg_weights, config.criterion)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, critic) -> torch.Tensor:
        """The perceptual loss (a scalar) of `sr` against `hr`, both (N, 3, H, W) in [0, 1]; `critic` is unused."""
        return self.loss(sr, hr)
