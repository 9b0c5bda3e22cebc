"""`fastsr train | recipes | eval | upscale | export | quickstart | download-div2k | download-benchmarks | prepare`.

Every user error (a bad recipe key, a corrupt image, weights that don't fit) ends as one line on
stderr and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from fastsr.errors import FastsrError, RecipeError
from fastsr.util import make_console

if TYPE_CHECKING:
    from fastsr.evaluate import Shard

# What the CLI reports as one line and exit 2: fastsr's user errors, and a file the user named that is
# missing or unreadable. Anything else is a bug and keeps its traceback.
USER_ERRORS = (FastsrError, FileNotFoundError, PermissionError)


# errno values of a write that failed for want of space: no space, quota exceeded, file too large
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def memory_advice():
    """What an out-of-memory message of `eval` and `upscale` tells the user to change: their options."""
    from fastsr.infer import MemoryAdvice

    return MemoryAdvice(tile="--tile", metrics="--metrics", cpu="--device cpu")


# ---------------------------------------------------------------------------------------------
# train


def cmd_train(args, console: Console) -> None:
    """Train the recipe (a file or a packaged name) with its `key=value` overrides; the run goes to
    out_dir/name."""
    from fastsr.engine.trainer import train
    from fastsr.recipe import load_recipe

    train(load_recipe(args.recipe, args.overrides), console)


def phase_length(train, phase: str) -> str:
    """`pretrain 100000 steps` or `finetune 2 epochs`: a phase's length as its recipe gives it."""
    count, unit = train.length(phase)
    return f"{phase} {count} {unit}"


def cmd_recipes(args, console: Console) -> None:
    """The packaged recipes and what each trains, on what."""
    from rich.table import Table

    from fastsr.config import PHASES
    from fastsr.recipe import PACKAGED, load_recipe, packaged_recipes

    table = Table(title="Packaged recipes: fastsr train NAME [key=value ...]", caption=f"files in {PACKAGED}")
    for column in ("Name", "Generator", "Phases", "Data"):
        table.add_column(column, no_wrap=True)
    for name, path in packaged_recipes().items():
        r = load_recipe(path)
        phases = ", ".join(phase_length(r.train, phase) for phase in PHASES if r.train.runs(phase))
        table.add_row(name, f"{r.model.name} x{r.scale}", phases, r.data.source)
    console.print(table)


# ---------------------------------------------------------------------------------------------
# eval


def parse_method(spec: str, scale: int, self_ensemble: bool = False):
    """`bicubic`, `FILE` or `LABEL=FILE` -> (label, model); with `self_ensemble`
    a trained model runs as its x8 self-ensemble, its label marked "+" as papers mark it."""
    label, model = _method(spec, scale)
    if self_ensemble and spec.lower() != "bicubic":
        from fastsr.infer import SelfEnsemble

        return f"{label}+", SelfEnsemble(model)
    return label, model


def _method(spec: str, scale: int):
    """`bicubic`, `FILE` or `LABEL=FILE` -> (label, model); FILE is fastsr's weights or any model file spandrel
    opens, and the label defaults to its architecture's name."""
    from fastsr.errors import WeightsError
    from fastsr.model_files import open_generator
    from fastsr.models import build_generator

    if spec.lower() == "bicubic":
        return "Bicubic", build_generator("bicubic", scale=scale)
    label, sep, path = spec.partition("=")
    if not sep:
        label, path = "", spec
    model = open_generator(Path(path))
    if model.scale != scale:
        raise WeightsError(f"{path}: model is x{model.scale}, but --scale is {scale}")
    return label or getattr(model, "label", Path(path).stem), model


