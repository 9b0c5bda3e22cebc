"""Foundations used across fastsr: atomic file writes, file hashing, the console and progress (a terminal's or a
file's), the stop signals and the out-of-memory error.

Imports nothing from fastsr, so every layer (data, parts, engine, entry points) can use it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from rich.console import Console
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


def write_atomic(path: str | os.PathLike, data_or_writer: bytes | memoryview | Callable[[BinaryIO], object]) -> None:
    """Write `path` so that a reader sees the old file or the complete new one, never a partial one.

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


# Columns wide enough for any line fastsr prints: in a file, a line is as wide as its content.
FILE_WIDTH = 10_000


def make_console() -> Console:
    """The console of every command. In a terminal, rich's own (its width, colour, redrawn progress bars). In a
    file (a cluster job's log, a pipe), plain text: no colour codes, and no wrapping or cutting of lines (rich
    would wrap at 80 columns there, breaking paths mid-name)."""
    console = Console()
    return console if console.is_terminal else Console(soft_wrap=True, width=FILE_WIDTH)


def progress_bar(enabled: bool, interval_s: float = 30.0, console: Console | None = None) -> Progress | LineProgress:
    """The progress of every long task; tasks carry the fields `rate` (img/s) and `info`. In a terminal a rich
    bar, redrawn in place; in a file, `LineProgress`'s plain lines at most every `interval_s` seconds."""
    console = console or make_console()
    if not console.is_terminal:
        return LineProgress(enabled, interval_s)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7.1f} img/s"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


@dataclass
class _LineTask:
    description: str
    total: int
    completed: int
    fields: dict
    line_at: float = 0.0  # perf_counter time of the task's last line (0: none yet)
    line_completed: int = 0  # its count then


class LineProgress:
    """Progress as plain lines, for output that goes to a file rather than a terminal: the same `add_task` /
    `update` calls as rich's bar. A task's line is written when an update brings news (an `info`: for training,
    the losses of a log window) at least `interval_s` seconds after the task's last line, and when the task
    completes. A count alone is not news: the training loop counts steps ten times a second, and its losses
    come every `train.log_every` steps. A line holds the
    description, the count, the task's other fields as `name value`, the rate, the info and an estimate of the
    time left (from the count's progress since the last line)."""

    def __init__(self, enabled: bool = True, interval_s: float = 30.0, stream: TextIO | None = None):
        self.enabled, self.interval_s = enabled, interval_s
        self.stream = stream
        self.tasks: list[_LineTask] = []

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def stop(self) -> None:
        """As rich's bar's `stop` (a stalled run stops its display before its last words): nothing is drawn in
        place here, so there is nothing to take down."""

    def add_task(self, description: str, total: int, completed: int = 0, **fields) -> int:
        """Start a task of `total` counts, with rich's signature; returns its id for `update`. Writes nothing."""
        now = time.perf_counter()
        self.tasks.append(_LineTask(description, total, completed, fields, line_at=now, line_completed=completed))
        return len(self.tasks) - 1

    def update(self, task_id: int, *, completed: int | None = None, description: str | None = None, **fields) -> None:
        """Record the task's new count and fields; write its line when they bring news or complete the task
        (see the class)."""
        task = self.tasks[task_id]
        task.completed = task.completed if completed is None else completed
        task.description = task.description if description is None else description
        task.fields.update(fields)
        now = time.perf_counter()
        news = "info" in fields and now - task.line_at >= self.interval_s
        if (news or task.completed >= task.total) and task.completed != task.line_completed:
            self._write(task, now)

    def _write(self, task: _LineTask, now: float) -> None:
        done = task.completed - task.line_completed
        left = task.total - task.completed
        eta = f" ETA {_duration(left * (now - task.line_at) / done)}" if done > 0 and left > 0 else ""
        fields = dict(task.fields)
        rate, info = fields.pop("rate", None), fields.pop("info", "")
        words = [task.description, f"{task.completed}/{task.total} ({100 * task.completed / max(task.total, 1):.0f}%)",
                 *(f"{k} {v}" for k, v in fields.items()), *([f"{rate:.1f} img/s"] if rate else []), info]
        task.line_at, task.line_completed = now, task.completed
        if self.enabled:
            stream = self.stream or sys.stdout
            stream.write(" ".join(filter(None, (p.strip() for p in words))) + eta + "\n")
            stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
