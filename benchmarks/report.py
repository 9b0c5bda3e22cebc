"""What every benchmark script shares: naming the machine, appending a run to RESULTS.md, and the GPU check's summary."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """Host, CPU cores and model, and the GPU if torch sees one (RESULTS.md compares runs by this)."""
    import torch  # where used, not at the top: `report.py FILE --note` then starts in a fraction of a second

    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()} x{torch.cuda.device_count()}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.node()}: {os.cpu_count()} CPU cores ({cpu}){gpu}"


def publish(title: str, details: str, command: str, body: str, save: bool) -> None:
    """Print a run's markdown record (a dated heading, the machine, `details`, the command that reproduces
    it, then `body`) and, if `save`, append it to RESULTS.md."""
    import torch

    record = (f"\n## {title}, {datetime.datetime.now():%Y-%m-%d %H:%M}\n\nMachine: {machine()}; torch "
              f"{torch.__version__}. {details}\nCommand: `{command}`\n\n{body}\n")
    print(record)
    if save:
        with RESULTS.open("a") as f:
            f.write(record)
        print(f"appended to {RESULTS}")


# The GPU check's one table: each benchmark also hands its numbers to `numbers`, which appends them to the
# JSON-lines file named by $FASTSR_SUMMARY when set (benchmarks/gpu_check.sh sets it), and the check adds a
# `note` for each stage it ran or skipped; `python benchmarks/report.py FILE` prints them all as one table.
SUMMARY_ENV = "FASTSR_SUMMARY"


def numbers(benchmark: str, what: str, value: float, unit: str) -> None:
    """Append one measurement to the GPU check's summary file ($FASTSR_SUMMARY); nothing when it is unset."""
    path = os.environ.get(SUMMARY_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"benchmark": benchmark, "what": what, "value": value, "unit": unit}) + "\n")


def note(path: str, text: str) -> None:
    """Record one line under the table (which stage ran or was skipped, and why)."""
    with open(path, "a") as f:
        f.write(json.dumps({"note": text}) + "\n")


def summary_table(path: str) -> str:
    """The numbers as one markdown table, the notes below it."""
    import torch

    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows = [r for r in records if "note" not in r]
    lines = [f"Machine: {machine()}; torch {torch.__version__}", "", "| benchmark | what | value | unit |",
             "|---|---|---|---|"]
    lines += [f"| {r['benchmark']} | {r['what']} | {r['value']:.4g} | {r['unit']} |" for r in rows]
    lines += ["", *(f"- {r['note']}" for r in records if "note" in r)]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Print the GPU check's summary as one table, or add a note to it.")
    ap.add_argument("summary", help="the JSON-lines file ($FASTSR_SUMMARY)")
    ap.add_argument("--note", help="append this line to the notes under the table instead")
    args = ap.parse_args()
    if args.note:
        note(args.summary, args.note)
    else:
        print(summary_table(args.summary))
