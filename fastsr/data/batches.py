"""Batch sources: what a run draws its (HR, LR) training batches from, and the one factory choosing one.

The backends stand side by side, neither importing the other, and execute the same `CropPlan`
(plan.py: determinism, sharding, exact resume), so they yield the same crops in the same order:
- `TorchLoader` (torch_backend.py), pure torch: the portable fallback and the benchmark baseline;
- `DaliLoader` (dali_backend.py), NVIDIA DALI: cropping and downscaling on the GPU; imported only when
  asked for, as DALI is optional.
Both read their pixels through an `ImageStore` (store.py). Training LR crops are always synthesised
from HR; paired LR files serve evaluation only (validation.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch

from fastsr.data.cache import Cache
from fastsr.data.plan import CropPlan
from fastsr.data.sources import Sample
from fastsr.data.store import ImageStore
from fastsr.data.torch_backend import TorchLoader

BACKENDS = ("auto", "dali", "torch")


@runtime_checkable
class BatchSource(Protocol):
    """This process's share of the training batches, epoch by epoch."""

    name: str  # the backend, for logs

    def __len__(self) -> int:
        """Batches per epoch for this process."""

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's (hr, lr) float32 NCHW batches of `epoch`, in [0, 1] on the device, from batch
        `start` (the batches before it are never read)."""


def make_batch_source(data, samples: Sequence[Sample], scale: int, batch_size: int, *, cache: Cache | None = None,
                      seed: int = 0, rank: int = 0, world_size: int = 1,
                      device: str | torch.device = "cpu") -> tuple[BatchSource, str | None]:
    """(source, note) for a recipe's `data` section (a `DataConfig`): the backend it names, or for
    `auto` DALI where it is installed and can run here, else the torch source; `note` says why
    `auto` fell back (None otherwise).

    `samples` are the run's screened training images (data.screen: `screen_train`, then `without`), so
    the crop plan takes their sizes as fitting the crop. `cache` is data.cache as the screen opened it
    (`open_cache`), so a run reads the manifest once; opened here when not given.
    """
    store = ImageStore.from_samples(samples, data.cache if cache is None else cache, data.source)
    plan = CropPlan(store.sizes, [str(f) for f in store.files], scale, data.hr_crop, batch_size,
                    repeat=data.repeat, crops_per_image=data.crops_per_image, augment=data.augment,
                    channel_shuffle=data.channel_shuffle, seed=seed, rank=rank, world_size=world_size,
                    screened=True)
    note = None
    if data.backend in ("auto", "dali"):
        from fastsr.data.dali_backend import DaliUnavailable, make_dali_loader

        try:
            return make_dali_loader(store, plan, method=data.degradation, threads=data.workers, device=device), None
        except DaliUnavailable as err:
            if data.backend == "dali":
                raise
            note = f"data.backend=auto uses the torch loader: {err}"
    source = TorchLoader(store, plan, method=data.degradation, workers=data.workers, device=device,
                         cache_images=data.cache_images)
    return source, note
