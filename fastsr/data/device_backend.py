"""The device-resident batch source: the whole training set in device memory, every batch cut there.

Where the decoded training set fits under a budget (data.device_budget_gb), `DeviceLoader` reads each
image once (from a `fastsr prepare` cache, or decoding its file) into one flat uint8 buffer on the
device: channel-planar, cropped to a multiple of the scale as the protocol crops HR, and mirror-padded
by the kernel's margin (`kernel_margin`) as MATLAB pads (symmetric: the edge pixel repeated). A crop
at a border then reads the mirrored pixels imresize of the whole image reads, and a crop elsewhere its
real neighbours. It executes the same `CropPlan` (plan.py) as the torch and DALI sources: the same
crops in the same order, sharded and resumable alike.

One flat buffer rather than a list of images: one gather then cuts a batch from images of any sizes
(a list needs a Python step per crop, or every image padded to the largest).

A batch path without Python per crop: each epoch's crops become one integer tensor on the device;
batches are made a chunk of several at a time (fewer, larger kernels: what keeps a GPU busy at batch
16) by index arithmetic and gathers:
- one gather of each crop's window: the rows and columns its LR pixels' kernels read, the HR crop
  among them, fetched as rows of the buffer's unfolded view (each a contiguous run of bytes);
- HR: the crop within its window, its flips, transpose and channel order folded into one gather;
- LR: the MATLAB x1/`scale` shrink of the window as a fixed-kernel separable strided convolution: for
  an integer factor every output pixel has the same weights (`shrink_kernel`, from imresize's own
  contribution code), applied tap by tap, rows then columns, as imresize applies them; rounded to
  8-bit levels, then given the crop's flips, transpose and channel order: the torch loader's order.
Tap by tap rather than `conv2d`: where a run allows TF32 (the trainer does on a GPU) cuDNN computes a
float32 convolution with 10-bit products, about 1e-3 off, while elementwise multiply-adds are plain
float32 everywhere; being imresize's own operations in its order, they give the torch loader's LR bit
for bit on the CPU. Against `imresize` of the whole image the LR is within 1e-6 before rounding
(measured 3e-7), borders included (tests/test_device_loader.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import torch

from fastsr.data.plan import CropPlan, Visit, scaled_size
from fastsr.data.store import ImageStore
from fastsr.ops import kernel_margin, quantize, shrink_kernel
from fastsr.util import progress_bar

CPU_BUDGET_GB = 4.0  # default budget on the CPU (host memory shared with everything else)
GPU_BUDGET_SHARE = 0.5  # default budget on a GPU: this share of its free memory (the rest: the model's)
# Crops made at once, bounded by their temporaries (~13 bytes per pixel of a crop's LR window: its
# byte, its float, the row sums, the HR's int64 indices). On a GPU large, so that a chunk's few dozen
# kernels serve hundreds of crops (at batch 16 kernel launches, not arithmetic, would set the pace);
# on the CPU small, so that a chunk's temporaries stay in cache (a 64 MB chunk spills out of it and runs slower).
_CHUNK_BYTES_GPU = 256 << 20
_CHUNK_BYTES_CPU = 4 << 20
_PROGRESS_BYTES = 1 << 30  # show a progress bar for loads larger than this


def padded_bytes(sizes: list[tuple[int, int]], scale: int) -> int:
    """Bytes the images of these (height, width) take in a DeviceLoader's buffer."""
    m = kernel_margin(scale)
    return sum(3 * (h + 2 * m) * (w + 2 * m) for h, w in (scaled_size(*size, scale) for size in sizes))


def device_budget_gb(budget_gb: float | None, device: str | torch.device) -> tuple[float, str]:
    """(budget in GB, where it comes from) for data.device_budget_gb: the key's value, or its default:
    `GPU_BUDGET_SHARE` of a GPU's free memory now, `CPU_BUDGET_GB` on the CPU."""
    if budget_gb is not None:
        return budget_gb, f"data.device_budget_gb={budget_gb:g}"
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return GPU_BUDGET_SHARE * free / 1e9, f"data.device_budget_gb default: {GPU_BUDGET_SHARE:g} of {device}'s free memory"
    return CPU_BUDGET_GB, f"data.device_budget_gb default on {device.type}"


