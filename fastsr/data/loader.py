"""Training loaders of (HR, LR) crop batches, and the validation-set loader.

Two loaders execute the same `CropPlan` (see plan.py for the determinism, sharding and resume
contract) and so yield the same crops in the same order:
- `TrainLoader`, pure torch: the portable fallback and the benchmark baseline;
- `DaliLoader` (dali.py): NVIDIA DALI, cropping and downscaling on the GPU.
`make_train_loader` picks one by `data.backend`. Pixels come from the source files, or from a
decode-once cache made by `fastsr prepare` (`data.cache`), whose memory-mapped files let a loader
read just a crop's region.

Training LR crops are always synthesised from HR (the same MATLAB bicubic that made DIV2K's official
LR files), which keeps HR and LR crops aligned for free; paired LR files are used for evaluation
(`load_val_set`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import resource
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastsr.data.cache import read_cache
from fastsr.data.degradation import METHODS, crop_pair, lr_for_eval
from fastsr.data.images import ImageError, image_to_tensor, load_image, read_header
from fastsr.data.plan import CropPlan, Visit, scaled_size
from fastsr.data.sources import Sample

BACKENDS = ("auto", "dali", "torch")


@dataclass
class TrainImages:
    """The training images: source files, their sizes, and the cache files holding their pixels (if any)."""

    files: list[Path]
    sizes: list[tuple[int, int]]
    modes: list[str]  # Pillow modes of the source files ("cached" when read from a cache)
    cached: list[Path] | None = None
    # Open memory maps of cache files, by index: opening one (np.load parses the header) costs about
    # twice as much as reading a crop from it. Bounded, as each holds a file descriptor.
    maps: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:  # worker processes open their own maps
        return {**self.__dict__, "maps": {}}

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], cache: str | Path | None = None, source: str = "SRC") -> TrainImages:
        """Sizes from the cache's manifest, or else from the files' headers (cheap: nothing is decoded);
        `source` names the data source in the message when the cache is missing."""
        files = [s.hr for s in samples]
        if cache is not None:
            entries = read_cache(cache, list(samples), source)
            return cls(files, [(e.height, e.width) for e in entries], ["cached"] * len(files), [e.path for e in entries])
        headers = [read_header(f) for f in files]
        return cls(files, [(h, w) for h, w, _ in headers], [m for _, _, m in headers])

    def read(self, index: int) -> np.ndarray:
        """Image `index` as uint8 HxWx3: a memory map of its cache file (nothing read until sliced), or decoded."""
        if self.cached is None:
            return load_image(self.files[index])
        if index not in self.maps:
            if len(self.maps) >= _max_open_maps():
                self.maps.pop(next(iter(self.maps)))  # the oldest
            self.maps[index] = np.load(self.cached[index], mmap_mode="r")
        return self.maps[index]


def _max_open_maps() -> int:
    """A quarter of the process's file-descriptor limit, between 16 and 4096."""
    return min(4096, max(16, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4))


class _VisitDataset(Dataset):
    """Map-style dataset keyed by visits (the crops cut from one image at once); decoded images are
    kept per process if asked."""

    def __init__(self, images: TrainImages, plan: CropPlan, method: str, cache_images: bool):
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


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor] | ImageError:
    for item in items:
        if isinstance(item, ImageError):
            return item
    hr, lr = zip(*items)
    return torch.cat(hr), torch.cat(lr)


class TrainLoader:
    """The pure-torch loader: `workers` processes cut the planned crops with `crop_pair`.

    `cache_images` keeps decoded images in memory, per worker process (workers are not persistent):
    right for small sets such as `samples`. For DIV2K (6.6 GB decoded, 40-55 ms per PNG) use the
    decode-once cache (`fastsr prepare`, `data.cache`) instead, from which only crops are read.
    """

    name = "torch"

    def __init__(self, images: TrainImages, plan: CropPlan, *, method: str = "matlab", workers: int = 0,
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
                            collate_fn=_collate, pin_memory=pin, persistent_workers=False)
        for batch in loader:
            if isinstance(batch, ImageError):
                raise batch
            hr, lr = batch
            yield hr.to(self.device, non_blocking=pin), lr.to(self.device, non_blocking=pin)


def make_train_loader(data, samples: Sequence[Sample], scale: int, batch_size: int, *, seed: int = 0,
                      rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu"):
    """(loader, note) for a recipe's `data` section (a `DataConfig`): the backend it names, or for
    `auto` DALI where it is installed and can run here, else the torch loader; `note` says why
    `auto` fell back (None otherwise)."""
    images = TrainImages.from_samples(samples, data.cache, data.source)
    plan = CropPlan(images.sizes, [str(f) for f in images.files], scale, data.hr_crop, batch_size,
                    repeat=data.repeat, crops_per_image=data.crops_per_image, augment=data.augment,
                    channel_shuffle=data.channel_shuffle, seed=seed, rank=rank, world_size=world_size)
    note = None
    if data.backend in ("auto", "dali"):
        from fastsr.data.dali import DaliUnavailable, make_dali_loader

        try:
            return make_dali_loader(images, plan, method=data.degradation, threads=data.workers, device=device), None
        except DaliUnavailable as err:
            if data.backend == "dali":
                raise
            note = f"data.backend=auto uses the torch loader: {err}"
    loader = TrainLoader(images, plan, method=data.degradation, workers=data.workers, device=device,
                         cache_images=data.cache_images)
    return loader, note


def load_val_pair(sample: Sample, scale: int, method: str = "matlab") -> tuple[str, torch.Tensor, torch.Tensor]:
    """(name, HR 1x3xHxW, LR 1x3xhxw) on the CPU; the LR is the paired file when the sample has one,
    else the degradation of the HR (see `lr_for_eval`). An image too small to score is refused."""
    from fastsr.metrics import min_image_size  # here: fastsr.metrics imports torchmetrics (seconds)

    hr = load_image(sample.hr)
    h, w = scaled_size(hr.shape[0], hr.shape[1], scale)
    need = min_image_size(crop_border=scale)
    if min(h, w) < need:
        raise ImageError(f"{sample.hr}: {h}x{w} (cropped to a multiple of {scale}) is too small to score: PSNR/SSIM "
                         f"shave {scale} px per border and need an 11x11 window, so at least {need}x{need}; "
                         "remove it from the evaluation images")
    hr, lr = lr_for_eval(image_to_tensor(hr), scale, sample.lr, method)
    return sample.name, hr, lr


def load_val_set(samples: Sequence[Sample], scale: int, method: str = "matlab",
                 max_images: int | None = None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """`load_val_pair` of each of the first `max_images` samples."""
    return [load_val_pair(s, scale, method) for s in list(samples)[:max_images]]
