"""Two gloo processes; rank 1 fails its part of a collective, and rank 0 prints, as one JSON line, the error it
caught and whether fastsr's engine/safety/peers.py calls it a failed collective (tests/test_lost_process.py).

    python collective_failure.py KIND HOW PORT

KIND: `allreduce`, `barrier`, or `ddp_buffers` (DDP's broadcast of rank 0's BatchNorm statistics before each
forward). HOW: `exit` (rank 1 is gone), `hang` (rank 1 stops answering past the timeout), `hang-twice` (rank 0
gets the timeout, then tries once more: the error of a collective after a timeout closed the connections).
"""

import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 3


class Collective:
    def __init__(self, kind: str):
        self.kind = kind
        # DDP's constructor syncs too: both ranks build it before rank 1 fails
        self.ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.BatchNorm2d(3)) if kind == "ddp_buffers" else None

    def run(self) -> None:
        if self.kind == "allreduce":
            dist.all_reduce(torch.ones(4))
        elif self.kind == "barrier":
            dist.barrier()
        else:
            self.ddp(torch.rand(2, 3, 4, 4))


def report(err: Exception | None) -> None:
    from fastsr.engine.safety.peers import collective_failed

    line = {"type": None} if err is None else {
        "type": type(err).__name__, "message": str(err).splitlines()[0] if str(err) else "",
        "collective_failed": collective_failed(err)}
    print(json.dumps(line), flush=True)


def rank_main(rank: int, kind: str, how: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=TIMEOUT_S))
    collective = Collective(kind)
    dist.barrier()
    if rank == 1:
        if how.startswith("hang"):
            time.sleep(TIMEOUT_S * 4)
        os._exit(0)
    if how == "hang-twice":
        try:
            collective.run()
        except RuntimeError:
            pass
    try:
        collective.run()
        collective.run()
    except Exception as err:  # noqa: BLE001 - whatever it is, it is reported
        report(err)
    else:
        report(None)


if __name__ == "__main__":
    kind, how, port = sys.argv[1:4]
    peer = mp.get_context("spawn").Process(target=rank_main, args=(1, kind, how, port))
    peer.start()
    rank_main(0, kind, how, port)
    peer.kill()  # a hung rank 1 would sleep on
    os._exit(0)  # not through the process group's teardown, which would wait for rank 1
