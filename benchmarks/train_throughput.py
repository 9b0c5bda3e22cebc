"""Training images per second and model FLOP utilisation, side by side in one run; the loop's host overhead.

    python benchmarks/train_throughput.py [--quick] [--no-record] [--overhead-only]

For pretrain (SRResNet-16, MSE), finetune (SRGAN: SRResNet-16, the SRGAN discriminator, VGG19 to conv5_4)
and SRCNN 9-5-5, each at HR 96 and 128 (x4) and a few batch sizes, the rows (`SETTINGS` says what each is):
- the reference script's step (benchmarks/reference_step.py: that script's own code, not fastsr's), eager
  fp32. Pretrain: G, MSE, backward, step, `.item()`. Finetune: G for D's update, then G again for G's; D left
  trainable during G's update (its weight gradients computed and dropped); VGG19 `features[:35]` frozen, HR
  features without grad; a Sigmoid-headed D with `nn.BCELoss`; its own squared-difference TV; one backward
  for D's two forwards; `.item()` of both losses every step.
- fastsr's step (engine/steps.py) in eager fp32, and under the runtime settings `auto` picks on this
  device (on a CPU: eager fp32 + channels_last; on a GPU: compile + bf16 + channels_last), and on a GPU
  also compile + bf16 without channels_last.
First on synthetic batches already on the device (the models' own speed), then fed by the real
loader (`make_batch_source` with `data.backend=auto` from a `fastsr prepare` cache of the bundled
photographs: what a user gets).

FLOPs per step are counted by `torch.utils.flop_counter.FlopCounterMode` over one eager step of that
exact configuration (forward and backward of every convolution and matrix product that step runs, 2 FLOPs
per multiply-add: the reference script's second generator forward and D's weight gradients in G's update included;
elementwise work such as BatchNorm, activations and the optimizer is not counted). Architectures and
steps differ, so compare TFLOP/s as well as img/s. TFLOP/s = counted FLOPs x steps / time; MFU =
TFLOP/s / the device's peak measured here (`peak_tflops`: the faster of a large matrix product and a
256-channel convolution) in the step's compute dtype (fp32, or bf16 under autocast).

Also the training loop's host overhead per step (benchmarks/loop_overhead.py: `Loop.run_phases` against
the bare step function, a trivial model on tiny crops; `--overhead-only` measures just that) and, on a
GPU, the largest finetune batch that fits: both measured before the rows, as they take little time.

The tables are printed and appended to benchmarks/RESULTS.md with the machine named; the last line is
fastsr's finetune speed-up over the reference script step at HR 96 (the largest batch measured), as `N.Nx`.
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
from loop_overhead import HEADER as OVERHEAD_HEADER
from loop_overhead import measure_all as measure_overhead
from report import numbers, publish
from reference_step import ReferenceStep
from torch.utils.flop_counter import FlopCounterMode

from fastsr.config import DataConfig, RuntimeConfig
from fastsr.data import make_batch_source, resolve_source
from fastsr.data.cache import prepare_cache
from fastsr.engine.runtime import Precision, Runtime, allow_tf32, resolve_runtime
from fastsr.engine.steps import finetune_step, pretrain_step
from fastsr.losses import build_finetune_loss, build_pretrain_loss
from fastsr.models import DISCRIMINATORS, build_generator
from fastsr.recipe import from_dict

# (loop_overhead, report, reference_step: modules of benchmarks/, on sys.path when a script runs)

# fastsr's default term list with the reference script's loss weights (w_adv 1e-3, w_vgg 6e-3, w_tv 1e-6); VGG19
# random: the same cost as ImageNet's
RECIPE = from_dict({"loss": {"vgg_weights": "random"}})
REFERENCE = "reference script's step"


class Bench:
    """The models and optimisers of one configuration, and its step."""

    def __init__(self, task: str, runtime: Runtime | None, device: torch.device, batch_norm: bool = True):
        torch.manual_seed(0)
        self.task, self.runtime, self.device, self.batch_norm = task, runtime, device, batch_norm
        self.g = (build_generator("srcnn", scale=4) if task == "srcnn" else
                  build_generator("srresnet", scale=4, res_blocks=16, channels=64, batch_norm=batch_norm)).to(device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), 1e-4)
        self.d = (DISCRIMINATORS.rebuild({"name": "srgan", "batch_norm": batch_norm}, "benchmark").to(device)
                  if task == "finetune" else None)
        self.opt_d = torch.optim.Adam(self.d.parameters(), 1e-4) if self.d is not None else None
        self.accelerator = Accelerator(cpu=device.type == "cpu")
        if runtime is None:  # the reference script's own step, on the same networks
            self.step = ReferenceStep(self.g, self.opt_g, self.d, self.opt_d)
            return
        self.precision = Precision(runtime.mixed_precision, device.type)
        self.g_train = runtime.for_training(self.g)
        self.d_train = runtime.for_training(self.d) if self.d is not None else None
        if task == "finetune":
            loss, self.gan, _ = build_finetune_loss(RECIPE.loss)
        else:
            loss, _ = build_pretrain_loss(RECIPE.loss)
        self.loss_train = loss.to(device).prepare(runtime.for_training)

    def step(self, hr, lr):
        """One training step of fastsr's on (hr, lr); returns its losses by name, left on the device."""
        hr, lr = self.runtime.start_step(hr, lr)
        if self.task == "finetune":
            return finetune_step(self.g_train, self.d_train, (hr, lr), self.opt_g, self.opt_d, self.accelerator,
                                 self.loss_train, self.gan, self.precision)
        return pretrain_step(self.g_train, (hr, lr), self.opt_g, self.accelerator, self.loss_train, self.precision)


