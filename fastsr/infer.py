"""Tiled whole-image upscaling: run a generator on overlapping LR tiles and stitch the results.

One tiling loop (`_run_tiles`) serves two callers. `upscale` stitches the float outputs into one
tensor on the input's device (evaluation and the trainer's validation, which score the raw output).
`upscale_image` moves one tile at a time to the device and rounds each tile's output to uint8 before
stitching it on the host (`fastsr upscale`), so device memory is bounded by the tile size and host
memory by the uint8 input and output, whatever the image size. Both turn the device running out of memory
into `OutOfMemory` with one line naming the image, the tile size and the knob to lower (`MemoryAdvice`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fastsr.data.images import image_to_tensor, tensor_to_uint8
from fastsr.errors import OutOfMemory
from fastsr.ops import imresize

DEFAULT_TILE = 256  # LR pixels: what evaluation (`fastsr eval`, validation) and `fastsr upscale` tile by
DEFAULT_OVERLAP = 32  # LR pixels neighbouring tiles share (what models need: `upscale`)
MIN_TILE = 32  # the smallest tile out-of-memory advice suggests: below it the overlaps are most of the work


class SelfEnsemble(nn.Module):
    """A generator run on the eight flips and rotations of its input, each output turned back and the eight
    averaged (Lim et al. 2017's geometric self-ensemble, the "+" of papers' tables): about 8x the work for
    a few hundredths of a dB. It is itself a generator of the same scale, so evaluation and `fastsr upscale`
    tile it as they tile any model (each tile ensembled on its own)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.scale = model.scale

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """The mean over the dihedral group of model(t(lr)) turned back by t's inverse."""
        total = None
        for flipped in (False, True):
            for turns in range(4):
                x = torch.rot90(lr.flip(-1) if flipped else lr, turns, dims=(-2, -1))
                y = torch.rot90(self.model(x), -turns, dims=(-2, -1))
                y = y.flip(-1) if flipped else y
                total = y if total is None else total + y
        return total / 8


@dataclass(frozen=True)
class MemoryAdvice:
    """The knobs an out-of-memory message names, as the caller's user sets them: by default the Python
    arguments (`tile=64`), a command's options (`--tile 64`) or a run's recipe keys (`train.val_tile=64`)."""

    tile: str = "tile"  # the LR tile size
    metrics: str = "metrics"  # the metrics scored on each output (evaluation)
    cpu: str | None = "device='cpu'"  # running on the CPU instead (None: the caller has no such knob)
    where: str = ""  # the larger work this belongs to, said after the device (a run's validation, which shares it)
    then: str = ""  # what to do once the knob is lowered (a run: resume)

    def setting(self, knob: str, value: int) -> str:
        """`knob` set to `value` as the user writes it: `--tile 64` for an option, `tile=64` otherwise."""
        return f"{knob} {value}" if knob.startswith("--") else f"{knob}={value}"

    def to_cpu(self, device: str | torch.device) -> str | None:
        """The knob that moves the work to the CPU, unless there is none or it is there already."""
        return self.cpu if torch.device(device).type != "cpu" else None

    def line(self, doing: str, device: str | torch.device, fix: str) -> str:
        """`out of memory DOING on DEVICE[, WHERE]; FIX[; THEN]`."""
        where = f", {self.where}" if self.where else ""
        then = f"; {self.then}" if self.then else ""
        return f"out of memory {doing} on {_device_name(device)}{where}; {fix}{then}"

    def for_tiles(self, image: str | None, h: int, w: int, tile: int, overlap: int,
                  device: str | torch.device) -> str:
        """The advice for a model that ran out of memory on the tiles of an ``h`` x ``w`` LR image: half the
        tile (a whole image: DEFAULT_TILE), unless that would be under MIN_TILE or no more than the overlap,
        where more tiles would not help: then the CPU or a smaller model."""
        side = max(min(tile or h, h), min(tile or w, w))  # the largest tile side the model ran on
        smaller = DEFAULT_TILE if not tile and side > DEFAULT_TILE else side // 2
        if smaller < MIN_TILE or smaller <= overlap:
            cpu = f"run it on the CPU ({self.to_cpu(device)}) or " if self.to_cpu(device) else ""
            fix = f"{'the tiles are' if tile else 'the image is'} already small: {cpu}use a smaller model"
        else:
            fix = f"{'lower' if tile else 'tile it with'} {self.tile} (e.g. {self.setting(self.tile, smaller)})"
        how = f"in tiles of {tile} LR pixels" if tile else f"whole ({self.setting(self.tile, 0)})"
        return self.line(f"upscaling {f'{image} ' if image else ''}({w}x{h} LR) {how}", device, fix)


