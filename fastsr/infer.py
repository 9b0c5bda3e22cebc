"""Tiled whole-image upscaling: run a generator on overlapping LR tiles and stitch the results.

One tiling loop (`_run_tiles`) serves two callers. `upscale` stitches the float outputs into one
tensor on the input's device (evaluation and the trainer's validation, which score the raw output).
`upscale_image` moves one tile at a time to the device and rounds each tile's output to uint8 before
stitching it on the host (`fastsr upscale`), so device memory is bounded by the tile size and host
memory by the uint8 input and output, whatever the image size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fastsr.data.images import image_to_tensor, tensor_to_uint8
from fastsr.ops import imresize


def _tiles(size: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """Split one axis of ``size`` LR pixels into tiles of ``tile`` pixels overlapping by at least
    ``overlap``; return ``(start, keep_from, keep_to)`` per tile (LR coordinates).

    Tiles start every ``tile - overlap`` pixels, the last one moved back to end at the image
    edge. Each pixel is kept from the tile whose edge is furthest from it, i.e. neighbouring
    tiles hand over at the midpoint of their overlap. Every kept pixel then has at least
    ``overlap // 2`` pixels of real context on each side (or the image border, which the
    untiled pass sees too), which is what makes the stitched result match the untiled one.
    """
    if size <= tile:
        return [(0, 0, size)]
    starts = list(range(0, size - tile, tile - overlap)) + [size - tile]
    cuts = [0] + [(a + b + tile) // 2 for a, b in zip(starts, starts[1:])] + [size]
    return [(s, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


def upscale(
    model: nn.Module, lr: torch.Tensor, scale: int, tile: int = 128, overlap: int = 32
) -> torch.Tensor:
    """Upscale ``lr`` (N, 3, H, W) in [0, 1] by ``scale`` with ``model``, tile by tile.

    ``tile`` and ``overlap`` are in LR pixels; ``tile=0``, or an image no larger than a tile,
    runs the model in a single pass. Tiles are processed one at a time (all N images together)
    under ``torch.inference_mode``, on ``lr``'s device. Each output pixel comes from the tile
    where it is furthest from a tile edge, so with enough overlap for the model's effective
    receptive field the result equals the untiled output. Measured on a 75x101 LR image:
    SRCNN and Bicubic are bit-exact from overlap 8; a 16-block SRResNet (random weights,
    perturbed BatchNorm statistics) is off by ~2e-6 at the default overlap of 32, ~3e-3 (under
    1/255) at 16 and ~0.03 at 8, so keep the overlap at 16 or more for SRResNet.

    The model runs in eval mode (in train mode BatchNorm would normalise each tile by its own
    statistics); each submodule's train/eval flag is restored afterwards, so a trainer can call
    this on the model it is training. Returns the model's output unclamped
    (N, C, H*scale, W*scale), allocated whole on ``lr``'s device; callers clamp and quantize.
    For images too large for that, use `upscale_image`.
    """
    n, _, h, w = lr.shape
    out = None

    def put(sr: torch.Tensor, rows: slice, cols: slice) -> None:
        nonlocal out
        if out is None:
            out = sr.new_empty(n, sr.shape[1], h * scale, w * scale)
        out[:, :, rows, cols] = sr

    _run_tiles(model, lambda rows, cols: lr[:, :, rows, cols], h, w, scale, tile, overlap, put)
    return out


def upscale_image(
    model: nn.Module, pixels: np.ndarray, scale: int, device: str | torch.device,
    tile: int = 128, overlap: int = 32,
) -> np.ndarray:
    """Upscale one uint8 HxWx3 (RGB) or HxWx4 (RGBA) image; returns uint8 (H*scale)x(W*scale)xC.

    The RGB goes through ``model``; an alpha channel is enlarged with MATLAB bicubic
    (`fastsr.ops.imresize`) in the same tiles, so it is tiled as exactly as the bicubic model.
    Each LR tile is moved to ``device``, run, and its kept output rounded to uint8 there (as
    `save_image` rounds: clamp to [0, 1], round half up) before it is copied into the output
    array on the host. ``tile`` and ``overlap`` are as in `upscale`, whose tiles these are.
    """
    h, w, channels = pixels.shape
    net = model if channels == 3 else _WithAlpha(model, scale)
    out = np.empty((h * scale, w * scale, channels), np.uint8)

    def read(rows: slice, cols: slice) -> torch.Tensor:
        return image_to_tensor(pixels[rows, cols]).to(device)

    def put(sr: torch.Tensor, rows: slice, cols: slice) -> None:
        out[rows, cols] = tensor_to_uint8(sr[0])

    _run_tiles(net, read, h, w, scale, tile, overlap, put)
    return out


class _WithAlpha(nn.Module):
    """``model`` on the first three channels, MATLAB bicubic on the fourth (alpha): transparency is
    not something a generator was trained on, and bicubic is what the RGB would get without one."""

    def __init__(self, model: nn.Module, scale: int) -> None:
        super().__init__()
        self.model = model
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(x[:, :3]), imresize(x[:, 3:], scale=self.scale)], dim=1)


def check_tiling(tile: int, overlap: int) -> None:
    """Raise ValueError unless ``tile`` and ``overlap`` (LR pixels) describe a tiling."""
    if tile < 0 or (tile > 0 and not 0 <= overlap < tile):
        raise ValueError(
            f"need tile >= 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}"
        )


def _run_tiles(
    model: nn.Module,
    read: Callable[[slice, slice], torch.Tensor],
    h: int, w: int, scale: int, tile: int, overlap: int,
    put: Callable[[torch.Tensor, slice, slice], None],
) -> None:
    """Run ``model`` on the tiles of an ``h`` x ``w`` LR image, one at a time, and hand ``put`` the
    part of each output that the stitched image keeps.

    ``read(rows, cols)`` returns the LR tile at those LR slices, ready for the model;
    ``put(sr, rows, cols)`` receives the kept output (N, C, ...) and the HR slices it belongs at.
    Model modes and inference mode are handled as `upscale` describes.
    """
    check_tiling(tile, overlap)
    size = tile or max(h, w)  # tile=0: one tile that covers the whole image
    th, tw = min(size, h), min(size, w)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            for y0, ky0, ky1 in _tiles(h, size, overlap):
                for x0, kx0, kx1 in _tiles(w, size, overlap):
                    sr = model(read(slice(y0, y0 + th), slice(x0, x0 + tw)))
                    if sr.shape[-2:] != (th * scale, tw * scale):
                        raise ValueError(
                            f"model output {tuple(sr.shape[-2:])} for a {th}x{tw} tile does not "
                            f"match scale={scale}"
                        )
                    put(
                        sr[:, :, (ky0 - y0) * scale : (ky1 - y0) * scale,
                           (kx0 - x0) * scale : (kx1 - x0) * scale],
                        slice(ky0 * scale, ky1 * scale),
                        slice(kx0 * scale, kx1 * scale),
                    )
    finally:
        for m, training in modes.items():
            m.training = training
