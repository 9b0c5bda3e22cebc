"""An architecture defined outside fastsr, the way a user's plugin module defines one: named in a recipe's
`plugins:` (or with `--plugin` for eval and upscale, or by a `fastsr.models` entry point), it registers
itself, and fastsr trains, evaluates and upscales it unchanged (tests/test_registry.py)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastsr.config import positive
from fastsr.models import GENERATORS
from fastsr.registry import PartConfig


@dataclass
class PlainNetConfig(PartConfig):
    channels: int = 8  # channels of the hidden conv

    def check(self) -> None:
        positive(self, "channels")


@GENERATORS.register("plainnet", PlainNetConfig)
class PlainNet(nn.Module):
    """Nearest-neighbour upscaling plus a two-conv, pixel-shuffled correction."""

    scales = (2, 3, 4)
    trainable = True

    def __init__(self, config: PlainNetConfig, scale: int) -> None:
        super().__init__()
        self.scale = scale
        channels = config.channels
        self.body = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return F.interpolate(lr, scale_factor=self.scale, mode="nearest") + self.body(lr)
