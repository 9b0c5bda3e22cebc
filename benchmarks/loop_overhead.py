"""The training loop's host overhead per step: what `Loop.run_phases` adds to the bare step function.

A trivial model (SRCNN 1-1-1 with 4 channels, no residual; batch 2, HR crop 16, x4) makes the step
itself cheap, so the difference is the loop's own work per step (learning rate, loss guard, log window,
progress bar, stop check, EMA, the runtime's batch layout) and the torch loader's (crop plan, `crop_pair`,
collation; `data.workers=0`, images cached in memory). The run is set up as `fastsr.engine.trainer.train`
sets it up (`set_up`) over a generated folder of small images; the validation and checkpoint at the phase's
end are left out (not per-step work).

Each configuration times one epoch three ways, each the best of a few repeats (shared machines):
- step: `pretrain_step` alone over the epoch's batches, collected beforehand and laid out as the loop lays
  them out;
- loop, replayed batches: `Loop.run_phases()` drawing those same batches from a list (the loop's own
  overhead);
- loop, torch loader: `Loop.run_phases()` as a run does it (the loop's and the loader's).
Overhead per step = (loop - step) / steps. Torch runs on one thread here (see `measure_all`).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from fastsr.engine.checkpoint import Position
from fastsr.engine.loop import Loop
from fastsr.engine.setup import make_accelerator, set_up
from fastsr.engine.steps import pretrain_step
from fastsr.recipe import from_dict

IMAGES = 8  # generated 32x32 training images


@dataclass
class Overhead:
    """One setting's three timings of the same `steps` steps, in seconds (each the best of its repeats)."""

    setting: str
    steps: int
    step_s: float  # the step function alone
    replay_s: float  # the loop, batches replayed from a list
    loader_s: float  # the loop with the torch loader

    def us(self, seconds: float) -> float:
        """Microseconds per step that a timing of `seconds` adds to the step function alone."""
        return 1e6 * (seconds - self.step_s) / self.steps

    def row(self) -> str:
        """The setting's Markdown row under HEADER."""
        return (f"| {self.setting} | {self.steps / self.step_s:.0f} | {self.steps / self.replay_s:.0f} | "
                f"{self.steps / self.loader_s:.0f} | {self.us(self.replay_s):.0f} | {self.us(self.loader_s):.0f} |")


HEADER = ("| loop setting | step alone, steps/s | loop, replayed batches, steps/s | loop, torch loader, steps/s | "
          "loop's own overhead, us/step | with the loader, us/step |\n|---|---|---|---|---|---|")


class _Replay:
    """A batch source handing out batches collected beforehand (so the loop is timed without the loader)."""

    name = "replay"

    def __init__(self, batches):
        self._batches = batches

    def __len__(self) -> int:
        return len(self._batches)

    def batches(self, epoch: int, start: int = 0):
        return iter(self._batches[start:])


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", IMAGES), ("val", 1)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / f"{i}.png")
    return root


def measure(setting: str, train: dict, steps: int = 1000, batch: int = 2, repeats: int = 5) -> Overhead:
    """Time about `steps` pretrain steps of the trivial model three ways, with `train` overriding recipe
    keys of the train section; leaves its generated images and run under a temporary folder."""
    work = Path(tempfile.mkdtemp(prefix="fastsr_loop_overhead_"))
    recipe = from_dict({
        "name": "overhead", "out_dir": str(work / "runs"), "scale": 4,
        "model": {"name": "srcnn", "kernels": [1, 1, 1], "channels": [4, 4], "residual": False},
        "data": {"source": str(_folder(work / "images")), "hr_crop": 16, "repeat": steps * batch // IMAGES,
                 "backend": "torch", "workers": 0, "cache_images": True},
        "train": {"epochs_pretrain": 1, "epochs_finetune": 0, "batch_size": batch, "val_every": 0, "save_every": 0,
                  **train},
    })
    run = set_up(recipe, Console(quiet=True), make_accelerator(recipe), None, Position())
    loader, train = run.loader, run.training
    batches = [run.runtime.start_step(*b) for b in loader.batches(0)]  # also decodes the images once (kept)
    replay = _Replay(batches)

    def step_alone() -> float:
        tic = time.perf_counter()
        for b in batches:
            out = pretrain_step(train.generator, b, train.opt_g, run.accelerator, train.pretrain_loss, run.precision)
        float(out["pixel"])
        return time.perf_counter() - tic

    def loop(source) -> float:
        timed = Loop(replace(run, loader=source, position=Position()))
        timed.validate = timed.checkpoint = lambda: None  # phase-end work, not per step
        tic = time.perf_counter()
        timed.run_phases()
        return time.perf_counter() - tic

    step_s, replay_s, loader_s = [], [], []
    for _ in range(repeats):
        step_s.append(step_alone())
        replay_s.append(loop(replay))
        loader_s.append(loop(loader))
    return Overhead(setting, len(batches), min(step_s), min(replay_s), min(loader_s))


SETTINGS = {"log_every 1000": {"log_every": 1000}, "log_every 10 (the default)": {"log_every": 10},
            "log_every 10, ema 0.999": {"log_every": 10, "ema": 0.999}}


def measure_all(steps: int = 1000, repeats: int = 5) -> list[Overhead]:
    """Every setting, on one thread: the tiny step's kernels then never wait for a second core that
    another job holds (the loop's own work is single-threaded Python either way)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [measure(name, train, steps, repeats=repeats) for name, train in SETTINGS.items()]
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    print(HEADER)
    for result in measure_all():
        print(result.row(), flush=True)