@contextmanager
def eval_processes(device: str):
    """(this process's `Shard` of the images, the device it runs on), for one evaluation: the whole set on
    `device` for one process; under a launcher's several processes (`accelerate launch`, `--processes`) each
    takes its share, on its own GPU (or the CPU, with `--device cpu` or none visible), the group joined through
    Accelerate. On leaving, the processes wait for each other and end the group: a process that exits with
    gloo's group still open can abort at interpreter exit and fail the launch after the table was made."""
    from fastsr.evaluate import ONE_PROCESS, Shard

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield ONE_PROCESS, device
        return
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    try:
        yield Shard(state.process_index, state.num_processes), (device if device == "cpu" else state.device)
        state.wait_for_everyone()
    finally:
        state.destroy_process_group()


def run_eval(methods: list[str], sources: list[str], scale: int, console: Console, *, data_root: str | None = None,
             metrics: list[str] | None = None, metric_weights: dict[str, str] | None = None,
             pictures: Path | None = None, json_out: Path | None = None, csv_out: Path | None = None,
             device: str = "auto", tile: int = 256, degradation: str = "matlab", seed: int = 0,
             degradation_keys: list[str] = (), self_ensemble: bool = False, y: str = "basicsr",
             report: Path | None = None, shard: Shard | None = None):
    """Score `methods` on each of `sources` (test-set names, folders, `samples`) and print one table; the
    models run on tiles of `tile` LR pixels (0: whole images). The LR is MATLAB's bicubic (`matlab`, the
    protocol), or Real-ESRGAN's degradation drawn from `seed` (`realesrgan`: image i of a set from (seed, i),
    the same LR for every method), at its defaults but for `degradation_keys` (`data.realesrgan` key=value).
    `self_ensemble` runs each trained model as its x8 self-ensemble (labelled "+"); `y` is the Y convention of
    PSNR/SSIM (`fastsr.metrics`), which the caption states; `report` is a folder for the HTML comparison page
    (`fastsr.report`); `shard` is this process's share of the images when several processes score them
    (`eval_processes`; None: all of them)."""
    from fastsr.data import resolve_source
    from fastsr.data.benchmarks import DEFAULT_ROOT
    from fastsr.data.screen import FIX_AND_RERUN, refuse, screen_val
    from fastsr.data.sources import source_label
    from fastsr.errors import ImageError
    from fastsr.evaluate import (
        ONE_PROCESS,
        PROTOCOL_METRICS,
        SetResult,
        build_metrics,
        evaluate,
        format_table,
        results_to_json,
        write_csv,
    )
    from fastsr.metrics import Y_CONVENTIONS
    from fastsr.report import Report
    from fastsr.util import write_atomic

    metrics = list(metrics or PROTOCOL_METRICS)  # PSNR and SSIM unless asked otherwise

    device, shard = resolve_device(device), shard or ONE_PROCESS
    models = dict(parse_method(m, scale, self_ensemble) for m in methods)
    for model in models.values():
        model.to(device)
    root = data_root or DEFAULT_ROOT
    lr_method, lr_made = "matlab", "MATLAB bicubic LR"
    if degradation_keys and degradation != "realesrgan":
        raise RecipeError(f"{degradation_keys[0]}: data.realesrgan keys need --degradation realesrgan")
    if degradation == "realesrgan":
        from fastsr.data.realworld import RealESRGANDegradation, RealWorldLR

        config = realesrgan_config(degradation_keys)
        lr_method = RealWorldLR(RealESRGANDegradation(config, scale), seed)
        lr_made = f"Real-ESRGAN-degraded LR (seed {seed}{''.join(', ' + k for k in degradation_keys)})"
    sets, problems = {}, []  # every set is read (and all its images checked) before any scoring
    for spec in sources:
        label = source_label(spec)
        if label in sets:
            raise ImageError(f"--data {spec}: a second set named {label}; give each set once")
        sets[label], found = screen_val(resolve_source(spec, "eval", scale, benchmark_root=root), scale, lr_method)
        problems += found
    refuse({"evaluation": problems}, FIX_AND_RERUN)
    scorers = build_metrics(metrics, scale, device, metric_weights, y)
    page = Report(report, scale) if report else None
    results = []
    for label, pairs in sets.items():
        where, names = (pictures / label if pictures else None), [p.name for p in pairs]
        if page:
            page.add_set(label, names)
        scores = evaluate(models, pairs, scale, device, metrics=scorers, tile=tile, pictures=where,
                          advice=memory_advice(), record=partial(page.add, label) if page else None, shard=shard)
        results.append(SetResult(label, names, scores))
    caption = (f"x{scale}, {lr_made}; mean of per-image values; PSNR (dB) and SSIM on {Y_CONVENTIONS[y]}, uint8 "
               f"levels, {scale}-pixel border shaved" + (", LPIPS/DISTS on RGB" if len(metrics) > 2 else ""))
    meta = {"caption": caption, "scale": scale, "channel": "Y", "y": y, "crop_border": scale,
            "sources": dict(zip(sets, sources)),
            "degradation": degradation,
            **({"seed": seed, "degradation_keys": list(degradation_keys)} if degradation == "realesrgan" else {})}
    table = results_to_json(results, metrics, meta)
    if shard.rank == 0:  # every process holds the whole table; the first prints and writes it
        console.print(format_table(results, metrics, caption))
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(json_out, json.dumps(table, indent=2).encode())
        if csv_out:
            csv_out.parent.mkdir(parents=True, exist_ok=True)
            write_csv(csv_out, results, metrics)
        if pictures:
            console.print(f"side-by-side pictures (LR / methods / HR): {pictures}")
    if page:  # every process's pictures; the first writes the page
        written = page.finish(table, shard)
        if written:
            console.print(f"comparison page (open it in a browser): {written}")
    return results


