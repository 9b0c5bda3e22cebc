"""One run per directory: a live run holds `OUT_DIR/NAME.lock`, beside its run directory (so the lock stays
put while an earlier run in that directory is moved aside).

The lock is the kernel's `flock` on that file, so it is taken atomically and dies with its holder; the file
says who holds it (host, pid, the process's start time, the command), for the message a second run gets and
for the one case the kernel cannot settle: a lock file written on another host, whose holder this host cannot
see (a shared filesystem may not carry `flock` between machines), is never taken over. A lock file left by a
dead process of this host (killed, or its machine rebooted) is taken over, with a note.

With several processes only rank 0 takes the lock; the others learn the outcome from it before they start.

Before the lock file is made, the run directory and the folders above it (out_dir first) are checked to be
folders or not there yet, so a path that is a file is refused in one line and left as it was.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from fastsr.errors import RecipeError, RunDirLocked


def lock_path(run_dir: Path) -> Path:
    """The lock file of `run_dir`: NAME.lock beside it, not inside, so it stays when the directory is moved."""
    return run_dir.with_name(f"{run_dir.name}.lock")


def check_folders(run_dir: Path) -> None:
    """Refuse (RecipeError) a run directory (out_dir/name) that is a file, or that has a file for its
    out_dir or a folder above: neither the lock nor the directory could be made there."""
    blocked = next((p for p in (run_dir, *run_dir.parents) if p.exists() and not p.is_dir()), None)
    if blocked is None:
        return
    if blocked == run_dir:
        raise RecipeError(f"{run_dir}: is a file, but the run directory (out_dir/name) must be a folder; "
                          "choose another out_dir or name")
    if blocked == run_dir.parent:
        raise RecipeError(f"{blocked}: is a file, but out_dir must be a folder; choose another out_dir")
    raise RecipeError(f"{blocked}: is a file, so out_dir {run_dir.parent} cannot be made inside it; "
                      "choose another out_dir")


def _start_time(pid: int) -> str | None:
    """The process's start time since boot in clock ticks (/proc/PID/stat field 22), which tells a live
    holder from a later process given its pid; None when there is no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if Path("/proc").is_dir():
        started, recorded = _start_time(pid), holder.get("started_ticks")
        return started is not None and (recorded is None or started == recorded)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that has not yet written its name"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}: "
            f"{holder.get('command', '?')}")


class RunLock:
    """The lock of one run directory, held from `acquire` to `release`."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.path = run_dir, lock_path(run_dir)
        self.fd: int | None = None
        self.note: str | None = None  # set when a dead process's lock was taken over

    def acquire(self) -> None:
        """Take the lock or raise RunDirLocked naming the directory and its holder (RecipeError when a file
        stands where a folder must be: `check_folders`); nothing is changed then."""
        check_folders(self.run_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                raise RunDirLocked(self._refusal(self._holder())) from None
            try:  # the holder before us may have removed the file between our open and our flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = self._read(fd)
        if previous and previous.get("host") != socket.gethostname():
            os.close(fd)
            raise RunDirLocked(self._refusal(previous, elsewhere=True))
        if previous and _alive(previous):  # locking that does not reach this process (a filesystem without flock)
            os.close(fd)
            raise RunDirLocked(self._refusal(previous))
        if previous:
            self.note = (f"{self.path}: took over the lock of pid {previous.get('pid')} (since {previous.get('since')}), "
                         "which is gone: that run stopped without releasing it")
        self.fd = fd
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started_ticks": _start_time(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        """Remove the lock file and let go (the file goes first, so that nobody takes a lock on a file
        about to disappear; `acquire` checks it locked the file that is there)."""
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None

    def _holder(self) -> dict:
        try:
            with open(self.path, "rb") as f:
                return self._parse(f.read())
        except OSError:
            return {}

    @staticmethod
    def _read(fd: int) -> dict:
        return RunLock._parse(os.pread(fd, 1 << 16, 0))

    @staticmethod
    def _parse(data: bytes) -> dict:
        try:
            found = json.loads(data) if data else {}
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}

    def _refusal(self, holder: dict, elsewhere: bool = False) -> str:
        if elsewhere:
            return (f"{self.run_dir} is locked by a run on another machine ({_describe(holder)}); if that run is over, "
                    f"delete {self.path} and retry, else wait for it or give this run another name= or out_dir=")
        return (f"{self.run_dir} is in use by another run ({_describe(holder)}); wait for it to end or stop it "
                "(Ctrl-C saves a checkpoint), or give this run another name= or out_dir=")


@contextmanager
def run_dir_lock(run_dir: Path, accelerator):
    """Hold the run directory's lock for the block: taken by rank 0, whose outcome (the lock, or the refusal
    every process then raises) the other processes learn before they go on."""
    from accelerate.utils import broadcast_object_list

    lock = RunLock(run_dir) if accelerator.is_main_process else None
    refusal = None
    if lock is not None:
        try:
            lock.acquire()
        except (RunDirLocked, RecipeError) as err:
            refusal = err
    if accelerator.num_processes > 1:
        refusal = broadcast_object_list([refusal])[0]
    if refusal is not None:
        raise refusal
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