def _mirror(n: int, margin: int, device: torch.device) -> torch.Tensor:
    """Indices of positions -margin .. n + margin - 1 of a line of n pixels under MATLAB's symmetric
    padding (0 .. n-1, then n-1 .. 0, periodically: imresize's own border rule)."""
    p = torch.remainder(torch.arange(-margin, n + margin, device=device), 2 * n)
    return torch.where(p < n, p, 2 * n - 1 - p)


def _symmetries(n: int, stride: int) -> torch.Tensor:
    """(8, n * n): for each of the plan's 8 symmetries (hflip + 2 vflip + 4 transpose), where pixel
    (y, x) of an augmented n x n patch comes from, as y' * stride + x' in the patch before
    augmentation. The plan's flips and transpose apply in that order (as crop_pair applies them), so
    they are undone here in reverse."""
    flags = torch.arange(8)[:, None, None]
    h, v, t = flags % 2 == 1, flags // 2 % 2 == 1, flags // 4 == 1
    line = torch.arange(n)
    y, x = line[:, None].expand(n, n), line[None, :].expand(n, n)
    y, x = torch.where(t, x, y), torch.where(t, y, x)
    return (torch.where(v, n - 1 - y, y) * stride + torch.where(h, n - 1 - x, x)).flatten(1)


def _crop_table(batches: list[list[Visit]], device: torch.device) -> torch.Tensor:
    """The planned crops as one int64 (crops, 7) tensor on the device: image, top, left, symmetry
    (as `_symmetries` numbers them), channel order."""
    rows = [(c.index, c.top, c.left, c.hflip + 2 * c.vflip + 4 * c.transpose, *c.channels)
            for batch in batches for visit in batch for c in visit]
    return torch.from_numpy(np.array(rows, dtype=np.int64).reshape(-1, 7)).to(device)


