"""Inference frames per second of every generator architecture fastsr has, at a 640x480 input (x4), beside
traiNNer-redux's published figures for the same architectures.

    python benchmarks/infer_throughput.py [--archs NAME ...] [--size 640x480] [--batch 1] [--warmup N]
        [--iters N] [--max-seconds S] [--dtype fp32 bf16 fp16] [--channels-last off on] [--compile off on]
        [--device cpu|cuda] [--threads N] [--tf32] [--json OUT] [--no-record]

Architectures: the `model` sections of the packaged recipes (fastsr/recipes/*.yaml, read with
`load_recipe`, built as the trainer builds them: `GENERATORS.create(recipe.model, scale=recipe.scale)`),
so an architecture that ships a recipe appears without editing this script. The quickstart* recipes (demo
configs) are left out unless named; recipes whose model sections are equal (same architecture, same keys,
same scale) are measured once, under the recipe whose own file writes that section (esrgan_x4 for
esrgan/realesrnet/realesrgan); bicubic (nothing to run) has no recipe. `--archs` takes recipe names
(quickstart ones too), architecture names (every default recipe of that architecture) and explicit
configs `ARCH:key=value,...` (e.g. `compact:convs=16`, traiNNer-redux's compact).

Rows: each architecture config x dtype x memory format x eager/compiled, eager rows first, the architectures
in order of FLOPs (the cheapest first, so a run stopped early keeps the most rows). Each row builds
the generator afresh (random weights: speed does not depend on them), in eval mode, on --device, and runs
it on a random (batch, 3, H, W) fp32 input under `torch.inference_mode()`:
- dtype `fp32`: as `fastsr upscale` runs (on a GPU TF32 only with --tf32); `bf16`/`fp16`:
  `torch.autocast(device, dtype)` around the call, weights and input left fp32. That is what
  traiNNer-redux's scripts/benchmarking/benchmark_archs.py does (autocast, fp16 except for the
  architectures it lists as without fp16, which get bf16), not `model.to(bf16)`.
- layout `channels_last`: the model and the input converted with `memory_format=torch.channels_last`
  (as theirs does); `contiguous`: NCHW.
- `compiled`: `torch.compile(model)` (default mode, dynamo reset first, so the first call pays the
  whole compile); `eager`: the module itself.
The first --warmup calls are untimed (the first's time is the `1st call s` column: compile for compiled
rows); then --iters calls, each synchronised, timed one by one, stopped early once the timed calls add
up to --max-seconds (at least one is always timed; the `timed` column says `n (cap)` when cut).
fps = batch x timed calls / their total time; ms/frame = its inverse. On CUDA `cudnn.benchmark` is on
(one input shape; traiNNer-redux sets it too) and `peak GiB` is the most memory allocated during the row.

params: the generator's parameter count. GFLOP/frame: `torch.utils.flop_counter.FlopCounterMode` over one
forward per architecture config at the row's input size, on the meta device (no compute; falls back to a
real forward where an op has no meta kernel): convolutions and matrix products (attention included), 2
FLOPs per multiply-add; interpolation, activations and other elementwise work are not counted.
TFLOP/s = GFLOP/frame x fps / 1000: what the row achieves, comparable across architectures.

A failing row (out of memory, a compile error) is kept in the table with its error instead of a number.

traiNNer-redux's figures (`THEIRS`) are printed as a separate table, never mixed into the measured rows:
numbers copied from their docs/source/benchmarks.md (commit 6bc680808cfc88d4f7428190b6fa3bc11ba195fb),
4x scale, RTX 4090 (+ i9-13000K, Windows 11), (1, 3, 480, 640) input, "1 warmup + 5 runs averaged" as
the file states, autocast fp16 (bf16 for SwinIR). Their `FPS` is NCHW, `FPS (CL)` channels_last; sec/img
is from the NCHW run. The last column says which fastsr config has the same parameter count (checked
here on the meta device), i.e. which measured row, if any, is the same network.

CPU: the defaults are 1 warm-up call, 2 timed calls and a 60 s cap per row. On a 2-core AMD EPYC (Zen 4,
AVX-512 bf16) a 640x480 frame in eager fp32 NCHW took 2.4-4.5 s for SPAN, SRCNN 9-5-5 and Compact 64x32,
11 s for SRResNet-16, 20 s for SwinIR-light and 2.5-3 min for RRDBNet-23 and SwinIR classical (11 and 8
TFLOP/frame; those with the cores shared with other jobs); bf16 autocast and channels_last were each faster, and
torch.compile of a light one took 4-9 s. The 28 eager rows of the default selection took 45 min there (cores
shared), the 12 compiled rows of the three light ones 1.5 min; with the compiled rows of RRDBNet and SwinIR
the whole default selection is well over an hour: select with --archs, --dtype, --compile.
GPU: 3 warm-up calls, 50 timed, a 20 s cap.

Prints the tables with the command, torch, device and threads, and appends them to benchmarks/RESULTS.md
unless --no-record; `--json OUT` writes the rows, the settings and THEIRS as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
import yaml
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from fastsr.models import GENERATORS
from fastsr.recipe import load_recipe, packaged_recipes
from report import numbers, publish  # benchmarks/report.py: this folder is on sys.path when a script runs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# traiNNer-redux's published inference figures for the architectures fastsr has, copied from
# https://github.com/the-database/traiNNer-redux/blob/6bc680808cfc88d4f7428190b6fa3bc11ba195fb/docs/source/benchmarks.md
# "### 4x scale" table ("(1, 3, 480, 640) input, 1 warmup + 5 runs averaged"; RTX 4090 + i9-13000K, Windows 11).
THEIRS_SOURCE = ("the-database/traiNNer-redux", "docs/source/benchmarks.md", "6bc680808cfc88d4f7428190b6fa3bc11ba195fb")
THEIRS_SETTINGS = ("traiNNer-redux docs, RTX 4090 (+ i9-13000K, Windows 11), 640x480 input (1, 3, 480, 640), x4, "
                   "torch.autocast fp16 (bf16 for SwinIR), fp32 weights, inference_mode, cudnn.benchmark, "
                   "\"1 warmup + 5 runs averaged\" as the file states")


class Theirs(NamedTuple):
    """One row of their table as printed there, and which fastsr network it is."""

    name: str
    dtype: str
    fps: float
    fps_cl: float  # channels_last
    sec_per_img: float
    vram_cl_gb: float
    params: int  # as their table counts them
    arch: str  # the fastsr generator of that architecture
    spec: str | None = None  # the fastsr config (an --archs item) found here with the same parameter count
    fastsr_params: int | None = None  # where fastsr counts the same network's parameters differently
    why: str = ""  # ... and why


SPAN_WHY = ("their count includes the merged eval_conv of each Conv3XC (396,240 weights), which fastsr keeps as a "
            "buffer rebuilt from the branches")
THEIRS = [
    Theirs("superultracompact", "fp16", 730.61, 851.05, 0.0014, 0.18, 52_968, "compact", "compact:channels=24,convs=8"),
    Theirs("ultracompact", "fp16", 246.21, 359.57, 0.0041, 0.18, 325_488, "compact", "compact:channels=64,convs=8"),
    Theirs("compact", "fp16", 136.54, 210.66, 0.0073, 0.18, 621_424, "compact", "compact:channels=64,convs=16"),
    Theirs("span", "fp16", 94.39, 95.91, 0.0106, 0.60, 2_236_728, "span", "span_x4", 1_840_488, SPAN_WHY),
    Theirs("esrgan use_pixel_unshuffle=True", "fp16", 3.28, 4.60, 0.3051, 2.48, 16_697_987, "rrdbnet", "esrgan_x4"),
    Theirs("esrgan use_pixel_unshuffle=False", "fp16", 3.27, 4.60, 0.3054, 2.48, 16_697_987, "rrdbnet", "esrgan_x4"),
    Theirs("swinir_s", "bf16", 0.99, 0.98, 1.0130, 1.55, 929_628, "swinir", "swinir_light_x4"),
    Theirs("swinir_m", "bf16", 0.62, 0.61, 1.6084, 2.64, 11_900_199, "swinir", "swinir_x4"),
    Theirs("swinir_l", "bf16", 0.46, 0.39, 2.1642, 3.56, 28_013_059, "swinir"),
]


@dataclasses.dataclass
class Arch:
    """One architecture config to measure: `label` names it in the table (recipe and architecture)."""

    label: str
    config: object  # the registry's typed PartConfig
    scale: int
    aliases: list[str] = dataclasses.field(default_factory=list)  # other recipes with this same model section

    @property
    def key(self) -> tuple:
        return key_of(self.config, self.scale)

    def build(self) -> torch.nn.Module:
        return GENERATORS.create(self.config, scale=self.scale)


def key_of(config, scale: int) -> tuple:
    return config.name, scale, json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)


def describe(config) -> str:
    """`name k=v ...`: the config's fields, for the legend."""
    fields = dataclasses.asdict(config)
    fields.pop("name", None)
    return f"{config.name} " + " ".join(f"{k}={v}" for k, v in fields.items())


