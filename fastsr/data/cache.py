"""A decode-once cache of the training images: `fastsr prepare SRC DST`.

Decoding a 2K PNG costs tens of milliseconds on one core (50-100 ms in benchmarks/RESULTS.md's data
throughput runs), and training takes many small random crops per image. The cache stores each train-split HR
image once, decoded by `load_image`, as a uint8 HxWx3 C-order `.npy` (format version 1.0, which NVIDIA DALI
also reads), so a loader memory-maps it and reads only a crop's region.

DST holds `<source file name>.npy` per image and `manifest.json`:
``{"format": "fastsr-cache", "version": 1, "source": SPEC, "images": [ENTRY, ...], "failed": [...]}``
where each ENTRY records the source's path, size and mtime (to tell a stale copy cheaply), the shape, and
the sha256 of the `.npy` (for `--verify`). Every file is written to a temporary name and renamed into place,
so a reader never sees half a file, and the manifest is rewritten every few seconds, so an interrupted run
resumes where it stopped. One `prepare` per DST at a time.

A run reads the manifest once (`open_cache`): its screen takes the failures from it, and the image store
the cached copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastsr.data.images import load_image
from fastsr.data.sources import BUILTIN_SOURCES, Sample, resolve_source
from fastsr.errors import ImageError
from fastsr.util import file_digest, progress_bar, write_atomic

FORMAT = "fastsr-cache"
VERSION = 1
MANIFEST = "manifest.json"
_SAVE_EVERY_S = 2.0


@dataclass
class PrepareResult:
    """What `prepare_cache` did: images decoded and written, images skipped as already fresh, the ones it
    could not read, and the manifest's path."""

    written: int
    skipped: int
    failed: list[tuple[str, str]]  # (source path, one-line error), in source order
    manifest: Path
    repaired: list[str] = field(default_factory=list)  # sources whose cached copy failed its checksum (verify)


@dataclass(frozen=True)
class CachedImage:
    """One cached image: its `.npy` file and its HR height and width in pixels, as the manifest records them."""

    path: Path
    height: int
    width: int


def prepare_cache(source: str, dst: str | os.PathLike, workers: int | None = None, verify: bool = False,
                  progress: bool = True) -> PrepareResult:
    """Cache the train split of `source` in `dst`, (re)writing only images that are new or changed.

    An image is skipped when its entry's source size and mtime match and its `.npy` is intact (header and
    byte size); `verify` also re-hashes those. Unreadable images are returned in `failed`, not raised.
    """
    dst = Path(dst)
    spec = source if source in BUILTIN_SOURCES else str(Path(source).expanduser().resolve())
    samples = resolve_source(source, "train", scale=4)  # the scale only pairs LR files, which are not cached
    old = _open_for_update(dst, spec)
    order = [str(s.hr.resolve()) for s in samples]
    targets = dict(zip(order, (dst / f"{s.hr.name}.npy" for s in samples)))

    entries, jobs = {}, []
    for src, target in targets.items():
        entry = old.get(src)
        fresh = entry is not None and entry["file"] == target.name and _source_unchanged(entry, Path(src))
        if fresh and _npy_intact(target, entry["shape"]):
            entries[src] = entry
            if verify:
                jobs.append((src, str(target), entry["sha256"]))
        else:
            jobs.append((src, str(target), None))
    failed: dict[str, str] = {}
    _write_manifest(dst, spec, order, entries, failed)  # before the clean-up, so it never lists a deleted file
    names = {t.name for t in targets.values()}
    for path in dst.iterdir():
        stray_tmp = path.name.startswith(".") and path.suffix == ".tmp"  # left by a killed run
        if stray_tmp or (path.suffix == ".npy" and path.name not in names):  # or of a source file now gone
            path.unlink()

    verifying = {src for src, _, sha in jobs if sha is not None}
    repaired: list[str] = []
    written = done = 0
    saved_at = time.monotonic()
    start = time.perf_counter()
    try:
        with progress_bar(progress and bool(jobs)) as bar, _results(jobs, workers) as results:
            task = bar.add_task("prepare", total=len(jobs), rate=0.0, info=str(dst))
            # the info comes with every count: in a file (util.LineProgress) that makes a line every so often
            for src, entry, error in results:
                if error is not None:
                    failed[src] = error
                    entries.pop(src, None)
                    targets[src].unlink(missing_ok=True)  # any copy on disk is not of the source as it is now
                elif entry is not None:
                    entries[src] = entry
                    written += 1
                    if src in verifying:
                        repaired.append(src)
                done += 1
                bar.update(task, completed=done, rate=done / max(time.perf_counter() - start, 1e-9), info=str(dst))
                if time.monotonic() - saved_at > _SAVE_EVERY_S:
                    _write_manifest(dst, spec, order, entries, failed)
                    saved_at = time.monotonic()
    finally:
        _write_manifest(dst, spec, order, entries, failed)  # also on Ctrl-C, so the work done is kept
    return PrepareResult(written=written, skipped=len(samples) - written - len(failed),
                         failed=[(s, failed[s]) for s in order if s in failed], manifest=dst / MANIFEST,
                         repaired=sorted(repaired, key=order.index))


