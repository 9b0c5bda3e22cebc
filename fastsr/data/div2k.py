"""Fetching and unpacking the official DIV2K zips into the layout `resolve_source` reads.

Downloads are large (the train HR zip is ~3.5 GB): `fastsr.data.download` streams, resumes and checks
each against its published MD5. A zip whose folder already holds all its images is skipped, so
rerunning is cheap. The zips are kept after extraction; delete them to reclaim the space.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from fastsr.data.download import download_dir, fetch_verified
from fastsr.errors import DownloadError

BASE_URL = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"
PARTS = ("train_HR", "valid_HR", "train_LR_bicubic", "valid_LR_bicubic")
_COUNTS = {"train": 800, "valid": 100}

# The MD5 of each zip, as torchSR lists them (github.com/Coloquinte/torchSR, torchsr/datasets/div2k.py).
MD5 = {
    "DIV2K_train_HR.zip": "bdc2d9338d4e574fe81bf7d158758658",
    "DIV2K_valid_HR.zip": "9fcdda83005c5e5997799b69f955ff88",
    "DIV2K_train_LR_bicubic_X2.zip": "9a637d2ef4db0d0a81182be37fb00692",
    "DIV2K_train_LR_bicubic_X3.zip": "ad80b9fe40c049a07a8a6c51bfab3b6d",
    "DIV2K_train_LR_bicubic_X4.zip": "76c43ec4155851901ebbe8339846d93d",
    "DIV2K_valid_LR_bicubic_X2.zip": "1512c9a3f7bde2a1a21a73044e46b9cb",
    "DIV2K_valid_LR_bicubic_X3.zip": "18b1d310f9f88c13618c287927b29898",
    "DIV2K_valid_LR_bicubic_X4.zip": "21962de700c8d368c6ff83314480eff0",
}


def download_div2k(dest: str | os.PathLike, scales: tuple[int, ...] = (4,), parts: tuple[str, ...] = PARTS,
                   base_url: str = BASE_URL, md5: dict[str, str] = MD5) -> Path:
    """Make `dest` a DIV2K root holding the asked `parts` (PARTS names the zips; an LR one is
    fetched once per scale); returns `dest`."""
    with download_dir(dest) as dest:
        for zip_name, folder, count in _plan(parts, scales):
            if _count_pngs(dest / folder) == count:
                continue
            archive = dest / zip_name
            fetch_verified(base_url.rstrip("/") + "/" + zip_name, archive, md5.get(zip_name))
            _extract(archive, dest, folder, count)
    return dest


def _plan(parts: tuple[str, ...], scales: tuple[int, ...]) -> list[tuple[str, str, int]]:
    """(zip file name, folder it fills relative to dest, image count) for each asked zip of `parts` and each scale."""
    plan = []
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"unknown DIV2K part {part!r}; choose from {', '.join(PARTS)}")
        split = part.split("_")[0]
        if part.endswith("_HR"):
            plan.append((f"DIV2K_{part}.zip", f"DIV2K_{part}", _COUNTS[split]))
        else:
            plan += [(f"DIV2K_{part}_X{s}.zip", f"DIV2K_{part}/X{s}", _COUNTS[split]) for s in scales]
    return plan


def _count_pngs(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.png")) if folder.is_dir() else 0


def _extract(archive: Path, dest: Path, folder: str, count: int) -> None:
    """Unpack `archive` into `dest` and check it filled `folder` with `count` PNGs."""
    try:
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f"{archive}: cannot extract ({e}); delete it and rerun to download it again") from None
    found = _count_pngs(dest / folder)
    if found != count:
        raise DownloadError(f"{archive}: extracted {found} PNGs into {dest / folder}, expected {count}; "
                            "delete the zip and the folder and rerun")
