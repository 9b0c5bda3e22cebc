"""The portable (pure torch) training loader and the validation-set loader.

`TrainLoader` is deterministic, sharded and resumable by construction rather than by saved state:
- the order of an epoch is a permutation drawn from ``default_rng([seed, epoch])``, the same on every
  rank, and each item's crop and augmentation come from ``default_rng([seed, epoch, position])``
  (position = its index in that global order), so a batch depends only on (seed, epoch, batch index):
  not on the worker count, the order workers finish in, or what ran before;
- ranks take interleaved batches of the global order (rank r gets global batches r, r + world, ...),
  every rank the same number of full batches (the remainder is dropped), disjoint across ranks;
- resuming mid-epoch is ``batches(epoch, start=k)``, which never decodes the k skipped batches.
A DALI loader with the same interface comes later; this one is the reference and the CPU fallback.

Training LR crops are always synthesised from HR with `random_crop_pair` (the same MATLAB bicubic that
made DIV2K's official LR files), which keeps HR and LR crops aligned for free; paired LR files are
used for evaluation (`load_val_set`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastsr.data.degradation import METHODS, lr_for_eval, random_crop_pair
from fastsr.data.images import ImageError, image_to_tensor, load_image
from fastsr.data.sources import Sample

# A planned item: (epoch, global position in the epoch's order, sample index).
_Key = tuple[int, int, int]


class _CropDataset(Dataset):
    """Map-style dataset keyed by planned items; decoded images are cached per process if asked."""

    def __init__(self, samples: Sequence[Sample], scale: int, hr_crop: int, seed: int, method: str,
                 augment: bool, channel_shuffle: bool, cache_images: bool):
        self.samples = list(samples)
        self.scale, self.hr_crop, self.seed = scale, hr_crop, seed
        self.method, self.augment, self.channel_shuffle = method, augment, channel_shuffle
        self.cache: dict[int, np.ndarray] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.samples)

    def _image(self, index: int) -> np.ndarray:
        if self.cache is None:
            return load_image(self.samples[index].hr)
        if index not in self.cache:
            self.cache[index] = load_image(self.samples[index].hr)
        return self.cache[index]

    def __getitem__(self, key: _Key) -> tuple[torch.Tensor, torch.Tensor] | ImageError:
        """One crop pair, or the ImageError that stopped it, returned as data so that its one-line
        message reaches the training process intact (torch rewraps exceptions raised in workers)."""
        epoch, position, index = key
        rng = np.random.default_rng([self.seed, epoch, position])
        try:
            img = self._image(index)
        except ImageError as e:  # already names the file
            return e
        try:
            return random_crop_pair(img, self.scale, self.hr_crop, rng, self.method, self.augment,
                                    self.channel_shuffle)
        except ImageError as e:  # about the image's size: say which file
            return ImageError(f"{self.samples[index].hr}: {e}")


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor] | ImageError:
    for item in items:
        if isinstance(item, ImageError):
            return item
    hr, lr = zip(*items)
    return torch.stack(hr), torch.stack(lr)


class TrainLoader:
    """Random aligned (HR, LR) crop batches; see the module docstring for the determinism contract.

    An epoch visits every sample `repeat` times (several crops per image per epoch pays off on small
    sets). `len(loader)` is the number of batches each rank gets per epoch; it is 0 when the samples
    make no full batch per rank, which the caller reports in its own terms (say, the recipe keys).

    `cache_images` keeps decoded uint8 images in memory, per process (each worker fills its own, and
    workers are not persistent): right for small sets such as `samples`. DIV2K (6.6 GB decoded, 40-55
    ms per PNG) should instead use a decode-once cache on disk (a later issue), not this.
    """

    def __init__(self, samples: Sequence[Sample], scale: int, hr_crop: int, batch_size: int, *,
                 repeat: int = 1, augment: bool = True, channel_shuffle: bool = False,
                 method: str = "matlab", seed: int = 0, workers: int = 0, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                 cache_images: bool = True):
        if not samples:
            raise ValueError("TrainLoader needs at least one sample")
        if method not in METHODS:
            raise ValueError(f"unknown degradation method {method!r}; use one of {', '.join(METHODS)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.dataset = _CropDataset(samples, scale, hr_crop, seed, method, augment, channel_shuffle, cache_images)
        self.batch_size, self.repeat, self.seed = batch_size, repeat, seed
        self.workers, self.rank, self.world_size = workers, rank, world_size
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.dataset) * self.repeat // (self.batch_size * self.world_size)

    def plan(self, epoch: int) -> list[list[_Key]]:
        """This rank's batches of `epoch`, as the items they will hold (cheap: nothing is decoded)."""
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, epoch]).permutation(n * self.repeat) % n
        bs, world = self.batch_size, self.world_size
        batches = []
        for k in range(len(self)):
            first = (k * world + self.rank) * bs  # global batch k * world + rank
            batches.append([(epoch, p, int(order[p])) for p in range(first, first + bs)])
        return batches

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's (hr, lr) float32 NCHW batches of `epoch` on the device, from batch `start`."""
        pin = self.device.type == "cuda"
        loader = DataLoader(self.dataset, batch_sampler=self.plan(epoch)[start:], num_workers=self.workers,
                            collate_fn=_collate, pin_memory=pin, persistent_workers=False)
        for batch in loader:
            if isinstance(batch, ImageError):
                raise batch
            hr, lr = batch
            yield hr.to(self.device, non_blocking=pin), lr.to(self.device, non_blocking=pin)


def load_val_set(samples: Sequence[Sample], scale: int, method: str = "matlab",
                 max_images: int | None = None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, HR 1x3xHxW, LR 1x3xhxw) on the CPU for each of the first `max_images` samples; the LR is
    the paired file when the source has one, else the degradation of the HR (see `lr_for_eval`)."""
    out = []
    for s in list(samples)[:max_images]:
        hr, lr = lr_for_eval(image_to_tensor(load_image(s.hr)), scale, s.lr, method)
        out.append((s.name, hr, lr))
    return out
