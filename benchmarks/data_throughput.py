"""Crops per second of the training data paths, side by side in one run.

    python benchmarks/data_throughput.py [--data DIR] [--quick] [--dali auto|skip|only] [--torch-threads N]
                                         [--no-record]

Rows (each at HR 96 and HR 128, x4, batch 16, on the GPU when there is one, else the CPU):
- reference approach: the reference script's data path: a Dataset that decodes the whole image with PIL
  for every sample, cuts a random crop and resizes it (PIL bicubic), in DataLoader worker processes;
- torch loader: fastsr's portable loader, from the image files (decode per crop) and from the cache;
- DALI: from the PNG files (1 and 8 crops per decode, `data.crops_per_image`) and from the cache; where
  DALI does not import these rows are skipped, and the run says so (`--dali skip` leaves them out,
  `--dali only` measures them alone: benchmarks/gpu_check.sh's two stages);
- device backend: the cache loaded into device memory once (untimed), every batch cut there.
Without `--data` it measures DIV2K-sized stand-ins (2040x1356 PNGs made from scikit-image's photos
with camera-like noise, so they compress like photographs); with `--data` the train split of any
source fastsr reads (a DIV2K root, a folder). The cache is made with `fastsr prepare` once, untimed.

The table is printed and appended to benchmarks/RESULTS.md with the machine named, with the rate at
which the crop plan alone is drawn (every backend executes it, so it bounds them all). When both were
measured, the last line is the cached DALI path's speed-up over the reference approach at HR 96, as `N.Nx`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fastsr.data import CropPlan, DeviceLoader, ImageStore, Sample, TorchLoader, resolve_source
from fastsr.data.cache import prepare_cache
from report import numbers, publish  # benchmarks/report.py: this folder is on sys.path when a script runs

SCALE, BATCH = 4, 16


def stand_in_images(folder: Path, count: int) -> list[Sample]:
    """`count` DIV2K-sized (2040x1356) PNGs: scikit-image photographs resized up, plus Gaussian noise
    (sigma 4 levels) so that PNG compresses them about as much as real photographs."""
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        path = folder / f"{i:04d}.png"
        if not path.is_file():
            big = np.asarray(Image.fromarray(photos[i % len(photos)]).resize((2040, 1356), Image.BICUBIC), np.float32)
            noisy = np.clip(big + rng.normal(0, 4, big.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(path)
        samples.append(Sample(path))
    (folder.parent / "val").mkdir(exist_ok=True)  # train/ + val/: the folder layout that trains on all of train/
    Image.fromarray(photos[0]).save(folder.parent / "val" / "val.png")
    return samples


class ReferenceDataset(Dataset):
    """The reference script's way: decode the whole file for every crop."""

    def __init__(self, files: list[Path], hr_crop: int, length: int):
        self.files, self.hr_crop, self.length = files, hr_crop, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        img = Image.open(self.files[i % len(self.files)]).convert("RGB")
        rng = np.random.default_rng(i)
        c = self.hr_crop
        top = int(rng.integers(0, (img.height - c) // SCALE + 1)) * SCALE
        left = int(rng.integers(0, (img.width - c) // SCALE + 1)) * SCALE
        hr = img.crop((left, top, left + c, top + c))
        lr = hr.resize((c // SCALE, c // SCALE), Image.BICUBIC)
        to = lambda im: torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)  # noqa: E731
        return to(hr), to(lr)


def measure(batches, seconds: float, device: torch.device) -> float:
    """Crops/s over at least `seconds`, after one warm-up batch (pipeline builds, worker start-up)."""
    it = iter(batches)
    next(it)
    crops, tic = 0, time.perf_counter()
    for hr, _ in it:
        crops += hr.shape[0]
        if time.perf_counter() - tic >= seconds:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return crops / (time.perf_counter() - tic)


def epochs_of(loader):
    """Batches of epoch 0, 1, ... without end."""
    epoch = 0
    while True:
        yield from loader.batches(epoch)
        epoch += 1


def reference_batches(files, hr_crop, workers, device):
    """Endless (HR, LR) batches of the reference approach, moved to `device` (the row's timed work)."""
    loader = DataLoader(ReferenceDataset(files, hr_crop, 10**7), batch_size=BATCH, shuffle=True,
                        num_workers=workers, persistent_workers=workers > 0)
    for hr, lr in loader:
        yield hr.to(device), lr.to(device)


def dali_missing() -> str | None:
    """Why DALI cannot be measured here (one line), or None where it imports."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:
        return f"NVIDIA DALI does not import here ({err})"
    return None


def main(argv: list[str] | None = None) -> None:
    """Measure every row the module docstring lists, print the table and append it to RESULTS.md (unless
    --no-record)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="a data source (DIV2K root, folder); default: generated DIV2K-sized PNGs")
    ap.add_argument("--images", type=int, help="how many images (default 8 with --quick, else 32)")
    ap.add_argument("--seconds", type=float, help="timed seconds per row (default 3 with --quick, else 10)")
    ap.add_argument("--quick", action="store_true", help="a few minutes on a 2-core machine")
    ap.add_argument("--work", default=None, help="folder for generated images and the cache (default: a temp dir)")
    ap.add_argument("--torch-threads", type=int,
                    help="torch's intra-op threads in this process (the device backend's on a CPU; default: torch's)")
    ap.add_argument("--dali", choices=("auto", "skip", "only"), default="auto",
                    help="the DALI rows: auto (default) where DALI imports, else none; skip: none; only: those alone")
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    missing = dali_missing()
    if args.dali == "only" and missing:
        ap.error(f"--dali only: {missing}")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    count = args.images or (8 if args.quick else 32)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = os.cpu_count() or 1
    work = Path(args.work or tempfile.mkdtemp(prefix="fastsr_bench_"))

    if args.data:
        samples = resolve_source(args.data, "train", SCALE)[:count]
        data_name = args.data
    else:
        print(f"making {count} DIV2K-sized stand-in PNGs in {work / 'png'} ...", flush=True)
        samples = stand_in_images(work / "png" / "train", count)
        data_name = "generated 2040x1356 PNGs"
    png_mb = np.mean([s.hr.stat().st_size for s in samples]) / 1e6
    cache_dir = work / "cache"
    source = args.data or str(work / "png")
    prepare_cache(source, cache_dir, progress=False)
    decode_ms = []
    for s in samples[:4]:
        tic = time.perf_counter()
        Image.open(s.hr).convert("RGB")
        decode_ms.append((time.perf_counter() - tic) * 1000)
    decode_ms = float(np.median(decode_ms))

    files = [s.hr for s in samples]
    from_files, from_cache = ImageStore.from_samples(samples), ImageStore.from_samples(samples, cache_dir)

    def plan(images, hr_crop, k=1):
        return CropPlan(images.sizes, [str(f) for f in images.files], SCALE, hr_crop, BATCH, repeat=64,
                        crops_per_image=k)

    def torch_loader(images, hr_crop):
        return epochs_of(TorchLoader(images, plan(images, hr_crop), workers=workers, device=device, cache_images=False))

    def dali(images, hr_crop, k=1):
        from fastsr.data.dali_backend import DaliLoader

        return epochs_of(DaliLoader(images, plan(images, hr_crop, k), threads=workers, device=device))

    def device_loader(images, hr_crop):
        return epochs_of(DeviceLoader(images, plan(images, hr_crop), device=device))

    tic = time.perf_counter()
    planned = sum(len(visit) for batch in plan(from_cache, 96).epoch(0) for visit in batch)
    plan_rate = planned / (time.perf_counter() - tic)

    rows = {
        "reference approach (PIL decode per crop)": lambda c: reference_batches(files, c, workers, device),
        "torch loader, PNG files": lambda c: torch_loader(from_files, c),
        "torch loader, cache": lambda c: torch_loader(from_cache, c),
        "DALI, PNG files, 1 crop per decode": lambda c: dali(from_files, c),
        "DALI, PNG files, 8 crops per decode": lambda c: dali(from_files, c, 8),
        "DALI, cache": lambda c: dali(from_cache, c),
        "device backend, cache": lambda c: device_loader(from_cache, c),
    }
    dali_rows = [name for name in rows if name.startswith("DALI")]
    if args.dali == "only":
        rows = {name: rows[name] for name in dali_rows}
    elif args.dali == "skip" or missing:
        rows = {name: make for name, make in rows.items() if name not in dali_rows}
        print(f"DALI rows skipped: {'--dali skip' if args.dali == 'skip' else missing}", flush=True)
    crops = (96, 128)
    results: dict[str, dict[int, float]] = {}
    for name, make in rows.items():
        results[name] = {}
        for c in crops:
            results[name][c] = measure(make(c), seconds, device)
            print(f"  {name}, HR {c}: {results[name][c]:.1f} crops/s", flush=True)
            numbers("data", f"{name}, HR {c}, on {device}", results[name][c], "crops/s")

    reference = results.get("reference approach (PIL decode per crop)")  # absent with --dali only
    header = ["path", *(f"HR {c} crops/s" for c in crops), *(f"vs reference, HR {c}" for c in crops if reference)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name, r in results.items():
        cells = [name, *(f"{r[c]:.1f}" for c in crops), *(f"{r[c] / reference[c]:.1f}x" for c in crops if reference)]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    command = ("python benchmarks/data_throughput.py" + (" --quick" if args.quick else "")
               + (f" --data {args.data}" if args.data else "") + (f" --images {args.images}" if args.images else "")
               + (f" --seconds {args.seconds:g}" if args.seconds else "")
               + (f" --dali {args.dali}" if args.dali != "auto" else "")
               + (f" --torch-threads {args.torch_threads}" if args.torch_threads else ""))
    details = (f"Device {device}. Data: {data_name}, {len(samples)} images, {png_mb:.1f} MB per PNG, {decode_ms:.0f} ms "
               f"to decode one with PIL (median of 4); batch {BATCH}, x{SCALE}, {workers} workers/threads, "
               f"{torch.get_num_threads()} torch threads, "
               f"{seconds:.0f} s per row; the crop plan alone: {plan_rate:.0f} crops/s at HR 96.")
    publish("Data throughput", details, command, table, save=not args.no_record)
    dali_cache, device_cache = results.get("DALI, cache"), results.get("device backend, cache")
    if dali_cache and device_cache:
        print(f"device backend vs DALI, both from the cache, HR 96, {device}: {device_cache[96] / dali_cache[96]:.1f}x")
    if dali_cache and reference:
        print(f"DALI from the cache vs the reference script approach, HR 96, {device}:")
        print(f"{dali_cache[96] / reference[96]:.1f}x")


if __name__ == "__main__":
    main()
