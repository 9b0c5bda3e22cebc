"""RRDBNet, the generator of ESRGAN (Wang et al., ECCV Workshops 2018, "ESRGAN: Enhanced
Super-Resolution Generative Adversarial Networks")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastsr.config import Invalid, positive
from fastsr.models.registry import GENERATORS
from fastsr.registry import PartConfig

ALLOWED_SCALES = (2, 4)


@dataclass
class RRDBNetConfig(PartConfig):
    """The `rrdbnet` generator's recipe keys."""

    blocks: int = 23  # RRDB blocks (23 in the paper)
    features: int = 64  # feature channels of the trunk
    growth: int = 32  # channels each dense-block conv adds (the paper's growth rate)
    residual_scale: float = 0.2  # factor on every residual branch, in (0, 1]

    def check(self) -> None:
        """`blocks`, `features`, `growth` > 0; `residual_scale` in (0, 1]."""
        positive(self, "blocks", "features", "growth")
        if not 0 < self.residual_scale <= 1:
            raise Invalid("residual_scale", f"must be in (0, 1] (got {self.residual_scale})")


class _DenseBlock(nn.Module):
    """Residual dense block: five 3x3 convs, each fed the block input and every earlier output."""

    def __init__(self, features: int, growth: int, residual_scale: float) -> None:
        super().__init__()
        self.residual_scale = residual_scale
        for i in range(1, 6):
            out = features if i == 5 else growth
            self.add_module(f"conv{i}", nn.Conv2d(features + (i - 1) * growth, out, 3, padding=1))
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)
        # ESRGAN's "smaller initialisation": Kaiming init scaled by 0.1. With 3 * blocks residual branches
        # (69 at the defaults) each branch starting near zero keeps every block close to an identity, so
        # the trunk's activations do not grow with depth and the deep net trains stably without BN.
        for conv in self.children():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight)
                conv.weight.data.mul_(0.1)
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = [x]
        for i in range(1, 5):
            inputs.append(self.lrelu(getattr(self, f"conv{i}")(torch.cat(inputs, 1))))
        return x + self.residual_scale * self.conv5(torch.cat(inputs, 1))


class _RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks under one scaled skip."""

    def __init__(self, features: int, growth: int, residual_scale: float) -> None:
        super().__init__()
        self.residual_scale = residual_scale
        self.rdb1 = _DenseBlock(features, growth, residual_scale)
        self.rdb2 = _DenseBlock(features, growth, residual_scale)
        self.rdb3 = _DenseBlock(features, growth, residual_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual_scale * self.rdb3(self.rdb2(self.rdb1(x)))


def _pad_to_even(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Give an odd side one more pixel, reflected as spandrel pads (position n reads n - 2); a side of
    one pixel has nothing to reflect, so it repeats (n - 2 clamped to 0). A gather rather than a branch on
    the size, so that an exported graph, which has no fixed size, does both."""
    n = x.shape[dim]
    position = torch.arange(n + n % 2, device=x.device)
    return x.index_select(dim, (n - 1 - (n - 1 - position).abs()).clamp(min=0))


@GENERATORS.register("rrdbnet", RRDBNetConfig)
class RRDBNet(nn.Module):
    """RRDBNet generator: LR image in [0, 1] (N, 3, h, w) -> SR image (N, 3, h*scale, w*scale).

    Layout and parameter names as in ESRGAN's released weights (and BasicSR / Real-ESRGAN / spandrel):
    ``conv_first`` 3x3; ``body`` of ``blocks`` RRDBs (``body.N.rdb1..rdb3.conv1..conv5``); ``conv_body``
    3x3 closed by a long skip from ``conv_first``; two stages of nearest x2 + ``conv_up1`` / ``conv_up2``
    + LeakyReLU(0.2); ``conv_hr`` 3x3 + LeakyReLU(0.2); ``conv_last`` 3x3 to 3 channels. No BN, no
    normalisation of the input, a linear output (callers clamp when they make an image).
    16,697,987 parameters at the defaults and x4.

    For x2 the ecosystem's convention (Real-ESRGAN x2plus): the input is pixel-unshuffled by 2 (so
    ``conv_first`` takes 12 channels) and both x2 stages are kept; odd sides are first reflect-padded to
    even (a side of one pixel repeated) and the output cropped back to ``h*2, w*2``.

    Args:
        config: the architecture's keys (``RRDBNetConfig``, each documented there).
        scale: upscaling factor, one of ``scales`` (2 or 4).
    """

    label = "RRDBNet"  # how tables name it
    scales = ALLOWED_SCALES
    trainable = True
    spandrel = "ESRGAN"  # the architecture id spandrel gives these weights (fastsr.model_files)

    @staticmethod
    def keys_from_spandrel(hyperparameters: dict) -> dict | None:
        """This generator's recipe keys for a network spandrel opened as ESRGAN (its `hyperparameters`), or None
        for a variant it does not build (ESRGAN+, other activations or upsamplers). spandrel fixes the dense
        blocks' growth at 32 and the residual scale at 0.2, as every released ESRGAN."""
        h = hyperparameters
        if h["plus"] or h["norm"] or (h["act"], h["upsampler"], h["mode"]) != ("leakyrelu", "upconv", "CNA"):
            return None
        return {"blocks": h["num_blocks"], "features": h["num_filters"], "growth": 32, "residual_scale": 0.2}

    def __init__(self, config: RRDBNetConfig, scale: int) -> None:
        super().__init__()
        if scale not in self.scales:
            raise ValueError(f"RRDBNet scale must be one of {self.scales}, got {scale!r}")
        self.scale = scale
        features, growth, residual_scale = config.features, config.growth, config.residual_scale
        self.unshuffle = 4 // scale  # 2 at x2: the two x2 stages then give x2 overall
        conv = lambda cin, cout: nn.Conv2d(cin, cout, 3, padding=1)  # noqa: E731
        self.conv_first = conv(3 * self.unshuffle**2, features)
        self.body = nn.Sequential(*(_RRDB(features, growth, residual_scale) for _ in range(config.blocks)))
        self.conv_body = conv(features, features)
        self.conv_up1 = conv(features, features)
        self.conv_up2 = conv(features, features)
        self.conv_hr = conv(features, features)
        self.conv_last = conv(features, 3)
        self.lrelu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """LR (N, 3, h, w) in [0, 1] -> SR (N, 3, h*scale, w*scale), unclamped."""
        h, w = lr.shape[-2:]
        x = lr
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(_pad_to_even(_pad_to_even(x, -2), -1), self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        return out[..., : h * self.scale, : w * self.scale]