def cmd_eval(args, console: Console) -> int:
    """Score each --model on each --data set (default: the bundled samples) and print the table; returns 2,
    before loading anything, when --tile cannot tile or --metric-weights names a metric not scored."""
    from fastsr.evaluate import PROTOCOL_METRICS
    from fastsr.infer import DEFAULT_OVERLAP, check_tiling

    load_plugins(args.plugin)
    try:
        check_tiling(args.tile, DEFAULT_OVERLAP)
    except ValueError as err:
        print(f"fastsr: error: --tile: {err} (eval's tiles overlap by {DEFAULT_OVERLAP})", file=sys.stderr)
        return 2
    if args.processes < 1:
        print(f"fastsr: error: --processes {args.processes}: give 1 or more", file=sys.stderr)
        return 2
    if args.processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return launch_processes(args.processes, args.argv)
    metrics = args.metrics or list(PROTOCOL_METRICS)
    unused = [name for name, _ in args.metric_weights if name not in metrics]
    if unused:
        print(f"fastsr: error: --metric-weights {unused[0]}=...: {unused[0]} is not among --metrics "
              f"{','.join(metrics)}; add it there or drop the weights", file=sys.stderr)
        return 2
    with eval_processes(resolve_device(args.device)) as (shard, device):
        run_eval(args.model, args.data or ["samples"], args.scale, console, data_root=args.data_root,
                 metrics=metrics, metric_weights=dict(args.metric_weights), pictures=args.pictures,
                 json_out=args.json, csv_out=args.csv, device=device, tile=args.tile,
                 degradation=args.degradation, seed=args.seed, degradation_keys=args.overrides,
                 self_ensemble=args.self_ensemble, y=args.y, report=args.report, shard=shard)
    return 0


def launch_processes(n: int, argv: list[str]) -> int:
    """Run this command line again in `n` processes under `accelerate launch` (a free local port, gloo on the
    CPU, one GPU each where there are GPUs) and return its exit code."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
              "--num_machines", "1", "--main_process_port", str(port), "-m", "fastsr", *argv]
    return subprocess.run(launch, check=False).returncode


# ---------------------------------------------------------------------------------------------
# degrade


def realesrgan_config(overrides: list[str]):
    """The `data.realesrgan` section (a RealESRGANConfig) with `key=value` overrides of its keys, checked as a
    recipe's."""
    from fastsr.config import RealESRGANConfig, apply_overrides, build_section

    return build_section(RealESRGANConfig, apply_overrides({}, overrides), "data.realesrgan.", "command line")