def writes_model(path: Path) -> bool:
    """Whether the recipe file itself has a `model:` section (rather than inheriting it through `base:`)."""
    return "model" in (yaml.safe_load(path.read_text()) or {})


def recipe_archs(names: list[str], notes: list[str]) -> list[Arch]:
    """The model sections of the named packaged recipes, deduplicated; a recipe that does not load (an
    architecture not registered yet) is skipped with a note."""
    paths = packaged_recipes()
    found: dict[tuple, Arch] = {}
    for name in names:
        try:
            recipe = load_recipe(name)
        except Exception as err:  # noqa: BLE001 - a half-added recipe must not stop the others
            notes.append(f"recipe {name} skipped: {str(err).splitlines()[0]}")
            continue
        if not GENERATORS.entry(recipe.model.name).cls.trainable:
            continue
        arch = Arch(f"{name} ({recipe.model.name})", recipe.model, recipe.scale)
        kept = found.setdefault(arch.key, arch)
        if kept is arch:
            continue
        kept_name = kept.label.split(" (")[0]
        if writes_model(paths[name]) and not writes_model(paths[kept_name]):  # it names the row
            arch.aliases = [kept_name, *kept.aliases]
            found[arch.key] = arch
        else:
            kept.aliases.append(name)
    return list(found.values())


