"""The standard SR test sets (Set5, Set14, B100, Urban100, Manga109): their names, their layout on disk
and their download.

Layout, under a benchmark root (`--data-root`, `data.benchmark_root`; default `data/benchmarks`):

    ROOT/Set5/HR/*.png    ROOT/Set14/HR/*.png    ROOT/B100/HR/*.png    ROOT/Urban100/HR/*.png
    ROOT/Manga109/HR/*.png (by hand: Manga109 is distributed on request)

Only the HR images are used: the LR inputs are made from them by the protocol's exact MATLAB-bicubic
degradation, as for every other evaluation source, so all methods of a table see the same LR.

`fastsr download-benchmarks ROOT` fetches the four public sets from the archive the EDSR authors publish
(`benchmark.tar`, which the SR literature's code widely uses), verifies its MD5, and extracts the HR
images into the layout above.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from fastsr.data.download import download_dir, fetch_verified
from fastsr.data.images import IMAGE_EXTS
from fastsr.errors import DownloadError

DEFAULT_ROOT = "data/benchmarks"
ARCHIVE_URL = "https://cv.snu.ac.kr/research/EDSR/benchmark.tar"
ARCHIVE_MD5 = "4ace41d33c2384b97e6b320cd0afd6ba"  # as torchSR lists it (torchsr/datasets/benchmarks.py)
MANGA109_URL = "http://www.manga109.org/en/download.html"


@dataclass(frozen=True)
class Benchmark:
    """One standard test set: its folder and the image count that marks it complete."""

    folder: str  # its folder under the root, and its name in tables
    images: int
    in_archive: bool = True  # False: not in benchmark.tar (Manga109)


BENCHMARKS = {
    "set5": Benchmark("Set5", 5),
    "set14": Benchmark("Set14", 14),
    "b100": Benchmark("B100", 100),
    "urban100": Benchmark("Urban100", 100),
    "manga109": Benchmark("Manga109", 109, in_archive=False),
}
ALIASES = {"bsd100": "b100"}


def benchmark(name: str) -> Benchmark | None:
    """The test set called `name` (any case; `bsd100` for `b100`), or None."""
    key = name.lower()
    return BENCHMARKS.get(ALIASES.get(key, key))


def hr_dir(bench: Benchmark, root: str | os.PathLike) -> Path:
    """Where the set's HR images are under `root` (ROOT/Set5/HR; `~` expanded)."""
    return Path(root).expanduser() / bench.folder / "HR"


def missing_message(bench: Benchmark, root: str | os.PathLike) -> str:
    """The one line telling the user how to get a set that has no images under `root`: the download command,
    or for Manga109 where to request it and where to put it."""
    where = hr_dir(bench, root)
    if bench.in_archive:
        return (f"{bench.folder}: no images at {where}; fetch the test sets with `fastsr download-benchmarks {root}` "
                "(or point --data-root / data.benchmark_root at where they are)")
    return (f"{bench.folder}: no images at {where}; Manga109 is distributed on request ({MANGA109_URL}): "
            f"put its 109 images in {where}")


def download_benchmarks(dest: str | os.PathLike, names: tuple[str, ...] = ("set5", "set14", "b100", "urban100"),
                        url: str = ARCHIVE_URL, md5: str | None = ARCHIVE_MD5) -> list[str]:
    """Fill `dest` with the HR images of the named sets; return a note per set it could not fetch (Manga109)."""
    sets = []
    for name in names:
        bench = benchmark(name)
        if bench is None:
            raise DownloadError(f"unknown test set {name!r}; choose from {', '.join(BENCHMARKS)}")
        sets.append(bench)
    with download_dir(dest) as dest:
        notes = [missing_message(b, dest) for b in sets if not b.in_archive and _count(hr_dir(b, dest)) != b.images]
        wanted = [b for b in sets if b.in_archive and _count(hr_dir(b, dest)) != b.images]
        if wanted:
            archive = dest / Path(url).name
            fetch_verified(url, archive, md5)
            _extract_hr(archive, dest, wanted)
    return notes


def _count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS) if folder.is_dir() else 0


def _extract_hr(archive: Path, dest: Path, sets: list[Benchmark]) -> None:
    """Extract `benchmark/<Set>/HR/<image>` members of `archive` to `dest/<Set>/HR/<image>`, then count them."""
    folders = {b.folder for b in sets}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = Path(member.name).parts
                if (member.isfile() and len(parts) == 4 and parts[0] == "benchmark" and parts[1] in folders
                        and parts[2] == "HR" and Path(parts[3]).suffix.lower() in IMAGE_EXTS):
                    target = dest / parts[1] / "HR" / parts[3]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, open(target, "wb") as out:
                        out.write(src.read())
    except (tarfile.TarError, OSError) as e:
        raise DownloadError(f"{archive}: cannot extract ({e}); delete it and rerun to download it again") from None
    for b in sets:
        found = _count(hr_dir(b, dest))
        if found != b.images:
            raise DownloadError(f"{archive}: extracted {found} images into {hr_dir(b, dest)}, expected {b.images}; "
                                "delete the archive and that folder and rerun")
