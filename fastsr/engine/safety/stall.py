"""A stalled data source stops the run: when no batch comes for `data.stall_timeout_s`, the run ends with
one line naming the backend and the files of the batch it waited for, rather than hanging until a
cluster's wall-clock limit (a hung DataLoader worker, a stuck network filesystem, a DALI pipeline that
never returns).

Only the wait for a batch counts, never a step, a validation or a checkpoint: the loop's iterator is
wrapped (`StallWatch.batches`), which notes the time before each `next()` and clears it after. A
daemon thread looks a few times per timeout. Wherever the main thread is stuck (in C++ inside DALI, a
CUDA call, a worker's queue, a read), it cannot be interrupted there, so the watch thread itself ends
the process (`stop_stalled`): the message, the log record, then SIGKILL to the worker processes (a
hung one never exits by itself) and `os._exit`. No checkpoint: the last one written stays the one to
resume from.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NoReturn, Self, TypeVar

from fastsr.engine.runlog import RunLog

EXIT_STALLED = 2  # a failed run, as every other fastsr error ends
CHECKS_PER_TIMEOUT = 4  # how often the watch looks: a stall is seen within 1.25 timeouts
SHOWN_FILES = 8  # files named in the message (all of them are in the log record)
STEP_WAIT_S = 10.0  # how long the stop waits for each of its steps (a log write on a stuck filesystem hangs)

T = TypeVar("T")


class StallWatch:
    """Calls `on_stall(epoch, batch)` once, from its own thread, when the loop has waited longer than
    `timeout_s` for batch `batch` of `epoch` (as `batches` numbered them); `timeout_s` 0 watches nothing.
    A context manager: the thread runs inside the `with` block."""

    def __init__(self, timeout_s: float, on_stall: Callable[[int, int], object]):
        self.timeout_s, self.on_stall = timeout_s, on_stall
        # (since, epoch, batch) while the loop waits for a batch, else None; one object, so that the
        # watch thread never reads the time of one wait with the position of another
        self._waiting: tuple[float, int, int] | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="fastsr-stall-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def batches(self, source: Iterable[T], epoch: int, start: int = 0) -> Iterator[T]:
        """`source`'s items, each wait for one timed as the wait for batch `start`, `start` + 1, ... of `epoch`."""
        if not self.timeout_s:
            yield from source
            return
        items, batch = iter(source), start
        while True:
            self._waiting = (time.monotonic(), epoch, batch)
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                self._waiting = None
            yield item
            batch += 1

    def _watch(self) -> None:
        period = min(self.timeout_s / CHECKS_PER_TIMEOUT, threading.TIMEOUT_MAX)
        while not self._done.wait(period):
            waiting = self._waiting
            if waiting is not None and time.monotonic() - waiting[0] > self.timeout_s:
                self.on_stall(waiting[1], waiting[2])
                return


def stall_message(backend: str, timeout_s: float, epoch: int, batch: int, step: int, files: Sequence[str]) -> str:
    """The one line a stalled run ends with: what did not come, from which files, and what to do."""
    shown = ", ".join(files[:SHOWN_FILES]) + (", ..." if len(files) > SHOWN_FILES else "")
    return (f"no batch from the {backend} loader in {timeout_s:g} s (data.stall_timeout_s): batch {batch} of epoch "
            f"{epoch} (step {step}), cut from {shown}; check those files and the disk or network filesystem they "
            "are on (or raise data.stall_timeout_s), then resume with train.resume=auto")


def stop_stalled(log: RunLog, message: str, record: dict, *, display=None,
                 before_exit: Iterable[Callable[[], object]] = ()) -> NoReturn:
    """End the process from the watch thread: `display` (a progress bar) stopped so that the message stands
    on its own line, the message on stderr, `record` logged as kind `stalled` with the message, the
    `before_exit` callbacks, SIGKILL to this process's multiprocessing children (DataLoader workers), exit
    status EXIT_STALLED. Whatever fails or hangs on the way (the log may be on the stuck filesystem) is said
    and passed over after STEP_WAIT_S: a run left hanging is the worse outcome."""
    steps = [*([display.stop] if display is not None else []),
             lambda: print(f"fastsr: error: {message}", file=sys.stderr, flush=True),
             lambda: log.write(kind="stalled", **record, message=message),
             *before_exit]
    for step in steps:
        done = threading.Thread(target=_said(step), daemon=True)
        done.start()
        done.join(STEP_WAIT_S)
    children = multiprocessing.active_children()  # reaps the finished ones first: may release the GIL
    for child in children:  # then the kills and the exit back to back, before a SIGCHLD handler can run
        child.kill()
    os._exit(EXIT_STALLED)


def _said(step: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            step()
        except Exception as err:  # noqa: BLE001 - see stop_stalled
            print(f"fastsr: note: while stopping the stalled run: {type(err).__name__}: {err}", file=sys.stderr,
                  flush=True)
    return run
