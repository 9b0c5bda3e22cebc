"""The other processes of a multi-process run: how long a collective waits for them, and which one was lost.

A process that dies (killed, by the OOM killer or a node failure) or hangs leaves the others in a collective.
gloo notices a closed connection at once and an unanswering peer at the process group's timeout
(`train.collective_timeout_s`, given to torch.distributed through Accelerate); NCCL's watchdog ends the
process at that timeout. To name the lost process, every process that stops on an error says so in the
process group's key-value store (its rank, and why, when it knows), and one whose collective failed waits a
few seconds for the others' word: the ranks never heard from are the lost ones.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from accelerate.utils import InitProcessGroupKwargs

from fastsr.errors import LostProcess

HEARD_PREFIX = "fastsr/stopped/"  # + rank: "" for a process that lost contact, else why it stopped
GRACE_S = 5.0  # how long a process whose collective failed waits for the others' word

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
# Where torch runs collectives: torch.distributed (collectives, barriers, the store) and DDP (its buffer sync)
COLLECTIVE_CODE = (os.path.join(_TORCH_DIR, "distributed") + os.sep,
                   os.path.join(_TORCH_DIR, "nn", "parallel", "distributed.py"))
# Words of the process-group backends' own messages, for an error raised outside those frames (DDP's
# gradient all-reduce runs inside autograd's backward)
BACKEND_WORDS = ("/gloo/", "ProcessGroupGloo", "ProcessGroupNCCL", "NCCL communicator", "NCCL error", "WorkNCCL")


def process_group_kwargs(timeout_s: float) -> InitProcessGroupKwargs:
    """Accelerate's handler that sets the process group's collective timeout (train.collective_timeout_s)."""
    return InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s))


def collective_failed(err: BaseException) -> bool:
    """Whether `err` is a collective's failure, known by what it is rather than by one message's wording:
    torch's distributed errors (NCCL's `DistBackendError`, e.g. "Watchdog caught collective operation timeout:
    WorkNCCL(...) ran for N milliseconds before timing out", "NCCL communicator was aborted on rank N"), or a
    RuntimeError raised where a collective runs (a torch.distributed collective or barrier, DDP's buffer sync
    before a forward) or naming a process-group backend. gloo's are plain RuntimeErrors, mostly naming its
    source file ("[.../gloo/transport/tcp/pair.cc:545] Read error ...", "Timed out waiting 3000ms for recv
    operation"), but not all: once a timeout has closed the connections, the next collective raises
    "Application timeout caused pair closure"."""
    if isinstance(err, dist.DistError):
        return True
    if not isinstance(err, RuntimeError):
        return False
    return _raised_in_collective(err) or any(word in str(err) for word in BACKEND_WORDS)


def _raised_in_collective(err: BaseException) -> bool:
    """Whether the innermost of torch's own frames that `err` passed through is collective code: the error
    came from a collective, not from a model or a loss run under DDP or Accelerate."""
    innermost = None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        if frame.f_code.co_filename.startswith(_TORCH_DIR):
            innermost = frame.f_code.co_filename
    return innermost is not None and innermost.startswith(COLLECTIVE_CODE)


def _store():
    """The process group's store, its waits bounded by GRACE_S (the run is ending), or None."""
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=GRACE_S))
        return store
    except Exception:  # noqa: BLE001 - no process group, or its store is gone with rank 0's machine
        return None


def _tell(store, rank: int, why: str) -> None:
    try:
        store.set(f"{HEARD_PREFIX}{rank}", why)
    except Exception:  # noqa: BLE001 - the store is unreachable: the others will name this rank as lost
        pass


def _hear(store, world: int) -> dict[int, str]:
    """Rank -> word, for the ranks that spoke within GRACE_S. A cluster's stop signals are ignored meanwhile:
    torchrun's agent sends SIGTERM to the processes left when one dies, and this one has its message to give."""
    ignored = [signal.SIGTERM, signal.SIGUSR1]
    before = [signal.signal(sig, signal.SIG_IGN) for sig in ignored]
    try:
        return _listen(store, world)
    finally:
        for sig, handler in zip(ignored, before):
            signal.signal(sig, handler)


def _listen(store, world: int) -> dict[int, str]:
    heard: dict[int, str] = {}
    deadline = time.monotonic() + GRACE_S
    while True:
        for rank in set(range(world)) - set(heard):
            try:
                if store.check([f"{HEARD_PREFIX}{rank}"]):
                    heard[rank] = store.get(f"{HEARD_PREFIX}{rank}").decode()
            except Exception:  # noqa: BLE001
                return heard
        if len(heard) == world or time.monotonic() > deadline:
            return heard
        time.sleep(0.1)


def _cause(err: BaseException) -> str:
    """The backend's own words, short: gloo's "Read error [127.0.0.1]:57767: Connection reset by peer"."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    text = text.split("] ", 1)[1] if text.startswith("[") and "] " in text else text
    return text.split(". ", 1)[0][:160]


def lost_message(err: BaseException, rank: int, world: int, heard: dict[int, str], step: int, timeout_s: float) -> str:
    """The one line this process stops with after collective error `err`: the first other rank that said why
    it stopped (`heard`: rank -> word), else the ranks never heard from, with how to resume."""
    failed = {r: why for r, why in sorted(heard.items()) if why and r != rank}
    lost = [r for r in range(world) if r not in heard and r != rank]
    if failed:
        first, why = next(iter(failed.items()))
        what = f"process rank {first} of {world} stopped at step {step}: {why}"
    elif lost:
        names = ", ".join(map(str, lost))
        what = (f"lost process rank {names} of {world} at step {step}: no word from it (killed, out of host memory, "
                f"hung or its machine failed; a collective waits train.collective_timeout_s={timeout_s:g} s)")
    else:
        what = f"a collective between the {world} processes failed at step {step}"
    return (f"{what} ({_cause(err)}); this process (rank {rank}) stops too: once every process can run, resume with "
            "train.resume=auto (from the newest complete checkpoint)")


def tell_the_others(accelerator, why: str) -> None:
    """Say in the process group's store why this process stops (for a process that ends itself outside an
    exception, as a stalled one does), so that the others name it and the reason."""
    store = _store() if accelerator.num_processes > 1 else None
    if store is not None:
        _tell(store, accelerator.process_index, why)


@contextmanager
def lost_processes_named(accelerator, position, timeout_s: float) -> Iterator[None]:
    """With several processes: a process that stops on an error tells the others why; one whose collective
    failed raises LostProcess naming the process that was lost, or that stopped and why, and the step the
    run was at (`position.step`, the run's `Position`)."""
    if accelerator.num_processes == 1:
        yield
        return
    try:
        yield
    except Exception as err:
        store, rank = _store(), accelerator.process_index
        if store is None:
            raise
        if not collective_failed(err):
            _tell(store, rank, str(err).splitlines()[0] if str(err) else type(err).__name__)
            raise
        _tell(store, rank, "")
        heard = _hear(store, accelerator.num_processes)
        raise LostProcess(lost_message(err, rank, accelerator.num_processes, heard, position.step, timeout_s)) from None
