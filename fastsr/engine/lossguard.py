"""Watching the losses for NaN and infinity (`train.nonfinite`), without slowing the hot loop.

One non-finite loss poisons the weights for good: its gradients turn every parameter and Adam moment
they touch into NaN, and BatchNorm's running statistics follow. Two policies:
- `stop` (default): nothing is added to a step. The trainer keeps each step's losses (on the device)
  for its log anyway; they are checked where it reads them back (every `log_every` steps) and before
  every checkpoint and validation, so a checkpoint never holds weights from after a bad step. The run
  then stops naming the first bad step and the last good checkpoint.
- `skip`: the step reads its loss back before applying the update (a host sync per step, agreed by
  all processes), drops the update and restores the BatchNorm statistics the forward pass changed;
  more than `max_skipped_steps` such steps stop the run, since by then something is wrong for good.
  The statistics are kept in copies allocated once per phase and refilled every step (no allocation).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from fastsr.errors import NonFiniteLoss


class LossGuard:
    """The run's `train.nonfinite` policy. The loop makes one call per step, `end_step`, after handing the
    step `keep` (asked before each optimiser update); `start_phase` once per phase, and `check` where it reads
    a log window's losses back."""

    def __init__(self, mode: str, max_skipped: int, accelerator):
        self.mode, self.max_skipped, self.accelerator = mode, max_skipped, accelerator
        self.skipped: list[int] = []  # skip: the steps whose update was dropped
        self._rejected = False  # skip: whether `keep` refused an update of the step in flight
        self._live: list[torch.Tensor] = []  # skip: the phase's models' buffers
        self._saved: list[torch.Tensor] = []  # skip: their values before the step in flight

    # -- skip ---------------------------------------------------------------------------------

    def start_phase(self, models: list[nn.Module]) -> None:
        """Before a phase's first step: in skip mode, keep a copy of `models`' buffers (BatchNorm statistics),
        allocated once here and refilled after every kept step."""
        if self.mode == "skip":
            self._live = [b for m in models for b in m.buffers()]
            self._saved = [b.detach().clone() for b in self._live]

    def keep(self, loss: torch.Tensor) -> bool:
        """Whether to apply the update this `loss` led to: always in stop mode (checked later, without a
        sync); in skip mode only if it is finite on every process."""
        if self.mode == "stop":
            return True
        bad = (~torch.isfinite(loss.detach())).any().float().reshape(1)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item() == 0:
            return True
        self._rejected = True
        return False

    def end_step(self, step: int) -> bool:
        """After step `step` (1-based, as logged): True if it counts (its losses may be logged). In skip mode a
        refused step's buffer updates are undone and the limit enforced; a kept step's buffers are kept."""
        if self.mode != "skip":
            return True
        if not self._rejected:
            if self._live:
                torch._foreach_copy_(self._saved, self._live)
            return True
        self._rejected = False
        if self._live:
            with torch.no_grad():
                torch._foreach_copy_(self._live, self._saved)
        self.skipped.append(step)
        if len(self.skipped) > self.max_skipped:
            raise NonFiniteLoss(
                f"{len(self.skipped)} steps had a NaN or infinite loss (steps {_steps(self.skipped)}), more than "
                f"train.max_skipped_steps={self.max_skipped}; lower train.lr, or try runtime.mixed_precision=no, "
                "then resume with train.resume=auto")
        return False

    # -- stop ---------------------------------------------------------------------------------

    def check(self, steps: list[int], names: list[str], values: torch.Tensor,
              last_good: Callable[[], Path | None]) -> None:
        """Stop mode: raise NonFiniteLoss if a step of the window (the steps since the last log; `values`
        holds their losses, one row per step of `steps`, one column per name of `names`) had a non-finite
        loss. A host sync, and a collective with several processes: call it at the same steps on every
        process."""
        if self.mode != "stop" or not steps:
            return
        finite = torch.isfinite(values)
        bad_rows = (~finite.all(dim=1)).nonzero()
        step = steps[int(bad_rows[0, 0])] if len(bad_rows) else 0
        if self.accelerator.num_processes > 1:  # agree on the earliest bad step of any process
            big = torch.iinfo(torch.int64).max
            found = torch.tensor([step or big], device=finite.device)
            step = int(self.accelerator.gather(found).min())
            step = 0 if step == big else step
        if not step:
            return
        bad = [n for n, ok in zip(names, finite[steps.index(step)].tolist()) if not ok] if step in steps else []
        names = bad or ["on another process"]
        good = last_good()
        kept = f"the last good checkpoint is {good}" if good else "no checkpoint had been written yet"
        raise NonFiniteLoss(
            f"loss {', '.join(names)} became NaN or infinite at step {step}; nothing after it was saved and "
            f"{kept}. Lower train.lr, try runtime.mixed_precision=no or train.nonfinite=skip, then resume with "
            "train.resume=auto")


def _steps(steps: list[int]) -> str:
    return ", ".join(map(str, steps[:10])) + (", ..." if len(steps) > 10 else "")
