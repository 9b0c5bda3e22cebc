"""Total variation (Kornia's where Kornia is installed, the same sums written out where it is not): the `tv`
term, a smoothness prior on the generator's output."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastsr.losses.terms import LOSS_TERMS, TermConfig

try:
    from kornia.losses import total_variation as kornia_total_variation
except ImportError:  # Kornia is optional (not a dependency of fastsr): `total_variation` computes the same
    kornia_total_variation = None


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """(N, C) sums of absolute differences between vertically and between horizontally neighbouring pixels
    of each channel: ``kornia.losses.total_variation(x, reduction="sum")``, with the same operations in the
    same order, so the two agree bit for bit (tests/test_losses.py)."""
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(-2).sum(dim=-1)
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(-2).sum(dim=-1)
    return vertical + horizontal


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation, summed per image and averaged over the batch.

    For x of shape (N, C, H, W) this is
    ``mean_n sum_c [ sum |x[n,c,i+1,j] - x[n,c,i,j]| + sum |x[n,c,i,j+1] - x[n,c,i,j]| ]``:
    the (N, C) sums of Kornia's ``total_variation`` (or of `total_variation` without Kornia), summed over
    channels and averaged over images. Being a sum over pixels it grows with the crop size, as in SRGAN
    (whose TV weight, 2e-8, assumes this scale).
    """
    per_channel = kornia_total_variation(x, reduction="sum") if kornia_total_variation else total_variation(x)
    return per_channel.sum(dim=-1).mean()


@dataclass
class TVTermConfig(TermConfig):
    """The `tv` loss term's recipe keys: `weight` and `label` alone."""


@LOSS_TERMS.register("tv", TVTermConfig)
class TVTerm(nn.Module):
    """`tv_loss` of the generator's output, in fp32."""

    fp32 = True

    def __init__(self, config: TVTermConfig):
        super().__init__()

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, critic) -> torch.Tensor:
        """`tv_loss` (a scalar) of `sr`, (N, 3, H, W) in [0, 1]; `hr` and `critic` are unused."""
        return tv_loss(sr)