def synthetic(batch: int, crop: int, device: torch.device):
    """A random (HR, LR) batch made on `device`, the LR a x4 average pool (cheap; the models' speed is what counts)."""
    hr = torch.rand(batch, 3, crop, crop, device=device)
    return hr, F.avg_pool2d(hr, 4)


def flops_per_step(bench: Bench, batch: int, crop: int) -> float:
    """FLOPs of one step of `bench`'s configuration, counted on a fresh eager copy (compile off, the same
    precision and layout) so the timed models are untouched."""
    eager = Bench(bench.task, None if bench.runtime is None else Runtime("off", bench.runtime.mixed_precision,
                                                                        bench.runtime.channels_last), bench.device,
                  bench.batch_norm)
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
    """Wait for a CUDA device's queued work, so timings cover it; nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's measured best in `dtype`: the faster of a large matrix product (TF32 allowed for fp32 on
    a GPU) and a 3x3 convolution of 256 channels at 48x48, batch 16, channels_last (the steps' own kind of
    work: VGG19's middle layers), each the best of a few runs. The convolution counts because BLAS is not
    always the fastest kernel: on some CPUs oneDNN's NHWC convolutions run at twice the matrix product's rate
    (benchmarks/RESULTS.md), which would make the steps' MFU come out above 100%."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.rand(n, n, device=device, dtype=dtype), torch.rand(n, n, device=device, dtype=dtype)
    x = torch.rand(16, 256, 48, 48, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.rand(256, 256, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    reps = 10 if device.type == "cuda" else 5
    kernels = ((lambda: a @ b, 2 * n**3), (lambda: F.conv2d(x, w, padding=1), 2 * 16 * 256 * 256 * 9 * 48 * 48))
    best = 0.0
    for kernel, flops in kernels:
        kernel()
        for _ in range(reps):
            sync(device)
            tic = time.perf_counter()
            kernel()
            sync(device)
            best = max(best, flops / (time.perf_counter() - tic) / 1e12)
    return best


OVERHEAD_DETAILS = ("`Loop.run_phases` against `pretrain_step` alone over the same 1000 batches, set up as `fastsr "
                    "train` does; SRCNN 1-1-1 with 4 channels, batch 2, HR 16, x4; torch loader in the process "
                    "(workers 0, images cached); torch on one thread; best of 5 (benchmarks/loop_overhead.py)")


def overhead_table() -> str:
    """Measure the loop's overhead (benchmarks/loop_overhead.py) and return its Markdown table; each setting's
    overhead also goes to the GPU check's summary."""
    results = measure_overhead()
    for result in results:
        numbers("loop overhead", f"{result.setting}, beyond the step", result.us(result.replay_s), "us/step")
    return "\n".join([OVERHEAD_HEADER, *(result.row() for result in results)])


