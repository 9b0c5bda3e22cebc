"""Training images per second and model FLOP utilisation, side by side in one run.

    python benchmarks/train_throughput.py [--quick] [--no-record]

For phase A (SRResNet-16, MSE), phase B (SRGAN: SRResNet-16, the discriminator, VGG19 to conv5_4)
and SRCNN 9-5-5, each at HR 96 and 128 (x4) and a few batch sizes:
- the seed step: written the way the one-file script did it, eager fp32; in phase B the generator runs
  twice (once for D's update, again for G's), D is left trainable during G's update and the VGG19
  as torchvision hands it over (weights trainable), so autograd records the HR features too and
  computes D and VGG weight gradients nobody uses; one backward through both D forwards; every loss
  read back to the host every step (`.item()`, in every phase). The issue's lean-step list (one G
  forward, HR features under no_grad, D frozen, no per-step sync) is this list inverted;
- fastsr's step (engine/trainer.py) in eager fp32, and under the runtime settings `auto` picks on
  this device (on a CPU: eager fp32 + channels_last; on a GPU: compile + bf16 + channels_last), and
  on a GPU also compile + bf16 without channels_last.
First on synthetic batches already on the device (the models' own speed), then fed by the real
loader (`make_batch_source` with `data.backend=auto` from a `fastsr prepare` cache of the bundled
photographs: what a user gets).

FLOPs per step are counted by `torch.utils.flop_counter.FlopCounterMode` over one eager step of that
exact configuration (forward and backward of every convolution and matrix product, 2 FLOPs per
multiply-add; elementwise work such as BatchNorm, activations and the optimizer is not counted).
TFLOP/s = counted FLOPs x steps / time; MFU = TFLOP/s / the device's peak measured here with large
matrix products in the step's compute dtype (fp32, or bf16 under autocast).

The table is printed and appended to benchmarks/RESULTS.md with the machine named; the last line is
fastsr's phase-B speed-up over the seed step at HR 96 (the largest batch measured), as `N.Nx`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.flop_counter import FlopCounterMode

from fastsr.config import DataConfig, RuntimeConfig
from fastsr.recipe import from_dict
from fastsr.data import make_batch_source, resolve_source
from fastsr.data.cache import prepare_cache
from fastsr.engine.runtime import Precision, Runtime, allow_tf32, resolve_runtime
from fastsr.engine.steps import gan_step, pretrain_step
from fastsr.losses import PerceptualLoss, build_generator_loss, g_adv_loss, tv_loss
from fastsr.models import SRCNN, Discriminator, SRResNet
from report import publish  # benchmarks/report.py: this folder is on sys.path when a script runs

# the seed's loss weights (w_adv 1e-3, w_vgg 6e-3, w_tv 1e-6); VGG19 random: the same cost
RECIPE = from_dict({"loss": {"vgg_weights": "random"}})


class Bench:
    """The models and optimisers of one configuration, and its step."""

    def __init__(self, task: str, runtime: Runtime | None, device: torch.device):
        torch.manual_seed(0)
        self.task, self.runtime, self.device = task, runtime, device
        self.g = (SRCNN(4) if task == "srcnn" else SRResNet(4, 16, 64)).to(device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), 1e-4)
        self.d = Discriminator().to(device) if task == "B" else None
        self.opt_d = torch.optim.Adam(self.d.parameters(), 1e-4) if self.d is not None else None
        self.accelerator = Accelerator(cpu=device.type == "cpu")
        if runtime is None:  # the seed step
            self.vgg = PerceptualLoss("conv5_4", weights=None).to(device) if task == "B" else None  # random: same cost
            if self.vgg is not None:
                self.vgg.vgg.requires_grad_(True)  # as torchvision hands it over: weights trainable
            self.step = self._seed_step
            return
        self.precision = Precision(runtime.mixed_precision, device.type)
        self.g_train = runtime.for_training(self.g)
        self.d_train = runtime.for_training(self.d) if self.d is not None else None
        if task == "B":
            loss, self.gan, _ = build_generator_loss(RECIPE.loss)
            self.loss_train = loss.to(device).prepare(runtime.for_training)

    def step(self, hr, lr):
        hr, lr = self.runtime.batch(hr, lr)
        if self.task == "B":
            return gan_step(self.g_train, self.d_train, (hr, lr), self.opt_g, self.opt_d, self.accelerator,
                            self.loss_train, self.gan, self.precision)
        return pretrain_step(self.g_train, (hr, lr), self.opt_g, self.accelerator, "mse", self.precision)

    def _seed_step(self, hr, lr):
        g, d, w = self.g, self.d, RECIPE.loss
        if self.task != "B":
            loss = F.mse_loss(g(lr), hr)
            self.opt_g.zero_grad()
            loss.backward()
            self.opt_g.step()
            return {"pixel": loss.item()}
        fake = g(lr)
        self.opt_d.zero_grad()
        real_logits, fake_logits = d(hr), d(fake.detach())
        loss_d = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                  + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        loss_d.backward()
        self.opt_d.step()
        sr = g(lr)  # the generator again
        self.opt_g.zero_grad()
        content = F.mse_loss(self.vgg.vgg(sr), self.vgg.vgg(hr))  # HR features with autograd on
        loss_g = F.mse_loss(sr, hr) + w.w_vgg * content + w.w_adv * g_adv_loss(d(sr)) + w.w_tv * tv_loss(sr)
        loss_g.backward()  # D and the VGG still trainable: their weight gradients are computed too
        self.opt_g.step()
        return {"d": loss_d.item(), "g": loss_g.item()}  # a host round trip every step


def synthetic(batch: int, crop: int, device: torch.device):
    hr = torch.rand(batch, 3, crop, crop, device=device)
    return hr, F.avg_pool2d(hr, 4)


def flops_per_step(bench: Bench, batch: int, crop: int) -> float:
    eager = Bench(bench.task, None if bench.runtime is None else Runtime("off", bench.runtime.mixed_precision,
                                                                        bench.runtime.channels_last), bench.device)
    hr, lr = synthetic(batch, crop, bench.device)
    with FlopCounterMode(display=False) as counter:
        eager.step(hr, lr)
    return float(counter.get_total_flops())


def images_per_sec(bench: Bench, batches, warmup: int, steps: int, batch: int) -> float:
    """Steps over the given (hr, lr) batches; the losses are read once at the end (one sync)."""
    it = iter(batches)
    for _ in range(warmup):
        bench.step(*next(it))
    sync(bench.device)
    tic = time.perf_counter()
    for _ in range(steps):
        out = bench.step(*next(it))
    float(sum(v for v in out.values()))  # wait for the device
    sync(bench.device)
    return steps * batch / (time.perf_counter() - tic)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured: large matrix products in `dtype` (TF32 allowed for fp32 on a GPU)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.rand(n, n, device=device, dtype=dtype), torch.rand(n, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 4
    a @ b
    sync(device)
    tic = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - tic) / 1e12


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes on a 2-core CPU: HR 96, batch 16, 3 steps")
    ap.add_argument("--batch-sizes", type=int, nargs="+", help="default: 8 16 on a CPU (quick: 16), 16 32 64 on a GPU")
    ap.add_argument("--crops", type=int, nargs="+", help="HR crop sizes (default 96 128; quick: 96)")
    ap.add_argument("--steps", type=int, help="timed steps per row (default 3 on a CPU, 20 on a GPU)")
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        allow_tf32()
    crops = args.crops or ([96] if args.quick else [96, 128])
    if args.batch_sizes:
        batch_sizes = args.batch_sizes
    elif cuda:
        batch_sizes = [16, 32, 64]
    else:
        batch_sizes = [16] if args.quick else [8, 16]  # 16: the recipes' (and the seed's) batch size
    steps = args.steps or (20 if cuda else 3 if args.quick else 4)
    # The first steps compile (when compiling) and, on a CPU, let oneDNN settle its channels_last
    # kernels (measured: the first step after that still runs ~1.4x slower).
    warmup = 3 if cuda else 2
    auto = resolve_runtime(RuntimeConfig(), cuda)
    configs: dict[str, Runtime | None] = {"seed step, eager fp32": None, "fastsr, eager fp32": Runtime("off", "no", False),
                                          f"fastsr auto ({auto.describe()})": auto}
    if cuda:
        configs["fastsr, compile + bf16"] = Runtime("default", "bf16", False)
    peaks = {dtype: peak_tflops(device, dtype) for dtype in (torch.float32, torch.bfloat16)}
    print(f"{device}: measured peak {peaks[torch.float32]:.2f} TFLOP/s fp32, {peaks[torch.bfloat16]:.2f} bf16", flush=True)

    rows = []

    def measure(task, name, runtime, crop, batch, batches_fn, feed):
        bench = Bench(task, runtime, device)
        rate = images_per_sec(bench, batches_fn(), warmup, steps, batch)
        flops = flops_per_step(bench, batch, crop)
        tflops = flops * rate / batch / 1e12
        dtype = torch.bfloat16 if runtime is not None and runtime.mixed_precision == "bf16" else torch.float32
        rows.append((task, name, crop, batch, feed, rate, tflops, tflops / peaks[dtype]))
        print(f"  {task} | {name} | HR {crop} | batch {batch} | {feed}: {rate:.1f} img/s, {tflops:.3f} TFLOP/s, "
              f"MFU {100 * tflops / peaks[dtype]:.1f}%", flush=True)

    def forever(batch, crop):
        hr, lr = synthetic(batch, crop, device)
        while True:
            yield hr, lr

    for task in ("A", "B", "srcnn"):
        for crop in crops:
            for batch in batch_sizes:
                for name, runtime in configs.items():
                    measure(task, name, runtime, crop, batch, lambda b=batch, c=crop: forever(b, c), "synthetic")

    # What a user gets: the same steps fed by the real loader.
    work = Path(tempfile.mkdtemp(prefix="fastsr_train_bench_"))
    prepare_cache("samples", work / "cache", progress=False)
    samples = resolve_source("samples", "train", 4)
    for task in ("A", "B"):
        crop, batch = crops[0], batch_sizes[-1]
        data = DataConfig(source="samples", cache=str(work / "cache"), hr_crop=crop, repeat=64, workers=os.cpu_count() or 1)
        loader, note = make_batch_source(data, samples, 4, batch, device=device)

        def loader_batches():
            epoch = 0
            while True:
                yield from loader.batches(epoch)
                epoch += 1

        measure(task, f"fastsr auto ({auto.describe()})", auto, crop, batch, loader_batches, f"{loader.name} loader")

    names = {"A": "phase A (SRResNet-16, MSE)", "B": "phase B (SRGAN)", "srcnn": "SRCNN 9-5-5"}
    lines = ["| step | settings | HR | batch | data | img/s | TFLOP/s | MFU |", "|---|---|---|---|---|---|---|---|"]
    for task, name, crop, batch, feed, rate, tflops, mfu in rows:
        lines.append(f"| {names[task]} | {name} | {crop} | {batch} | {feed} | {rate:.1f} | {tflops:.3f} | {100 * mfu:.1f}% |")
    table = "\n".join(lines)
    seed = next(r for r in rows if r[0] == "B" and r[1].startswith("seed") and r[2] == crops[0] and r[3] == batch_sizes[-1])
    ours = next(r for r in rows if r[0] == "B" and r[1].startswith("fastsr auto") and r[2] == crops[0]
                and r[3] == batch_sizes[-1] and r[4] == "synthetic")
    command = "python benchmarks/train_throughput.py" + (" --quick" if args.quick else "")
    details = (f"Measured peak: {peaks[torch.float32]:.2f} TFLOP/s fp32{' (TF32)' if cuda else ''}, "
               f"{peaks[torch.bfloat16]:.2f} TFLOP/s bf16. {steps} timed steps per row after {warmup} warm-up.")
    body = (f"{table}\n\nPhase B, HR {crops[0]}, batch {batch_sizes[-1]}: fastsr auto {ours[5]:.1f} img/s vs the "
            f"seed step {seed[5]:.1f} img/s = {ours[5] / seed[5]:.2f}x.")
    publish("Training throughput", details, command, body, save=not args.no_record)
    print(f"fastsr's phase-B step vs the seed's, HR {crops[0]}, batch {batch_sizes[-1]}, {device}:")
    print(f"{ours[5] / seed[5]:.1f}x")


if __name__ == "__main__":
    main()
