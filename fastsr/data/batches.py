"""Batch sources: what a run draws its (HR, LR) training batches from, and the one factory choosing one.

The backends stand side by side, none importing another, and execute the same `CropPlan` (plan.py:
determinism, sharding, exact resume), so they yield the same crops in the same order:
- `TorchLoader` (torch_backend.py), pure torch: the portable fallback and the benchmark baseline;
- `DeviceLoader` (device_backend.py): the decoded training set held in device memory, each batch cut
  and downscaled there by batched gathers and a strided convolution; for sets that fit a budget;
- `DaliLoader` (dali_backend.py), NVIDIA DALI: cropping and downscaling on the GPU; imported only when
  asked for, as DALI is optional.
All read their pixels through an `ImageStore` (store.py). Training LR crops are always synthesised
from HR; paired LR files serve evaluation only (validation.py). With `data.degradation=realesrgan` the
backend's HR batches pass through `DegradedBatches` (realworld.py), which makes their LR on the device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch

from fastsr.data.cache import Cache
from fastsr.data.device_backend import DeviceLoader, device_budget_gb, padded_bytes
from fastsr.data.plan import CropPlan
from fastsr.data.realworld import DegradedBatches, RealESRGANDegradation
from fastsr.data.sources import Sample
from fastsr.data.store import ImageStore
from fastsr.data.torch_backend import TorchLoader
from fastsr.errors import RecipeError


@runtime_checkable
class BatchSource(Protocol):
    """This process's share of the training batches, epoch by epoch."""

    name: str  # the backend, for logs
    plan: CropPlan  # the crops it cuts (which files a batch comes from: `plan.files`)

    def __len__(self) -> int:
        """Batches per epoch for this process."""

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's (hr, lr) float32 NCHW batches of `epoch`, in [0, 1] on the device, from batch
        `start` (the batches before it are never read)."""


def make_batch_source(data, samples: Sequence[Sample], scale: int, batch_size: int, *, cache: Cache | None = None,
                      seed: int = 0, rank: int = 0, world_size: int = 1,
                      device: str | torch.device = "cpu") -> tuple[BatchSource, str | None]:
    """(source, note) for a recipe's `data` section (a `DataConfig`): the backend it names, or for
    `auto` the device backend when the run reads a cache whose images fit in device memory under
    data.device_budget_gb, else DALI where it is installed and can run here, else the torch source;
    `note` says which `auto` chose and why where a cache made the device backend a candidate, and why
    it fell back to torch (None otherwise: no cache, DALI ran).

    `samples` are the run's screened training images (data.screen: `screen_train`, then `without`), so
    the crop plan takes their sizes as fitting the crop. `cache` is data.cache as the screen opened it
    (`open_cache`), so a run reads the manifest once; opened here when not given.
    """
    store = ImageStore.from_samples(samples, data.cache if cache is None else cache, data.source)
    plan = CropPlan(store.sizes, [str(f) for f in store.files], scale, data.hr_crop, batch_size,
                    repeat=data.repeat, crops_per_image=data.crops_per_image, augment=data.augment,
                    channel_shuffle=data.channel_shuffle, seed=seed, rank=rank, world_size=world_size,
                    screened=True)
    source, note = _backend(data, store, plan, scale, rank, device)
    if data.degradation == "realesrgan":
        source = DegradedBatches(source, RealESRGANDegradation(data.realesrgan, scale), seed, rank)
    return source, note


def _backend(data, store: ImageStore, plan: CropPlan, scale: int, rank: int,
             device: str | torch.device) -> tuple[BatchSource, str | None]:
    """The backend `data.backend` names (or `auto` picks) for `plan`, and a note why (make_batch_source). A
    real-world degradation is made after the backend, from its HR: the backend then makes MATLAB's LR, unused."""
    method = "matlab" if data.degradation == "realesrgan" else data.degradation
    why_not_device = None  # why `auto` passed over the device backend
    if data.backend == "device" or (data.backend == "auto" and store.cached is not None and method == "matlab"):
        if method != "matlab":
            raise RecipeError(f"data.backend=device makes the MATLAB bicubic LR only; "
                              f"data.degradation={data.degradation} needs data.backend=torch")
        fits, why = _fits_device(store, scale, data.device_budget_gb, device)
        if fits:
            note = None if data.backend == "device" else f"data.backend=auto uses the device backend: {why}"
            return DeviceLoader(store, plan, device=device, progress=None if rank == 0 else False), note
        if data.backend == "device":
            raise RecipeError(f"data.backend=device: {why}; raise data.device_budget_gb, or use data.backend=auto "
                              "(DALI or torch read crops from the files or the cache)")
        why_not_device = why
    note = None
    if data.backend in ("auto", "dali"):
        from fastsr.data.dali_backend import make_dali_loader
        from fastsr.errors import DaliUnavailable

        try:
            dali = make_dali_loader(store, plan, method=method, threads=data.workers, device=device)
            return dali, why_not_device and f"data.backend=auto uses DALI, not the device backend: {why_not_device}"
        except DaliUnavailable as err:
            if data.backend == "dali":
                raise
            note = f"data.backend=auto uses the torch loader: {err}" + (
                f"; and not the device backend: {why_not_device}" if why_not_device else "")
    source = TorchLoader(store, plan, method=method, workers=data.workers, device=device,
                         cache_images=data.cache_images)
    return source, note


def _fits_device(store: ImageStore, scale: int, budget_gb: float | None, device: str | torch.device) -> tuple[bool, str]:
    """Whether the images fit in device memory under data.device_budget_gb, and a phrase saying so."""
    need = padded_bytes(store.sizes, scale) / 1e9
    budget, source = device_budget_gb(budget_gb, device)
    fits = need <= budget
    return fits, (f"the {len(store.files)} training images take {need:.3g} GB in {torch.device(device).type} memory, "
                  f"{'within' if fits else 'over'} {budget:.3g} GB ({source})")