PYTHON_ADVICE = MemoryAdvice()  # the default: the knobs as this module's and evaluate's arguments


def _device_name(device: str | torch.device) -> str:
    """`cuda:0` rather than `cuda`: the message names the GPU that ran out."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


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
    model: nn.Module, lr: torch.Tensor, scale: int, tile: int = 128, overlap: int = DEFAULT_OVERLAP, *,
    image: str | None = None, advice: MemoryAdvice = PYTHON_ADVICE,
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
    For images too large for that, use `upscale_image`. Out of device memory, it raises `OutOfMemory`
    naming ``image`` and the knobs of ``advice``.
    """
    n, _, h, w = lr.shape
    out = None

    def put(sr: torch.Tensor, rows: slice, cols: slice) -> None:
        nonlocal out
        if out is None:
            out = sr.new_empty(n, sr.shape[1], h * scale, w * scale)
        out[:, :, rows, cols] = sr

    _run_tiles(model, lambda rows, cols: lr[:, :, rows, cols], h, w, scale, tile, overlap, put,
               lr.device, image, advice)
    return out


def upscale_image(
    model: nn.Module, pixels: np.ndarray, scale: int, device: str | torch.device,
    tile: int = 128, overlap: int = DEFAULT_OVERLAP, *, image: str | None = None, advice: MemoryAdvice = PYTHON_ADVICE,
) -> np.ndarray:
    """Upscale one uint8 HxWx3 (RGB) or HxWx4 (RGBA) image; returns uint8 (H*scale)x(W*scale)xC.

    The RGB goes through ``model``; an alpha channel is enlarged with MATLAB bicubic
    (`fastsr.ops.imresize`) in the same tiles, so it is tiled as exactly as the bicubic model.
    Each LR tile is moved to ``device``, run, and its kept output rounded to uint8 there (as
    `save_image` rounds: clamp to [0, 1], round half up) before it is copied into the output
    array on the host. ``tile``, ``overlap``, ``image`` and ``advice`` are as in `upscale`, whose tiles
    these are.
    """
    h, w, channels = pixels.shape
    net = model if channels == 3 else _WithAlpha(model, scale)
    out = np.empty((h * scale, w * scale, channels), np.uint8)

    def read(rows: slice, cols: slice) -> torch.Tensor:
        return image_to_tensor(pixels[rows, cols]).to(device)

    def put(sr: torch.Tensor, rows: slice, cols: slice) -> None:
        out[rows, cols] = tensor_to_uint8(sr[0])

    _run_tiles(net, read, h, w, scale, tile, overlap, put, device, image, advice)
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
    device: str | torch.device, image: str | None, advice: MemoryAdvice,
) -> None:
    """Run ``model`` on the tiles of an ``h`` x ``w`` LR image, one at a time, and hand ``put`` the
    region of each output that the stitched image keeps.

    ``read(rows, cols)`` returns the LR tile at those LR slices, ready for the model;
    ``put(sr, rows, cols)`` receives the kept output (N, C, ...) and the HR slices it belongs at.
    Model modes and inference mode are handled as `upscale` describes; the device (``device``) running out
    of memory becomes `OutOfMemory` with ``advice`` for ``image``.
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
    except torch.OutOfMemoryError as err:
        raise OutOfMemory(advice.for_tiles(image, h, w, tile, overlap, device)) from err
    finally:
        for m, training in modes.items():
            m.training = training
