"""Reading and writing image files, with one-line errors that say which file and what to do.

Everything that reads pixels from disk goes through `load_image` (or, for `fastsr upscale`, which keeps
transparency, `load_image_with_alpha`), so all of fastsr sees the same 8-bit data and fails with
the same clear messages. Nothing here invents data: an image with real transparency is refused rather
than composited onto a made-up background, and 16-bit colour PNGs are refused rather than truncated
(Pillow can only read their high byte).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fastsr.errors import ImageError
from fastsr.ops import quantize, rgb_to_gray
from fastsr.util import write_atomic

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Pillow modes whose pixels hold 16-bit (or wider) integers; "I" is what some plugins give 16-bit gray.
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Pillow modes of grayscale images, with or without alpha ("La": alpha premultiplied)
_GRAY_MODES = ("1", "L", "LA", "La", *_WIDE_GRAY_MODES)
# The Pillow mode `save_image` writes for each number of channels
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


class _Writer(NamedTuple):
    format: str  # Pillow's name
    options: dict
    alpha: bool  # an RGBA image written this way reads back with its alpha
    max_side: int | None  # the format's largest width or height


# How `save_image` writes each suffix. JPEG at quality 95, the top of the range Pillow recommends (above
# it files grow with hardly any gain); WebP lossless, with `exact` so colours under fully transparent pixels survive as PNG keeps
# them. Pillow writes RGBA BMPs but reads them back as RGB, so BMP counts as holding no alpha.
_JPEG = _Writer("JPEG", {"quality": 95}, alpha=False, max_side=65500)
_TIFF = _Writer("TIFF", {}, alpha=True, max_side=None)
_WRITERS = {
    ".png": _Writer("PNG", {}, alpha=True, max_side=None),
    ".jpg": _JPEG,
    ".jpeg": _JPEG,
    ".webp": _Writer("WEBP", {"lossless": True, "exact": True}, alpha=True, max_side=16383),
    ".bmp": _Writer("BMP", {}, alpha=False, max_side=None),
    ".tif": _TIFF,
    ".tiff": _TIFF,
}


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode `path` into a C-contiguous uint8 HxWx3 RGB array.

    Gray, palette, CMYK and opaque RGBA/LA images become RGB; 16-bit gray is scaled by
    round(v * 255 / 65535). The pixels are decoded here (not lazily), so truncated files fail here.
    """
    pixels = load_image_with_alpha(path)
    if pixels.shape[2] == 4:
        raise ImageError(f"{path}: image has transparency; flatten it onto the background you "
                         "intend (SR data has none) and retry")
    return pixels


def load_image_with_alpha(path: str | os.PathLike) -> np.ndarray:
    """Like `load_image`, but an image with real transparency (an alpha band, or a palette or gray
    image with a transparent entry, with some pixel below 255) becomes a C-contiguous uint8 HxWx4
    RGBA array instead of an error. Fully opaque images still come back as HxWx3 RGB."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            _refuse_wide_colour(im, path)
            im.load()
            return np.ascontiguousarray(_to_pixels(im, path))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found; check the path") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except Image.DecompressionBombError as e:
        raise _too_large(path, e) from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (empty, corrupt or not an image); "
                         "replace or remove it") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: cannot decode ({_one_line(e)}); the file is truncated or corrupt, "
                         "replace or remove it") from None


def read_header(path: str | os.PathLike) -> tuple[int, int, str]:
    """(height, width, Pillow mode) of an image file from its header alone (cheap: no pixels are
    decoded, so a truncated file passes here and fails in `load_image`)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            _refuse_wide_colour(im, path)
            return im.height, im.width, im.mode
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found; check the path") from None
    except Image.DecompressionBombError as e:
        raise _too_large(path, e) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError(f"{path}: not a readable image (empty, corrupt or not an image); "
                         "replace or remove it") from None


def is_gray(path: str | os.PathLike) -> bool:
    """Whether the file stores a grayscale image (with or without alpha), from its header: the pixels
    `load_image_with_alpha` gives are RGB(A) all the same, and `save_image(..., gray=True)` writes them
    back as grayscale."""
    return read_header(path)[2] in _GRAY_MODES


def _too_large(path: Path, e: Image.DecompressionBombError) -> ImageError:
    # Pillow refuses (rather than warns) above 2 * MAX_IMAGE_PIXELS; its message gives both counts.
    return ImageError(f"{path}: too large to decode safely ({_one_line(e).rstrip('.')}); if the file is "
                      "genuine, cut it into smaller images and retry")


def _refuse_wide_colour(im: Image.Image, path: Path) -> None:
    """Pillow silently keeps only the high byte of 16-bit colour samples; refuse instead."""
    rawmodes = [t.args if isinstance(t.args, str) else str(t.args) for t in getattr(im, "tile", [])]
    if im.mode in ("RGB", "RGBA") and any(";16" in r for r in rawmodes):
        raise ImageError(f"{path}: 16-bit colour image, which Pillow can only read truncated to its "
                         "high byte; save it as 8-bit RGB and retry")


