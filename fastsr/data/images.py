"""Reading and writing image files, with one-line errors that say which file and what to do.

Everything that reads pixels from disk goes through `load_image`, so every part of fastsr sees the same
8-bit RGB data and fails with the same clear messages. Nothing here invents data: an image with real
transparency is refused rather than composited onto a made-up background, and 16-bit colour PNGs are
refused rather than truncated (Pillow can only read their high byte).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fastsr.ops import quantize

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Pillow modes whose pixels hold 16-bit (or wider) integers; "I" is what some plugins give 16-bit gray.
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(ValueError):
    """A file or folder that cannot serve as image data; the message is one line naming it."""


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode `path` into a C-contiguous uint8 HxWx3 RGB array.

    Gray, palette, CMYK and opaque RGBA/LA images become RGB; 16-bit gray is scaled by
    round(v * 255 / 65535). The pixels are decoded here (not lazily), so truncated files fail here.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            _refuse_wide_colour(im, path)
            im.load()
            return np.ascontiguousarray(_to_rgb(im, path))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found; check the path") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError(f"{path}: not a readable image (empty, corrupt or not an image); "
                         "replace or remove it") from None


def _refuse_wide_colour(im: Image.Image, path: Path) -> None:
    """Pillow silently keeps only the high byte of 16-bit colour samples; refuse instead."""
    rawmodes = [t.args if isinstance(t.args, str) else str(t.args) for t in getattr(im, "tile", [])]
    if im.mode in ("RGB", "RGBA") and any(";16" in r for r in rawmodes):
        raise ImageError(f"{path}: 16-bit colour image, which Pillow can only read truncated to its "
                         "high byte; save it as 8-bit RGB and retry")


def _to_rgb(im: Image.Image, path: Path) -> np.ndarray:
    """Convert a decoded Pillow image of any supported mode into uint8 HxWx3."""
    if im.mode in _WIDE_GRAY_MODES:
        gray = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        gray8 = ((gray * 255 + 32767) // 65535).astype(np.uint8)  # round(v*255/65535), never a tie
        return np.repeat(gray8[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise ImageError(f"{path}: floating-point image (mode F) has no defined 0..255 range; "
                         "save it as 8-bit RGB and retry")
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"))
        if rgba[:, :, 3].min() < 255:
            raise ImageError(f"{path}: image has transparency; flatten it onto the background you "
                             "intend (SR data has none) and retry")
        return rgba[:, :, :3]
    return np.array(im.convert("RGB"))  # a writable copy: torch.from_numpy warns on read-only arrays


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 array -> float32 1x3xHxW tensor in [0, 1] (the layout images cross modules in)."""
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).float().div_(255)


def save_image(path: str | os.PathLike, x: torch.Tensor | np.ndarray) -> None:
    """Write `x` as a PNG at `path`, atomically (a reader never sees a half-written file).

    `x` is a float tensor in [0, 1] shaped 3xHxW or 1x3xHxW (rounded to uint8) or a uint8 HxWx3 array.
    Parent folders are created.
    """
    path = Path(path)
    pixels = _to_uint8_hwc(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(pixels, "RGB").save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _to_uint8_hwc(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"save_image wants a uint8 HxWx3 array, got {x.dtype} {x.shape}")
        return np.ascontiguousarray(x)
    t = x.detach()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3 or not t.is_floating_point():
        raise ValueError(f"save_image wants a float 3xHxW or 1x3xHxW tensor, got {t.dtype} {tuple(x.shape)}")
    t = quantize(t.float()).mul(255).round().to(torch.uint8)
    return t.permute(1, 2, 0).contiguous().cpu().numpy()


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
