"""How close each batched JPEG simulation is to a real JPEG codec: PIL (libjpeg) at the same integer quality.

    python benchmarks/jpeg_agreement.py [--quality 10 30 50 75 95] [--basicsr PATH] [--no-record]

On natural images: scikit-image's astronaut, coffee and chelsea and the rest of fastsr's `samples` source
(its photographs; gray ones made RGB), each cropped at the top left to a multiple of 16 per side (so no
method pads). For every quality, each image is saved by PIL as a JPEG (`Image.save(buf, "JPEG", quality=q)`:
4:2:0, the IJG tables) and decoded by PIL; that decode is the reference. Each method compresses the same
8-bit image at the same quality; its output is put on 8-bit levels (round(255 x), clipped) and compared:
mean and max absolute error in levels over all pixels and channels (the mean over images of each image's
mean; the max over all), and PSNR (the mean over images, peak 255; inf where equal).

Methods:
- `input unchanged`: the image itself, not a JPEG: how much the codec itself changes the image (context);
- `fastsr.ops.jpeg`: fastsr's `jpeg(img, quality)`, integer qualities;
- `BasicSR 1.4.2 DiffJPEG(differentiable=False)`: loaded from its sdist by benchmarks/basicsr_142.py (needs
  OpenCV: `pip install opencv-python-headless`), quality as the float tensor feed_data passes it;
- `Kornia jpeg_codec_differentiable`: `kornia.enhance.jpeg_codec_differentiable(img, tensor([q]))`;
- `NVIDIA DALI jpeg_compression_distortion`: `fn.jpeg_compression_distortion` in a CPU pipeline fed uint8 HWC
  images by `fn.external_source`, the quality a per-sample argument.
A method that does not import or run here is left out with a line saying why.
The table is printed and appended to benchmarks/RESULTS.md unless --no-record.
"""

from __future__ import annotations

import argparse
import io
import math
import sys

import numpy as np
import torch
from PIL import Image

from fastsr.data.sources import resolve_source
from report import publish  # benchmarks/report.py: this folder is on sys.path when a script runs

QUALITIES = (10, 30, 50, 75, 95)


