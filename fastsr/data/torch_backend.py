"""The pure-torch batch source: the portable fallback and the benchmark baseline.

It executes a `CropPlan` (plan.py: determinism, sharding, exact resume) in `DataLoader` worker
processes, each crop pair cut with `crop_pair` (the LR synthesised from HR by the same MATLAB bicubic
that made DIV2K's official LR files, which keeps HR and LR aligned for free).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastsr.data.degradation import METHODS, crop_pair
from fastsr.data.plan import CropPlan, Visit
from fastsr.data.store import ImageStore
from fastsr.errors import ImageError
from fastsr.util import STOP_SIGNALS


class _VisitDataset(Dataset):
    """Map-style dataset keyed by visits (the crops cut from one image at once); decoded images are
    kept per process if asked."""

    def __init__(self, images: ImageStore, plan: CropPlan, method: str, cache_images: bool):
        self.images, self.plan, self.method = images, plan, method
        self.memory: dict[int, np.ndarray] | None = {} if cache_images and images.cached is None else None

    def __len__(self) -> int:
        return len(self.images.files)

    def _image(self, index: int) -> np.ndarray:
        if self.memory is None:
            return self.images.read(index)
        if index not in self.memory:
            self.memory[index] = self.images.read(index)
        return self.memory[index]

    def __getitem__(self, visit: Visit) -> tuple[torch.Tensor, torch.Tensor] | ImageError:
        """The visit's crop pairs stacked, or the ImageError that stopped it, returned as data so that
        its one-line message reaches the training process intact (torch rewraps exceptions raised in workers)."""
        try:
            img = self._image(visit[0].index)
        except ImageError as e:  # already names the file
            return e
        pairs = [crop_pair(img, crop, self.plan.scale, self.plan.hr_crop, self.method) for crop in visit]
        return torch.stack([hr for hr, _ in pairs]), torch.stack([lr for _, lr in pairs])


def _ignore_stop_signals(worker_id: int) -> None:
    """A worker serves batches until the training process, which answers the stop signals (a terminal's
    Ctrl-C reaches the whole process group; accelerate's launcher sends SIGTERM to the whole process tree),
    has written its checkpoint; it ends with that process. Born with the signals blocked (`_workers_starting`),
    it ignores them before it unblocks them, which drops one that arrived as it started."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextmanager
def _workers_starting() -> Iterator[None]:
    """The stop signals held back while the workers fork, so each is born with them blocked: one that reaches
    a worker before it ignores them waits, instead of killing it (the training process would then fail with
    "DataLoader worker ... is killed by signal" rather than save). The mask is this thread's: the training
    process still gets a signal that arrives meanwhile, through another of its threads or as it unblocks."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor] | ImageError:
    for item in items:
        if isinstance(item, ImageError):
            return item
    hr, lr = zip(*items)
    return torch.cat(hr), torch.cat(lr)


class TorchLoader:
    """The pure-torch batch source: `workers` processes cut the planned crops with `crop_pair`.

    `cache_images` keeps decoded images in memory, per worker process (workers are not persistent):
    right for small sets such as `samples`. For DIV2K (6.6 GB decoded, tens of ms of one core per PNG) use the
    decode-once cache (`fastsr prepare`, `data.cache`) instead, from which only crops are read.
    """

    name = "torch"

    def __init__(self, images: ImageStore, plan: CropPlan, *, method: str = "matlab", workers: int = 0,
                 device: str | torch.device = "cpu", cache_images: bool = True):
        if method not in METHODS:
            raise ValueError(f"unknown degradation method {method!r}; use one of {', '.join(METHODS)}")
        self.plan = plan
        self.dataset = _VisitDataset(images, plan, method, cache_images)
        self.workers, self.device = workers, torch.device(device)

    def __len__(self) -> int:
        return len(self.plan)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this process's (hr, lr) float32 NCHW batches of `epoch` on the device, from batch `start`."""
        pin = self.device.type == "cuda"
        visits = [visit for batch in self.plan.epoch(epoch)[start:] for visit in batch]
        per_batch = self.plan.batch_size // self.plan.crops_per_image
        loader = DataLoader(self.dataset, batch_size=per_batch, sampler=visits, num_workers=self.workers,
                            collate_fn=_collate, pin_memory=pin, persistent_workers=False,
                            worker_init_fn=_ignore_stop_signals if self.workers else None)
        with _workers_starting():  # a new epoch's workers fork here
            batches = iter(loader)
        try:
            for batch in batches:
                if isinstance(batch, ImageError):
                    raise batch
                hr, lr = batch
                yield hr.to(self.device, non_blocking=pin), lr.to(self.device, non_blocking=pin)
        finally:
            # The workers end here, also when a batch raised: a traceback keeps this frame, and with it the
            # iterator, alive, and workers that ignore SIGTERM would then hang the interpreter's exit.
            del batches
