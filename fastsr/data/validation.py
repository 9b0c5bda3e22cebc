"""Validation and evaluation pairs: whole images, HR cropped to a multiple of the scale, and their LR
(the paired file where the source has one, else the protocol's degradation of the HR). A set of them is
read through `fastsr.data.screen`, which names every unusable image at once."""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastsr.data.degradation import lr_for_eval
from fastsr.data.images import image_to_tensor, is_gray, load_image
from fastsr.data.plan import scaled_size
from fastsr.data.realworld import RealESRGANDegradation, RealWorldLR
from fastsr.data.sources import Sample
from fastsr.errors import ImageError


class Pair(NamedTuple):
    """One image to score: HR and LR as RGB on the CPU, float in [0, 1]."""

    name: str
    hr: torch.Tensor  # 1x3xHxW, cropped to a multiple of the scale
    lr: torch.Tensor  # 1x3xhxw
    gray: bool = False  # the HR file has one channel (stacked to RGB here), which MATLAB's protocol scores as is


def load_val_pair(sample: Sample, scale: int, method: str | RealWorldLR = "matlab", index: int = 0) -> Pair:
    """The sample's pair; the LR is the paired file when the sample has one, else the degradation of the HR
    (see `lr_for_eval`; `index`: the image's place in its set, which a real-world LR is drawn from). An image
    too small to score is refused."""
    from fastsr.metrics import (
        min_image_size,  # here: fastsr.metrics imports torchmetrics (seconds)
    )

    hr = load_image(sample.hr)
    h, w = scaled_size(hr.shape[0], hr.shape[1], scale)
    need = min_image_size(crop_border=scale)
    if min(h, w) < need:
        raise ImageError(f"{sample.hr}: {h}x{w} (cropped to a multiple of {scale}) is too small to score: PSNR/SSIM "
                         f"shave {scale} px per border and need an 11x11 window, so at least {need}x{need}; "
                         "remove it from the evaluation images")
    hr, lr = lr_for_eval(image_to_tensor(hr), scale, sample.lr, method, index)
    return Pair(sample.name, hr, lr, is_gray(sample.hr))


def eval_lr(data, scale: int, seed: int) -> str | RealWorldLR:
    """How a run's validation (a `DataConfig`, `data`) makes LR from HR: the method of `data.degradation`, or for
    `realesrgan` its real-world degradation drawn from `seed`, the same at every validation."""
    if data.degradation == "realesrgan":
        return RealWorldLR(RealESRGANDegradation(data.realesrgan, scale), seed)
    return data.degradation
