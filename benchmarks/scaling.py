"""Data-parallel scaling: the trainer under `accelerate launch` with 1, 2, ... processes.

    python benchmarks/scaling.py [--procs 1 2] [--recipe R] [--steps N] [--no-record]

Each run trains pretrain of RECIPE (default: the quick start's generator on the bundled photographs,
batch 16 per process) for about N steps and reads images/sec from its log (the mean after the
first logged window, which holds start-up). Throughput counts every process's images; scaling
efficiency = throughput(N) / (N x throughput(1)). On a machine without a GPU the processes form a
gloo group and split the CPU cores (torch.distributed's launcher gives each one thread), so the
table shows what data parallelism costs there, not a speed-up; on GPUs it is the real thing.
Appends the table, machine named, to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from report import publish  # benchmarks/report.py: this folder is on sys.path when a script runs
ROOT = Path(__file__).resolve().parents[1]


def run(procs: int, recipe: str, steps: int, out: Path) -> float:
    """Train `recipe`'s pretrain for about `steps` steps on `procs` processes under `out`; returns the mean
    images/sec of its log windows after the first. Exits with the run's stderr tail if it fails."""
    name = f"scale{procs}"
    overrides = [f"out_dir={out}", f"name={name}", "train.epochs_finetune=0", "train.val_every=0", "train.save_every=0",
                 "train.log_every=5", "data.backend=torch"]
    per_epoch = 13 * 16 // (16 * procs)  # the quick start: 13 images x repeat 16, batch 16 per process
    overrides.append(f"train.epochs_pretrain={max(1, -(-steps // per_epoch))}")
    launch = ["accelerate", "launch", "--num_processes", str(procs)]
    launch += ["--multi_gpu", "--main_process_port", str(29600 + procs)] if procs > 1 else ([] if torch.cuda.is_available() else ["--cpu"])
    cmd = [*launch, str(ROOT / "fastsr" / "train.py"), recipe, *overrides]
    print(" ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode:
        sys.exit(f"run with {procs} process(es) failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / name / "log.jsonl").read_text().splitlines()]
    rates = [r["images_per_sec"] for r in records if r["kind"] == "train"][1:]
    return sum(rates) / len(rates)


def main(argv: list[str] | None = None) -> None:
    """Run each --procs count in turn (default: 1 and 2, or up to the GPUs there are), then print the table and
    append it to RESULTS.md (unless --no-record)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    gpus = torch.cuda.device_count()
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2] if gpus < 2 else [1, 2, 4, 8][: gpus.bit_length()])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="fastsr_scaling_"))
    rates = {n: run(n, args.recipe, args.steps, out) for n in args.procs}
    base = rates[args.procs[0]] / args.procs[0]
    lines = ["| processes | images/s (all processes) | vs the first row | scaling efficiency |", "|---|---|---|---|"]
    lines += [f"| {n} | {r:.1f} | {r / rates[args.procs[0]]:.2f}x | {100 * r / (n * base):.0f}% |" for n, r in rates.items()]
    details = (f"{'' if gpus else 'CPU processes in a gloo group, sharing the cores. '}Recipe {Path(args.recipe).name}, "
               f"pretrain, batch 16 per process, ~{args.steps} steps.")
    publish("Data-parallel scaling", details, f"python benchmarks/scaling.py --procs {' '.join(map(str, args.procs))}",
            "\n".join(lines), save=not args.no_record)


if __name__ == "__main__":
    main()
