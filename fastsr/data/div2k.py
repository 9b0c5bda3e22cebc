"""Fetching and unpacking the official DIV2K zips into the layout `resolve_source` reads.

Downloads are large (the train HR zip is ~3.5 GB), so they stream to ``NAME.zip.part``, resume from its
size with an HTTP Range request after an interruption, and become ``NAME.zip`` only when complete.
A part whose folder already holds all its images is skipped, so rerunning is cheap. A zip already in
`dest` (say, downloaded by hand because this machine cannot reach the server) is extracted as is.
The zips are kept after extraction; delete them to reclaim the space.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

BASE_URL = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"
PARTS = ("train_HR", "valid_HR", "train_LR_bicubic", "valid_LR_bicubic")
_COUNTS = {"train": 800, "valid": 100}
_CHUNK = 1 << 20


class DownloadError(OSError):
    """A DIV2K zip could not be fetched or unpacked; the message is one line saying what to do."""


def download_div2k(dest: str | os.PathLike, scales: tuple[int, ...] = (4,), parts: tuple[str, ...] = PARTS,
                   base_url: str = BASE_URL) -> Path:
    """Make `dest` a DIV2K root holding the asked `parts` (LR parts once per scale); returns `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for zip_name, folder, count in _plan(parts, scales):
        if _count_pngs(dest / folder) == count:
            continue
        archive = dest / zip_name
        if not archive.is_file():
            _fetch(base_url.rstrip("/") + "/" + zip_name, archive, dest)
        _extract(archive, dest, folder, count)
    return dest


def _plan(parts: tuple[str, ...], scales: tuple[int, ...]) -> list[tuple[str, str, int]]:
    """(zip file name, folder it fills relative to dest, image count) for each asked part and scale."""
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


def _fetch(url: str, archive: Path, dest: Path) -> None:
    """Stream `url` into `archive`.part (resuming from its size) and rename it when complete."""
    part = archive.with_name(archive.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            offset = have if getattr(response, "status", None) == 206 else 0  # 200: server restarts
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length else None
            _stream(response, part, offset, total, archive.name)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:  # 416: the .part already holds the whole file
            raise _download_error(url, dest, e) from None
    except (urllib.error.URLError, OSError) as e:
        raise _download_error(url, dest, e) from None
    os.replace(part, archive)


def _stream(response, part: Path, offset: int, total: int | None, label: str) -> None:
    columns = (TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with open(part, "ab" if offset else "wb") as f, Progress(*columns) as progress:
        task = progress.add_task(label, total=total, completed=offset)
        while chunk := response.read(_CHUNK):
            f.write(chunk)
            progress.advance(task, len(chunk))


def _download_error(url: str, dest: Path, e: Exception) -> DownloadError:
    reason = " ".join(str(getattr(e, "reason", e)).split())
    return DownloadError(f"could not download {url} ({reason}); download the zips by hand into {dest} "
                         "and rerun: they will be extracted")


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
