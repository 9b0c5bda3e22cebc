"""Degraded (HR, LR) pairs per second of the Real-ESRGAN second-order degradation: fastsr's batched
pipeline beside BasicSR 1.4.2's own, run as it really is.

    python benchmarks/degradation_throughput.py [--batch 16 64] [--gt 256] [--steps N] [--device cpu|cuda]
        [--rows fastsr basicsr basicsr-256] [--workers 2] [--basicsr PATH] [--step] [--no-record]

Rows (x4, GT 256 -> LR 64, each at every --batch):
- `fastsr`: `RealESRGANDegradation(RealESRGANConfig(), scale=4)` called on an HR batch already on the device
  (fastsr's batch sources deliver HR batches there); every sample draws its own kernels, resize scale and
  mode, noise and JPEG quality. Timed: the degradation alone (kernels drawn and applied), not the loading.
- `basicsr`: BasicSR 1.4.2 as shipped (benchmarks/basicsr_142.py loads its own code, unmodified):
  `RealESRGANDataset` (the real class, with Real-ESRGAN's options/train_realesrnet_x4plus.yml options) in a
  torch DataLoader (--workers processes) reading 400x400 PNG sub-images (as Real-ESRGAN's
  scripts/extract_subimages.py cuts DF2K) of scikit-image's photographs (fastsr's `samples` source),
  drawing the three kernels per sample; then `RealESRGANModel.feed_data` on a stand-in object that carries
  exactly what feed_data reads. The 400x400 GT crop is degraded whole, then a 256 GT / 64 LR pair is cut,
  and the pair goes through the training-pair queue (180 pairs in the yml; rounded to a multiple of the
  batch, which BasicSR asserts). Timed end to end: waiting for the loader + feed_data, after warm-up (the
  queue full: by default the first batch allocates it by BasicSR's code and its pointer is then set to full,
  as filling it takes 180/batch batches, minutes on a CPU; `--fill-queue` fills it with feed_data).
- `basicsr-256`: a variant, not BasicSR as shipped: the same dataset and kernels, the GT cut to --gt in the
  loader, so feed_data degrades GT already 256 (the per-pixel work of fastsr's row); the queue as above.
BasicSR cannot give each sample of a batch its own resize scale and mode or its own noise type (Gaussian or
Poisson: one draw per batch; gray noise and sigma are per sample); its JPEG quality is a float (DiffJPEG
scales the tables by an unrounded quality); its queue mixes pairs across batches to make up for it.

`--step` adds what the degradation costs of a Real-ESRGAN training step: one step of RRDBNet (fastsr's
`rrdbnet`, 23 blocks) + the `unet_sn` discriminator (L1 + GAN losses, Adam; no perceptual loss, so the real
step is longer) at batch 16, GT 256, beside the degradation's time per batch of 16.

Prints the table (row, batch, pairs/s, ratio to the BasicSR-as-shipped row) with the command, torch,
device and threads, the BasicSR shims, and appends it to benchmarks/RESULTS.md unless --no-record.
The BasicSR rows need OpenCV (`pip install opencv-python-headless`); fastsr does not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fastsr.data.sources import resolve_source
from report import numbers, publish  # benchmarks/report.py: this folder is on sys.path when a script runs

SCALE = 4
SUBIMAGE, SUBIMAGE_STEP = 400, 200  # Real-ESRGAN's scripts/extract_subimages.py (crop_size, step)

# Real-ESRGAN's options/train_realesrnet_x4plus.yml: the model's degradation keys (read by feed_data) ...
MODEL_OPT = {
    "scale": 4,
    "resize_prob": [0.2, 0.7, 0.1], "resize_range": [0.15, 1.5], "gaussian_noise_prob": 0.5,
    "noise_range": [1, 30], "poisson_scale_range": [0.05, 3], "gray_noise_prob": 0.4, "jpeg_range": [30, 95],
    "second_blur_prob": 0.8, "resize_prob2": [0.3, 0.4, 0.3], "resize_range2": [0.3, 1.2],
    "gaussian_noise_prob2": 0.5, "noise_range2": [1, 25], "poisson_scale_range2": [0.05, 2.5],
    "gray_noise_prob2": 0.4, "jpeg_range2": [30, 95],
    "gt_size": 256, "queue_size": 180,
}
# ... and its datasets.train keys (read by RealESRGANDataset)
DATASET_OPT = {
    "io_backend": {"type": "disk"},
    "blur_kernel_size": 21,
    "kernel_list": ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
    "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03], "sinc_prob": 0.1, "blur_sigma": [0.2, 3],
    "betag_range": [0.5, 4], "betap_range": [1, 2],
    "blur_kernel_size2": 21,
    "kernel_list2": ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],
    "kernel_prob2": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03], "sinc_prob2": 0.1, "blur_sigma2": [0.2, 1.5],
    "betag_range2": [0.5, 4], "betap_range2": [1, 2],
    "final_sinc_prob": 0.8, "gt_size": 256, "use_hflip": True, "use_rot": False,
}

ROWS = {
    "fastsr": "fastsr realesrgan (per-sample params)",
    "basicsr": ("BasicSR 1.4.2 RealESRGANDataset + RealESRGANModel.feed_data (as shipped: 400x400 GT crop degraded, "
                "then 256 cropped; one resize scale/mode per batch; 180-pair queue)"),
    "basicsr-256": ("variant: BasicSR 1.4.2 RealESRGANDataset + feed_data on GT cropped to 256 in the loader "
                    "(per-pixel work = fastsr's)"),
}
BASELINE = "basicsr"


def photographs() -> list[np.ndarray]:
    """fastsr's `samples` source (scikit-image's photographs, train and val), as RGB uint8 HWC."""
    samples = resolve_source("samples", "train", SCALE) + resolve_source("samples", "val", SCALE)
    return [np.asarray(Image.open(s.hr).convert("RGB")) for s in samples]


def hr_batches(batch: int, gt: int, device: torch.device, count: int = 2) -> list[torch.Tensor]:
    """`count` (batch, 3, gt, gt) float [0, 1] batches of random crops of the photographs, on `device`."""
    rng = np.random.default_rng(0)
    photos = [p for p in photographs() if min(p.shape[:2]) >= gt]
    if not photos:
        raise SystemExit(f"no sample photograph is {gt}x{gt} or larger")
    out = []
    for _ in range(count):
        crops = []
        for _ in range(batch):
            p = photos[rng.integers(len(photos))]
            y, x = rng.integers(p.shape[0] - gt + 1), rng.integers(p.shape[1] - gt + 1)
            crops.append(torch.from_numpy(np.ascontiguousarray(p[y:y + gt, x:x + gt])).permute(2, 0, 1))
        out.append((torch.stack(crops).float() / 255).to(device))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ fastsr


def fastsr_missing() -> str | None:
    try:
        from fastsr.data.realworld import RealESRGANConfig, RealESRGANDegradation  # noqa: F401
    except ImportError as err:
        return f"fastsr.data.realworld does not import here ({err})"
    return None


def fastsr_degradation(device: torch.device):
    from fastsr.data.realworld import RealESRGANConfig, RealESRGANDegradation

    deg = RealESRGANDegradation(RealESRGANConfig(), scale=SCALE)
    return deg.to(device) if hasattr(deg, "to") else deg


def measure_fastsr(batch: int, gt: int, steps: int, warmup: int, device: torch.device) -> dict:
    """Pairs/s of fastsr's degradation on HR batches already on `device` (two batches alternated)."""
    deg = fastsr_degradation(device)
    batches = hr_batches(batch, gt, device)
    with torch.no_grad():
        for i in range(warmup):
            lr = deg(batches[i % 2], seed=0, epoch=0, index=i)
        if tuple(lr.shape) != (batch, 3, gt // SCALE, gt // SCALE):
            raise RuntimeError(f"fastsr's degradation returned {tuple(lr.shape)} for a {tuple(batches[0].shape)} batch")
        sync(device)
        tic = time.perf_counter()
        for i in range(warmup, warmup + steps):
            deg(batches[i % 2], seed=0, epoch=0, index=i)
            sync(device)
        seconds = time.perf_counter() - tic
    return {"pairs/s": batch * steps / seconds, "s/batch": seconds / steps}


# ------------------------------------------------------------------ BasicSR


def write_subimages(folder: Path, limit_per_image: int = 8) -> Path:
    """400x400 PNG sub-images of the photographs on a stride-200 grid (Real-ESRGAN's extract_subimages.py: crop
    400, step 200, thresh 0, PNG compression 3; at most `limit_per_image` per photograph, evenly spread);
    photographs smaller than 400 whole (RealESRGANDataset pads them, as shipped). Returns the meta_info file."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k, photo in enumerate(photographs()):
        h, w = photo.shape[:2]
        tiles = []
        if h >= SUBIMAGE and w >= SUBIMAGE:
            ys = sorted({*range(0, h - SUBIMAGE + 1, SUBIMAGE_STEP), h - SUBIMAGE})
            xs = sorted({*range(0, w - SUBIMAGE + 1, SUBIMAGE_STEP), w - SUBIMAGE})
            tiles = [photo[y:y + SUBIMAGE, x:x + SUBIMAGE] for y in ys for x in xs]
            tiles = [tiles[i] for i in np.linspace(0, len(tiles) - 1, min(limit_per_image, len(tiles))).astype(int)]
        else:
            tiles = [photo]
        for j, tile in enumerate(tiles):
            name = f"{k:02d}_s{j:03d}.png"
            cv2.imwrite(str(folder / name), np.ascontiguousarray(tile[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
            names.append(name)
    meta = folder / "meta_info.txt"
    meta.write_text("".join(f"{n}\n" for n in names))
    return meta


class CropGT(torch.utils.data.Dataset):
    """The variant's loader: BasicSR's dataset item with its GT cut (randomly) to `gt` x `gt`; kernels as drawn."""

    def __init__(self, dataset, gt: int):
        self.dataset, self.gt = dataset, gt

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        _, h, w = item["gt"].shape
        top, left = np.random.randint(h - self.gt + 1), np.random.randint(w - self.gt + 1)
        return {**item, "gt": item["gt"][:, top:top + self.gt, left:left + self.gt].contiguous()}


def feed_data_host(bsr, device: torch.device, gt: int, queue_size: int):
    """A stand-in for RealESRGANModel carrying exactly what its feed_data (and the _dequeue_and_enqueue it calls)
    read: opt (the yml's degradation keys), device, is_train, jpeger, usm_sharpener, queue_size; the methods
    are BasicSR's own functions."""
    model = bsr.RealESRGANModel
    host = type("FeedDataHost", (), {"feed_data": model.feed_data, "_dequeue_and_enqueue": model._dequeue_and_enqueue})()
    host.opt = {**MODEL_OPT, "gt_size": gt, "queue_size": queue_size}
    host.device = device
    host.is_train = True
    host.jpeger = bsr.DiffJPEG(differentiable=False).to(device)  # RealESRGANModel.__init__: DiffJPEG(...).cuda()
    host.usm_sharpener = bsr.USMSharp().to(device)  # RealESRGANModel.__init__: USMSharp().cuda()
    host.queue_size = queue_size
    return host


def queue_for(batch: int) -> int:
    """The yml's 180-pair queue rounded to a multiple of the batch (BasicSR asserts queue_size % batch == 0)."""
    return max(1, round(MODEL_OPT["queue_size"] / batch)) * batch


def measure_basicsr(bsr, meta: Path, variant: bool, batch: int, gt: int, steps: int, workers: int,
                    device: torch.device, fill_queue: bool) -> dict:
    """Pairs/s of BasicSR's loader + feed_data, end to end, in the queue's steady state (full: shuffle, dequeue,
    enqueue every batch). The queue is filled by feed_data itself with `fill_queue`, else (the default: filling
    it takes queue/batch batches, minutes on a CPU) the first batch allocates it by BasicSR's own code and its
    pointer is then set to full, so the slots not yet written hold zeros (the same work per batch)."""
    from basicsr_142 import cpu_cuda_shim
    from torch.utils.data import DataLoader, RandomSampler

    opt = {**DATASET_OPT, "dataroot_gt": str(meta.parent), "meta_info": str(meta), "gt_size": gt,
           "io_backend": dict(DATASET_OPT["io_backend"])}
    dataset = bsr.RealESRGANDataset(opt)
    if variant:
        dataset = CropGT(dataset, gt)
    # A sampler without end: one DataLoader epoch for the whole row (BasicSR's EnlargedSampler repeats the set)
    loader = DataLoader(dataset, batch_size=batch, sampler=RandomSampler(dataset, replacement=True, num_samples=10**8),
                        num_workers=workers, drop_last=True, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, multiprocessing_context="fork" if workers else None)
    queue = queue_for(batch)
    host = feed_data_host(bsr, device, gt, queue)
    shim = cpu_cuda_shim(bsr) if device.type == "cpu" else None
    it = iter(loader)
    wait = feed = 0.0
    with shim or _null():
        host.feed_data(next(it))  # allocates the queue (BasicSR's code) and enqueues the first batch
        if fill_queue:
            warmup = queue // batch + 1  # the queue filled by feed_data, then one batch through the full queue
            for _ in range(warmup - 1):
                host.feed_data(next(it))
        else:
            warmup = 2
            host.queue_ptr = host.queue_size  # the queue marked full: every later batch takes the steady-state path
            host.feed_data(next(it))
        if tuple(host.lq.shape) != (batch, 3, gt // SCALE, gt // SCALE) or tuple(host.gt.shape) != (batch, 3, gt, gt):
            raise RuntimeError(f"feed_data made lq {tuple(host.lq.shape)}, gt {tuple(host.gt.shape)}")
        sync(device)
        tic = time.perf_counter()
        for _ in range(steps):
            a = time.perf_counter()
            data = next(it)
            b = time.perf_counter()
            host.feed_data(data)
            sync(device)
            wait += b - a
            feed += time.perf_counter() - b
        seconds = time.perf_counter() - tic
    del it, loader
    return {"pairs/s": batch * steps / seconds, "s/batch": seconds / steps, "wait": wait / steps,
            "feed": feed / steps, "queue": queue, "warmup": warmup}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------ --step


def training_step_seconds(device: torch.device, batch: int, gt: int, steps: int) -> float | str:
    """Seconds per step of RRDBNet (23 blocks) + unet_sn (L1 + GAN losses, Adam), or why it cannot run."""
    from fastsr.models import DISCRIMINATORS, GENERATORS

    if "unet_sn" not in DISCRIMINATORS:
        return "the unet_sn discriminator is not registered here (fastsr/models/unet_discriminator.py missing)"
    g = GENERATORS.rebuild({"name": "rrdbnet", "scale": SCALE}, "degradation_throughput --step").to(device)
    d = DISCRIMINATORS.rebuild({"name": "unet_sn"}, "degradation_throughput --step").to(device)
    opt_g = torch.optim.Adam(g.parameters(), 1e-4, betas=(0.9, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), 1e-4, betas=(0.9, 0.99))
    hr = torch.rand(batch, 3, gt, gt, device=device)
    lr = torch.rand(batch, 3, gt // SCALE, gt // SCALE, device=device)
    bce = F.binary_cross_entropy_with_logits

    def step():
        sr = g(lr)
        d.requires_grad_(False)
        fake = d(sr)
        loss_g = F.l1_loss(sr, hr) + 0.1 * bce(fake, torch.ones_like(fake))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        real, fake = d(hr), d(sr.detach())
        loss_d = bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

    step()
    sync(device)
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - tic) / steps


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 64], help="batch sizes (default 16 64)")
    ap.add_argument("--gt", type=int, default=256, help="GT (HR) side; LR is GT/4 (default 256)")
    ap.add_argument("--steps", type=int, default=10, help="timed batches per row and batch (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches of the fastsr row first (default 2; the "
                    "BasicSR rows warm up until their queue is full, plus one batch)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS), help="rows to measure (default all)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes of the BasicSR rows (default 2)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads in this process (default: torch's)")
    ap.add_argument("--basicsr", help="BasicSR 1.4.2's sdist or extracted tree (default: $FASTSR_BASICSR, "
                    "benchmarks/.cache, else pip download)")
    ap.add_argument("--step", action="store_true", help="also the degradation's share of a Real-ESRGAN training step "
                    "(RRDBNet + unet_sn at batch 16; meant for a GPU)")
    ap.add_argument("--step-steps", type=int, default=3, help="timed training steps for --step (default 3)")
    ap.add_argument("--fill-queue", action="store_true", help="BasicSR rows: warm up by filling the 180-pair queue "
                    "with feed_data (queue/batch batches) instead of marking it full after the first batch")
    ap.add_argument("--work", help="folder for the BasicSR rows' sub-images (default: a temp dir)")
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    if args.gt % SCALE or args.gt > SUBIMAGE:
        ap.error(f"--gt must be a multiple of {SCALE} and at most {SUBIMAGE} (BasicSR's crop)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [r for r in ROWS if r in args.rows]

    notes, skipped = [], {}
    if "fastsr" in rows and (why := fastsr_missing()):
        skipped["fastsr"] = why
    bsr = None
    if {"basicsr", "basicsr-256"} & set(rows):
        from basicsr_142 import BasicSRUnavailable, load_basicsr

        try:
            bsr = load_basicsr(args.basicsr)
        except BasicSRUnavailable as err:
            for r in ("basicsr", "basicsr-256"):
                if r in rows:
                    skipped[r] = f"BasicSR 1.4.2 unavailable: {err}"
    for r, why in skipped.items():
        print(f"row skipped: {ROWS[r]}: {why}", flush=True)
    rows = [r for r in rows if r not in skipped]

    meta = None
    if bsr is not None:
        work = Path(args.work or tempfile.mkdtemp(prefix="fastsr_degr_"))
        meta = write_subimages(work / "gt")
        count = len(meta.read_text().split())
        notes.append(f"BasicSR rows read {count} PNG sub-images (<= 400x400) of scikit-image's photographs in {work / 'gt'}")

    results: dict[tuple[str, int], dict] = {}
    for batch in args.batch:
        for r in rows:
            if r == "fastsr":
                res = measure_fastsr(batch, args.gt, args.steps, args.warmup, device)
            else:
                res = measure_basicsr(bsr, meta, r == "basicsr-256", batch, args.gt, args.steps, args.workers, device,
                                      args.fill_queue)
            results[r, batch] = res
            extra = (f" ({res['s/batch'] * 1e3:.0f} ms/batch: loader wait {res['wait'] * 1e3:.0f} ms, feed_data "
                     f"{res['feed'] * 1e3:.0f} ms; queue {res['queue']}, {res['warmup']} warm-up batches)"
                     if "queue" in res else f" ({res['s/batch'] * 1e3:.0f} ms/batch)")
            print(f"  {ROWS[r]}, batch {batch}: {res['pairs/s']:.1f} pairs/s{extra}", flush=True)
            numbers("degradation", f"{ROWS[r]}, batch {batch}, GT {args.gt}, on {device}", res["pairs/s"], "pairs/s")

    lines = ["| row | batch | pairs/s | vs BasicSR as shipped |", "|---|---|---|---|"]
    for (r, batch), res in results.items():
        base = results.get((BASELINE, batch))
        ratio = f"{res['pairs/s'] / base['pairs/s']:.2f}x" if base else "-"
        lines.append(f"| {ROWS[r]} | {batch} | {res['pairs/s']:.1f} | {ratio} |")
    for (r, batch), res in results.items():
        if "queue" in res:
            notes.append(f"{r}, batch {batch}: {res['s/batch'] * 1e3:.0f} ms per batch = loader wait "
                         f"{res['wait'] * 1e3:.0f} ms + feed_data {res['feed'] * 1e3:.0f} ms; queue {res['queue']} "
                         f"pairs (180 rounded to a multiple of {batch}), {res['warmup']} warm-up batches"
                         + ("" if args.fill_queue else " (the queue marked full after the first; --fill-queue fills it)"))
        else:
            notes.append(f"{r}, batch {batch}: {res['s/batch'] * 1e3:.1f} ms per batch, degradation alone, "
                         f"{args.warmup} warm-up batches")

    if args.step:
        step_batch = 16
        step = training_step_seconds(device, step_batch, args.gt, args.step_steps)
        if isinstance(step, str):
            notes.append(f"--step skipped: {step}")
        else:
            notes.append(f"--step: one RRDBNet (23 blocks) + unet_sn step (L1 + GAN, Adam; no perceptual loss) at batch "
                         f"{step_batch}, GT {args.gt}: {step * 1e3:.0f} ms on {device}")
            numbers("degradation", f"RRDBNet + unet_sn step, batch {step_batch}, GT {args.gt}, on {device}", step, "s")
            for r in rows:
                res = results.get((r, step_batch))
                if res is None and r == "fastsr":
                    res = results[r, step_batch] = measure_fastsr(step_batch, args.gt, args.steps, args.warmup, device)
                if res is not None:
                    share = res["s/batch"] / (res["s/batch"] + step)
                    notes.append(f"--step: {r} degradation {res['s/batch'] * 1e3:.0f} ms per batch of {step_batch} = "
                                 f"{share:.1%} of degradation + step")

    header = [
        ("What each row includes: fastsr: the degradation alone (USM of the GT, both orders, the final sinc/JPEG, 8-bit "
        "rounding; every parameter drawn per sample inside the timed call) on an HR batch already on the device "
        "(fastsr's batch sources deliver it there); BasicSR: its DataLoader "
        f"({args.workers} workers: PNG decode, flip, 400 crop, three kernels per sample) + feed_data (to the device, "
        "USM of the GT, both orders on the 400x400 crop, the final sinc/JPEG, rounding, the 256/64 crop, the "
        "training-pair queue, USM of the dequeued GT for the losses), end to end; the variant: the same with the GT "
        "cut to 256 in the loader."),
        ("What BasicSR cannot do: the samples of a batch share one resize scale and mode (per resize stage) and one "
        "noise type (Gaussian or Poisson); its JPEG quality is a float (unrounded) and its DiffJPEG is not libjpeg; "
        "its queue mixes pairs across batches to make up for the shared draws."),
    ]
    if bsr is not None:
        header.append(bsr.describe())
    table = "\n".join(lines)
    command = "python benchmarks/degradation_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    details = (f"Device {device}, {torch.get_num_threads()} torch threads, GT {args.gt} x{SCALE}, {args.steps} timed "
               f"batches per row.\n\n" + "\n\n".join(header)
               + ("\n\nSkipped: " + "; ".join(f"{ROWS[r]}: {w}" for r, w in skipped.items()) if skipped else ""))
    body = table + "\n\n" + "\n".join(f"- {n}" for n in notes)
    publish("Degradation throughput (Real-ESRGAN second order)", details, command.strip(), body,
            save=not args.no_record)


if __name__ == "__main__":
    main()
