"""Rounding to the 256 levels of an 8-bit image file."""

import torch


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 256 uint8 levels, staying float in [0, 1].

    This is what saving an image as an 8-bit PNG does: stored LR files were made so, and the
    protocol measures the saved SR image, not the raw float output. Halves round up, as MATLAB's
    `im2uint8` (which made DIV2K's LR files) does; `torch.round` would round them to even.
    """
    return torch.floor(x.clamp(0.0, 1.0) * 255.0 + 0.5) / 255.0
