"""Real-world degradation: Real-ESRGAN's second-order chain of blur, resize, noise and JPEG (Wang et al.
2021), turning an HR batch into its LR on the batch's device, every sample with all of its own parameters.

The chain, per sample (Real-ESRGAN's `RealESRGANModel.feed_data`, BasicSR 1.4.2):
  HR -> unsharp mask (`gt_usm`) -> blur (kernel 1) -> resize (up/down/keep, area/bilinear/bicubic)
     -> Gaussian or Poisson noise (colour or gray) -> JPEG
     -> blur (kernel 2, with probability `second_blur_prob`) -> resize (relative to the LR size) -> noise
     -> in random order: [resize to the LR size + sinc filter] then JPEG, or JPEG then [resize + sinc]
     -> rounded to 8-bit levels.
Peers (BasicSR, traiNNer-redux, neosr) draw the kernels per sample in loader workers but the rest once per
batch ("samples in a batch could not have different resize scaling factors"), and mix batches through a
queue. Here every parameter is drawn per sample, the resize scale and mode included, and there is no queue:
samples of different sizes share a canvas (fastsr.ops.resample). The parameters are drawn on the CPU from
`(seed, epoch, rank, batch index)` (a pure function, like the crop plan, so a resumed run degrades exactly as
an uninterrupted one and each process draws its own); kernels, noise and JPEG are computed on the batch's
device from them, in batch.

Where it differs from BasicSR, on purpose: JPEG quality is an integer (a real codec's; BasicSR feeds its
DiffJPEG the float it drew), and the JPEG is fastsr.ops.jpeg (closer to libjpeg than BasicSR's DiffJPEG:
benchmarks/jpeg_agreement.py). The HR crop is degraded at the size it is trained at (Real-ESRGAN degrades a
400 x 400 crop and then cuts 256 x 256 out of the pair).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from fastsr.config import KERNEL_KINDS, MAX_KERNEL, RealESRGANConfig
from fastsr.ops import quantize
from fastsr.ops.jpeg import jpeg
from fastsr.ops.kernels import FAMILIES, blur_kernels, pulse_kernels, sinc_kernels
from fastsr.ops.noise import gaussian_noise, poisson_noise
from fastsr.ops.resample import MODES, filter_each, resize_each
from fastsr.ops.sharpen import unsharp_mask

SINC = len(KERNEL_KINDS)  # the kernel index that means a sinc (circular low-pass) kernel
_STREAM = 0x5EA1  # keeps this stream of draws apart from the crop plan's, which share the seed
# the keys each order has, the second's ending in 2 (kernel_list2, ...), as Real-ESRGAN names them
_ORDER_KEYS = ("kernel_list", "kernel_prob", "sinc_prob", "blur_sigma", "betag_range", "betap_range", "resize_prob",
               "resize_range", "gaussian_noise_prob", "noise_range", "poisson_scale_range", "gray_noise_prob",
               "jpeg_range")


@dataclass
class Order:
    """One degradation order's parameters, one row per sample (all CPU tensors of length N)."""

    blurred: torch.Tensor  # bool: the blur applies (always in the first order)
    kernel: torch.Tensor  # index into KERNEL_KINDS, or SINC
    size: torch.Tensor  # odd kernel size
    sigma_x: torch.Tensor
    sigma_y: torch.Tensor
    theta: torch.Tensor
    beta: torch.Tensor
    cutoff: torch.Tensor  # the sinc kernel's (radians)
    resize: torch.Tensor  # the scale: of the input (first order) or of the LR size (second)
    mode: torch.Tensor  # index into MODES
    poisson: torch.Tensor  # bool: Poisson noise, else Gaussian
    gray: torch.Tensor  # bool: gray noise
    noise: torch.Tensor  # Gaussian sigma (levels) or Poisson scale
    quality: torch.Tensor  # JPEG quality


