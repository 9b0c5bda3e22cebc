"""SRVGGNetCompact, Real-ESRGAN's small generator (Wang et al., ICCV Workshops 2021, "Real-ESRGAN: Training
Real-World Blind Super-Resolution with Pure Synthetic Data"; the network of its realesr-general-x4v3 and
realesr-animevideov3 models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastsr.config import Invalid, positive
from fastsr.models.registry import GENERATORS
from fastsr.registry import PartConfig

# Any integer factor works (the last conv makes 3 * scale^2 channels for the pixel shuffle), and spandrel
# reads the factor back from that conv's size for any of these.
ALLOWED_SCALES = (2, 3, 4, 8)


@dataclass
class CompactConfig(PartConfig):
    """The `compact` generator's recipe keys."""

    channels: int = 64  # feature channels of every conv (Real-ESRGAN's num_feat)
    # 3x3 convs between the first and the last (num_conv): 32 is realesr-general-x4v3, 16 realesr-animevideov3
    convs: int = 32
    # after every conv but the last, as Real-ESRGAN offers: prelu (one slope per channel), relu, or
    # leakyrelu (slope 0.1). Only prelu weights open in spandrel, which finds the net by the PReLU's weight.
    activation: Literal["prelu", "relu", "leakyrelu"] = "prelu"

    def check(self) -> None:
        """`channels` > 0; `convs` >= 0."""
        positive(self, "channels")
        if not self.convs >= 0:
            raise Invalid("convs", f"must be 0 or more (got {self.convs})")


def _activation(kind: str, channels: int) -> nn.Module:
    """The activation after a conv of `channels` outputs, as Real-ESRGAN builds it."""
    if kind == "prelu":
        return nn.PReLU(num_parameters=channels)
    if kind == "relu":
        return nn.ReLU(inplace=True)
    return nn.LeakyReLU(negative_slope=0.1, inplace=True)


@GENERATORS.register("compact", CompactConfig)
class Compact(nn.Module):
    """SRVGGNetCompact: LR image in [0, 1] (N, 3, h, w) -> SR image (N, 3, h*scale, w*scale).

    Every conv works at the LR size and only the last layer upsamples, which is what makes it fast: a 3x3
    conv to ``channels`` and its activation, ``convs`` x (3x3 conv ``channels`` -> ``channels``, activation),
    a last 3x3 conv to ``3 * scale**2`` channels and a pixel shuffle; the nearest-neighbour enlargement of
    the input is added, so the convs learn only the residual. No normalisation of the input, a linear
    output (callers clamp when they make an image).

    Parameter names are Real-ESRGAN's (the whole stack is one module list, ``body``: ``body.0`` the first
    conv, ``body.1`` its activation (``body.1.weight`` for a PReLU), ..., ``body.{2 * convs + 2}`` the last
    conv), so a Real-ESRGAN state dict fits it key for key, and weights saved by fastsr with the default
    PReLU open in spandrel as "Compact" (spandrel finds the network by ``body.1.weight``, which ReLU and
    LeakyReLU do not have).
    PyTorch's default initialisation, as Real-ESRGAN (PReLU slopes start at 0.25).
    1,213,296 parameters at the defaults and x4 (621,424 with 16 convs).

    Args:
        config: the architecture's keys (``CompactConfig``, each documented there).
        scale: integer upscaling factor, one of ``scales``.
    """

    label = "Compact"  # how tables name it
    scales = ALLOWED_SCALES
    trainable = True
    spandrel = "Compact"  # the architecture id spandrel gives these weights (fastsr.model_files)

    @staticmethod
    def keys_from_spandrel(hyperparameters: dict) -> dict | None:
        """This generator's recipe keys for a network spandrel opened as Compact (its `hyperparameters`)."""
        h = hyperparameters
        return {"channels": h["num_feat"], "convs": h["num_conv"], "activation": h["act_type"]}

    def __init__(self, config: CompactConfig, scale: int) -> None:
        super().__init__()
        if scale not in self.scales:
            raise ValueError(f"Compact scale must be one of {self.scales}, got {scale!r}")
        self.scale = scale
        channels = config.channels
        # One flat list, not nested blocks: the index of each layer in `body` is part of its parameter's name,
        # which Real-ESRGAN's weights and spandrel's detection rely on.
        self.body = nn.ModuleList([nn.Conv2d(3, channels, 3, padding=1), _activation(config.activation, channels)])
        for _ in range(config.convs):
            self.body.append(nn.Conv2d(channels, channels, 3, padding=1))
            self.body.append(_activation(config.activation, channels))
        self.body.append(nn.Conv2d(channels, 3 * scale * scale, 3, padding=1))
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """LR (N, 3, h, w) in [0, 1] -> SR (N, 3, h*scale, w*scale), unclamped."""
        out = lr
        for layer in self.body:
            out = layer(out)
        return self.upsampler(out) + F.interpolate(lr, scale_factor=self.scale, mode="nearest")
