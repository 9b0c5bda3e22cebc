"""PSNR and SSIM exactly as super-resolution papers (and BasicSR) compute them.

Why this exists: published SR numbers follow one protocol, and small deviations from it move PSNR
by tenths of a dB, which is the size of the differences between methods:

1. both images are rounded to uint8 levels (a model's float output is saved as an 8-bit image);
2. ``crop_border`` pixels (usually the scale factor) are shaved from every side;
3. the Y channel of MATLAB ``rgb2ycbcr`` (studio range, values in [0, 255]) is used, or all three RGB
   channels when ``y_channel=False`` (about 2 dB lower: say which a table shows). Two conventions for Y
   (``y``), which differ in the second decimal and both appear in print:

   * ``basicsr``: Y not rounded, every image scored as RGB (a 1-channel file stacked to three equal
     channels): what BasicSR's Python and most SR code compute, and fastsr's default;
   * ``matlab``: Y as MATLAB's ``rgb2ycbcr`` gives it for a uint8 image, rounded to integer levels (MATLAB
     rounds halves away from zero), and a 1-channel image (``gray``) scored on its own gray levels, the
     model's RGB output folded to gray as `fastsr upscale` writes it for a gray file
     (`fastsr.ops.rgb_to_gray`, rounded): what the published MATLAB tables of the classic papers compute.

4. PSNR uses peak 255 and is computed per image; SSIM uses an 11x11 Gaussian window with sigma 1.5,
   C1 = (0.01*255)^2, C2 = (0.03*255)^2, and averages the SSIM map over the *valid* region only
   (windows that fit inside the shaved image). A dataset score is the mean of per-image values.

Everything is computed in float64. Library notes, checked against torchmetrics 1.9:

* SSIM uses torchmetrics' ``structural_similarity_index_measure`` with ``return_full_image=True``:
  torchmetrics reflect-pads the image and averages the full-size map, which is not the protocol,
  but the full map cut by the window radius (5 px) on each side is exactly the valid-region map.
* PSNR is computed here directly. torchmetrics' ``peak_signal_noise_ratio`` pools the squared error
  over the whole batch unless given ``dim=(1, 2, 3)``, and even then builds its constants
  (``log(data_range)``, ``log(base)``) as float32 tensors, which costs ~1e-6 dB; the formula is one
  line, so it is written out here in float64.
"""

from __future__ import annotations

import functools

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from fastsr.ops import quantize, rgb_to_gray, rgb_to_y

__all__ = ["Y_CONVENTIONS", "min_image_size", "psnr", "quantize", "ssim"]

# The Y conventions (the module docstring says what each computes), as a table's caption names them.
Y_CONVENTIONS = {"basicsr": "Y (BT.601 studio range, unrounded, as BasicSR; gray files as RGB)",
                 "matlab": "Y as MATLAB rgb2ycbcr on uint8 (rounded; gray files on their own levels)"}

_PEAK = 255.0
_SSIM_SIGMA = 1.5  # torchmetrics derives an 11x11 window from this sigma: int(3.5*1.5 + 0.5)*2 + 1
_SSIM_RADIUS = 5  # half the 11x11 window: how far the valid region lies inside the image
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def min_image_size(crop_border: int) -> int:
    """The smallest height and width SSIM can score once `crop_border` pixels are shaved from each side."""
    return 2 * crop_border + 2 * _SSIM_RADIUS + 1