def main(argv: list[str] | None = None) -> None:
    """Measure the loop overhead and every row the module docstring lists, print the tables and append them to
    RESULTS.md (unless --no-record)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes on a 2-core CPU: HR 96, batch 16, 3 steps")
    ap.add_argument("--batch-sizes", type=int, nargs="+", help="default: 8 16 on a CPU (quick: 16), 16 32 64 on a GPU")
    ap.add_argument("--crops", type=int, nargs="+", help="HR crop sizes (default 96 128; quick: 96)")
    ap.add_argument("--steps", type=int, help="timed steps per row (default 3 on a CPU, 20 on a GPU)")
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    ap.add_argument("--overhead-only", action="store_true", help="only the training loop's host overhead per step")
    ap.add_argument("--gpu-check", action="store_true",
                    help="benchmarks/gpu_check.sh's selection: both phases at HR 96 and 128, batch 64, eager, "
                         "compile + bf16 and CUDA graphs, then the largest finetune batch that fits")
    args = ap.parse_args(argv)
    if args.overhead_only:
        publish("Training loop overhead", OVERHEAD_DETAILS, "python benchmarks/train_throughput.py --overhead-only",
                overhead_table(), save=not args.no_record)
        return
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        allow_tf32()
    crops = args.crops or ([96] if args.quick and not args.gpu_check else [96, 128])
    if args.batch_sizes:
        batch_sizes = args.batch_sizes
    elif args.gpu_check:
        batch_sizes = [64]
    elif cuda:
        batch_sizes = [16, 32, 64]
    else:
        batch_sizes = [16] if args.quick else [8, 16]  # 16: the recipes' (and the reference script's) batch size
    steps = args.steps or (20 if cuda else 3 if args.quick else 4)
    # The first steps compile (when compiling) and, on a CPU, let oneDNN settle its channels_last
    # kernels, which takes more than one step there (the step after a single warm-up one still runs slower).
    warmup = 3 if cuda else 2
    auto = resolve_runtime(RuntimeConfig(), cuda)
    # name -> (runtime, what the row is); None: the reference script's step
    settings: dict[str, tuple[Runtime | None, str]] = {
        REFERENCE: (None, ("the reference script's own step as it was written (benchmarks/reference_step.py: G twice in finetune, "
                      "D trainable in G's update, VGG frozen, Sigmoid + BCELoss, `.item()` every step), eager fp32")),
        "fastsr, eager fp32": (Runtime("off", "no", False), "fastsr's step (engine/steps.py), every runtime switch off"),
        "fastsr auto": (auto, f"fastsr's step under `runtime: auto` on this device ({auto.describe()})"),
    }
    if cuda:
        settings["fastsr, compile + bf16"] = (Runtime("default", "bf16", False),
                                              "fastsr's step compiled, bf16 autocast, channels_last off")
        settings["fastsr, CUDA graphs + bf16, no BN"] = (
            Runtime("reduce-overhead", "bf16", True),
            "compiled with CUDA graphs (`runtime.compile=reduce-overhead`), bf16, channels_last, the generator and "
            "discriminator without BatchNorm (`model.batch_norm=false`, `discriminator.batch_norm=false`)")
    if args.gpu_check:  # the reference script and plain eager rows are CPU-comparable; the check wants the GPU's own
        settings = {k: v for k, v in settings.items() if k not in (REFERENCE,)}
    configs = {name: runtime for name, (runtime, _) in settings.items()}
    peaks = {dtype: peak_tflops(device, dtype) for dtype in (torch.float32, torch.bfloat16)}
    print(f"{device}: measured peak {peaks[torch.float32]:.2f} TFLOP/s fp32, {peaks[torch.bfloat16]:.2f} bf16", flush=True)
    # The one-off measurements first: they are quick, and their numbers reach $FASTSR_SUMMARY even when a
    # time-boxed run (benchmarks/gpu_check.sh) is stopped in the compiled rows.
    largest = largest_batch(device, crops[0]) if cuda else None
    if largest:
        numbers("training", f"largest finetune batch that fits, HR {crops[0]}, bf16", largest, "crops")
        print(f"largest finetune batch that fits, HR {crops[0]}, bf16: {largest}", flush=True)
    overheads = overhead_table()

    rows = []
    names = {"pretrain": "pretrain (SRResNet-16, MSE)", "finetune": "finetune (SRGAN)", "srcnn": "SRCNN 9-5-5"}

    def measure(task, name, runtime, crop, batch, batches_fn, feed):
        bench = Bench(task, runtime, device, batch_norm="no BN" not in name)
        rate = images_per_sec(bench, batches_fn(), warmup, steps, batch)
        flops = flops_per_step(bench, batch, crop)
        tflops = flops * rate / batch / 1e12
        dtype = torch.bfloat16 if runtime is not None and runtime.mixed_precision == "bf16" else torch.float32
        rows.append((task, name, crop, batch, feed, rate, tflops, tflops / peaks[dtype]))
        print(f"  {task} | {name} | HR {crop} | batch {batch} | {feed}: {rate:.1f} img/s, {tflops:.3f} TFLOP/s, "
              f"MFU {100 * tflops / peaks[dtype]:.1f}%", flush=True)
        what = f"{names[task]}, {name}, HR {crop}, batch {batch}, {feed}"
        numbers("training", what, rate, "img/s")
        numbers("training", what, 100 * tflops / peaks[dtype], "% MFU")

    def forever(batch, crop):
        hr, lr = synthetic(batch, crop, device)
        while True:
            yield hr, lr

    for crop in crops:  # every step at one crop size before the next: what a time-boxed run keeps when stopped
        for task in ("pretrain", "finetune") if args.gpu_check else ("pretrain", "finetune", "srcnn"):
            for batch in batch_sizes:
                for name, runtime in configs.items():
                    measure(task, name, runtime, crop, batch, lambda b=batch, c=crop: forever(b, c), "synthetic")

    # What a user gets: the same steps fed by the real loader.
    work = Path(tempfile.mkdtemp(prefix="fastsr_train_bench_"))
    prepare_cache("samples", work / "cache", progress=False)
    samples = resolve_source("samples", "train", 4)
    for task in ("pretrain", "finetune"):
        crop, batch = crops[0], batch_sizes[-1]
        data = DataConfig(source="samples", cache=str(work / "cache"), hr_crop=crop, repeat=64, workers=os.cpu_count() or 1)
        loader, _ = make_batch_source(data, samples, 4, batch, device=device)

        def loader_batches(loader=loader):
            epoch = 0
            while True:
                yield from loader.batches(epoch)
                epoch += 1

        measure(task, "fastsr auto", auto, crop, batch, loader_batches, f"{loader.name} loader")

    lines = ["| step | settings | HR | batch | data | img/s | TFLOP/s | MFU |", "|---|---|---|---|---|---|---|---|"]
    for task, name, crop, batch, feed, rate, tflops, mfu in rows:
        lines.append(f"| {names[task]} | {name} | {crop} | {batch} | {feed} | {rate:.1f} | {tflops:.3f} | {100 * mfu:.1f}% |")
    table = "\n".join(lines)
    legend = "\n".join(f"- {name}: {what}." for name, (_, what) in settings.items())
    ours = next(r for r in rows if r[0] == "finetune" and r[1] == "fastsr auto" and r[2] == crops[0]
                and r[3] == batch_sizes[-1] and r[4] == "synthetic")
    reference = next((r for r in rows if r[0] == "finetune" and r[1] == REFERENCE and r[2] == crops[0]
                      and r[3] == batch_sizes[-1]), None)
    versus = (f"Finetune, HR {crops[0]}, batch {batch_sizes[-1]}: fastsr auto {ours[5]:.1f} img/s vs the reference script's "
              f"step {reference[5]:.1f} img/s = {ours[5] / reference[5]:.2f}x." if reference else "")
    if largest:
        versus += f"\n\nThe largest finetune batch that fits at HR {crops[0]} (eager, bf16): {largest}."
    command = ("python benchmarks/train_throughput.py" + (" --quick" if args.quick else "")
               + (" --gpu-check" if args.gpu_check else "")
               + (f" --crops {' '.join(map(str, args.crops))}" if args.crops else "")
               + (f" --batch-sizes {' '.join(map(str, args.batch_sizes))}" if args.batch_sizes else "")
               + (f" --steps {args.steps}" if args.steps else ""))
    details = (f"Measured peak (the faster of a large matmul and a 256-channel NHWC conv): "
               f"{peaks[torch.float32]:.2f} TFLOP/s fp32{' (TF32)' if cuda else ''}, "
               f"{peaks[torch.bfloat16]:.2f} TFLOP/s bf16. {steps} timed steps per row after {warmup} warm-up.")
    body = (f"{table}\n\nSettings:\n{legend}\n\nData: synthetic = one random batch already on the device, reused; "
            f"a loader = `make_batch_source` (data.backend=auto) from a `fastsr prepare` cache of the samples.\n\n"
            f"{versus}\n\nThe training loop's host overhead per step ({OVERHEAD_DETAILS}):\n\n{overheads}")
    publish("Training throughput", details, command, body, save=not args.no_record)
    if reference:
        print(f"fastsr's finetune step vs the reference script's, HR {crops[0]}, batch {batch_sizes[-1]}, {device}:")
        print(f"{ours[5] / reference[5]:.1f}x")


def largest_batch(device: torch.device, crop: int, start: int = 64, limit: int = 1 << 14) -> int:
    """The largest finetune batch (SRResNet-16, SRGAN's D, VGG19) whose eager bf16 step fits in device memory:
    doubled from `start` until a step runs out of memory, then bisected."""
    def fits(batch: int) -> bool:
        try:
            bench = Bench("finetune", Runtime("off", "bf16", True), device)
            bench.step(*synthetic(batch, crop, device))
            sync(device)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    low, high = 0, start
    while high <= limit and fits(high):
        low, high = high, 2 * high
    while high - low > max(1, low // 8):  # to within 1/8
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


if __name__ == "__main__":
    main()