def cmd_degrade(args, console: Console) -> int:
    """Write a grid of real-world degradations of each image's centre crop (HR | LR examples, labelled), with
    the `data.realesrgan` keys the command line overrides."""
    from fastsr.data import list_images
    from fastsr.data.realworld import RealESRGANDegradation
    from fastsr.grid import centre_crop, degradation_grid

    config = realesrgan_config(args.overrides)
    if args.n < 1 or args.crop % args.scale:
        raise RecipeError(f"--n must be at least 1 and --crop a multiple of --scale {args.scale} "
                          f"(got --n {args.n}, --crop {args.crop})")
    src, out = Path(args.input), Path(args.output)
    files = list_images(src) if src.is_dir() else [src]
    degradation = RealESRGANDegradation(config, args.scale)
    device = resolve_device(args.device)
    for path in files:
        target = out / f"{path.stem}_degraded.png" if src.is_dir() or out.suffix == "" else out
        hr = centre_crop(path, args.crop, args.scale).to(device)
        degradation_grid(hr, degradation, args.n, args.seed, target,
                         f"{path.name}: x{args.scale} Real-ESRGAN degradation, seed {args.seed}")
        console.print(f"{path} -> {target}")
    return 0


# ---------------------------------------------------------------------------------------------
# upscale


def cmd_upscale(args, console: Console) -> int:
    """Upscale an image or a folder; a folder's unreadable images are reported, the rest written, exit 2."""
    from fastsr.data import list_images, save_image
    from fastsr.data.images import is_gray, load_image_with_alpha, output_format
    from fastsr.errors import ImageError
    from fastsr.infer import check_tiling, upscale_image
    from fastsr.model_files import open_generator

    load_plugins(args.plugin)
    try:
        check_tiling(args.tile, args.overlap)
    except ValueError as err:
        print(f"fastsr: error: --tile/--overlap: {err}", file=sys.stderr)
        return 2
    src = Path(args.input)
    out = Path(args.output)
    from_folder = src.is_dir()
    to_folder = from_folder or out.suffix == ""
    if not to_folder:
        output_format(out)  # an unknown suffix fails before any work
    device = resolve_device(args.device)
    model = open_generator(args.weights, device)
    if args.self_ensemble:
        from fastsr.infer import SelfEnsemble

        model = SelfEnsemble(model)
    files = list_images(src) if from_folder else [src]
    stems = [p.stem for p in files]
    clash = next((p for p in files if stems.count(p.stem) > 1), None)
    if clash is not None:  # a.png and a.jpg would both become a.png
        raise ImageError(f"{src}: several images are named {clash.stem}.*, and each would be written to "
                         f"{out / clash.stem}.png; rename all but one")
    failed = 0
    for path in files:
        target = out / f"{path.stem}.png" if to_folder else out
        try:
            lr = load_image_with_alpha(path)  # RGB(A): a grayscale image is run stacked to RGB...
            gray = is_gray(path)  # ...and written back as grayscale
            h, w, channels = lr.shape
            # before the work: JPEG cannot hold the alpha, WebP not more than 16383 pixels a side
            output_format(target, (h * model.scale, w * model.scale, channels), source=path)
        except ImageError as err:
            if not from_folder:
                raise
            print(err, file=sys.stderr)
            failed += 1
            continue
        sr = upscale_image(model, lr, model.scale, device, tile=args.tile, overlap=args.overlap, image=str(path),
                           advice=memory_advice())
        save_image(target, sr, gray=gray)
        kind = " grayscale" * gray + " with alpha" * (channels == 4)
        console.print(f"{path} -> {target} ({w}x{h} -> {sr.shape[1]}x{sr.shape[0]}{kind})")
    if failed:
        print(f"fastsr: {failed} of {len(files)} images could not be upscaled; fix or remove them and rerun",
              file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------------------------
# export


def cmd_export(args, console: Console) -> None:
    """Export a generator to ONNX, checked in onnxruntime against PyTorch before the file is written."""
    from fastsr.errors import ExportError
    from fastsr.export import CHECK_SHAPE, INPUT, OUTPUT, export_onnx
    from fastsr.model_files import open_generator

    load_plugins(args.plugin)
    out = Path(args.output) if args.output else Path(args.weights).with_suffix(".onnx")
    if out.suffix != ".onnx":
        raise ExportError(f"{out}: the output of fastsr export is an .onnx file; name it so")
    model = open_generator(args.weights)
    done = export_onnx(model, out, opset=args.opset, fp16=args.fp16, tolerance=args.tolerance,
                       source=str(args.weights))
    console.print(f"{args.weights} -> {out} ({model.config['name']} x{model.scale}, opset {done.opset}, {done.dtype} "
                  f"'{INPUT}' Nx3xHxW in [0, 1] -> '{OUTPUT}'), exported in {done.seconds:.1f} s")
    console.print(f"onnxruntime vs PyTorch on a random {'x'.join(map(str, CHECK_SHAPE))} input: max abs difference "
                  f"{done.max_abs_diff:.2e} (tolerance {done.tolerance:g})")


# ---------------------------------------------------------------------------------------------
# quickstart


def cmd_quickstart(args, console: Console) -> None:
    """Train SRCNN and a small SRGAN on the bundled samples, then score both against bicubic."""
    from fastsr.engine.runlog import read_log
    from fastsr.engine.trainer import train
    from fastsr.recipe import load_recipe

    start = time.perf_counter()
    out = [f"out_dir={args.out}"]
    srcnn = train(load_recipe("quickstart_srcnn", out), console)
    recipe = load_recipe("quickstart", out)
    srgan = train(recipe, console)
    methods = ["bicubic", f"SRCNN={srcnn / 'generator.safetensors'}", f"SRGAN={srgan / 'generator.safetensors'}"]
    pictures = Path(args.out) / "compare"
    run_eval(methods, [recipe.data.source], recipe.scale, console, pictures=pictures,
             json_out=Path(args.out) / "results.json")
    for note in (r["message"] for r in read_log(srgan / "log.jsonl") if r["kind"] == "note"):
        console.print(f"[yellow]note on SRGAN:[/] {note}")
    console.print(f"quick start took {time.perf_counter() - start:.0f} s; runs, logs and curves in {args.out}/")


# ---------------------------------------------------------------------------------------------
# download


def cmd_download(args, console: Console) -> None:
    """Fetch DIV2K's HR zips and the --scales' bicubic LR zips into DIR and unpack them; a rerun resumes and
    skips what is complete."""
    from fastsr.data.div2k import download_div2k

    download_div2k(args.dest, scales=tuple(args.scales))


def cmd_download_benchmarks(args, console: Console) -> None:
    """Fetch the HR images of the --sets into DIR; a set that cannot be fetched (Manga109) is a printed note
    on adding it by hand, not an error."""
    from fastsr.data.benchmarks import download_benchmarks

    for note in download_benchmarks(args.dest, tuple(args.sets)):
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"test sets in {args.dest}: fastsr eval --data set5 --data set14 ... --data-root {args.dest}")


