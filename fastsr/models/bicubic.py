"""The bicubic baseline as a parameter-free model, so eval and upscale treat it like the rest."""

from __future__ import annotations

import torch
from torch import nn

from fastsr.ops import imresize


class Bicubic(nn.Module):
    """MATLAB-exact bicubic upscaling (``fastsr.ops.imresize``): LR in [0, 1] -> SR, unclamped.

    Has no parameters; it exists so the bicubic baseline goes through the same checkpoint-free
    eval/upscale paths as the learned generators.
    """

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale

    @property
    def config(self) -> dict:
        """Registry name + constructor arguments; ``build_generator(**config)`` rebuilds it."""
        return {"name": "bicubic", "scale": self.scale}

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return imresize(lr, scale=self.scale)