@dataclass
class Params:
    """Every parameter of a batch's degradation, per sample: what `fastsr degrade` labels its examples with."""

    first: Order
    second: Order
    final_sinc: torch.Tensor  # bool
    final_size: torch.Tensor
    final_cutoff: torch.Tensor
    final_mode: torch.Tensor
    jpeg_last: torch.Tensor  # bool: [resize + sinc] then JPEG; else JPEG first
    final_quality: torch.Tensor

    def describe(self, i: int) -> str:
        """Sample `i`'s parameters in a few short lines (for the degrade grid)."""
        lines = []
        for name, order in (("1", self.first), ("2", self.second)):
            if not order.blurred[i]:
                blur = "no blur"
            elif order.kernel[i] == SINC:
                blur = f"sinc {int(order.size[i])} wc={float(order.cutoff[i]):.2f}"
            else:
                kind = KERNEL_KINDS[int(order.kernel[i])].replace("generalized", "gen")
                blur = f"{kind} {int(order.size[i])} s={float(order.sigma_x[i]):.1f}"
                if "aniso" in kind:
                    blur += f"/{float(order.sigma_y[i]):.1f}"
            level = float(order.noise[i])
            noise = f"poisson {level:.2f}" if order.poisson[i] else f"gauss {level:.0f}"
            noise += " gray" if order.gray[i] else ""
            lines.append(f"{name}: {blur}; x{float(order.resize[i]):.2f} {MODES[int(order.mode[i])]}; {noise}; "
                         f"q{int(order.quality[i])}")
        sinc = f"sinc wc={float(self.final_cutoff[i]):.2f}" if self.final_sinc[i] else "no sinc"
        order = "resize+sinc, jpeg" if self.jpeg_last[i] else "jpeg, resize+sinc"
        lines.append(f"3: {order}; {MODES[int(self.final_mode[i])]}; {sinc}; q{int(self.final_quality[i])}")
        return "\n".join(lines)


class RealESRGANDegradation:
    """The real-world degradation of `config` (RealESRGANConfig) at `scale`: `(hr, seed, epoch, index)` -> LR.

    `hr` is an (N, 3, H, W) float batch in [0, 1] on any device, H and W multiples of `scale`; the LR is
    (N, 3, H/scale, W/scale) on 8-bit levels on the same device. The parameters depend on (seed, epoch,
    rank, index) alone; the noise is drawn on the batch's device from the same key, so one device gives one
    result (a CUDA generator's stream differs from the CPU's).
    """

    def __init__(self, config: RealESRGANConfig, scale: int):
        self.config, self.scale = config, scale

    def __call__(self, hr: torch.Tensor, seed: int, epoch: int, index: int, rank: int = 0) -> torch.Tensor:
        """The LR of `hr`, batch `index` of `epoch` on process `rank` of a run seeded `seed`."""
        return self.degrade(hr, (seed, epoch, rank, index))

    def degrade(self, hr: torch.Tensor, key: tuple[int, ...]) -> torch.Tensor:
        """The LR of `hr`, its parameters and noise drawn from `key` (non-negative integers)."""
        params, noise_seed = self.draw(hr.shape[0], key)
        return self.apply(hr, params, torch.Generator(hr.device).manual_seed(noise_seed))

    def draw(self, n: int, key: tuple[int, ...]) -> tuple[Params, int]:
        """(the parameters of `n` samples, the seed of their noise), a pure function of `key`."""
        seeds = np.random.default_rng([*key, _STREAM]).integers(0, 2**62, size=2)
        g = torch.Generator().manual_seed(int(seeds[0]))
        c = self.config
        first, second = _draw_order(g, n, c, ""), _draw_order(g, n, c, "2")
        params = Params(first=first, second=second,
                        final_sinc=torch.rand(n, generator=g) < c.final_sinc_prob,
                        final_size=_odd_sizes(g, n, c.kernel_range),
                        final_cutoff=_uniform(g, n, math.pi / 3, math.pi),
                        final_mode=_modes(g, n, c.resize_modes),
                        jpeg_last=torch.rand(n, generator=g) < 0.5,
                        final_quality=_qualities(g, n, c.jpeg_range2))
        return params, int(seeds[1])

    def apply(self, hr: torch.Tensor, p: Params, generator: torch.Generator) -> torch.Tensor:
        """The LR of `hr` under parameters `p`, noise drawn from `generator` (on hr's device)."""
        n, _, height, width = hr.shape
        if height % self.scale or width % self.scale:
            raise ValueError(f"real-world degradation: HR {height}x{width} is not a multiple of scale {self.scale}")
        dev = hr.device
        first, second = _to(p.first, dev), _to(p.second, dev)
        h, w = torch.full((n,), height, device=dev), torch.full((n,), width, device=dev)
        x = unsharp_mask(hr) if self.config.gt_usm else hr.float()

        x = filter_each(x, _kernels(first), h, w)
        scale = first.resize.double()
        out_h, out_w = (height * scale).floor().long(), (width * scale).floor().long()
        ratio = (1 / scale).float()  # interpolate(scale_factor=s) maps with 1/s, not in/out
        x = resize_each(x, h, w, out_h, out_w, first.mode, ratio, ratio)
        h, w = out_h, out_w
        x = _noisy(x, first, h, w, generator)
        x = jpeg(x, first.quality, h, w)  # every sample: no subset to gather

        x = filter_each(x, _kernels(second), h, w)
        lr_h, lr_w = height // self.scale, width // self.scale
        scale = second.resize.double()
        out_h, out_w = (lr_h * scale).long().clamp(min=1), (lr_w * scale).long().clamp(min=1)
        x = resize_each(x, h, w, out_h, out_w, second.mode, (h / out_h).float(), (w / out_w).float())
        h, w = out_h, out_w
        x = _noisy(x, second, h, w, generator)

        quality, jpeg_last = p.final_quality.to(dev), p.jpeg_last.to(dev)
        x = _jpeg_each(x, quality, h, w, ~jpeg_last)
        lr_hs, lr_ws = torch.full_like(h, lr_h), torch.full_like(w, lr_w)
        x = resize_each(x, h, w, lr_hs, lr_ws, p.final_mode.to(dev), (h / lr_h).float(), (w / lr_w).float())
        sinc = sinc_kernels(p.final_cutoff.to(dev), p.final_size.to(dev), MAX_KERNEL)
        x = filter_each(x, torch.where(p.final_sinc.to(dev).view(n, 1, 1), sinc, pulse_kernels(n, MAX_KERNEL, dev)),
                        lr_hs, lr_ws)
        x = _jpeg_each(x, quality, lr_hs, lr_ws, jpeg_last)
        return quantize(x)