# ---------------------------------------------------------------------------------------------
# prepare


def cmd_prepare(args, console: Console) -> int:
    """Decode the train split once into a cache of .npy files; exit 2 while any image could not be read."""
    from fastsr.data.cache import prepare_cache

    start = time.perf_counter()
    result = prepare_cache(args.source, args.dest, workers=args.workers, verify=args.verify)
    total = result.written + result.skipped + len(result.failed)
    print(f"prepared {result.written + result.skipped} images into {args.dest} (written {result.written}, "
          f"skipped {result.skipped}) in {time.perf_counter() - start:.1f} s")
    for src in result.repaired:
        print(f"{src}: its cached copy failed its checksum and was rewritten")
    if not result.failed:
        return 0
    for _, error in result.failed:
        print(error, file=sys.stderr)
    print(f"{len(result.failed)} of {total} images could not be read; fix or remove them and rerun fastsr prepare "
          "(training from this cache is refused until then)", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------------


def load_plugins(modules: list[str]) -> None:
    """Import the --plugin modules (and the installed entry points) so that the architectures they register
    can be loaded; a module that fails is a one-line RecipeError naming it."""
    from fastsr.registry import load_plugins as load

    load(modules, source="--plugin")


def resolve_device(device: str):
    """The --device value to use: `auto` becomes `cuda` when a GPU is visible, else `cpu`; any other value is
    returned as given."""
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _metric_list(text: str) -> list[str]:
    from fastsr.evaluate import METRIC_LABELS

    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRIC_LABELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{','.join(unknown) or text!r}: choose from {', '.join(METRIC_LABELS)}")
    return list(dict.fromkeys(names))


def _name_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH, e.g. lpips=alexnet-owt-7be5be79.pth")
    return name.strip().lower(), path


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="where the models run: cuda, cuda:N, cpu (default: auto, the GPU when there is one)")


