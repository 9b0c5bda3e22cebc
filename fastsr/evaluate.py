"""Scoring methods on the same held-out pairs by the SR protocol, and showing them side by side.

Used by the trainer's validation, `fastsr eval` and the quick start, so every number fastsr prints
comes from one code path: the same (HR, LR) pairs for every method, Y-channel PSNR/SSIM on uint8
levels with `scale` pixels shaved from each border, the mean of per-image values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from fastsr.data import save_image
from fastsr.infer import upscale
from fastsr.metrics import psnr, ssim
from fastsr.ops import quantize

Pair = tuple[str, torch.Tensor, torch.Tensor]  # (name, HR 1x3xHxW, LR 1x3xhxw), [0, 1]


@dataclass
class Score:
    method: str
    psnr: list[float] = field(default_factory=list)  # per image
    ssim: list[float] = field(default_factory=list)

    @property
    def mean_psnr(self) -> float:
        return sum(self.psnr) / len(self.psnr)

    @property
    def mean_ssim(self) -> float:
        return sum(self.ssim) / len(self.ssim)


@torch.inference_mode()
def evaluate(methods: dict[str, nn.Module], pairs: list[Pair], scale: int, device, *, tile: int = 256,
             pictures: Path | None = None, max_pictures: int = 4) -> list[Score]:
    """Score each method on every pair; optionally save LR / methods / HR pictures of the first few."""
    scores = [Score(name) for name in methods]
    for i, (name, hr, lr) in enumerate(pairs):
        lr_dev = lr.to(device)
        outputs = {}
        for score, model in zip(scores, methods.values()):
            sr = quantize(upscale(model, lr_dev, scale, tile=tile).float().cpu())
            score.psnr.append(psnr(sr, hr, crop_border=scale).item())
            score.ssim.append(ssim(sr, hr, crop_border=scale).item())
            outputs[score.method] = sr
        if pictures is not None and i < max_pictures:
            save_side_by_side(pictures / f"{name}.png", lr, outputs, hr)
    return scores


def save_side_by_side(path: Path, lr: torch.Tensor, outputs: dict[str, torch.Tensor], hr: torch.Tensor) -> None:
    """One row: LR (enlarged by pixel repetition, so its pixels show), each method's output, HR."""
    size = hr.shape[-2:]
    lr_big = torch.nn.functional.interpolate(lr, size=size, mode="nearest")
    panels = {"LR": lr_big, **outputs, "HR": hr}
    label_h = 22
    width = size[1] * len(panels)
    canvas = Image.new("RGB", (width, size[0] + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (label, img) in enumerate(panels.items()):
        array = (quantize(img[0]).permute(1, 2, 0).mul(255).round().byte().numpy())
        canvas.paste(Image.fromarray(array), (k * size[1], label_h))
        draw.text((k * size[1] + 6, 4), label, fill="black")
    save_image(path, np.asarray(canvas))


def format_table(scores: list[Score], caption: str):
    """The seed's table: method, PSNR, SSIM (Y channel, mean over images), as a rich Table."""
    from rich.table import Table

    table = Table(title="Held-out results", caption=caption)
    table.add_column("Method")
    table.add_column("PSNR (dB, Y)", justify="right")
    table.add_column("SSIM (Y)", justify="right")
    best = max(s.mean_psnr for s in scores)
    for s in scores:
        style = "bold" if s.mean_psnr == best else None
        table.add_row(s.method, f"{s.mean_psnr:.2f}", f"{s.mean_ssim:.4f}", style=style)
    return table


def scores_to_json(scores: list[Score], names: list[str], meta: dict) -> dict:
    return {
        **meta,
        "images": names,
        "methods": {
            s.method: {"psnr": s.mean_psnr, "ssim": s.mean_ssim, "psnr_per_image": s.psnr, "ssim_per_image": s.ssim}
            for s in scores
        },
    }