def _draw_order(g: torch.Generator, n: int, config: RealESRGANConfig, suffix: str) -> Order:
    """One order's parameters for `n` samples from the config's keys ending in `suffix` ("" for the first
    order, "2" for the second, as Real-ESRGAN names them), in a fixed sequence of draws from `g` (BasicSR's
    rules: random_mixed_kernels, the sinc cutoff's range by size, beta below or above 1 with equal odds)."""
    k = {name: getattr(config, name + suffix) for name in _ORDER_KEYS}
    blur_prob = 1.0 if suffix == "" else config.second_blur_prob
    sigma, betag, betap, resize_range = k["blur_sigma"], k["betag_range"], k["betap_range"], k["resize_range"]
    size = _odd_sizes(g, n, config.kernel_range)
    kind = torch.tensor([KERNEL_KINDS.index(k) for k in k["kernel_list"]])[torch.multinomial(
        torch.tensor(k["kernel_prob"], dtype=torch.float64), n, replacement=True, generator=g)]
    kind = torch.where(torch.rand(n, generator=g) < k["sinc_prob"], SINC, kind)
    sigma_x, sigma_y = _uniform(g, n, *sigma), _uniform(g, n, *sigma)
    theta = _uniform(g, n, -math.pi, math.pi)
    iso = torch.tensor([not KERNEL_KINDS[k].endswith("aniso") if k < SINC else True for k in kind.tolist()])
    below = torch.rand(n, generator=g) < 0.5
    plateau = (kind == KERNEL_KINDS.index("plateau_iso")) | (kind == KERNEL_KINDS.index("plateau_aniso"))
    low, high = torch.where(plateau, betap[0], betag[0]), torch.where(plateau, betap[1], betag[1])
    u = torch.rand(n, generator=g, dtype=torch.float64)
    beta = torch.where(below, low + u * (1 - low), 1 + u * (high - 1)).float()
    lowest = torch.where(size >= 13, math.pi / 5, math.pi / 3)  # the sinc cutoff's range: wider for large kernels
    cutoff = lowest + _uniform(g, n, 0, 1) * (math.pi - lowest)

    updown = torch.multinomial(torch.tensor(k["resize_prob"], dtype=torch.float64), n, replacement=True, generator=g)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    resize = torch.where(updown == 0, 1 + u * (resize_range[1] - 1),
                         torch.where(updown == 1, resize_range[0] + u * (1 - resize_range[0]), 1.0))
    mode = _modes(g, n, config.resize_modes)
    poisson = torch.rand(n, generator=g) >= k["gaussian_noise_prob"]
    poisson_scale, sigma_noise = _uniform(g, n, *k["poisson_scale_range"]), _uniform(g, n, *k["noise_range"])
    noise = torch.where(poisson, poisson_scale, sigma_noise)
    return Order(blurred=torch.rand(n, generator=g) < blur_prob, kernel=kind, size=size, sigma_x=sigma_x,
                 sigma_y=torch.where(iso, sigma_x, sigma_y), theta=torch.where(iso, 0.0, theta), beta=beta,
                 cutoff=cutoff.float(), resize=resize, mode=mode, poisson=poisson,
                 gray=torch.rand(n, generator=g) < k["gray_noise_prob"], noise=noise,
                 quality=_qualities(g, n, k["jpeg_range"]))


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return (low + torch.rand(n, generator=g, dtype=torch.float64) * (high - low)).float()


