"""`fastsr export` of one generator, float32 and float16: the export's time, and how far onnxruntime's output
is from PyTorch's float32 one on a 64x64 LR (random, and the astronaut made LR by the exact degradation).

    python benchmarks/onnx_export.py runs/quickstart/quickstart/generator.safetensors [--save]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch
from report import publish  # benchmarks/report.py: this folder is on sys.path when a script runs
from skimage import data

from fastsr.export import export_onnx
from fastsr.model_files import open_generator
from fastsr.ops import imresize, quantize


def main() -> None:
    """Export the weights both ways into a temporary folder, print the table, and append it to RESULTS.md only
    with --save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--save", action="store_true", help="append the record to RESULTS.md")
    args = parser.parse_args()
    model = open_generator(args.weights)
    hr = torch.from_numpy(data.astronaut()[:256, 128:384].copy()).permute(2, 0, 1)[None].double() / 255
    inputs = {"random": torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
              "astronaut": quantize(imresize(hr, scale=1 / 4)).float()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fp16 in (False, True):
            path = Path(tmp) / "model.onnx"
            done = export_onnx(model, path, fp16=fp16, source=str(args.weights))
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for name, lr in inputs.items():
                lr = lr.half() if fp16 else lr
                (sr,) = session.run(["sr"], {"lr": lr.numpy()})
                with torch.no_grad():
                    expected = model(lr.float())
                sr = torch.from_numpy(sr).float()
                levels = (quantize(sr) != quantize(expected)).float().mean().item()
                rows.append(f"| {done.dtype} | {done.seconds:.1f} | {name} | {(sr - expected).abs().max().item():.2e} "
                            f"| {100 * levels:.3f} % |")
    body = ("| graph | export (s) | 64x64 LR | max abs difference | uint8 levels that differ |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows))
    described = ", ".join(f"{key} {value}" for key, value in model.config.items())
    publish("ONNX export", f"Generator: {described}; onnxruntime {ort.__version__}, CPU.",
            f"python benchmarks/onnx_export.py {args.weights}", body, args.save)


if __name__ == "__main__":
    main()
