"""The crop plan: which training crops each process gets, in what order, for every epoch.

Every batch source (batches.py) executes the same plan, so they hand the trainer the same crops in the
same order, and a plan is a pure function of (image sizes, seed, epoch, batch index). That one property gives all of:
- determinism: a crop never depends on worker counts, thread timing or what ran before;
- sharding: the epoch's order is one permutation drawn from ``default_rng([seed, epoch])`` on every
  rank (a global reshuffle each epoch); rank r takes global batches r, r + world, ...; every rank gets
  the same number of full batches (the remainder, less than one global batch, is dropped and differs
  from epoch to epoch), disjoint across ranks;
- exact resume: the position (epoch, batch) in a checkpoint is all a resumed run needs to see the
  batches the uninterrupted run would have seen, and skipped batches are never read.

An epoch cuts `repeat` crops from every image. With `crops_per_image` k > 1 the k crops of one
visit to an image come together, so a pipeline that decodes whole files decodes once per k crops.
Each crop's anchor and augmentation come from ``default_rng([seed, epoch, position])``, position
being its index in the epoch's global order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastsr.errors import ImageError
from fastsr.ops import kernel_margin


@dataclass(frozen=True)
class Crop:
    """One training crop of image `index`: HR anchor (multiples of the scale) and augmentation."""

    index: int
    top: int
    left: int
    hflip: bool = False
    vflip: bool = False
    transpose: bool = False
    channels: tuple[int, int, int] = (0, 1, 2)  # output channel c is input channel channels[c]


def scaled_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """An image's size once cropped to a multiple of the scale, as the protocol crops HR images."""
    return height - height % scale, width - width % scale


def check_crop_fits(name: str, height: int, width: int, scale: int, hr_crop: int) -> None:
    """Raise a one-line ImageError naming `name` when an HR crop does not fit in the image.

    A run checks each image once, in its screen (data.screen.screen_train, which applies
    data.bad_images); a plan made for a run takes those sizes as checked (`screened=True`)."""
    h, w = scaled_size(height, width, scale)
    if hr_crop > min(h, w):
        raise ImageError(f"{name}: HR crop {hr_crop} does not fit: it must be at most the image size {h}x{w} "
                         "(after cropping to a multiple of the scale); lower data.hr_crop or remove the image")


def draw_crop(rng: np.random.Generator, index: int, height: int, width: int, scale: int, hr_crop: int,
              augment: bool, channel_shuffle: bool) -> Crop:
    """A random crop of an image of `height` x `width` (cropped to a multiple of `scale` first, as
    the protocol does): anchor, then horizontal flip, vertical flip and transpose with probability
    1/2 each when `augment` (the 8 symmetries of the square), then a random RGB order when
    `channel_shuffle`."""
    h, w = scaled_size(height, width, scale)
    top = int(rng.integers(0, (h - hr_crop) // scale + 1)) * scale
    left = int(rng.integers(0, (w - hr_crop) // scale + 1)) * scale
    flips = rng.random(3) < 0.5 if augment else (False, False, False)
    channels = tuple(int(c) for c in rng.permutation(3)) if channel_shuffle else (0, 1, 2)
    return Crop(index, top, left, bool(flips[0]), bool(flips[1]), bool(flips[2]), channels)


# A visit: the crops cut from one image at once; a batch: a list of visits.
Visit = list[Crop]


class CropPlan:
    """Batches of crops for one process; `len(plan)` is the batches it gets per epoch.

    `sizes` are the (height, width) of the training images and `names` their files, for messages
    (a crop that does not fit, the files of a batch that never came: `files`).
    Every crop must fit in every image (`check_crop_fits`): checked here, unless `screened` says the
    sizes are those of images the run's screen already checked (data.screen.screen_train), so that a
    run checks each image once.
    """

    def __init__(self, sizes: list[tuple[int, int]], names: list[str], scale: int, hr_crop: int,
                 batch_size: int, *, repeat: int = 1, crops_per_image: int = 1, augment: bool = True,
                 channel_shuffle: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 screened: bool = False):
        if not sizes:
            raise ValueError("a crop plan needs at least one image")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        k = crops_per_image
        if repeat % k or batch_size % k:
            raise ValueError(f"crops_per_image {k} must divide both repeat ({repeat}) and batch_size ({batch_size})")
        if hr_crop <= 0 or hr_crop % scale:
            raise ValueError(f"HR crop {hr_crop} must be a positive multiple of scale {scale}")
        if not screened:
            for (height, width), name in zip(sizes, names):
                check_crop_fits(name, height, width, scale, hr_crop)
        self.sizes, self.names = list(sizes), list(names)
        self.scale, self.hr_crop, self.batch_size = scale, hr_crop, batch_size
        self.repeat, self.crops_per_image, self.augment, self.channel_shuffle = repeat, k, augment, channel_shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def __len__(self) -> int:
        return len(self.sizes) * self.repeat // (self.batch_size * self.world_size)

    @property
    def batches_alone(self) -> int:
        """The batches of an epoch for a single process: the steps a recipe's `train.epochs_*` count in, the
        same whatever the number of processes."""
        return len(self.sizes) * self.repeat // self.batch_size

    def epoch(self, epoch: int) -> list[list[Visit]]:
        """This process's batches of `epoch` (cheap: nothing is read)."""
        n, k = len(self.sizes), self.crops_per_image
        visits = np.random.default_rng([self.seed, epoch]).permutation(n * self.repeat // k) % n
        per_batch = self.batch_size // k
        batches = []
        for b in range(len(self)):
            first = (b * self.world_size + self.rank) * per_batch  # global batch b * world + rank
            batches.append([self._visit(epoch, v, int(visits[v])) for v in range(first, first + per_batch)])
        return batches

    def files(self, epoch: int, batch: int) -> list[str]:
        """The distinct image files of this process's batch `batch` of `epoch`, in plan order."""
        return list(dict.fromkeys(self.names[visit[0].index] for visit in self.epoch(epoch)[batch]))

    def _visit(self, epoch: int, v: int, index: int) -> Visit:
        h, w = self.sizes[index]
        k = self.crops_per_image
        return [draw_crop(np.random.default_rng([self.seed, epoch, v * k + j]), index, h, w, self.scale,
                          self.hr_crop, self.augment, self.channel_shuffle) for j in range(k)]


def crop_region(height: int, width: int, crop: Crop, scale: int, hr_crop: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the crop plus the resize kernel's reach (`kernel_margin`) on each side, clipped
    to the image cropped to a multiple of the scale. The LR of exactly this region, cut down to the
    crop, is the LR of the whole image at the crop's place."""
    margin = kernel_margin(scale)
    h, w = scaled_size(height, width, scale)
    return (max(crop.top - margin, 0), min(crop.top + hr_crop + margin, h),
            max(crop.left - margin, 0), min(crop.left + hr_crop + margin, w))
