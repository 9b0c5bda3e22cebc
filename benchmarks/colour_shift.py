"""Colour cast: the mean of SR - HR in each RGB channel, per held-out image, in 8-bit levels.

PSNR and SSIM are scored on the Y channel, so a model can tint a whole picture and lose little there; a
cast shows as a per-channel mean offset that bicubic (which keeps each channel's mean) does not have.
The SR images are the ones `fastsr eval` scores (the same pairs, clamped and rounded to 8 bits).

    python benchmarks/colour_shift.py --model bicubic --model SRGAN=runs/quickstart/quickstart/generator.safetensors
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch
from report import publish  # benchmarks/report.py: this folder is on sys.path when a script runs

from fastsr.data.screen import load_val_set
from fastsr.data.sources import resolve_source
from fastsr.infer import upscale
from fastsr.model_files import open_generator
from fastsr.models import build_generator
from fastsr.ops import quantize


def channel_shift(sr: torch.Tensor, hr: torch.Tensor) -> list[float]:
    """mean(SR - HR) of each channel of one 1x3xHxW pair in [0, 1], in 8-bit levels."""
    return (sr - hr).mean(dim=(0, 2, 3)).mul(255).tolist()


def main() -> None:
    """Print each method's per-image channel shift and append the table to RESULTS.md (unless --no-record)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True,
                    help="`bicubic`, or NAME=PATH of a generator.safetensors (repeatable)")
    ap.add_argument("--data", default="samples", help="the evaluation images (as `fastsr eval --data`)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    args = ap.parse_args()

    methods = {}
    for spec in args.model:
        name, _, path = spec.rpartition("=")
        methods[name or path] = build_generator("bicubic", scale=args.scale) if path == "bicubic" else open_generator(path)
    pairs = load_val_set(resolve_source(args.data, "eval", args.scale), args.scale)
    rows = ["| method | image | R | G | B | largest |", "|---|---|---|---|---|---|"]
    for method, model in methods.items():
        for image, hr, lr, _ in pairs:
            sr = quantize(upscale(model, lr, args.scale).float())
            shift = channel_shift(sr, hr)
            rows.append(f"| {method} | {image} | " + " | ".join(f"{s:+.2f}" for s in shift)
                        + f" | {max(map(abs, shift)):.2f} |")
    command = "python benchmarks/colour_shift.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    publish("Colour shift (mean SR - HR per RGB channel, 8-bit levels)",
            f"Data {args.data}, x{args.scale}; SR clamped and rounded to 8 bits as `fastsr eval` scores it.",
            command, "\n".join(rows), save=not args.no_record)


if __name__ == "__main__":
    main()