class DeviceLoader:
    """A `BatchSource` (batches.py), as `TorchLoader` is; see the module docstring.

    The images are read here, once; `len(loader)` and `batches` then read nothing. `quantize=False`
    leaves the LR unrounded (to check it against `imresize`, as tests do)."""

    name = "device"

    def __init__(self, images: ImageStore, plan: CropPlan, *, device: str | torch.device = "cpu",
                 quantize: bool = True, progress: bool | None = None):
        """`progress`: show a progress bar while loading (default: for loads over 1 GiB)."""
        self.plan, self.device, self.quantize = plan, torch.device(device), quantize
        weights, self.offsets = shrink_kernel(plan.scale)
        self.weights = weights.to(self.device, torch.float32)  # as imresize casts its weights
        crop = plan.hr_crop
        # the side of a crop's window: the rows (columns) its LR pixels' taps read
        self.window = plan.scale * (crop // plan.scale - 1) + self.offsets[-1] - self.offsets[0] + 1
        chunk_bytes = _CHUNK_BYTES_CPU if self.device.type == "cpu" else _CHUNK_BYTES_GPU
        self.chunk = max(1, chunk_bytes // (13 * 3 * self.window**2 * plan.batch_size))  # batches
        self.margin = kernel_margin(plan.scale)
        before = -self.offsets[0]  # the HR crop's place in its window
        self.hr_symmetries = (_symmetries(crop, self.window) + before * (self.window + 1)).to(self.device)
        self.lr_symmetries = _symmetries(crop // plan.scale, crop // plan.scale).to(self.device)
        self._load(images, progress)

    def _load(self, images: ImageStore, progress: bool | None) -> None:
        m = self.margin
        sizes = [scaled_size(h, w, self.plan.scale) for h, w in images.sizes]
        heights, widths = [h + 2 * m for h, _ in sizes], [w + 2 * m for _, w in sizes]
        lengths = [3 * h * w for h, w in zip(heights, widths)]
        starts = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]).astype(np.int64)
        self.buffer = torch.empty(sum(lengths), dtype=torch.uint8, device=self.device)
        show = sum(lengths) > _PROGRESS_BYTES if progress is None else progress
        tic = time.perf_counter()
        with progress_bar(show) as bar:
            info = f"{sum(lengths) / 1e9:.1f} GB to {self.device}"  # with every count: a line now and then in a file
            task = bar.add_task("load", total=len(sizes), rate=0.0, info=info)
            for i, (h, w) in enumerate(sizes):
                image = torch.from_numpy(np.array(images.read(i)[:h, :w])).to(self.device)  # a copy: cache maps are read-only
                padded = image.index_select(0, _mirror(h, m, self.device)).index_select(1, _mirror(w, m, self.device))
                # channel-planar: each channel's rows contiguous, as a window's gather reads them
                self.buffer[starts[i] : starts[i] + lengths[i]].view(3, heights[i], widths[i]).copy_(padded.permute(2, 0, 1))
                bar.update(task, completed=i + 1, rate=(i + 1) / max(time.perf_counter() - tic, 1e-9), info=info)
        self.starts = torch.from_numpy(starts).to(self.device)
        self.heights = torch.tensor(heights, dtype=torch.int64, device=self.device)
        self.widths = torch.tensor(widths, dtype=torch.int64, device=self.device)

    def __len__(self) -> int:
        return len(self.plan)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this process's (hr, lr) float32 NCHW batches of `epoch` on the device, from batch `start`."""
        crops = _crop_table(self.plan.epoch(epoch)[start:], self.device)
        size = self.plan.batch_size
        for first in range(0, len(crops), self.chunk * size):
            hr, lr = self._cut(crops[first : first + self.chunk * size])
            for b in range(0, len(hr), size):
                yield hr[b : b + size], lr[b : b + size]

    def _cut(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (hr, lr) pairs of these planned crops (rows of `_crop_table`)."""
        n, w, before = len(crops), self.window, -self.offsets[0]
        image, symmetry, channels = crops[:, 0], crops[:, 3], crops[:, 4:7]
        widths = self.widths[image]
        # The window: the rows and columns that the kernels of the crop's LR pixels read (the HR crop
        # and `before` pixels more above and left, fewer or more below and right), gathered as runs of
        # w bytes: a row of the buffer's unfolded view, each channel's row is contiguous.
        first_row = self.starts[image] + (crops[:, 1] + self.margin - before) * widths + crops[:, 2] + self.margin - before
        planes = torch.arange(3, device=self.device) * (self.heights[image] * widths)[:, None]
        lines = (first_row[:, None] + planes)[:, :, None] + torch.arange(w, device=self.device) * widths[:, None, None]
        window = self.buffer.unfold(0, w, 1).index_select(0, lines.flatten()).view(n, 3 * w * w)
        # HR: the crop inside the window, with its flips, transpose and channel order in one gather
        hr_at = channels[:, :, None] * w * w + self.hr_symmetries[symmetry][:, None]
        hr = window.gather(1, hr_at.flatten(1)).view(n, 3, self.plan.hr_crop, self.plan.hr_crop).float() / 255
        lr = window.view(n, 3, w, w).float() / 255
        lr = self._shrink_rows(self._shrink_rows(lr).transpose(-1, -2).contiguous()).transpose(-1, -2)
        if self.quantize:
            lr = quantize(lr)
        size = self.plan.hr_crop // self.plan.scale
        lr_at = channels[:, :, None] * size * size + self.lr_symmetries[symmetry][:, None]
        lr = lr.reshape(n, -1).gather(1, lr_at.flatten(1)).view(n, 3, size, size)
        return hr, lr

    def _shrink_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., window, W) shrunk along its rows to (..., hr_crop / scale, W): output row j is the
        weighted sum of window rows scale * j + offset_k - offset_0, one multiply-add per tap, in
        imresize's order."""
        scale, count = self.plan.scale, self.plan.hr_crop // self.plan.scale
        span = scale * (count - 1) + 1
        at = [k - self.offsets[0] for k in self.offsets]
        out = self.weights[0] * x[..., at[0] : at[0] + span : scale, :]
        for k in range(1, len(at)):
            out.addcmul_(self.weights[k], x[..., at[k] : at[k] + span : scale, :])
        return out
