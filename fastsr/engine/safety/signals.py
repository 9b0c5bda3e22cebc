"""Stop signals: a cluster's preemption notice (SIGTERM, SIGUSR1) or Ctrl-C lets the step in flight
finish, then the loop writes a checkpoint and stops with an exit code a job script can act on."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from fastsr.util import STOP_SIGNALS

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; a job script requeues on it and resumes
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a program ended by Ctrl-C


class Preempted(Exception):
    """The run stopped on a stop signal (util.STOP_SIGNALS) after finishing its step and writing a checkpoint."""

    def __init__(self, step: int, checkpoint: Path, signum: int | None):
        by = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name if signum else "a signal"
        super().__init__(f"stopped by {by} at step {step}; checkpoint {checkpoint}; rerun the same command with "
                         "train.resume=auto to continue exactly where it stopped")
        self.step, self.checkpoint = step, checkpoint
        self.exit_code = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED


@contextmanager
def stop_requests(announce: bool = True):
    """A list that gets the signal number when a stop signal arrives (the step in flight finishes; the
    loop then checkpoints and stops). The first Ctrl-C says so (when `announce`) and gives SIGINT back to
    the system, so that a second one ends the process at once, wherever it is. Handlers are installed only
    in the main thread and restored afterwards."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if announce:  # a plain write: safe wherever the handler interrupts the main thread
                os.write(2, b"\nfastsr: Ctrl-C: finishing the step, then a checkpoint (Ctrl-C again stops at once, "
                            b"without one)\n")

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
