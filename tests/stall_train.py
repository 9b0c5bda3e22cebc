"""Run by tests/test_stall.py: `fastsr train RECIPE [overrides]` after injecting a stall into one batch source,
as `STALL=WHERE:CALL`: the CALL-th call (1-based, counted per process from the start of the training loop,
so a loader's set-up is not counted) of
- `read`: `ImageStore.read` (the torch loader with data.cache_images=false reads once per visit), in the
  main process with data.workers=0, else in DataLoader worker 0 only (the other keeps working);
- `cut`: `DeviceLoader._cut` (the device backend cuts a chunk of batches per call);
- `feed`: DALI's external-source callback, `_Feeder.__call__` (after it has made its batch)
sleeps far longer than any test waits. Before sleeping, it appends the files it is stuck on to
RECORD/stuck.json; every DataLoader worker appends its pid to RECORD/workers (to check they are ended).
Under `accelerate launch`, STALL_RANK=R stalls that process only."""

import json
import os
import sys
import time
from pathlib import Path

from torch.utils.data import get_worker_info

from fastsr.cli import main
from fastsr.data.device_backend import DeviceLoader
from fastsr.data.store import ImageStore
from fastsr.engine.loop import Loop

STUCK_S = 600  # "never", for a test; ended by the stall action (SIGKILL for a worker, os._exit otherwise)

armed = []  # set when the loop starts; forked DataLoader workers inherit it
calls = []  # per process: workers are forked with the parent's (empty) count
pid_written = []  # per process


def _stall_here(record: Path, files: list[str], call: int) -> None:
    if not armed:
        return
    calls.append(1)
    if len(calls) == call:
        with (record / "stuck.json").open("a") as f:
            f.write(json.dumps(files) + "\n")
        time.sleep(STUCK_S)


def inject(where: str, call: int, record: Path) -> None:
    if where == "read":
        real_read = ImageStore.read

        def read(self, index):
            worker = get_worker_info()
            if worker is not None and not pid_written:
                pid_written.append(True)
                with (record / "workers").open("a") as f:
                    f.write(f"{os.getpid()}\n")
            if worker is None or worker.id == 0:
                _stall_here(record, [str(self.files[index])], call)
            return real_read(self, index)

        ImageStore.read = read
    elif where == "cut":
        real_cut = DeviceLoader._cut

        def cut(self, crops):
            _stall_here(record, [self.plan.names[i] for i in crops[: self.plan.batch_size, 0].tolist()], call)
            return real_cut(self, crops)

        DeviceLoader._cut = cut
    elif where == "feed":
        from fastsr.data.dali_backend import _Feeder

        real_call = _Feeder.__call__

        def feed(self):
            outputs = real_call(self)
            _stall_here(record, [str(f) for f in self.recent[-1]], call)
            return outputs

        _Feeder.__call__ = feed
    else:
        raise SystemExit(f"STALL={where}:{call}: unknown place {where!r}")


if __name__ == "__main__":
    recipe_path, record, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    rank = os.environ.get("RANK", "0")
    if "STALL" in os.environ and os.environ.get("STALL_RANK", rank) == rank:
        where, call = os.environ["STALL"].split(":")
        inject(where, int(call), record)
    real_run_phases = Loop.run_phases

    def run_phases(self):
        armed.append(True)
        return real_run_phases(self)

    Loop.run_phases = run_phases
    sys.exit(main(["train", recipe_path, *overrides]))
