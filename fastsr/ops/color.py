"""Luma (Y) exactly as MATLAB ``rgb2ycbcr`` computes it, for SR evaluation; and the same weights at full
range, for writing grayscale images.

Why this exists: SR papers report PSNR/SSIM on the Y channel of MATLAB's ``rgb2ycbcr``, which is
ITU-R BT.601 *studio range* (Y in [16, 235] on a 0..255 scale). Kornia's ``rgb_to_y`` /
``rgb_to_ycbcr`` use the full-range JPEG formula instead, which compresses nothing and gives Y-PSNR
about 1.3 dB lower than published numbers. This is the single place the formula lives.
"""

from __future__ import annotations

import torch

__all__ = ["rgb_to_gray", "rgb_to_y"]

# MATLAB rgb2ycbcr, Y row: Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in [0, 1], Y in [0, 255].
_OFFSET = 16.0
_RGB_WEIGHTS = (65.481, 128.553, 24.966)
_STUDIO_SPAN = 235.0 - 16.0  # the weights' sum: 219


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """Map RGB in [0, 1] shaped (N, 3, H, W) to MATLAB's studio-range luma, (N, 1, H, W), in [0, 1] units.

    The result is ``(16 + 65.481 R + 128.553 G + 24.966 B) / 255``: white maps to 235/255 and black
    to 16/255. It is not rounded (MATLAB only rounds for integer inputs); multiply by 255 to get the
    [0, 255] values the PSNR/SSIM protocol uses.
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"rgb_to_y: expected an RGB tensor shaped (N, 3, H, W), got {tuple(x.shape)}.")
    r, g, b = x.unbind(dim=1)
    y = _OFFSET + _RGB_WEIGHTS[0] * r + _RGB_WEIGHTS[1] * g + _RGB_WEIGHTS[2] * b
    return (y / 255.0).unsqueeze(1)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """Map RGB in [0, 1] shaped (N, 3, H, W) to full-range BT.601 luma, (N, 1, H, W), in [0, 1]:
    ``(65.481 R + 128.553 G + 24.966 B) / 219``, i.e. 0.299 R + 0.587 G + 0.114 B.

    Why: a grayscale image that `fastsr upscale` enlarges goes through the model stacked to RGB, whose
    output channels then differ slightly; they are folded back into one by the weights the metrics score
    Y with (`rgb_to_y`), without the studio range's offset and scale, since a gray file spans the full
    0..255 (black 0, white 255). Over 219 the weights sum to one, so a pixel whose channels are equal
    keeps its value. Not rounded: the caller rounds to uint8 levels as every output is
    (`fastsr.ops.quantize`).
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"rgb_to_gray: expected an RGB tensor shaped (N, 3, H, W), got {tuple(x.shape)}.")
    r, g, b = x.unbind(dim=1)
    gray = _RGB_WEIGHTS[0] * r + _RGB_WEIGHTS[1] * g + _RGB_WEIGHTS[2] * b
    return (gray / _STUDIO_SPAN).unsqueeze(1)
