"""Total variation (Kornia's): the `tv` term, a smoothness prior on the generator's output."""

from __future__ import annotations

from dataclasses import dataclass

import kornia
import torch
from torch import nn

from fastsr.losses.terms import LOSS_TERMS, TermConfig


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation, summed per image and averaged over the batch.

    For x of shape (N, C, H, W) this is
    ``mean_n sum_c [ sum |x[n,c,i+1,j] - x[n,c,i,j]| + sum |x[n,c,i,j+1] - x[n,c,i,j]| ]``,
    computed by ``kornia.losses.total_variation`` (reduction "sum", which returns (N, C)), then
    summed over channels and averaged over images. Being a sum over pixels it grows with the
    crop size, as in SRGAN (whose TV weight, 2e-8, assumes this scale).
    """
    return kornia.losses.total_variation(x, reduction="sum").sum(dim=-1).mean()


@dataclass
class TVTermConfig(TermConfig):
    pass


@LOSS_TERMS.register("tv", TVTermConfig)
class TVTerm(nn.Module):
    fp32 = True

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, critic) -> torch.Tensor:
        return tv_loss(sr)