def parse_spec(spec: str) -> Arch:
    """`ARCH:key=value,...` -> an explicit config at scale 4 (values read as YAML: ints, lists, booleans)."""
    name, _, rest = spec.partition(":")
    raw: dict = {"name": name}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--archs {spec}: `{item}` is not key=value")
        raw[key.strip()] = yaml.safe_load(value)
    config = GENERATORS.config_from(raw, "model", "--archs")
    return Arch(f"{spec} ({name})", config, 4)


def select_archs(selection: list[str] | None, notes: list[str]) -> list[Arch]:
    """The default selection (every packaged recipe but the quickstart ones), or what --archs names."""
    recipes = list(packaged_recipes())
    default = [r for r in recipes if not r.startswith("quickstart")]
    if not selection:
        archs = recipe_archs(default, notes)
        recipeless = [n for n in GENERATORS.names() if GENERATORS.entry(n).cls.trainable
                      and n not in {a.config.name for a in recipe_archs(recipes, [])}]
        if recipeless:
            notes.append(f"registered without a packaged recipe, so not measured: {', '.join(recipeless)} "
                         f"(`--archs NAME` measures its defaults)")
        return archs
    archs: list[Arch] = []
    for item in selection:
        if ":" in item:
            archs.append(parse_spec(item))
        elif item in recipes:
            archs += recipe_archs([item], notes)
        elif item in GENERATORS:
            of_arch = [a for a in recipe_archs(default, []) if a.config.name == item]
            archs += of_arch or [Arch(f"{item} defaults ({item})", GENERATORS.default(item), 4)]
        else:
            raise SystemExit(f"--archs {item}: neither a packaged recipe ({', '.join(recipes)}) nor a registered "
                             f"generator ({', '.join(GENERATORS.names())}) nor ARCH:key=value,...")
    unique: dict[tuple, Arch] = {}
    for arch in archs:
        if arch.key in unique:
            unique[arch.key].aliases += [arch.label.split(" (")[0], *arch.aliases]
        else:
            unique[arch.key] = arch
    return list(unique.values())


