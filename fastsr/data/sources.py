"""Turning a data-source spec (a string in a recipe or on the command line) into a list of images.

A spec is one of:
- ``"samples"``: real photographs shipped with scikit-image, so a first run needs no download
  (a folder that happens to be called samples is ``./samples``);
- a DIV2K root (holding ``DIV2K_train_HR/`` and/or ``DIV2K_valid_HR/``, the official layout), with the
  official MATLAB-bicubic LR files paired in when ``DIV2K_{train,valid}_LR_bicubic/X{scale}/`` exists;
- any folder: its ``train/`` and ``val/`` (or ``valid/``) sub-folders, or else its images with the last
  10% (sorted by name) held out for validation;
- one image file, as a validation/evaluation source;
- the name of a standard test set (``set5``, ``set14``, ``b100``, ``urban100``, ``manga109``: see
  `fastsr.data.benchmarks`), found under a benchmark root, as a validation/evaluation source.
The "eval" split is "val", except that a plain folder (no train/ and val/) is evaluated whole: an eval
set such as Set5 is such a folder. Splits are decided by names alone, so every process and every run sees the same lists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastsr.data import benchmarks
from fastsr.data.images import IMAGE_EXTS, list_images
from fastsr.errors import ImageError

Split = Literal["train", "val", "eval"]

SAMPLES_TRAIN = (
    "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg",
    "ihc.png", "camera.png", "brick.png", "grass.png", "gravel.png", "moon.png", "coins.png",
    "clock_motion.png",
)
SAMPLES_VAL = ("astronaut.png", "chelsea.png", "coffee.png")
BUILTIN_SOURCES = ("samples", *benchmarks.BENCHMARKS)

_DIV2K_HR = {"train": "DIV2K_train_HR", "val": "DIV2K_valid_HR"}
_DIV2K_LR = {"train": "DIV2K_train_LR_bicubic", "val": "DIV2K_valid_LR_bicubic"}
_VAL_DIRS = ("val", "valid")


@dataclass(frozen=True)
class Sample:
    """One training or validation image: its HR file, an optional paired LR file, and a display name."""

    hr: Path
    lr: Path | None = None
    name: str = ""  # defaults to the HR file's stem

    def __post_init__(self) -> None:
        object.__setattr__(self, "hr", Path(self.hr))
        if self.lr is not None:
            object.__setattr__(self, "lr", Path(self.lr))
        if not self.name:
            object.__setattr__(self, "name", self.hr.stem)


def resolve_source(spec: str, split: Split, scale: int,
                   benchmark_root: str | os.PathLike = benchmarks.DEFAULT_ROOT) -> list[Sample]:
    """The samples of `split` ("train", "val" or "eval") named by `spec`; `scale` selects paired LR files;
    a test set's name is looked up under `benchmark_root`."""
    if split not in ("train", "val", "eval"):
        raise ValueError(f"split must be 'train', 'val' or 'eval', got {split!r}")
    if spec == "samples":
        return _samples_source("val" if split == "eval" else split)
    bench = benchmarks.benchmark(spec)
    if bench is not None:
        return _benchmark(bench, benchmark_root, split)
    path = Path(spec).expanduser()
    if path.is_file():
        return _single_file(path, split)
    if path.is_dir():
        if any((path / d).is_dir() for d in _DIV2K_HR.values()):
            return _div2k(path, "val" if split == "eval" else split, scale)
        return _folder(path, split)
    raise ImageError(_missing_message(spec))


def _missing_message(spec: str) -> str:
    looks_like_name = os.sep not in spec and "/" not in spec and not Path(spec).suffix
    if looks_like_name:
        return (f"unknown data source {spec!r}: no such path, and not a built-in name "
                f"(built-in: {', '.join(BUILTIN_SOURCES)})")
    if "div2k" in spec.lower():
        return f"{spec}: data source path not found; fetch DIV2K there with `fastsr download-div2k {spec}`"
    return f"{spec}: data source path not found; check the path (or use a built-in: {', '.join(BUILTIN_SOURCES)})"


def _samples_source(split: Split) -> list[Sample]:
    import skimage.data  # only this source needs scikit-image

    root = Path(os.path.dirname(skimage.data.__file__))
    names = SAMPLES_TRAIN if split == "train" else SAMPLES_VAL
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise ImageError(f"{root}: this scikit-image lacks the sample photographs {', '.join(missing)}; "
                         "install scikit-image>=0.22 or use another data source")
    return [Sample(root / n) for n in names]


def _benchmark(bench: benchmarks.Benchmark, root: str | os.PathLike, split: Split) -> list[Sample]:
    if split == "train":
        raise ImageError(f"{bench.folder} is a test set: use it for validation (data.val_sets) or fastsr eval, "
                         "not as data.source")
    folder = benchmarks.hr_dir(bench, root)
    if not folder.is_dir():
        raise ImageError(benchmarks.missing_message(bench, root))
    return [Sample(p) for p in list_images(folder)]


def source_label(spec: str) -> str:
    """A source's name in tables and logs: a test set's own name (`Set5`), `samples`, else the folder's name."""
    bench = benchmarks.benchmark(spec)
    if bench is not None:
        return bench.folder
    return spec if spec == "samples" else (Path(spec).expanduser().resolve().name or spec)


def _single_file(path: Path, split: Split) -> list[Sample]:
    if path.suffix.lower() not in IMAGE_EXTS:
        raise ImageError(f"{path}: not an image file ({', '.join(IMAGE_EXTS)}); point at an image or a folder")
    if split == "train":
        raise ImageError(f"{path}: a single image can only be a val/eval source; train on a folder")
    return [Sample(path)]


def _div2k(root: Path, split: Split, scale: int) -> list[Sample]:
    hr_files = list_images(root / _DIV2K_HR[split])
    lr_dir = root / _DIV2K_LR[split] / f"X{scale}"
    if not lr_dir.is_dir():
        return [Sample(p) for p in hr_files]
    samples = [Sample(p, lr_dir / f"{p.stem}x{scale}{p.suffix}") for p in hr_files]
    for s in samples:
        if not s.lr.is_file():
            raise ImageError(f"{s.lr}: paired LR file missing (its HR is {s.hr}); "
                             f"re-extract {lr_dir.parent.name} or remove {lr_dir}")
    return samples


def _folder(root: Path, split: Split) -> list[Sample]:
    val_dir = next((root / d for d in _VAL_DIRS if (root / d).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        return [Sample(p) for p in list_images(root / "train" if split == "train" else val_dir)]
    files = list_images(root)
    if split == "eval":
        return [Sample(p) for p in files]
    n_val = max(1, round(len(files) / 10))
    if split == "val":
        return [Sample(p) for p in files[-n_val:]]
    if len(files) <= n_val:
        raise ImageError(f"{root}: only {len(files)} image(s), all held out for validation; "
                         "add images or give train/ and val/ sub-folders")
    return [Sample(p) for p in files[:-n_val]]
