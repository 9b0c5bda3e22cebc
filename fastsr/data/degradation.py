"""The LR degradation: the one place that turns HR pixels into LR pixels, for training, eval and tests.

The SR protocol makes LR images with MATLAB ``imresize(hr, 1/scale, 'bicubic')`` on HR cropped to a
multiple of the scale, stored as 8-bit files (DIV2K's ``*_LR_bicubic`` folders were made that way).
Training crops must be the LR of the *whole* image at the crop's place, not the LR of the HR crop:
the bicubic kernel reaches `kernel_margin(scale)` = 2*scale HR pixels past each output pixel's block,
so resizing a bare crop would mirror the crop's own edge where the real image continues (up to ~1
level in 255 of error).
`lr_crop` therefore resizes the crop with a margin of real context and cuts the margin off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastsr.data.images import image_to_tensor, load_image
from fastsr.data.plan import Crop, crop_region
from fastsr.data.realworld import RealWorldLR
from fastsr.errors import ImageError, RecipeError
from fastsr.ops import imresize, kernel_margin
from fastsr.ops import quantize as quantize_8bit

METHODS = ("matlab", "kornia")


def degrade(hr: torch.Tensor, scale: int, method: str = "matlab", quantize: bool = True) -> torch.Tensor:
    """LR of a float [0, 1] NCHW batch whose H and W are multiples of `scale`.

    "matlab" is the protocol (MATLAB-exact bicubic, antialiased). "kornia" (Gaussian blur + a = -0.75
    bicubic) is *not* MATLAB's and exists only as an explicit choice. With `quantize`, the result is
    rounded to 8-bit levels as a stored LR file would be.
    """
    if hr.ndim != 4:
        raise ValueError(f"degrade wants an NCHW tensor, got shape {tuple(hr.shape)}")
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"degrade: HR size {h}x{w} is not a multiple of scale {scale}; crop it first")
    if method == "matlab":
        lr = imresize(hr, scale=1 / scale)
    elif method == "kornia":
        lr = kornia_rescale()(hr, 1 / scale, interpolation="bicubic", antialias=True)
    else:
        raise ValueError(f"unknown degradation method {method!r}; use one of {', '.join(METHODS)}")
    return quantize_8bit(lr) if quantize else lr


def kornia_rescale():
    """Kornia's `rescale`, imported only when `data.degradation=kornia` asks for it (Kornia is optional)."""
    try:
        from kornia.geometry.transform import rescale
    except ImportError:
        raise RecipeError("data.degradation=kornia needs Kornia, which is not installed: pip install kornia, "
                          "or use data.degradation=matlab (the protocol's bicubic)") from None
    return rescale


def require(method: str) -> None:
    """Fail now, in one line, when `method` needs a package that is missing: before a run starts, rather than
    in a loader's worker process, whose error torch wraps in a traceback."""
    if method == "kornia":
        kornia_rescale()


def crop_to_scale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop (...)xHxW top-left anchored so H and W are multiples of `scale` (the protocol's HR crop)."""
    h, w = hr.shape[-2:]
    return hr[..., : h - h % scale, : w - w % scale]


def lr_crop(hr: torch.Tensor, top: int, left: int, height: int, width: int, scale: int,
            method: str = "matlab", quantize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The HR region [top:top+height, left:left+width] of `hr` and its LR, equal to the LR of all of `hr`
    at that place (`degrade(hr)[..., top/s:(top+height)/s, left/s:(left+width)/s]`).

    `hr` is CxHxW or NxCxHxW, uint8 or float in [0, 1], H and W multiples of `scale`; only the region plus
    its margin is converted to float32, so a crop from a 2K image costs what the crop costs. All
    offsets and sizes must be multiples of `scale`. Where the margin would leave the image it is
    clipped: the resize then mirrors at the real image border, exactly as it does for the whole image.
    """
    h, w = hr.shape[-2:]
    if any(v % scale for v in (top, left, height, width, h, w)):
        raise ValueError(f"lr_crop: offsets, sizes and image size must be multiples of scale {scale}")
    margin = kernel_margin(scale)
    y0, x0 = max(top - margin, 0), max(left - margin, 0)
    y1, x1 = min(top + height + margin, h), min(left + width + margin, w)
    region = hr[..., y0:y1, x0:x1]
    region = region.float() / 255 if region.dtype == torch.uint8 else region
    lr = degrade(region if region.ndim == 4 else region[None], scale, method, quantize)
    lr = lr if region.ndim == 4 else lr[0]
    dy, dx = top - y0, left - x0
    hr_out = region[..., dy : dy + height, dx : dx + width]
    lr_out = lr[..., dy // scale : (dy + height) // scale, dx // scale : (dx + width) // scale]
    return hr_out, lr_out


def crop_pair(img: np.ndarray, crop: Crop, scale: int, hr_crop: int,
              method: str = "matlab") -> tuple[torch.Tensor, torch.Tensor]:
    """The aligned (HR 3 x hr_crop x hr_crop, LR 3 x hr_crop/s x hr_crop/s) float pair of `crop` from
    a uint8 HxWx3 image, both on 8-bit levels, the LR exactly as a stored whole-image LR file has it,
    then the crop's flips, transpose and channel order applied to both alike.

    `img` may be a memory-mapped cache file: only the crop's region (plus the kernel's margin) is read.
    """
    y0, y1, x0, x1 = crop_region(img.shape[0], img.shape[1], crop, scale, hr_crop)
    region = torch.from_numpy(np.ascontiguousarray(img[y0:y1, x0:x1])).permute(2, 0, 1)
    hr, lr = lr_crop(region, crop.top - y0, crop.left - x0, hr_crop, hr_crop, scale, method)
    if crop.hflip:
        hr, lr = hr.flip(-1), lr.flip(-1)
    if crop.vflip:
        hr, lr = hr.flip(-2), lr.flip(-2)
    if crop.transpose:
        hr, lr = hr.transpose(-1, -2), lr.transpose(-1, -2)
    if crop.channels != (0, 1, 2):
        hr, lr = hr[list(crop.channels)], lr[list(crop.channels)]
    return hr.contiguous(), lr.contiguous()


def lr_for_eval(hr: torch.Tensor, scale: int, lr_path: str | Path | None = None,
                method: str | RealWorldLR = "matlab", index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(HR cropped to a multiple of `scale`, its LR) for evaluation, both float 1x3xHxW.

    The LR is the paired file when given (checked to be exactly HR/scale in size, as the protocol
    requires), else `degrade(hr)` with `method`, or a real-world LR (the set's image `index`), which a paired
    file contradicts.
    """
    hr = crop_to_scale(hr, scale)
    if isinstance(method, RealWorldLR):
        if lr_path is not None:
            raise RecipeError(f"{lr_path}: the real-world degradation (data.degradation / eval --degradation "
                              "realesrgan) makes LR from HR, but this set pairs LR files: validate or evaluate on "
                              "HR-only images (a test set, a folder of HR images such as DIV2K_valid_HR)")
        return hr, method(hr, index)
    if lr_path is None:
        return hr, degrade(hr, scale, method)
    lr = image_to_tensor(load_image(lr_path)).to(hr.device)
    want = (hr.shape[-2] // scale, hr.shape[-1] // scale)
    if tuple(lr.shape[-2:]) != want:
        raise ImageError(f"{lr_path}: LR is {lr.shape[-2]}x{lr.shape[-1]} but its HR "
                         f"({hr.shape[-2]}x{hr.shape[-1]} after cropping to a multiple of {scale}) needs "
                         f"{want[0]}x{want[1]}; use the LR files made for this HR and scale")
    return hr, lr