@dataclass
class Cache:
    """A decode-once cache as a run sees it: its manifest, read once by `open_cache`."""

    root: Path
    source: str  # the data source it caches, as `fastsr prepare` recorded it
    entries: dict[str, dict]  # by absolute source path
    failures: dict[str, str]  # absolute source path -> one-line error, for each image prepare could not decode
    checked: dict[str, CachedImage] = field(default_factory=dict, init=False, repr=False)  # found intact by `images`

    def images(self, samples: Sequence[Sample]) -> list[CachedImage]:
        """The cached copy of each sample's HR image, in `samples` order; refuses a stale or missing copy.

        Cheap enough for every training start: a stat call and a header read per file (no hashing or
        pixels), each done once per opened cache, so the screen and the image store share the work.
        """
        rerun = f"rerun `fastsr prepare {self.source} {self.root}`"
        cached = []
        for sample in samples:
            src = str(sample.hr.resolve())
            if src not in self.checked:
                self.checked[src] = self._check(src, rerun)
            cached.append(self.checked[src])
        return cached

    def _check(self, src: str, rerun: str) -> CachedImage:
        entry = self.entries.get(src)
        if entry is None and src in self.failures:
            raise ImageError(f"{self.root}: {src} could not be cached ({self.failures[src]}); "
                             f"fix or remove it and {rerun}")
        if entry is None:
            raise ImageError(f"{self.root}: has no copy of {src} (new since the cache was made?); {rerun}")
        path = self.root / entry["file"]
        if not _source_unchanged(entry, Path(src)):
            raise ImageError(f"{self.root}: {src} changed (size or mtime) since it was cached; {rerun}")
        if not _npy_intact(path, entry["shape"]):
            raise ImageError(f"{path}: cached copy of {src} is {'damaged' if path.exists() else 'missing'}; {rerun}")
        return CachedImage(path, entry["shape"][0], entry["shape"][1])


def open_cache(dst: str | os.PathLike, source: str = "SRC") -> Cache:
    """Read the manifest of the cache in `dst`; refuses a missing one (`source` names the data source in
    the message saying how to create it)."""
    dst = Path(dst)
    manifest = _load_manifest(dst)
    if manifest is None:
        raise ImageError(f"{dst}: no readable fastsr cache here ({MANIFEST} missing, unreadable or of another "
                         f"format); create it with `fastsr prepare {source} {dst}`")
    return Cache(dst, manifest["source"], {e["source"]: e for e in manifest["images"]},
                 {f["source"]: f["error"] for f in manifest["failed"]})


# ---------------------------------------------------------------------------------------------
# the manifest


