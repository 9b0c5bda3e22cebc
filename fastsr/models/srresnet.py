"""SRResNet, the generator of SRGAN (Ledig et al., CVPR 2017, "Photo-Realistic Single Image
Super-Resolution Using a Generative Adversarial Network")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastsr.config import positive
from fastsr.models.registry import GENERATORS
from fastsr.ops import imresize
from fastsr.registry import PartConfig

ALLOWED_SCALES = (2, 4, 8)

# The upsamplings `upsample_input` can add to the output: (lr, scale) -> the enlarged lr. `bicubic` is the
# MATLAB-exact imresize rather than torch's bicubic (Keys a = -0.75, clamped borders): the untrained model
# is then the bicubic baseline itself, and on the CPU it is also the cheaper of the two.
UPSAMPLERS = {
    "none": None,
    "bicubic": lambda lr, scale: imresize(lr, scale=scale),
    "bilinear": lambda lr, scale: F.interpolate(lr, scale_factor=scale, mode="bilinear", align_corners=False),
}


@dataclass
class SRResNetConfig(PartConfig):
    """The `srresnet` generator's recipe keys."""

    res_blocks: int = 16  # residual blocks (the reference script's knob; 16 in the paper)
    channels: int = 64  # feature channels
    # Add an upsampling of the input to the output (a global residual, as BasicSR's MSRResNet), so the
    # network learns the correction to it and starts as exactly that upsampler (its last conv zeroed):
    # `bicubic` is MATLAB's (the bicubic baseline itself), `bilinear` torch's. `none`: the paper's SRResNet.
    upsample_input: Literal["none", "bicubic", "bilinear"] = "none"
    # BatchNorm after the convs, as the paper (true); false drops it, as EDSR and BasicSR's MSRResNet do:
    # nothing in the forward then updates a buffer (what CUDA graphs and DDP prefer), fewer kernels per block.
    batch_norm: bool = True

    def check(self) -> None:
        """`res_blocks`, `channels` > 0."""
        positive(self, "res_blocks", "channels")


def _conv_bn(channels: int, batch_norm: bool) -> list[nn.Module]:
    """conv3x3, then BatchNorm if `batch_norm`."""
    return [nn.Conv2d(channels, channels, 3, padding=1), *([nn.BatchNorm2d(channels)] if batch_norm else [])]


class _ResidualBlock(nn.Module):
    """conv3x3-BN-PReLU-conv3x3-BN with an identity skip (the paper's B residual blocks); without
    `batch_norm`, conv3x3-PReLU-conv3x3."""

    def __init__(self, channels: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(channels, batch_norm), nn.PReLU(), *_conv_bn(channels, batch_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@GENERATORS.register("srresnet", SRResNetConfig)
class SRResNet(nn.Module):
    """SRResNet generator: LR image in [0, 1] (N, 3, h, w) -> SR image (N, 3, h*scale, w*scale).

    Layout as in the paper: a 9x9 conv + PReLU head; ``config.res_blocks`` residual blocks; conv3x3 + BN
    closed by a long skip from the head; log2(scale) upsampling stages of conv3x3 (4*channels) ->
    PixelShuffle(2) -> PReLU; a 9x9 conv to 3 channels. PReLUs have one shared slope each (the
    PyTorch default), which gives the commonly quoted 1,549,462 parameters at 16 blocks / 64
    channels / x4.

    The output layer is linear (no Tanh): trained against [0, 1] targets the output lands in
    [0, 1] by itself, so the project's [0, 1] convention holds without any remapping. Values can
    stray slightly outside [0, 1]; callers clamp/quantize when they make an image.

    ``config.upsample_input`` (not in the paper; off by default) adds an upsampling of the LR input to the
    output, so the layers learn only the correction to it. Its last conv then starts at zero: the
    untrained network is exactly that upsampler (for ``bicubic``, the bicubic baseline), so training
    starts from the baseline's score instead of from noise and the input's colours are kept from the
    first step (the quick start uses it: its minute of training is too short for the paper's form).

    ``config.batch_norm=False`` drops the BatchNorm layers (EDSR's finding for SR, and BasicSR's MSRResNet),
    keeping every conv's bias: 2 * channels parameters fewer per BatchNorm, and a forward that updates
    no running statistics.

    Args:
        config: the architecture's keys (``SRResNetConfig``, each documented there).
        scale: upscaling factor, one of ``scales`` (each upsampling stage doubles the size).
    """

    label = "SRResNet"  # how tables name it
    scales = ALLOWED_SCALES
    trainable = True

    def __init__(self, config: SRResNetConfig, scale: int) -> None:
        super().__init__()
        if scale not in self.scales:
            raise ValueError(f"SRResNet scale must be one of {self.scales}, got {scale!r}")
        self.scale = scale
        self.res_blocks = res_blocks = config.res_blocks
        self.channels = channels = config.channels
        self.upsample_input = upsample_input = config.upsample_input
        self.batch_norm = batch_norm = config.batch_norm

        self.head = nn.Sequential(nn.Conv2d(3, channels, 9, padding=4), nn.PReLU())
        self.blocks = nn.Sequential(*(_ResidualBlock(channels, batch_norm) for _ in range(res_blocks)))
        self.body_tail = nn.Sequential(*_conv_bn(channels, batch_norm))
        self.upsample = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(channels, channels * 4, 3, padding=1),
                    nn.PixelShuffle(2),
                    nn.PReLU(),
                )
                for _ in range(int(math.log2(scale)))
            )
        )
        self.tail = nn.Conv2d(channels, 3, 9, padding=4)
        if upsample_input != "none":
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """LR (N, 3, h, w) in [0, 1] -> SR (N, 3, h*scale, w*scale), unclamped."""
        head = self.head(lr)
        features = head + self.body_tail(self.blocks(head))
        out = self.tail(self.upsample(features))
        upsampler = UPSAMPLERS[self.upsample_input]
        return out if upsampler is None else out + upsampler(lr, self.scale)
