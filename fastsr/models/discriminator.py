"""The SRGAN discriminator (Ledig et al. 2017), made size-agnostic with an adaptive pool."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastsr.config import positive
from fastsr.models.registry import DISCRIMINATORS
from fastsr.registry import PartConfig

# (out_channels multiplier of `channels`, stride) for the paper's eight 3x3 convolutions.
_CONVS = ((1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2))


@dataclass
class DiscriminatorConfig(PartConfig):
    """The `srgan` discriminator's recipe keys."""

    channels: int = 64  # the first convs' channels; doubled at every other conv up to 8x
    # BatchNorm after all convs but the first, as the paper (true); false drops it (each conv then has a
    # bias): nothing in D's forward updates a buffer, for CUDA graphs and DDP (no buffers to broadcast).
    batch_norm: bool = True

    def check(self) -> None:
        """`channels` > 0."""
        positive(self, "channels")


def check_input_size(x: torch.Tensor, min_size: int, who: str) -> None:
    """A ValueError naming `who` unless both spatial sides of `x` are at least `min_size`."""
    if x.shape[-2] < min_size or x.shape[-1] < min_size:
        raise ValueError(f"{who} needs inputs of at least {min_size}x{min_size}, got {tuple(x.shape[-2:])}")


@DISCRIMINATORS.register("srgan", DiscriminatorConfig)
class Discriminator(nn.Module):
    """Real/fake classifier for HR-sized images in [0, 1]; returns one logit per image, shape (N,).

    The paper's eight 3x3 convs (channels 64, 64, 128, 128, 256, 256, 512, 512 for
    ``config.channels=64``; strides 1, 2, 1, 2, ...), BatchNorm on all but the first, LeakyReLU(0.2);
    then ``AdaptiveAvgPool2d(6)``, dense 512*36 -> 1024, LeakyReLU(0.2), dense 1024 -> 1.

    The adaptive pool makes the dense layers independent of the crop size: at the paper's 96x96
    crops the conv output is already 6x6, so the pool is an identity and this *is* the paper's
    network; other crops (>= 32 px on each side, i.e. at least 2x2 after the four stride-2 convs)
    work too. The logits are raw (no sigmoid): the adversarial loss terms (`fastsr.losses.adversarial`)
    use them with BCE-with-logits, which is numerically stable. The input is mapped to [-1, 1]
    internally so the first conv (the one without BatchNorm) sees zero-centred data.
    Convolutions followed by BatchNorm carry no bias (BN's shift makes it redundant);
    ``config.batch_norm=False`` drops the BatchNorm layers and gives every conv a bias.

    Args:
        config: the architecture's keys (``DiscriminatorConfig``, each documented there).
    """

    min_size = 32  # the smallest input side: 2x2 after the four stride-2 convs

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        channels, batch_norm = config.channels, config.batch_norm
        layers: list[nn.Module] = []
        prev = 3  # RGB
        for i, (mult, stride) in enumerate(_CONVS):
            out = channels * mult
            normed = batch_norm and i > 0
            layers.append(nn.Conv2d(prev, out, 3, stride=stride, padding=1, bias=not normed))
            if normed:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            prev = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(prev * 36, 1024),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(1024, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1], H and W >= ``min_size`` -> raw logits (N,)."""
        check_input_size(x, self.min_size, "Discriminator")
        return self.classifier(self.pool(self.features(x * 2 - 1))).squeeze(1)
