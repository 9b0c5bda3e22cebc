"""What a run leaves for people and programs to read: a JSONL log and a plot."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from fastsr.util import write_atomic


class RunLog:
    """Appends one JSON object per line to run_dir/log.jsonl (resumed runs keep appending). Every record of a
    run (`kind`, `step`, its fields) passes through `write`: the one place to send them anywhere else too,
    which `forward` does (the experiment trackers, engine/trackers.py), after the line is written."""

    def __init__(self, path: Path, enabled: bool = True, forward: Callable[[dict], None] | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self.forward = forward

    def write(self, **record) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.forward is not None:
            self.forward(record)


def read_log(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(log_path: Path, png_path: Path) -> None:
    """Losses (log scale) and validation PSNR against steps, from the JSONL log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    loss_keys = sorted({k for r in train for k in r if k.startswith("loss_")})
    for key in loss_keys:
        points = [(r["step"], r[key]) for r in train if r.get(key) is not None and r[key] > 0]
        if points:
            ax_loss.plot(*zip(*points), label=key.removeprefix("loss_"))
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("training losses")
    if loss_keys:
        ax_loss.legend()
    for name in dict.fromkeys(r.get("set", "val") for r in val):  # one colour per validation set
        points = [r for r in val if r.get("set", "val") == name]
        line, = ax_val.plot([r["step"] for r in points], [r["psnr"] for r in points], marker="o", label=name)
        ax_val.plot([r["step"] for r in points], [r["bicubic_psnr"] for r in points], linestyle="--",
                    color=line.get_color(), label=f"{name} bicubic")
    if val:
        ax_val.legend()
    ax_val.set_xlabel("step")
    ax_val.set_title("validation PSNR (dB, Y)")
    fig.tight_layout()
    write_atomic(png_path, lambda f: fig.savefig(f, dpi=90, format="png"))
    plt.close(fig)
