"""The pixel loss (MSE or L1): the `pixel` term, the pretrain phase's default loss and a term of finetune's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastsr.losses.terms import LOSS_TERMS, TermConfig

_DISTANCES = {"mse": F.mse_loss, "l1": F.l1_loss}
PIXEL_KINDS = tuple(_DISTANCES)


def pixel_loss(sr: torch.Tensor, hr: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Mean pixel loss between ``sr`` and ``hr``: ``kind`` "mse" (squared error) or "l1" (also the distance
    the perceptual loss takes between feature maps)."""
    if kind not in _DISTANCES:
        raise ValueError(f"unknown pixel loss kind {kind!r}; valid kinds: {', '.join(PIXEL_KINDS)}")
    return _DISTANCES[kind](sr, hr)


@dataclass
class PixelTermConfig(TermConfig):
    """The `pixel` loss term's recipe keys (its distance), besides `weight` and `label`."""

    kind: Literal["mse", "l1"] = "mse"  # SRGAN: mse; ESRGAN: l1


@LOSS_TERMS.register("pixel", PixelTermConfig)
class PixelTerm(nn.Module):
    """The pixel distance between SR and HR (`PixelTermConfig.kind`), in fp32."""

    fp32 = True  # computed in fp32 on the generator's output

    def __init__(self, config: PixelTermConfig):
        super().__init__()
        self.kind = config.kind

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, critic) -> torch.Tensor:
        """Mean MSE or L1 (a scalar) of `sr` to `hr`, both (N, 3, H, W) in [0, 1]; `critic` is unused."""
        return pixel_loss(sr, hr, self.kind)