def _to_pixels(im: Image.Image, path: Path) -> np.ndarray:
    """Convert a decoded Pillow image of any supported mode into uint8 HxWx3, or HxWx4 (RGBA) when it
    has transparency that some pixel uses."""
    if im.mode in _WIDE_GRAY_MODES:
        gray = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        gray8 = ((gray * 255 + 32767) // 65535).astype(np.uint8)  # round(v*255/65535), never a tie
        return np.repeat(gray8[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise ImageError(f"{path}: floating-point image (mode F) has no defined 0..255 range; "
                         "save it as 8-bit RGB and retry")
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = np.array(im.convert("RGBA"))  # writable, like the RGB copy below
        return rgba if rgba[:, :, 3].min() < 255 else rgba[:, :, :3]
    return np.array(im.convert("RGB"))  # a writable copy: torch.from_numpy warns on read-only arrays


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWxC array -> float32 1xCxHxW tensor in [0, 1] (the layout images cross modules in)."""
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).float().div_(255)


def save_image(path: str | os.PathLike, x: torch.Tensor | np.ndarray, *, gray: bool = False) -> None:
    """Write `x` at `path` in the format its suffix names (see `output_format`), atomically (a reader
    never sees a half-written file).

    `x` is a float tensor in [0, 1] shaped CxHxW or 1xCxHxW (rounded by `tensor_to_uint8`) or a uint8
    HxWxC array, with C = 3 (RGB) or 4 (RGBA). Parent folders are created. `gray` writes the luma of the
    RGB (`fastsr.ops.rgb_to_gray`, rounded to uint8 levels) as one channel, keeping any alpha: a grayscale
    image comes back grayscale (WebP, which has no grayscale, stores it as equal RGB).
    """
    path = Path(path)
    pixels = _to_uint8_hwc(x)
    if gray:
        pixels = _gray_levels(pixels)
    writer = output_format(path, pixels.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, _MODES[pixels.shape[2]])
    write_atomic(path, lambda f: image.save(f, format=writer.format, **writer.options))


def _gray_levels(pixels: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 (RGB) or HxWx4 (RGBA) -> uint8 HxWx1 (luma) or HxWx2 (luma, alpha)."""
    luma = tensor_to_uint8(rgb_to_gray(image_to_tensor(pixels[:, :, :3]))[0])
    return np.concatenate([luma, pixels[:, :, 3:]], axis=2)


def output_format(path: str | os.PathLike, shape: tuple[int, ...] | None = None,
                  source: str | os.PathLike | None = None) -> _Writer:
    """How `save_image` writes `path` (chosen by its suffix), checked against an image of `shape`
    (HxWxC; C = 1 gray, 2 gray and alpha, 3 RGB, 4 RGBA) when given; otherwise a one-line ImageError
    naming `path` (and `source`, the image it comes from, when given). Cheap, so callers can check before
    long work rather than fail after it."""
    path = Path(path)
    writer = _WRITERS.get(path.suffix.lower())
    if writer is None:
        raise ImageError(f"{path}: unknown image suffix {path.suffix or '(none)'}; name the output "
                         f"{', '.join(_WRITERS)}")
    if shape is None:
        return writer
    where = f"{source} -> {path}" if source else str(path)
    height, width, channels = shape
    if channels in (2, 4) and not writer.alpha:
        raise ImageError(f"{where}: the image has transparency, which {writer.format} cannot hold; "
                         "write a .png or .webp to keep it")
    if writer.max_side is not None and max(height, width) > writer.max_side:
        raise ImageError(f"{where}: {width}x{height} is larger than {writer.format} allows "
                         f"({writer.max_side} pixels a side); write a .png")
    return writer


def tensor_to_uint8(t: torch.Tensor) -> np.ndarray:
    """Float CxHxW tensor in [0, 1], on any device -> uint8 HxWxC array on the host, clamped and rounded
    as `quantize` does (what an 8-bit file stores). Quantised where `t` lives, so only uint8 is copied."""
    t = quantize(t.float()).mul(255).round().to(torch.uint8)
    return t.permute(1, 2, 0).contiguous().cpu().numpy()


def _to_uint8_hwc(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] not in (3, 4):
            raise ValueError(f"save_image wants a uint8 HxWx3 or HxWx4 array, got {x.dtype} {x.shape}")
        return np.ascontiguousarray(x)
    t = x.detach()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] not in (3, 4) or not t.is_floating_point():
        raise ValueError(f"save_image wants a float CxHxW or 1xCxHxW tensor (C = 3 or 4), "
                         f"got {t.dtype} {tuple(x.shape)}")
    return tensor_to_uint8(t)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside `folder` (extensions in IMAGE_EXTS, any case), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "folder not found"
        raise ImageError(f"{folder}: {what}; check the path")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise ImageError(f"{folder}: no images ({', '.join(IMAGE_EXTS)}) in this folder; "
                         "point at the folder that holds them")
    return files