class _SkipInit(TorchFunctionMode):
    """Random weight initialisation as a no-op (`normal_`, `uniform_`, ... return their tensor untouched):
    building a model only to count its parameters and FLOPs then costs its allocation alone."""

    INIT = frozenset({"normal_", "uniform_", "trunc_normal_", "kaiming_normal_", "kaiming_uniform_",
                      "xavier_normal_", "xavier_uniform_", "orthogonal_", "random_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.INIT and args and isinstance(args[0], torch.Tensor):
            return args[0]
        return func(*args, **(kwargs or {}))


def meta_model(arch: Arch) -> torch.nn.Module:
    """The generator on the meta device (shapes only, weights never initialised): built there, or, for an
    __init__ that reads a tensor's values (`.tolist()`), built on the CPU and moved."""
    with _SkipInit():
        try:
            with torch.device("meta"):
                return arch.build().eval()
        except Exception:  # noqa: BLE001
            return arch.build().eval().to("meta")


_PARAMS: dict[tuple, int] = {}


def params_of(arch: Arch) -> int:
    """The parameter count, once per config."""
    if arch.key not in _PARAMS:
        _PARAMS[arch.key] = sum(p.numel() for p in meta_model(arch).parameters())
    return _PARAMS[arch.key]


def gflop_per_frame(arch: Arch, batch: int, h: int, w: int, device: torch.device) -> tuple[float, str]:
    """GFLOP of one forward per frame, counted on the meta device (no compute) or, where an op has no meta
    kernel, on a real forward on `device`; and which of the two it was."""
    try:
        model = meta_model(arch)
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.empty(batch, 3, h, w, device="meta"))
        return counter.get_total_flops() / batch / 1e9, "meta"
    except Exception:  # noqa: BLE001 - fall back to the real thing
        pass
    model = arch.build().eval().to(device)
    x = torch.rand(batch, 3, h, w, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / batch / 1e9, "real"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Row:
    arch: str
    dtype: str
    layout: str
    mode: str
    fps: float = math.nan
    ms: float = math.nan
    params: int = 0
    gflop: float = math.nan
    tflops: float = math.nan
    first_s: float = math.nan
    timed: int = 0
    capped: bool = False
    peak_gib: float | None = None
    error: str | None = None


def measure(arch: Arch, dtype: str, channels_last: bool, compiled: bool, args, device: torch.device,
            h: int, w: int) -> Row:
    """One row: build, warm up, time (see the module docstring)."""
    row = Row(arch.label, dtype if dtype == "fp32" else f"{dtype} autocast",
              "channels_last" if channels_last else "contiguous", "compiled" if compiled else "eager")
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        model = arch.build().eval().to(device)
        x = torch.rand(args.batch, 3, h, w, device=device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        if compiled:
            torch._dynamo.reset()
            fn = torch.compile(model)
        else:
            fn = model
        with torch.inference_mode(), torch.autocast(device.type, DTYPES[dtype], enabled=dtype != "fp32"):
            for i in range(args.warmup):
                tic = time.perf_counter()
                out = fn(x)
                sync(device)
                if i == 0:
                    row.first_s = time.perf_counter() - tic
            want = (args.batch, 3, h * arch.scale, w * arch.scale)
            if tuple(out.shape) != want:
                raise RuntimeError(f"output {tuple(out.shape)}, expected {want}")
            del out
            times: list[float] = []
            while len(times) < args.iters:
                tic = time.perf_counter()
                fn(x)
                sync(device)
                times.append(time.perf_counter() - tic)
                if sum(times) >= args.max_seconds and len(times) < args.iters:
                    row.capped = True
                    break
        row.timed = len(times)
        row.fps = args.batch * len(times) / sum(times)
        row.ms = 1e3 / row.fps
        if device.type == "cuda":
            row.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    except Exception as err:  # noqa: BLE001 - the row says what failed; the others still run
        row.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160] if str(err).strip() else ''}"
    finally:
        model = fn = x = None  # noqa: F841
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def fmt(value: float, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def sig(value: float) -> str:
    """4 significant digits (all the integer ones above 1000): tiny test sizes and 640x480 alike."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.0f}" if value >= 1000 else f"{value:.4g}"


def measured_table(rows: list[Row], cuda: bool, cap: float) -> str:
    head = "| recipe (architecture) | dtype | layout | mode | fps | ms/frame | params | GFLOP/frame | TFLOP/s | 1st call s | timed |"
    rule = "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"
    if cuda:
        head, rule = head + " peak GiB |", rule + "---:|"
    lines = [head, rule]
    for r in rows:
        if r.error:
            cells = [r.arch, r.dtype, r.layout, r.mode, f"failed: {r.error.replace('|', '/')}", "-", f"{r.params:,}",
                     sig(r.gflop), "-", fmt(r.first_s, 2), "-"]
        else:
            timed = f"{r.timed} (cap {cap:g} s)" if r.capped else str(r.timed)
            cells = [r.arch, r.dtype, r.layout, r.mode, sig(r.fps), sig(r.ms), f"{r.params:,}", sig(r.gflop), sig(r.tflops),
                     fmt(r.first_s, 2), timed]
        if cuda:
            cells.append(fmt(r.peak_gib, 2) if r.peak_gib is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def theirs_counterparts(archs: list[Arch], params: dict[tuple, int]) -> list[str]:
    """For each THEIRS row: the fastsr config of that architecture with the same parameter count, if any: a
    measured row, else the config THEIRS names (checked here)."""
    out = []
    for t in THEIRS:
        want = t.fastsr_params or t.params
        why = f" ({t.why})" if t.fastsr_params else ""
        if t.arch not in GENERATORS:
            out.append(f"none: no `{t.arch}` generator registered in this fastsr")
            continue
        same = [a.label for a in archs if a.config.name == t.arch and params[a.key] == want]
        if same:
            out.append(f"same params as measured row {', '.join(same)}{why}")
            continue
        try:
            arch = (parse_spec(t.spec) if ":" in t.spec else recipe_archs([t.spec], [])[0]) if t.spec else None
        except Exception:  # noqa: BLE001 - a recipe or key not there (yet)
            arch = None
        if arch is not None and params_of(arch) == want:
            out.append(f"same params as fastsr `{t.spec}`, not measured in this run (`--archs {t.spec}`){why}")
            continue
        mine = sorted({f"{params[a.key]:,}" for a in archs if a.config.name == t.arch})
        out.append(f"fastsr `{t.arch}`, not this config" + (f" (measured: {', '.join(mine)} params)" if mine else ""))
    return out


def theirs_table(counterparts: list[str]) -> str:
    lines = ["| their row (4x) | dtype | FPS | FPS (channels_last) | sec/img | VRAM (CL) GB | params | fastsr counterpart |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for t, where in zip(THEIRS, counterparts):
        lines.append(f"| {t.name} | {t.dtype} | {t.fps:.2f} | {t.fps_cl:.2f} | {t.sec_per_img:.4f} | {t.vram_cl_gb:.2f} | "
                     f"{t.params:,} | {where} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    """Measure the selected rows, print the measured table and traiNNer-redux's; return the rows."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", help="packaged recipe names, generator names or ARCH:key=value,... "
                    "(default: every packaged recipe but quickstart*, deduplicated)")
    ap.add_argument("--size", default="640x480", help="LR input WIDTHxHEIGHT (default 640x480)")
    ap.add_argument("--batch", type=int, default=1, help="frames per call (default 1)")
    ap.add_argument("--warmup", type=int, help="untimed calls first, >= 1 (default 1 on a CPU, 3 on a GPU)")
    ap.add_argument("--iters", type=int, help="timed calls per row (default 2 on a CPU, 50 on a GPU)")
    ap.add_argument("--max-seconds", type=float, help="stop timing a row once its timed calls add up to this "
                    "(at least one call; default 60 on a CPU, 20 on a GPU)")
    ap.add_argument("--dtype", nargs="+", choices=tuple(DTYPES),
                    help="fp32 and/or autocast bf16/fp16 (default fp32 bf16; on a GPU also fp16)")
    ap.add_argument("--channels-last", nargs="+", choices=("off", "on"), default=["off", "on"],
                    help="memory formats: off = contiguous NCHW, on = channels_last (default both)")
    ap.add_argument("--compile", nargs="+", choices=("off", "on"), default=["off", "on"],
                    help="eager (off) and/or torch.compile (on) (default both)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--tf32", action="store_true", help="GPU: allow TF32 in the fp32 rows (default off, as fastsr upscale)")
    ap.add_argument("--json", help="also write the rows, settings and traiNNer-redux's figures to this JSON file")
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        ap.error(f"--size {args.size}: expected WIDTHxHEIGHT, e.g. 640x480")
    cuda = args.device == "cuda"
    args.warmup = 3 if args.warmup is None and cuda else 1 if args.warmup is None else args.warmup
    args.iters = args.iters or (50 if cuda else 2)
    args.max_seconds = args.max_seconds or (20.0 if cuda else 60.0)
    args.dtype = args.dtype or (["fp32", "bf16", "fp16"] if cuda else ["fp32", "bf16"])
    if args.warmup < 1 or args.iters < 1 or args.batch < 1:
        ap.error("--warmup, --iters and --batch must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32

    notes: list[str] = []
    archs = select_archs(args.archs, notes)
    for note in notes:
        print(note, flush=True)
    if not archs:
        raise SystemExit("no architecture to measure")
    params = {a.key: params_of(a) for a in archs}
    flops = {a.key: gflop_per_frame(a, args.batch, h, w, device) for a in archs}
    archs.sort(key=lambda a: flops[a.key][0])  # the cheapest first: a run stopped early keeps the most rows
    rows: list[Row] = []
    start = time.perf_counter()
    for compiled in [c == "on" for c in args.compile]:  # every eager row before the compiled ones
        for arch in archs:
            for dtype in args.dtype:
                for channels_last in [c == "on" for c in args.channels_last]:
                    row = measure(arch, dtype, channels_last, compiled, args, device, h, w)
                    row.params, row.gflop = params[arch.key], flops[arch.key][0]
                    if not row.error:
                        row.tflops = row.gflop * row.fps / 1e3
                        numbers("inference", f"{arch.label}, {dtype}, {row.layout}, {row.mode}, {w}x{h} x{arch.scale}, "
                                f"batch {args.batch}, on {device}", row.fps, "frames/s")
                    rows.append(row)
                    print(f"  {row.arch} | {dtype} | {row.layout} | {row.mode}: "
                          + (f"failed: {row.error}" if row.error else
                             f"{row.fps:.3f} fps, {row.ms:.1f} ms/frame, {row.tflops:.3f} TFLOP/s, 1st call "
                             f"{row.first_s:.1f} s, {row.timed} timed{' (capped)' if row.capped else ''}"), flush=True)
    wall = time.perf_counter() - start

    legend = [f"- {a.label}: `{describe(a.config)}`, x{a.scale}"
              + (f" (also {', '.join(a.aliases)})" if a.aliases else "")
              + ("" if flops[a.key][1] == "meta" else "; FLOPs counted on a real forward") for a in archs]
    fp32 = "fp32 (TF32 allowed)" if cuda and args.tf32 else "fp32"
    details = (f"Device {device}, {torch.get_num_threads()} torch threads; input {w}x{h}, batch {args.batch}; "
               f"{args.warmup} warm-up call(s) (the first is `1st call s`: compile for compiled rows), then up to "
               f"{args.iters} timed calls per row, cut at {args.max_seconds:g} s of timed calls; dtype: {fp32}, or "
               f"torch.autocast bf16/fp16 with fp32 weights and input (traiNNer-redux's way); "
               f"compiled = torch.compile default mode; GFLOP/frame by FlopCounterMode (convs and matmuls, "
               f"2 per MAC). Measured in {wall:.0f} s.")
    cmd = ["python benchmarks/infer_throughput.py", *(sys.argv[1:] if argv is None else argv)]
    their_counterparts = theirs_counterparts(archs, params)
    repo, path, commit = THEIRS_SOURCE
    body = (f"{measured_table(rows, cuda, args.max_seconds)}\n\nArchitectures:\n" + "\n".join(legend)
            + ("\n\nNotes:\n" + "\n".join(f"- {n}" for n in notes) if notes else "")
            + f"\n\nNot measured here: traiNNer-redux's published figures ({THEIRS_SETTINGS}; "
            f"{repo} {path} @ {commit[:12]}, the 4x table):\n\n{theirs_table(their_counterparts)}")
    publish("Inference throughput", details, " ".join(cmd), body, save=not args.no_record)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "size": [w, h], "batch": args.batch, "warmup": args.warmup, "iters": args.iters,
            "max_seconds": args.max_seconds, "tf32": bool(cuda and args.tf32), "wall_s": wall, "notes": notes,
            "archs": [{"label": a.label, "config": dataclasses.asdict(a.config), "scale": a.scale,
                       "aliases": a.aliases, "params": params[a.key], "gflop_per_frame": flops[a.key][0]}
                      for a in archs],
            "rows": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                      for k, v in dataclasses.asdict(r).items()} for r in rows],
            "theirs": {"source": {"repo": repo, "path": path, "commit": commit}, "settings": THEIRS_SETTINGS,
                       "rows": [{**t._asdict(), "fastsr_counterpart": c} for t, c in zip(THEIRS, their_counterparts)]},
        }, indent=1))
    return rows


if __name__ == "__main__":
    main()
