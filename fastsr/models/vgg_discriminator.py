"""ESRGAN's VGG-style discriminator for 128x128 crops (Wang et al. 2018), made size-agnostic with an
adaptive pool."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastsr.config import positive
from fastsr.models.discriminator import check_input_size
from fastsr.models.registry import DISCRIMINATORS
from fastsr.registry import PartConfig

# Per stage: (out_channels multiplier of `channels`); each stage is a 3x3 conv then a 4x4 stride-2 conv.
_STAGES = (1, 2, 4, 8, 8)


@dataclass
class VGGDiscriminatorConfig(PartConfig):
    """The `vgg128` discriminator's recipe keys."""

    channels: int = 64  # the first stage's channels; 2x, 4x, 8x, 8x in the later stages
    # BatchNorm after every conv but conv0_0, as ESRGAN (true); false drops it (each conv then has a bias):
    # nothing in D's forward updates a buffer, for CUDA graphs and DDP (no buffers to broadcast).
    batch_norm: bool = True

    def check(self) -> None:
        """`channels` > 0."""
        positive(self, "channels")


@DISCRIMINATORS.register("vgg128", VGGDiscriminatorConfig)
class VGGDiscriminator(nn.Module):
    """Real/fake classifier for HR-sized images in [0, 1]; returns one logit per image, shape (N,).

    ESRGAN's layout (BasicSR's ``VGGStyleDiscriminator`` names): five stages ``convK_0`` (3x3, stride 1)
    and ``convK_1`` (4x4, stride 2), channels c, 2c, 4c, 8c, 8c for ``config.channels=c``, each conv followed
    by BatchNorm (``bnK_0`` / ``bnK_1``) except ``conv0_0``, and LeakyReLU(0.2); then ``linear1``
    8c*4*4 -> 100, LeakyReLU(0.2), ``linear2`` 100 -> 1.

    An ``AdaptiveAvgPool2d(4)`` before the dense layers makes them independent of the crop size: at the
    paper's 128x128 crops the conv output is already 4x4, so the pool is an identity and this *is*
    ESRGAN's network; other crops of at least 32 px a side (1x1 after the five stride-2 convs) work too.
    As in `fastsr.models.discriminator`, the input is mapped to [-1, 1] internally so the first conv
    (the one without BatchNorm) sees zero-centred data, and the logits are raw (no sigmoid).
    Convolutions followed by BatchNorm carry no bias (BN's shift makes it redundant);
    ``config.batch_norm=False`` drops the BatchNorm layers and gives every conv a bias.

    Args:
        config: the architecture's keys (``VGGDiscriminatorConfig``, each documented there).
    """

    min_size = 32  # the smallest input side: 1x1 after the five stride-2 convs

    def __init__(self, config: VGGDiscriminatorConfig) -> None:
        super().__init__()
        channels, batch_norm = config.channels, config.batch_norm
        prev = 3  # RGB
        self._layers: list[tuple[str, str | None]] = []  # (conv name, its BN's name or None)
        for k, mult in enumerate(_STAGES):
            out = channels * mult
            for j, (size, stride) in enumerate(((3, 1), (4, 2))):
                normed = batch_norm and not (k == 0 and j == 0)
                self.add_module(f"conv{k}_{j}", nn.Conv2d(prev, out, size, stride, 1, bias=not normed))
                if normed:
                    self.add_module(f"bn{k}_{j}", nn.BatchNorm2d(out))
                self._layers.append((f"conv{k}_{j}", f"bn{k}_{j}" if normed else None))
                prev = out
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.linear1 = nn.Linear(prev * 4 * 4, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1], H and W >= ``min_size`` -> raw logits (N,)."""
        check_input_size(x, self.min_size, "VGG discriminator (vgg128)")
        feat = x * 2 - 1
        for conv, bn in self._layers:
            feat = getattr(self, conv)(feat)
            if bn is not None:
                feat = getattr(self, bn)(feat)
            feat = self.lrelu(feat)
        feat = self.lrelu(self.linear1(torch.flatten(self.pool(feat), 1)))
        return self.linear2(feat).squeeze(1)
