"""Real-ESRGAN's U-Net discriminator with spectral normalisation (Wang et al., ICCV Workshops 2021,
"Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data"): a real/fake logit for
every pixel rather than one per image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from fastsr.config import positive
from fastsr.models.discriminator import check_input_size
from fastsr.models.registry import DISCRIMINATORS
from fastsr.registry import PartConfig

# The three stride-2 convs halve each side three times and the decoder doubles it back three times, so a
# side must divide by 2**3 for the skips to meet features of their own size and the map to match the input.
SIZE_MULTIPLE = 8


def _act(x: torch.Tensor) -> torch.Tensor:
    """Real-ESRGAN's activation after every conv but the last."""
    return F.leaky_relu(x, 0.2)


def _up(x: torch.Tensor) -> torch.Tensor:
    """The decoder's x2 upsampling, bilinear as Real-ESRGAN's (corners not aligned)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


@dataclass
class UNetDiscriminatorConfig(PartConfig):
    """The `unet_sn` discriminator's recipe keys."""

    channels: int = 64  # the first conv's channels (num_feat); 2x, 4x, 8x down the encoder and back
    skip_connection: bool = True  # add each encoder level's features to the decoder's of the same size

    def check(self) -> None:
        """`channels` > 0."""
        positive(self, "channels")


@DISCRIMINATORS.register("unet_sn", UNetDiscriminatorConfig)
class UNetDiscriminator(nn.Module):
    """Real/fake classifier for HR-sized images in [0, 1]; returns a raw logit per pixel, shape (N, 1, H, W).

    Real-ESRGAN's ``UNetDiscriminatorSN`` (its parameter names): ``conv0`` 3x3 to c channels for
    ``config.channels=c``; an encoder ``conv1``..``conv3`` (4x4, stride 2; 2c, 4c, 8c); a decoder
    ``conv4``..``conv6`` (3x3; 4c, 2c, c), each after a bilinear x2 upsampling, whose outputs add those of
    ``conv2``, ``conv1`` and ``conv0`` when ``config.skip_connection``; ``conv7``, ``conv8`` (3x3, c) and
    ``conv9`` (3x3 to one channel). LeakyReLU(0.2) after every conv but ``conv9``.

    ``conv1``..``conv8`` are spectrally normalised (``torch.nn.utils.spectral_norm``, as Real-ESRGAN, so the
    weights are stored as ``weight_orig`` with the power iteration's ``weight_u`` / ``weight_v``) and carry no
    bias; ``conv0`` and ``conv9`` are plain convs with a bias. Spectral norm bounds each conv's Lipschitz
    constant instead of normalising activations, so nothing depends on the batch: a per-pixel critic of a
    whole image gets no BatchNorm. In train mode every forward runs one power iteration and updates
    ``weight_u`` / ``weight_v``; in eval mode they stay as they are.

    The input is used as it comes, in [0, 1], as Real-ESRGAN feeds it (the `srgan` and `vgg128`
    discriminators map it to [-1, 1] first; this one does not, so that weights move between the two
    codebases unchanged). The logits are raw (no sigmoid): the GAN kinds of `fastsr.losses.adversarial` take
    BCE-with-logits averaged over every element, over pixels as well as images, as Real-ESRGAN's vanilla
    GAN loss does.

    Each side must be a multiple of 8 (``SIZE_MULTIPLE``; the smallest is ``min_size``, 8): the three
    stride-2 convs halve it three times, and the decoder must come back to the very same size.

    Args:
        config: the architecture's keys (``UNetDiscriminatorConfig``, each documented there).
    """

    min_size = SIZE_MULTIPLE  # the smallest input side: 1x1 after the three stride-2 convs
    size_multiple = SIZE_MULTIPLE  # what every input side must divide by (the recipe checks data.hr_crop)

    def __init__(self, config: UNetDiscriminatorConfig) -> None:
        super().__init__()
        c = config.channels
        self.skip_connection = config.skip_connection
        self.conv0 = nn.Conv2d(3, c, 3, 1, 1)
        # The encoder: each 4x4 stride-2 conv halves the size and doubles the channels.
        self.conv1 = spectral_norm(nn.Conv2d(c, c * 2, 4, 2, 1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(c * 2, c * 4, 4, 2, 1, bias=False))
        self.conv3 = spectral_norm(nn.Conv2d(c * 4, c * 8, 4, 2, 1, bias=False))
        # The decoder: each 3x3 conv follows a bilinear x2 and halves the channels back.
        self.conv4 = spectral_norm(nn.Conv2d(c * 8, c * 4, 3, 1, 1, bias=False))
        self.conv5 = spectral_norm(nn.Conv2d(c * 4, c * 2, 3, 1, 1, bias=False))
        self.conv6 = spectral_norm(nn.Conv2d(c * 2, c, 3, 1, 1, bias=False))
        # Two more convs at full size, then the per-pixel logit.
        self.conv7 = spectral_norm(nn.Conv2d(c, c, 3, 1, 1, bias=False))
        self.conv8 = spectral_norm(nn.Conv2d(c, c, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(c, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1], H and W multiples of 8 -> raw logits (N, 1, H, W)."""
        check_input_size(x, self.min_size, "U-Net discriminator (unet_sn)")
        if x.shape[-2] % self.size_multiple or x.shape[-1] % self.size_multiple:
            raise ValueError(f"U-Net discriminator (unet_sn) needs sides that are multiples of {self.size_multiple} "
                             f"(three stride-2 convs, then upsampled back), got {tuple(x.shape[-2:])}")
        x0 = _act(self.conv0(x))
        x1 = _act(self.conv1(x0))
        x2 = _act(self.conv2(x1))
        x3 = _act(self.conv3(x2))
        x4 = _act(self.conv4(_up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = _act(self.conv5(_up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = _act(self.conv6(_up(x5)))
        if self.skip_connection:
            x6 = x6 + x0
        return self.conv9(_act(self.conv8(_act(self.conv7(x6)))))
