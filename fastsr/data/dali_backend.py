"""The NVIDIA DALI batch source: crops and the MATLAB-exact x`scale` downscale on the GPU (or on the
CPU with the same pipeline definition where there is no GPU, which is how the tests exercise it).

It executes the same `CropPlan` (plan.py) as the torch batch source (torch_backend.py), fed through
`fn.external_source`, so the two backends hand the trainer the same crops in the same order, and
sharding and exact resume come from the plan rather than from DALI reader state. Per batch the
Python side only passes bytes:
- from source files, each visit's encoded file (DALI decodes it: JPEG on the GPU, PNG on the CPU, as
  DALI always does) and the anchors of its k crops (`data.crops_per_image`), cut from the decoded
  image on the device;
- from a `fastsr prepare` cache, each crop's region plus the kernel's margin (`kernel_margin`), read
  from the memory-mapped file (a few tens of KB instead of a 6 MB image).
On the device each crop becomes an HR slice and an LR made by `fn.resize` (Keys cubic a = -0.5 with
MATLAB's antialias widening) of that same region *of the larger image*, so the LR has its real
surrounding context, then both get the crop's flips / transpose / channel order and become float
[0, 1] NCHW, handed to torch through DLPack without a copy.

Exactness against `fastsr.ops.imresize` of the whole image (before rounding to 8 bits): within 1e-4
everywhere, borders included. DALI's resize repeats the edge pixel where MATLAB mirrors, so the image
is mirror-padded by the kernel's reach first: in the pipeline for decoded files, in NumPy for cached
regions. Rounded to 8 bits, the LR matches the torch source's except for rare pixels sitting on a
rounding boundary, off by one level (float32 sums in a different order).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fastsr.data.plan import Crop, CropPlan, crop_region, scaled_size
from fastsr.data.store import ImageStore
from fastsr.errors import DaliUnavailable, ImageError
from fastsr.ops import kernel_margin

# Source files DALI decodes exactly as `load_image` does (checked against Pillow on the bundled
# samples); other modes (palette, RGBA, CMYK, 16-bit) go through `fastsr prepare`.
_DECODABLE_MODES = ("RGB", "L")
_DECODABLE_SUFFIXES = (".png", ".jpg", ".jpeg")


def make_dali_loader(images: ImageStore, plan: CropPlan, *, method: str = "matlab", threads: int = 2,
                     device: str | torch.device = "cpu") -> DaliLoader:
    """A DaliLoader that has run one batch, or DaliUnavailable with a one-line reason (not installed,
    an option DALI can't do, files it would decode differently, a pipeline that fails here)."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise DaliUnavailable("NVIDIA DALI is not installed (pip install nvidia-dali-cuda120)") from None
    if method != "matlab":
        raise DaliUnavailable(f"DALI makes the MATLAB bicubic LR only; data.degradation={method} needs data.backend=torch")
    if images.cached is None:
        margin = kernel_margin(plan.scale)
        small = [f for f, size in zip(images.files, images.sizes) if min(size) < margin]
        if small:  # too small to mirror-pad by the kernel's reach
            raise DaliUnavailable(f"{small[0]}: smaller than {margin} pixels; use data.backend=torch")
        for path, mode in zip(images.files, images.modes):
            if mode not in _DECODABLE_MODES or path.suffix.lower() not in _DECODABLE_SUFFIXES:
                raise DaliUnavailable(
                    f"{path}: a {mode} {path.suffix} file, which DALI would not decode as fastsr does; "
                    "make a cache with `fastsr prepare` and set data.cache, or use data.backend=torch")
    try:
        loader = DaliLoader(images, plan, threads=threads, device=device)
    except (RuntimeError, ValueError) as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise DaliUnavailable(f"DALI could not build its pipeline on {device}: {first}") from None
    if len(plan):
        try:  # some failures (a GPU operator, a CUDA library) show only when the pipeline runs
            next(iter(loader.batches(0)))
        except ImageError as err:
            raise DaliUnavailable(f"DALI failed its first batch on {device}: {err}") from None
    return loader


class _Feeder:
    """The external source: turns the next planned batch into the arrays the pipeline reads.

    Outputs per pipeline sample: the image (encoded file bytes, or a cached region), the HR anchors
    of its crops (k x 2, float32: rows, columns; from files, then one more row: the image's size cut
    to a multiple of the scale), and only when the plan uses them, their flags
    (k x 3: hflip, vflip, transpose) and channel orders as 3x3 permutation matrices (k x 3 x 3)."""

    def __init__(self, images: ImageStore, plan: CropPlan):
        self.images, self.plan = images, plan
        self.pending: Iterator[list[list[Crop]]] = iter(())
        self.recent: deque[list[Path]] = deque(maxlen=4)  # files of the batches DALI may be working on

    def __call__(self):
        batch = next(self.pending)  # StopIteration ends DALI's epoch
        margin = kernel_margin(self.plan.scale)  # images and regions are mirror-padded by this much
        if self.images.cached is None:
            groups = batch  # one sample per visit: decode once, cut k crops
            data = [np.fromfile(self.images.files[visit[0].index], dtype=np.uint8) for visit in batch]
            # each crop's anchor in the padded image, then the image's size cut to a multiple of the
            # scale (as the protocol crops HR images), so the resize never reads beyond it
            anchors = [np.array([[c.top + margin, c.left + margin] for c in visit]
                                + [scaled_size(*self.images.sizes[visit[0].index], self.plan.scale)], np.float32)
                       for visit in batch]
        else:
            groups = [[crop] for visit in batch for crop in visit]  # one sample per crop
            data = [self._region(group[0]) for group in groups]
            anchors = [np.full((1, 2), margin, np.float32)] * len(groups)
        self.recent.append([self.images.files[g[0].index] for g in groups])
        outputs = [data, anchors]
        if self.plan.augment:
            outputs.append([np.array([[c.hflip, c.vflip, c.transpose] for c in g], np.int32) for g in groups])
        if self.plan.channel_shuffle:
            outputs.append([np.stack([np.eye(3, dtype=np.float32)[list(c.channels)] for c in g]) for g in groups])
        return outputs

    def _region(self, crop: Crop) -> np.ndarray:
        """The crop plus a full `kernel_margin` from the cache file, mirror-padded (edge pixel repeated,
        as MATLAB pads) where the image ends, so the resize sees what imresize of the whole image sees."""
        img = self.images.read(crop.index)
        scale, size = self.plan.scale, self.plan.hr_crop
        margin = kernel_margin(scale)
        y0, y1, x0, x1 = crop_region(img.shape[0], img.shape[1], crop, scale, size)
        pad = ((margin - (crop.top - y0), crop.top + size + margin - y1),
               (margin - (crop.left - x0), crop.left + size + margin - x1), (0, 0))
        region = img[y0:y1, x0:x1]
        return np.pad(region, pad, mode="symmetric") if any(map(any, pad)) else np.ascontiguousarray(region)


def _mirror_pad(image, size, margin: int):
    """`image` (HWC, `size` = its (H, W) as a float tensor) padded by `margin` on every side by
    mirroring with the edge pixel repeated, as MATLAB's imresize pads: DALI's resize repeats the edge
    pixel instead, which would differ by up to a few levels in the LR pixels next to the border."""
    from nvidia.dali import fn

    def side(x, start, axis: str):
        part = fn.slice(x, start, [float(margin)], axis_names=axis, normalized_anchor=False, normalized_shape=False)
        return fn.flip(part, horizontal=int(axis == "W"), vertical=int(axis == "H"))

    for i, axis in enumerate("HW"):
        image = fn.cat(side(image, [0.0], axis), image, side(image, size[i : i + 1] - margin, axis), axis_name=axis)
    return image


def _pipeline(feeder: _Feeder, *, from_files: bool, crops: int, hr_crop: int, scale: int, augment: bool,
              channel_shuffle: bool, quantize: bool, batch: int, threads: int, device_id: int | None):
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(batch_size=batch, num_threads=max(1, threads), device_id=device_id, exec_dynamic=True,
                  enable_conditionals=augment, prefetch_queue_depth=2)
    def pipe():
        outputs = fn.external_source(source=feeder, num_outputs=2 + augment + channel_shuffle, batch=True)
        data, anchors = outputs[:2]
        flags = outputs[2] if augment else None
        perms = outputs[-1] if channel_shuffle else None
        if not from_files:
            data = fn.reshape(data, layout="HWC")
        if from_files:
            # adjust_orientation=False: load_image ignores EXIF orientation too
            image = fn.decoders.image(data, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                      adjust_orientation=False)
            size = anchors[crops]
            image = fn.slice(image, [0.0, 0.0], size, axis_names="HW", normalized_anchor=False, normalized_shape=False)
            image = _mirror_pad(image, size, kernel_margin(scale))
        else:
            image = data.gpu() if gpu else data
        hrs, lrs = [], []
        for i in range(crops):
            anchor = anchors[i]
            # The LR is the resize of the crop's region *within the larger image* (roi), so the kernel
            # reads the real pixels around the crop; the HR is the same region, sliced.
            # uint8 output rounds to 8-bit levels, as a stored LR file is
            lr = fn.resize(image, roi_start=anchor, roi_end=anchor + hr_crop, size=[hr_crop // scale] * 2,
                           interp_type=types.INTERP_CUBIC, antialias=True, dtype=None if quantize else types.FLOAT)
            hr = fn.slice(image, anchor, [float(hr_crop)] * 2, axis_names="HW", normalized_anchor=False,
                          normalized_shape=False)
            if augment:
                hr = fn.flip(hr, horizontal=flags[i, 0], vertical=flags[i, 1])
                lr = fn.flip(lr, horizontal=flags[i, 0], vertical=flags[i, 1])
                if flags[i, 2]:
                    hr = fn.transpose(hr, perm=[1, 0, 2], transpose_layout=False)
                    lr = fn.transpose(lr, perm=[1, 0, 2], transpose_layout=False)
            if channel_shuffle:
                hr = fn.coord_transform(hr, M=perms[i], dtype=types.UINT8)
                lr = fn.coord_transform(lr, M=perms[i], dtype=types.UINT8 if quantize else types.FLOAT)
            hrs.append(fn.crop_mirror_normalize(hr, dtype=types.FLOAT, output_layout="CHW", std=255.0))
            lrs.append(fn.crop_mirror_normalize(lr, dtype=types.FLOAT, output_layout="CHW", std=255.0))
        return fn.stack(*hrs), fn.stack(*lrs)

    p = pipe()
    p.build()
    return p


class DaliLoader:
    """A `BatchSource` (batches.py), as `TorchLoader` is; see the module docstring."""

    name = "dali"

    def __init__(self, images: ImageStore, plan: CropPlan, *, threads: int = 2, device: str | torch.device = "cpu",
                 quantize: bool = True):
        """`quantize=False` leaves the LR unrounded (to check it against `imresize`, as tests do)."""
        self.plan, self.device = plan, torch.device(device)
        from_files = images.cached is None
        k = plan.crops_per_image if from_files else 1
        device_id = None
        if self.device.type == "cuda":
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self._feeder = _Feeder(images, plan)
        self._broken = False
        self._pipe = _pipeline(self._feeder, from_files=from_files, crops=k, hr_crop=plan.hr_crop, scale=plan.scale,
                               augment=plan.augment, channel_shuffle=plan.channel_shuffle, quantize=quantize,
                               batch=plan.batch_size // k, threads=threads, device_id=device_id)

    def __len__(self) -> int:
        return len(self.plan)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this process's (hr, lr) float32 NCHW batches of `epoch` on the device, from batch `start`."""
        self._feeder.pending = iter(self.plan.epoch(epoch)[start:])
        try:
            while True:
                try:
                    hr, lr = self._pipe.run()
                except StopIteration:
                    return
                except RuntimeError as err:
                    self._broken = True  # DALI invalidates a pipeline after an error
                    raise self._error(err) from None
                yield self._to_torch(hr), self._to_torch(lr)
        finally:
            # Also when the consumer stops early: drop what DALI prefetched, ready for the next epoch.
            self._feeder.pending = iter(())
            while not self._broken:
                try:
                    self._pipe.run()
                except StopIteration:
                    self._pipe.reset()
                    break

    def _to_torch(self, out) -> torch.Tensor:
        """DALI's (batch, k, 3, H, W) output as a torch (batch * k, 3, H, W) tensor, zero-copy."""
        with torch.device(self.device):
            return torch.from_dlpack(out.as_tensor()).flatten(0, 1)

    def _error(self, err: RuntimeError) -> ImageError:
        files = sorted({str(f) for batch in self._feeder.recent for f in batch})
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        # DALI's report: "Critical error ... Error in CPU operator X ... encountered:", then the cause.
        after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.endswith("encountered:")]
        detail = after[0] if after else (lines[0] if lines else type(err).__name__)
        return ImageError(f"DALI failed on one of {', '.join(files[:8])}{' ...' if len(files) > 8 else ''}: {detail}; "
                          "`fastsr prepare` on the data names the bad file")
