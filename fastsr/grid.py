"""The degradation grid `fastsr degrade` writes: an HR crop beside degraded LR examples of it, each labelled
with the parameters it was drawn with, so a user tunes `data.realesrgan` ranges by eye before training."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch

from fastsr.data.images import image_to_tensor, load_image
from fastsr.data.realworld import RealESRGANDegradation
from fastsr.errors import ImageError
from fastsr.util import write_atomic

_COLUMNS = 4  # examples per row, after the HR crop


def centre_crop(path: Path, crop: int, scale: int) -> torch.Tensor:
    """The centre `crop` x `crop` of the image at `path` (1, 3, crop, crop), or its largest centred square that
    is a multiple of `scale` when it is smaller."""
    img = image_to_tensor(load_image(path))
    side = min(crop, img.shape[-2], img.shape[-1])
    side -= side % scale
    if side < 4 * scale:
        raise ImageError(f"{path}: {img.shape[-2]}x{img.shape[-1]} is too small for a x{scale} degradation grid")
    top, left = (img.shape[-2] - side) // 2, (img.shape[-1] - side) // 2
    return img[..., top:top + side, left:left + side]


def degradation_grid(hr: torch.Tensor, degradation: RealESRGANDegradation, n: int, seed: int, out: Path,
                     title: str) -> None:
    """Write a PNG grid at `out`: `hr` (1, 3, H, W) and `n` LR examples of it (key (seed, i)), each enlarged by
    pixel repetition to the HR's size (its pixels show) and labelled with its parameters."""
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure list

    batch = hr.expand(n, -1, -1, -1).contiguous()
    params, noise_seed = degradation.draw(n, (seed,))
    lr = degradation.apply(batch, params, torch.Generator(hr.device).manual_seed(noise_seed))
    scale = degradation.scale
    panels = [(hr[0], f"HR crop {hr.shape[-2]}x{hr.shape[-1]}")]
    panels += [(lr[i].repeat_interleave(scale, -2).repeat_interleave(scale, -1), f"LR {i}\n{params.describe(i)}")
               for i in range(n)]
    cols = min(_COLUMNS + 1, len(panels))
    rows = math.ceil(len(panels) / cols)
    figure = Figure(figsize=(3.2 * cols, 3.9 * rows), dpi=100)
    figure.suptitle(title, fontsize=9)
    for k, (image, label) in enumerate(panels):
        axes = figure.add_subplot(rows, cols, k + 1)
        axes.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
        axes.set_title(label, fontsize=5.5, loc="left", family="monospace")
        axes.set_axis_off()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_atomic(out, buffer.getvalue())