def _load_manifest(dst: Path) -> dict | None:
    """The manifest in `dst` if it is a readable fastsr cache manifest of this version, else None."""
    try:
        manifest = json.loads((dst / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(manifest, dict) and manifest.get("format") == FORMAT and manifest.get("version") == VERSION
    return manifest if ok else None


def _open_for_update(dst: Path, spec: str) -> dict[str, dict]:
    """Create `dst` or check it is a cache of `spec`; its entries by source path."""
    if not dst.exists():
        dst.mkdir(parents=True)
        return {}
    if dst.is_dir() and not any(dst.iterdir()):
        return {}
    manifest = _load_manifest(dst) if dst.is_dir() else None
    if manifest is None:
        raise ImageError(f"{dst}: exists and is not a fastsr cache; choose an empty or new folder")
    if manifest["source"] != spec:
        raise ImageError(f"{dst}: is a cache of {manifest['source']}, not of {spec}; "
                         f"choose a new folder for {spec}")
    return {e["source"]: e for e in manifest["images"]}


def _write_manifest(dst: Path, spec: str, order: list[str], entries: dict, failed: dict) -> None:
    manifest = {"format": FORMAT, "version": VERSION, "source": spec,
                "images": [entries[s] for s in order if s in entries],
                "failed": [{"source": s, "error": failed[s]} for s in order if s in failed]}
    write_atomic(dst / MANIFEST, json.dumps(manifest, indent=1).encode())


# ---------------------------------------------------------------------------------------------
# the work on each image (in pool workers)


@contextlib.contextmanager
def _results(jobs: list[tuple[str, str, str | None]], workers: int | None):
    """(source, new entry or None, error or None) for each job, in the order the images finish."""
    workers = min((os.cpu_count() or 1) if workers is None else workers, len(jobs))
    if workers <= 1:
        yield map(_prepare_one, jobs)
        return
    # Workers ignore Ctrl-C, so only the parent stops (terminating them) instead of each printing a traceback.
    with multiprocessing.Pool(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        yield pool.imap_unordered(_prepare_one, jobs)


def _prepare_one(job: tuple[str, str, str | None]) -> tuple[str, dict | None, str | None]:
    """Decode one source and write its `.npy`; with `verify_sha`, first keep a copy whose hash matches.

    An unreadable source comes back as its one-line message (data, not an exception), so the parent gets
    it intact and carries on with the other images.
    """
    src, target, verify_sha = job
    target = Path(target)
    if verify_sha is not None and _sha256_or_none(target) == verify_sha:
        return src, None, None
    try:
        st = os.stat(src)  # before decoding: if the file changes meanwhile, the next run sees it as stale
        pixels = load_image(src)
    except (ImageError, OSError) as e:
        return src, None, " ".join(str(e).split())
    buf = io.BytesIO()
    np.lib.format.write_array(buf, pixels, version=(1, 0), allow_pickle=False)  # v1.0 for DALI, as np.save
    data = buf.getbuffer()
    write_atomic(target, data)
    return src, {"file": target.name, "source": src, "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns,
                 "shape": list(pixels.shape), "sha256": hashlib.sha256(data).hexdigest()}, None


# ---------------------------------------------------------------------------------------------
# cheap checks


def _source_unchanged(entry: dict, src: Path) -> bool:
    try:
        st = src.stat()
    except OSError:
        return False
    return st.st_size == entry["source_size"] and st.st_mtime_ns == entry["source_mtime_ns"]


def _npy_intact(path: Path, shape: list[int]) -> bool:
    """Whether `path` is a complete v1.0 C-order uint8 `.npy` of `shape`, judged by its header and size alone.

    Reading the header (rather than predicting its length) keeps a cache valid across NumPy versions, whose
    header padding differs.
    """
    try:
        with open(path, "rb") as f:
            if np.lib.format.read_magic(f) != (1, 0):
                return False
            header_shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            expected_size = f.tell() + math.prod(shape)
            size = os.fstat(f.fileno()).st_size
    except (OSError, ValueError):
        return False
    return header_shape == tuple(shape) and not fortran_order and dtype == np.uint8 and size == expected_size


def _sha256_or_none(path: Path) -> str | None:
    try:
        return file_digest(path)
    except OSError:
        return None
