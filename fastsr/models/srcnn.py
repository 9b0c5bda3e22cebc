"""SRCNN (Dong et al., ECCV 2014 / TPAMI 2016) on RGB, with an optional residual connection."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fastsr.config import Invalid
from fastsr.models.registry import GENERATORS
from fastsr.ops import imresize
from fastsr.registry import PartConfig


@dataclass
class SRCNNConfig(PartConfig):
    """The `srcnn` generator's recipe keys."""

    kernels: list[int] = field(default_factory=lambda: [9, 5, 5])  # [9, 1, 5] is the paper's base model
    channels: list[int] = field(default_factory=lambda: [64, 32])  # outputs of the first two convs
    residual: bool = True  # add the bicubic image to the output (false: the paper's form)

    def check(self) -> None:
        """`kernels`: three positive odd sizes; `channels`: two positive counts."""
        if len(self.kernels) != 3 or any(k <= 0 or k % 2 == 0 for k in self.kernels):
            raise Invalid("kernels", f"must be three odd sizes such as [9, 5, 5] (got {self.kernels})")
        if len(self.channels) != 2 or any(c <= 0 for c in self.channels):
            raise Invalid("channels", f"must be two positive channel counts such as [64, 32] (got {self.channels})")


@GENERATORS.register("srcnn", SRCNNConfig)
class SRCNN(nn.Module):
    """Bicubic upsampling followed by three convolutions: LR in [0, 1] -> SR in [0, 1].

    The LR input is first enlarged with MATLAB-exact bicubic (``fastsr.ops.imresize``), then
    conv k1 -> ReLU -> conv k2 -> ReLU -> conv k3, all with 'same' zero padding so the output
    has the upsampled size. ``kernels=(9, 1, 5)`` is the paper's base model (9-1-5);
    the default (9, 5, 5) is its better-performing variant. Works on RGB (the paper used Y only).

    ``residual=True`` adds the bicubic image to the network output, so the convolutions learn
    only the correction to bicubic; this converges far faster on small data. ``residual=False``
    is the paper's exact form (the network predicts the whole image).

    The last conv starts from the paper's initialisation (Gaussian, std 0.001, zero bias) so a
    fresh residual model starts at (almost exactly) bicubic; the other layers keep PyTorch's
    default initialisation, which trains faster with Adam than the paper's std-0.001 Gaussians.

    Args:
        config: the architecture's keys (``SRCNNConfig``, each documented there).
        scale: integer upscaling factor, one of ``scales``.
    """

    label = "SRCNN"  # how tables name it
    scales = (2, 3, 4, 8)  # any integer works (imresize, then same-size convs); these are the ones tested
    trainable = True

    def __init__(self, config: SRCNNConfig, scale: int) -> None:
        super().__init__()
        if int(scale) != scale or scale < 1:
            raise ValueError(f"SRCNN scale must be a positive integer, got {scale!r}")
        self.scale = int(scale)
        self.kernels = kernels = tuple(int(k) for k in config.kernels)
        self.channels = channels = tuple(int(c) for c in config.channels)
        self.residual = config.residual

        k1, k2, k3 = kernels
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(3, c1, k1, padding=k1 // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, k2, padding=k2 // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, 3, k3, padding=k3 // 2),
        )
        nn.init.normal_(self.body[-1].weight, std=1e-3)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """LR (N, 3, h, w) in [0, 1] -> SR (N, 3, h*scale, w*scale), unclamped."""
        up = imresize(lr, scale=self.scale)
        out = self.body(up)
        return out + up if self.residual else out
