"""Fetching a data set's archive: streamed to ``NAME.part``, resumed from its size with an HTTP Range
request after an interruption, renamed to ``NAME`` only when complete, and checked against its published
MD5 before anything is extracted from it. An archive already in place (say, downloaded by hand because this
machine cannot reach the server) is checked the same way and used as is.

A download that fails (no network, a bad checksum, Ctrl-C) leaves only what a rerun resumes from: a
``NAME.part`` that got some bytes, an archive and what was extracted from it, a ``.bad`` file it names. A
``.part`` that got none is removed, and so are the destination folders the download made, once empty.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from fastsr.errors import DownloadError
from fastsr.util import file_digest

_CHUNK = 1 << 20


@contextlib.contextmanager
def download_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """`dest`, made with its missing parents for the body to fill; if the body fails, the folders made here
    that are left empty are removed again (a user's folders, and one holding a partial download, stay)."""
    dest = Path(dest)
    made = list(itertools.takewhile(lambda p: not p.exists(), (dest, *dest.parents)))  # deepest first
    dest.mkdir(parents=True, exist_ok=True)
    try:
        yield dest
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # not empty: nor are its parents
                break
        raise


def fetch_verified(url: str, archive: Path, md5: str | None) -> None:
    """Make `archive` a complete copy of `url` whose MD5 is `md5` (None: not checked); reuse a copy there."""
    if not archive.is_file():
        _fetch(url, archive)
    if md5 is not None:
        found = file_digest(archive, "md5")
        if found != md5:
            bad = archive.with_name(archive.name + ".bad")
            os.replace(archive, bad)
            raise DownloadError(f"{archive}: MD5 {found} is not the published {md5} (a damaged or different file); "
                                f"moved it to {bad.name}, rerun to download it again")


def _fetch(url: str, archive: Path) -> None:
    """Stream `url` into `archive`.part (resuming from its size) and rename it when complete."""
    part = archive.with_name(archive.name + ".part")
    try:
        _fetch_part(url, archive, part)
    except BaseException:
        if part.is_file() and not part.stat().st_size:  # nothing came: nothing to resume from
            part.unlink()
        raise
    os.replace(part, archive)


def _fetch_part(url: str, archive: Path, part: Path) -> None:
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
            raise _download_error(url, archive, e) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _download_error(url, archive, e) from None


def _stream(response, part: Path, offset: int, total: int | None, label: str) -> None:
    columns = (TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    done = offset
    with open(part, "ab" if offset else "wb") as f, Progress(*columns) as progress:
        task = progress.add_task(label, total=total, completed=offset)
        while chunk := response.read(_CHUNK):
            f.write(chunk)
            done += len(chunk)
            progress.advance(task, len(chunk))
    # http.client ends a body the server cut short without an error: kept as a .part, it resumes
    if total is not None and done < total:
        raise ConnectionError(f"the connection closed after {done} of {total} bytes")


def _download_error(url: str, archive: Path, e: Exception) -> DownloadError:
    reason = " ".join(str(getattr(e, "reason", e)).split())
    return DownloadError(f"could not download {url} ({reason}); download it by hand to {archive} "
                         "and rerun: it will be checked and extracted")
