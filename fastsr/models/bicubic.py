"""The bicubic baseline as a parameter-free model, so eval and upscale treat it like the rest."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastsr.models.registry import GENERATORS
from fastsr.ops import imresize
from fastsr.registry import PartConfig


@dataclass
class BicubicConfig(PartConfig):
    """The `bicubic` generator's recipe keys: none besides `name`."""


@GENERATORS.register("bicubic", BicubicConfig)
class Bicubic(nn.Module):
    """MATLAB-exact bicubic upscaling (``fastsr.ops.imresize``): LR in [0, 1] -> SR, unclamped.

    Has no parameters; it exists so the bicubic baseline goes through the same checkpoint-free
    eval/upscale paths as the learned generators.

    Args:
        config: ``BicubicConfig`` (it has no keys).
        scale: upscaling factor.
    """

    label = "Bicubic"  # how tables name it
    scales = (2, 3, 4, 8)  # any integer works (imresize); these are the ones tested
    trainable = False

    def __init__(self, config: BicubicConfig, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """LR (N, 3, h, w) in [0, 1] -> SR (N, 3, h*scale, w*scale), unclamped."""
        return imresize(lr, scale=self.scale)
