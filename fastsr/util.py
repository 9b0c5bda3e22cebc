"""Foundations used across fastsr: atomic file writes, file hashing, the progress bar, the stop signals and
the out-of-memory error.

Imports nothing from fastsr, so every layer (data, parts, engine, entry points) can use it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


# The signals that stop a run after its step in flight and a checkpoint: a cluster's notices (SIGTERM, SIGUSR1)
# and the terminal's Ctrl-C (SIGINT). The training process answers them (engine/loop.py); a loader's worker
# processes ignore them, so that they serve the batches up to the stop, and end with the training process.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the one-line message says which knob lowers the need. Here, below every
    layer, because the parts (tiled inference, evaluation) raise it as well as the training loop."""


def write_atomic(path: str | os.PathLike, data_or_writer: bytes | memoryview | Callable[[BinaryIO], object]) -> None:
    """Write `path` so that a reader sees the old file or the complete new one, never a part.

    `data_or_writer` is the bytes to write, or a function that writes into the binary file it is given.
    The content goes to a temporary name in the same folder (`.NAME.RANDOM.tmp`, created exclusively and
    with the usual umask permissions, unlike mkstemp's 0600), is fsynced, then renamed over `path`. On
    any failure the temporary file is removed and the error raised as it came: a full disk stays an
    OSError with its errno.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    f = open(tmp, "xb")
    try:
        with f:
            if callable(data_or_writer):
                data_or_writer(f)
            else:
                f.write(data_or_writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it, say) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex SHA-256 (or another hashlib `algorithm`: data sets publish MD5s) of a file, read in 1 MiB chunks
    (cached images are megabytes, VGG19 half a gigabyte, DIV2K's zips gigabytes)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def progress_bar(enabled: bool) -> Progress:
    """The rich progress bar of every long task; tasks carry the fields `rate` (img/s) and `info`."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.1f} img/s"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