def _odd_sizes(g: torch.Generator, n: int, kernel_range: list[int]) -> torch.Tensor:
    lo, hi = kernel_range
    return lo + 2 * torch.randint(0, (hi - lo) // 2 + 1, (n,), generator=g)


def _modes(g: torch.Generator, n: int, modes: list[str]) -> torch.Tensor:
    allowed = torch.tensor([MODES.index(m) for m in modes])
    return allowed[torch.randint(0, len(modes), (n,), generator=g)]


def _qualities(g: torch.Generator, n: int, jpeg_range: list[int]) -> torch.Tensor:
    return torch.randint(int(jpeg_range[0]), int(jpeg_range[1]) + 1, (n,), generator=g)


def _to(order: Order, device: torch.device) -> Order:
    return Order(**{f.name: getattr(order, f.name).to(device) for f in fields(Order)})


def _kernels(order: Order) -> torch.Tensor:
    """(N, 21, 21): each sample's blur kernel (a pulse where its order does not blur)."""
    n = order.kernel.shape[0]
    kind = order.kernel.clamp(max=SINC - 1)
    family = torch.tensor([FAMILIES.index(_family(k)) for k in KERNEL_KINDS], device=kind.device)[kind]
    mixed = blur_kernels(family, order.size, order.sigma_x, order.sigma_y, order.theta, order.beta, MAX_KERNEL)
    sinc = sinc_kernels(order.cutoff, order.size, MAX_KERNEL)
    kernels = torch.where((order.kernel == SINC).view(n, 1, 1), sinc, mixed)
    return torch.where(order.blurred.view(n, 1, 1), kernels, pulse_kernels(n, MAX_KERNEL, kind.device))


def _family(kind: str) -> str:
    return "generalized" if kind.startswith("generalized") else "plateau" if kind.startswith("plateau") else "gaussian"


def _noisy(x: torch.Tensor, order: Order, h: torch.Tensor, w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`x` plus each sample's Gaussian or Poisson noise, colour or gray, clamped to [0, 1]: the samples in four
    groups by kind, each group one batched draw."""
    out = torch.empty_like(x)
    for poisson in (False, True):
        for gray in (False, True):
            group = ((order.poisson == poisson) & (order.gray == gray)).nonzero().squeeze(1)
            if group.numel() == 0:
                continue
            part = x[group]
            if poisson:
                noise = poisson_noise(part, order.noise[group], gray, h[group], w[group], generator)
            else:
                noise = gaussian_noise(part, order.noise[group], gray, generator)
            out[group] = (part + noise).clamp(0, 1)
    return out


def _jpeg_each(x: torch.Tensor, quality: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
               which: torch.Tensor) -> torch.Tensor:
    """`x` with the samples `which` (bool) JPEG-compressed at their own quality, each at its own size."""
    chosen = which.nonzero().squeeze(1)
    if chosen.numel() == 0:
        return x
    out = x.clone()
    out[chosen] = jpeg(x[chosen], quality[chosen], h[chosen], w[chosen])
    return out


class DegradedBatches:
    """A batch source whose LR is the real-world degradation of its backend's HR batches, made on their device
    (the backend's own LR is dropped). Batch `index` of `epoch` is degraded from the key (seed, epoch, rank,
    index), so a resumed run, or another backend cutting the same crops, gets the same LR."""

    def __init__(self, source, degradation: RealESRGANDegradation, seed: int, rank: int):
        self.source, self.degradation, self.seed, self.rank = source, degradation, seed, rank
        self.name = f"{source.name} + realesrgan"
        self.plan = source.plan

    def __len__(self) -> int:
        """Batches per epoch for this process (the backend's)."""
        return len(self.source)

    def batches(self, epoch: int, start: int = 0):
        """(hr, lr) batches of `epoch` from batch `start`, the LR degraded on the HR's device."""
        for index, (hr, _) in enumerate(self.source.batches(epoch, start), start):
            yield hr, self.degradation(hr, self.seed, epoch, index, self.rank)


@dataclass(frozen=True)
class RealWorldLR:
    """The real-world LR of whole evaluation images: image `index` of a set is degraded from the key (seed,
    index), so every method, every validation and every run with that seed sees the same LR."""

    degradation: RealESRGANDegradation
    seed: int

    def __call__(self, hr: torch.Tensor, index: int) -> torch.Tensor:
        """The LR of `hr` (1, 3, H, W), H and W multiples of the scale, the set's image `index`."""
        return self.degradation.degrade(hr, (self.seed, index))