def images() -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 HWC cropped to multiples of 16): astronaut, coffee, chelsea, then fastsr's other samples."""
    import skimage.data

    out = [(n, getattr(skimage.data, n)()) for n in ("astronaut", "coffee", "chelsea")]
    for s in resolve_source("samples", "train", 4) + resolve_source("samples", "val", 4):
        if s.name not in {n for n, _ in out}:
            out.append((s.name, np.asarray(Image.open(s.hr).convert("RGB"))))
    return [(n, np.ascontiguousarray(a[: a.shape[0] // 16 * 16, : a.shape[1] // 16 * 16])) for n, a in out]


def pil_jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255


def to_levels(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def methods(basicsr: str | None) -> tuple[dict, dict, object]:
    """({name: fn(list of uint8 HWC images, quality) -> list of uint8 HWC}, {name: why it is left out}, the loaded
    BasicSR or None)."""
    found, missing = {"input unchanged (no JPEG: the codec's own change)": lambda imgs, q: imgs}, {}
    try:
        from fastsr.ops.jpeg import jpeg

        found["fastsr.ops.jpeg"] = lambda imgs, q: [to_levels(jpeg(to_tensor(i), torch.tensor([q]))) for i in imgs]
    except ImportError as err:
        missing["fastsr.ops.jpeg"] = f"does not import ({err})"
    from basicsr_142 import BasicSRUnavailable, load_basicsr

    try:
        bsr = load_basicsr(basicsr)
        diffjpeg = bsr.DiffJPEG(differentiable=False)
        found["BasicSR 1.4.2 DiffJPEG(differentiable=False)"] = lambda imgs, q: [
            to_levels(diffjpeg(to_tensor(i), quality=torch.tensor([float(q)]))) for i in imgs]
    except BasicSRUnavailable as err:
        bsr = None
        missing["BasicSR 1.4.2 DiffJPEG(differentiable=False)"] = str(err)
    try:
        import kornia
        from kornia.enhance import jpeg_codec_differentiable

        found[f"Kornia {kornia.__version__} jpeg_codec_differentiable"] = lambda imgs, q: [
            to_levels(jpeg_codec_differentiable(to_tensor(i), torch.tensor([float(q)])).detach()) for i in imgs]
    except ImportError as err:
        missing["Kornia jpeg_codec_differentiable"] = f"does not import ({err})"
    dali, why = dali_jpeg()
    if dali:
        found[dali[0]] = dali[1]
    else:
        missing["NVIDIA DALI jpeg_compression_distortion"] = why
    return found, missing, bsr


def dali_jpeg():
    """((name, fn), None) for DALI's CPU jpeg_compression_distortion, or (None, why it cannot run here)."""
    try:
        from nvidia import dali
        from nvidia.dali import fn, pipeline_def, types
    except ImportError as err:
        return None, f"NVIDIA DALI does not import here ({err})"

    def run(imgs, q):
        @pipeline_def(batch_size=len(imgs), num_threads=1, device_id=None, prefetch_queue_depth=1)
        def pipe():
            x = fn.external_source(name="img", dtype=types.UINT8, layout="HWC")
            quality = fn.external_source(name="q", dtype=types.INT32)
            return fn.jpeg_compression_distortion(x, quality=quality, device="cpu")

        p = pipe()
        p.build()
        p.feed_input("img", imgs)
        p.feed_input("q", [np.array(q, np.int32)] * len(imgs))
        (out,) = p.run()
        return [np.asarray(out[i]) for i in range(len(imgs))]

    try:
        probe = np.zeros((16, 16, 3), np.uint8)
        run([probe], 50)
    except Exception as err:  # noqa: BLE001 - any failure to build or run the pipeline is reported, not raised
        return None, f"NVIDIA DALI {dali.__version__}: the CPU pipeline does not run here ({type(err).__name__}: {err})"
    return (f"NVIDIA DALI {dali.__version__} jpeg_compression_distortion (CPU)", run), None


def compare(out: list[np.ndarray], ref: list[np.ndarray]) -> tuple[float, int, float]:
    """(mean abs error, max abs error, mean PSNR) in 8-bit levels over the images."""
    maes, maxes, psnrs = [], [], []
    for o, r in zip(out, ref):
        if o.shape != r.shape:
            raise RuntimeError(f"output {o.shape} vs reference {r.shape}")
        d = o.astype(np.float64) - r.astype(np.float64)
        maes.append(np.abs(d).mean())
        maxes.append(int(np.abs(d).max()))
        mse = (d**2).mean()
        psnrs.append(math.inf if mse == 0 else 10 * math.log10(255**2 / mse))
    return float(np.mean(maes)), max(maxes), float(np.mean(psnrs))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quality", type=int, nargs="+", default=list(QUALITIES), help="JPEG qualities (default 10 30 50 75 95)")
    ap.add_argument("--basicsr", help="BasicSR 1.4.2's sdist or extracted tree (default: $FASTSR_BASICSR, "
                    "benchmarks/.cache, else pip download)")
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    named = images()
    imgs = [a for _, a in named]
    found, missing, bsr = methods(args.basicsr)
    for name, why in missing.items():
        print(f"left out: {name}: {why}", flush=True)
    lines = ["| method | quality | mean abs err (levels) | max abs err | PSNR vs PIL (dB) |", "|---|---|---|---|---|"]
    for name, method in found.items():
        for q in args.quality:
            ref = [pil_jpeg(i, q) for i in imgs]
            with torch.no_grad():
                mae, mx, psnr = compare(method([i.copy() for i in imgs], q), ref)
            lines.append(f"| {name} | {q} | {mae:.3f} | {mx} | {psnr:.2f} |")
            print(f"  {name}, quality {q}: mean {mae:.3f}, max {mx}, PSNR {psnr:.2f} dB", flush=True)
    import PIL
    from PIL import features

    turbo = features.check_feature("libjpeg_turbo")
    jpeg_lib = (f"libjpeg-turbo {features.version('libjpeg_turbo')}" if turbo else f"libjpeg {features.version('jpg')}")
    sizes = ", ".join(f"{n} {a.shape[1]}x{a.shape[0]}" for n, a in named)
    details = (f"Reference: PIL {PIL.__version__} ({jpeg_lib}) save at the quality (4:2:0, IJG tables) and decode. "
               f"{len(imgs)} images: {sizes}. Outputs rounded to 8-bit levels before comparing; mean and PSNR are means "
               "over images, max over all."
               + (f"\n\n{bsr.describe()}" if bsr is not None else "")
               + ("\n\nLeft out: " + "; ".join(f"{n}: {w}" for n, w in missing.items()) if missing else ""))
    command = "python benchmarks/jpeg_agreement.py " + " ".join(sys.argv[1:] if argv is None else argv)
    publish("JPEG agreement with libjpeg (PIL)", details, command.strip(), "\n".join(lines), save=not args.no_record)


if __name__ == "__main__":
    main()