def _add_plugin_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first: it registers an architecture defined outside fastsr; repeat for several")


DESCRIPTION = "Train, evaluate, upscale with and export image super-resolution models."


def build_parser() -> argparse.ArgumentParser:
    """The `fastsr` argument parser; each command's `func` is its cmd_* handler. Commands: train (a recipe),
    recipes (list the packaged ones), eval (score models on test sets), degrade (a grid of real-world
    degradations of images), upscale (images with a generator),
    export (to ONNX), quickstart (train and compare on the bundled samples), download-div2k,
    download-benchmarks (the test sets) and prepare (decode the training images into a cache)."""
    parser = argparse.ArgumentParser(prog="fastsr", description=DESCRIPTION)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a recipe (also: accelerate launch fastsr/train.py RECIPE)")
    p.add_argument("recipe", help="a recipe file, or the name of a packaged recipe (fastsr recipes lists them)")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                   help="recipe keys to override, e.g. train.batch_size=32 data.source=/data/DIV2K")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("recipes", help="list the packaged recipes")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("eval", help="PSNR/SSIM (LPIPS, DISTS) table of methods on the same held-out images")
    p.add_argument("--model", action="append", required=True,
                   help="bicubic, WEIGHTS.safetensors or LABEL=WEIGHTS.safetensors; repeat for several")
    p.add_argument("--data", action="append", metavar="SET",
                   help="a test set (set5, set14, b100, urban100, manga109, under --data-root), samples (default), "
                        "a DIV2K root (valid split), an image folder or file; repeat for a column each")
    p.add_argument("--data-root", help="where the test sets are (fastsr download-benchmarks DIR); default data/benchmarks")
    p.add_argument("--metrics", type=_metric_list,
                   help="comma-separated, of psnr, ssim, lpips (AlexNet), dists; default psnr,ssim")
    p.add_argument("--metric-weights", action="append", type=_name_path, default=[], metavar="NAME=PATH",
                   help="a local weights file for lpips or dists (no download); repeat for each")
    p.add_argument("--scale", type=int, default=4, help="upscaling factor of the LR made from each HR image; every "
                                                         "model must be of it (default: %(default)s)")
    p.add_argument("--json", type=Path, help="also write per-set and per-image values here")
    p.add_argument("--csv", type=Path, help="also write per-image and per-set values here, a row each")
    p.add_argument("--pictures", type=Path, help="save LR / methods / HR side by side here")
    p.add_argument("--report", type=Path, metavar="DIR",
                   help="write an HTML comparison page here (DIR/index.html: sortable tables, a before/after slider "
                        "and a pixel zoom over every image; opens offline)")
    p.add_argument("--tile", type=int, default=256,
                   help="LR tile size the models run on (0: whole images at once); lower it if out of memory "
                        "(default: %(default)s)")
    p.add_argument("--degradation", choices=["matlab", "realesrgan"], default="matlab",
                   help="how LR is made from each HR: matlab (the protocol's bicubic) or realesrgan (Real-ESRGAN's "
                        "random degradation at its defaults, image i of a set drawn from --seed and i; the same LR "
                        "for every method) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the real-world degradation's seed (default: %(default)s)")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                   help="with --degradation realesrgan: data.realesrgan keys to change, e.g. jpeg_range=[60,95]")
    p.add_argument("--self-ensemble", action="store_true",
                   help="run each trained model on the 8 flips/rotations of its input and average (the '+' of "
                        "papers' tables; about 8x slower)")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="split the images across N processes (one per GPU, or N CPU processes), each image scored "
                        "once and the table gathered, equal to one process's; as accelerate launch -m fastsr eval "
                        "(default: %(default)s)")
    p.add_argument("--y", choices=["basicsr", "matlab"], default="basicsr",
                   help="how Y is computed for PSNR/SSIM: basicsr (unrounded, gray files stacked to RGB, as BasicSR "
                        "and most SR code) or matlab (MATLAB rgb2ycbcr on uint8, rounded; 1-channel files on their "
                        "own values, as the published MATLAB tables) (default: %(default)s)")
    _add_device_option(p)
    _add_plugin_option(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("degrade", help="a grid of Real-ESRGAN degradations of images, to tune its ranges by eye")
    p.add_argument("input", metavar="IMAGE_OR_DIR", help="an image or a folder of images")
    # key=value words anywhere after the command are its overrides (main collects them: argparse would take a
    # positional list only before the options)
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                   help="data.realesrgan keys to change, e.g. jpeg_range=[60,95] noise_range=[1,10]")
    p.add_argument("-o", "--output", required=True,
                   help="the grid's .png (one image), or a folder (no suffix; always for a folder input) that "
                        "gets <name>_degraded.png files")
    p.add_argument("--n", type=int, default=16, help="LR examples per image (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the examples' seed (default: %(default)s)")
    p.add_argument("--scale", type=int, default=4, help="the LR's scale (default: %(default)s)")
    p.add_argument("--crop", type=int, default=256,
                   help="the centre crop degraded, in HR pixels (default: %(default)s)")
    _add_device_option(p)
    p.set_defaults(func=cmd_degrade)

    p = sub.add_parser("upscale", help="upscale whole images (tiled, so large images fit in memory)")
    p.add_argument("input", help="an image or a folder of images")
    p.add_argument("--weights", type=Path, required=True,
                   help="a generator's .safetensors (fastsr's, its .json beside it), e.g. runs/NAME/generator.safetensors")
    p.add_argument("-o", "--output", required=True,
                   help="output file (.png, .jpg/.jpeg, .webp, .bmp, .tif/.tiff), or a folder (no suffix; "
                        "always for a folder input) that gets <name>.png files")
    p.add_argument("--tile", type=int, default=256,
                   help="LR tile size (0: whole image at once); lower it if out of memory (default: %(default)s)")
    p.add_argument("--overlap", type=int, default=32,
                   help="LR pixels shared by neighbouring tiles (default: %(default)s)")
    p.add_argument("--self-ensemble", action="store_true",
                   help="run the model on the 8 flips/rotations of each tile and average (about 8x slower)")
    _add_device_option(p)
    _add_plugin_option(p)
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("export", help="export a generator to ONNX (dynamic batch and size), checked in onnxruntime")
    p.add_argument("weights", type=Path, metavar="WEIGHTS", help="a generator.safetensors, its .json beside it")
    p.add_argument("-o", "--output", help="the .onnx file to write (default: WEIGHTS with the suffix .onnx)")
    p.add_argument("--opset", type=int,
                   help="ONNX opset (default 18, the torch exporter's own; others are reached by converting its graph)")
    p.add_argument("--fp16", action="store_true",
                   help="a float16 graph: its input 'lr' and output 'sr' are float16 too (default: float32)")
    p.add_argument("--tolerance", type=float,
                   help="the largest onnxruntime-vs-PyTorch difference accepted (default 1e-4; 2e-2 with --fp16)")
    _add_plugin_option(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quickstart", help="train SRCNN and a small SRGAN on the bundled samples, then compare")
    p.add_argument("--out", default="runs/quickstart",
                   help="folder for the runs, their logs and the comparison pictures (default: %(default)s)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("download-div2k", help="download and unpack DIV2K (needs a network)")
    p.add_argument("dest", type=Path, metavar="DIR",
                   help="where DIV2K goes (created); a rerun resumes and skips what is complete")
    p.add_argument("--scales", type=int, nargs="+", default=[4], choices=[2, 3, 4],
                   help="the official bicubic LR sets to fetch too, for validation (default: 4)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("download-benchmarks", help="download Set5, Set14, B100, Urban100 (needs a network)")
    p.add_argument("dest", type=Path, metavar="DIR",
                   help="where the sets go (created), as DIR/Set5/HR/...; pass it as --data-root or "
                        "data.benchmark_root")
    p.add_argument("--sets", nargs="+", default=["set5", "set14", "b100", "urban100"],
                   help="of set5 set14 b100 urban100 (manga109: a note on adding it by hand); default: all four")
    p.set_defaults(func=cmd_download_benchmarks)

    p = sub.add_parser("prepare", help="decode the training images once into a cache folder, for fast random crops")
    p.add_argument("source", metavar="SRC", help="samples, a DIV2K root (train split) or an image folder")
    p.add_argument("dest", metavar="DST", type=Path, help="cache folder (created; rerun to update it)")
    p.add_argument("--workers", type=int, help="decoding processes (default: one per CPU core)")
    p.add_argument("--verify", action="store_true", help="also re-hash cached files and rewrite any that differ")
    p.set_defaults(func=cmd_prepare)
    return parser


def say(line: str) -> None:
    """A line on stderr in one write: the processes of a run share it, and print's two writes (the text, then
    the newline) would interleave their lines."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def stopped() -> type[Exception]:
    """The exception of a run stopped by a signal (Preempted), imported only when `main` catches something,
    as the CLI imports everything else only once a command needs it."""
    from fastsr.engine.safety.signals import Preempted

    return Preempted


def parse_command(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; `key=value` words after a command's options join its overrides (argparse takes
    a positional list only before the options: `fastsr degrade IMG -o OUT jpeg_range=[60,95]`)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = argv
    if extra and getattr(args, "overrides", None) is not None and all("=" in word for word in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run a command. A run stopped by a signal after its checkpoint exits 75 (EXIT_PREEMPTED) for a cluster's
    notice, 130 for Ctrl-C, with or without --debug."""
    args = parse_command(argv)
    console = make_console()
    try:
        return run_command(args, console)
    except stopped() as stop:
        say(f"fastsr: {stop}")
        return stop.exit_code


def run_command(args, console: Console) -> int:
    """Run the parsed command and return its exit code: a user error or a full disk is one line on stderr and
    2, Ctrl-C outside training 130; with --debug every error keeps its traceback."""
    if args.debug:
        return args.func(args, console) or 0
    try:
        return args.func(args, console) or 0
    except USER_ERRORS as err:
        say(f"fastsr: error: {err}")
        return 2
    except OSError as err:
        if err.errno not in DISK_FULL:
            raise
        say(f"fastsr: error: {err.filename or 'a file'}: {err.strerror}; free space there and retry")
        return 2
    except KeyboardInterrupt:
        print("fastsr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
