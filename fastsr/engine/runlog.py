"""What a run leaves for people and programs to read: a JSONL log and a plot."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fastsr.util import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class RunLog:
    """Appends one JSON object per line to run_dir/log.jsonl (resumed runs keep appending). Every record of a
    run (`kind`, `step`, its fields) passes through `write`: the one place to send them anywhere else too,
    which `forward` does (the experiment trackers, engine/trackers.py), after the line is written."""

    def __init__(self, path: Path, enabled: bool = True, forward: Callable[[dict], None] | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self.forward = forward

    def write(self, **record) -> None:
        """Append `record` with a `time` (Unix seconds) and forward it; does nothing on a disabled log (the
        processes other than rank 0)."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.forward is not None:
            self.forward(record)


def read_log(path: Path) -> list[dict]:
    """The records of a JSONL log, in order; [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# The legend entry of the line drawn where the finetune phase starts.
FINETUNE_LABEL = "finetune starts"


def plot_curves(log_path: Path, png_path: Path) -> None:
    """Write `curves_figure` of the JSONL log at `log_path` to `png_path`."""
    fig = curves_figure(read_log(log_path))
    write_atomic(png_path, lambda f: fig.savefig(f, dpi=90, format="png"))


def curves_figure(records: list[dict]) -> Figure:
    """Each training loss term on its own small panel (log scale), beside each validation set's PSNR and
    bicubic's, against steps; a dotted line where the finetune phase starts.

    A panel per term rather than one shared axis: the terms' raw values lie decades apart (TV ~1e2..1e4,
    pixel ~1e-2, VGG ~1e-3, adversarial spiking from 1e-25 to 1e1), so on one axis, even a log one, each
    trend is squashed flat; its own y-range shows every term's trend, with no threshold to tune."""
    from matplotlib.figure import Figure  # not pyplot: no global backend or figure list to manage
    from matplotlib.ticker import MaxNLocator

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    terms = list(dict.fromkeys(k for r in train for k in r if k.startswith("loss_")))  # pretrain's pixel first
    rows = max(1, len(terms))
    fig = Figure(figsize=(11, max(4.0, 1.3 * rows + 0.8)), layout="constrained")
    grid = fig.add_gridspec(rows, 2)
    loss_axes = [fig.add_subplot(grid[0, 0])]
    loss_axes += [fig.add_subplot(grid[i, 0], sharex=loss_axes[0]) for i in range(1, rows)]
    ax_val = fig.add_subplot(grid[:, 1], sharex=loss_axes[0])
    # matplotlib's automatic ticks, but whole steps only (a one-step log would show 0.98, 1.02...); the
    # panels share this axis and so its ticks
    ax_val.xaxis.set_major_locator(MaxNLocator("auto", steps=[1, 2, 2.5, 5, 10], integer=True, min_n_ticks=1))
    for ax, key in zip(loss_axes, terms):
        _plot_term(ax, train, key)
    if not terms:
        loss_axes[0].set_ylabel("loss")
    loss_axes[0].set_title("training losses (log scale, one panel per term)")
    for ax in loss_axes[:-1]:
        ax.tick_params(labelbottom=False)  # the panels share the bottom one's steps
    loss_axes[-1].set_xlabel("step")
    _plot_val(ax_val, val)
    finetune = _finetune_start(train)
    if finetune is not None:
        for ax in (*loss_axes, ax_val):
            ax.axvline(finetune, color="0.4", linestyle=":", label=FINETUNE_LABEL)
        for ax in (loss_axes[0], ax_val):
            ax.text(finetune, 1, " finetune", transform=ax.get_xaxis_transform(), va="top", ha="left", color="0.3")
    if val:
        ax_val.legend()
    return fig


def _plot_term(ax, train: list[dict], key: str) -> None:
    """One loss term against steps; values <= 0 (a log axis has no place for them) are left out."""
    points = [(r["step"], r[key]) for r in train if r.get(key) is not None and r[key] > 0]
    if points:
        ax.plot(*zip(*points), marker="." if len(points) == 1 else None)
        ax.set_yscale("log")
    ax.set_ylabel(f"{key.removeprefix('loss_')} loss")


def _plot_val(ax, val: list[dict]) -> None:
    """Per validation set, the model's PSNR and bicubic's (dashed) in one colour; both with markers, so that
    a single validation shows too."""
    for name in dict.fromkeys(r.get("set", "val") for r in val):
        points = [r for r in val if r.get("set", "val") == name]
        steps = [r["step"] for r in points]
        line, = ax.plot(steps, [r["psnr"] for r in points], marker="o", label=name)
        ax.plot(steps, [r["bicubic_psnr"] for r in points], linestyle="--", marker="x", color=line.get_color(),
                label=f"{name} bicubic")
    ax.set_xlabel("step")
    ax.set_ylabel("validation PSNR (dB, Y)")
    ax.set_title("validation")


def _finetune_start(train: list[dict]) -> int | None:
    """The first finetune step, when the log holds both phases (a finetune-only run has no boundary)."""
    phases = {r.get("phase") for r in train}
    if not {"pretrain", "finetune"} <= phases:
        return None
    return min(r["step"] for r in train if r.get("phase") == "finetune")