def _prepare(
    sr: torch.Tensor, hr: torch.Tensor, crop_border: int, y_channel: bool, y: str, gray: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and apply protocol steps 1-3: float64, uint8 levels, shave, Y (in convention `y`) or RGB,
    0..255 scale."""
    if sr.shape != hr.shape:
        raise ValueError(
            f"sr and hr must have the same shape, got sr {tuple(sr.shape)} and hr {tuple(hr.shape)}."
        )
    if sr.dim() != 4:
        raise ValueError(f"expected images shaped (N, C, H, W), got {tuple(sr.shape)}.")
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}.")
    height, width = sr.shape[-2] - 2 * crop_border, sr.shape[-1] - 2 * crop_border
    if min(height, width) <= 0:
        raise ValueError(f"crop_border={crop_border} leaves nothing of images shaped {tuple(sr.shape)}.")
    if y not in Y_CONVENTIONS:
        raise ValueError(f"y must be one of {', '.join(Y_CONVENTIONS)}, got {y!r}.")
    prepared = []
    for image in (sr, hr):
        image = quantize(image.to(torch.float64))
        image = image[..., crop_border : crop_border + height, crop_border : crop_border + width]
        prepared.append(_channel(image, y_channel, y, gray))
    return prepared[0], prepared[1]


def _channel(image: torch.Tensor, y_channel: bool, y: str, gray: bool) -> torch.Tensor:
    """What the protocol scores of an image at uint8 levels, on the 0..255 scale: RGB, or Y in convention `y`."""
    if not y_channel:
        return image * _PEAK
    if y == "basicsr":
        return rgb_to_y(image) * _PEAK
    if gray:  # the file's own levels: a stacked gray HR gives them back exactly, an SR output its gray fold
        return quantize(rgb_to_gray(image)) * _PEAK
    return torch.floor(rgb_to_y(image) * _PEAK + 0.5)  # Y >= 16: half away from zero is half up


def _one_thread(metric):
    """Run `metric` on one CPU thread: a float64 sum split across threads adds in another order for another
    thread count, which moves a value in its 15th digit, so the same image would score differently on another
    machine or in a process of `fastsr eval --processes N` (each with fewer threads) than alone."""

    @functools.wraps(metric)
    def on_one_thread(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return metric(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return on_one_thread


@_one_thread
def psnr(sr: torch.Tensor, hr: torch.Tensor, crop_border: int, y_channel: bool = True, *, y: str = "basicsr",
         gray: bool = False) -> torch.Tensor:
    """Per-image PSNR in dB, shape (N,), of RGB images in [0, 1] shaped (N, 3, H, W).

    Follows the SR protocol (see the module docstring): uint8 levels, ``crop_border`` shaved, Y
    channel in convention ``y`` (``gray``: the HR came from a 1-channel file), or RGB when
    ``y_channel=False``, peak 255. Identical images give ``inf``: the MSE is zero and the ratio is
    unbounded, so average such values with care.
    """
    sr_img, hr_img = _prepare(sr, hr, crop_border, y_channel, y, gray)
    mse = (sr_img - hr_img).square().mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(_PEAK**2 / mse)


@_one_thread
def ssim(sr: torch.Tensor, hr: torch.Tensor, crop_border: int, y_channel: bool = True, *, y: str = "basicsr",
         gray: bool = False) -> torch.Tensor:
    """Per-image SSIM, shape (N,), of RGB images in [0, 1] shaped (N, 3, H, W).

    Follows the SR protocol (see the module docstring): uint8 levels, ``crop_border`` shaved, Y
    channel in convention ``y`` as `psnr` (or the mean over R, G and B when ``y_channel=False``), 11x11 Gaussian window with
    sigma 1.5, averaged over the valid region (the map cut 5 px in from each side of the shaved
    image), so the shaved image must be at least 11x11.
    """
    sr_img, hr_img = _prepare(sr, hr, crop_border, y_channel, y, gray)
    window = min_image_size(crop_border=0)
    if min(sr_img.shape[-2:]) < window:
        raise ValueError(
            f"SSIM needs at least {window}x{window} pixels after shaving "
            f"crop_border={crop_border}, got {tuple(sr_img.shape[-2:])}."
        )
    _, ssim_map = structural_similarity_index_measure(
        sr_img,
        hr_img,
        gaussian_kernel=True,
        sigma=_SSIM_SIGMA,
        data_range=_PEAK,
        k1=_SSIM_K1,
        k2=_SSIM_K2,
        reduction="none",
        return_full_image=True,
    )
    r = _SSIM_RADIUS
    return ssim_map[..., r:-r, r:-r].mean(dim=(1, 2, 3))
