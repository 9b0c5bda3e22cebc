"""The loop: it walks the phases from the run's position, one step per batch, and around the steps
reads the losses back (every `train.log_every` steps: the only host synchronisation), validates, writes
checkpoints and answers stop signals. The position (phase, epoch, batch) is part of every checkpoint, and
the crop plan is a function of (seed, epoch, position), so a resumed run sees the batches the
uninterrupted run would have.

What the loop adds to each step is kept to a few microseconds of host time (with a GPU the host must
stay ahead of the device; `benchmarks/loop_overhead.py` measures it): the learning rate is written only
when it changes, the EMA is updated without reading anything back (engine/ema.py), the progress bar is
updated a few times a second rather than every step, and a log window's losses are stacked by one op.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn

from fastsr.engine.checkpoint import (
    checkpoint_dir,
    complete_checkpoints,
    write_training_checkpoint,
)
from fastsr.engine.lossguard import LossGuard, NonFiniteLoss
from fastsr.engine.peers import tell_the_others
from fastsr.engine.phases import Phase, learning_rate
from fastsr.engine.runlog import RunLog
from fastsr.engine.setup import Run
from fastsr.engine.stall import StallWatch, stall_message, stop_stalled
from fastsr.evaluate import evaluate
from fastsr.infer import MemoryAdvice
from fastsr.models import Bicubic
from fastsr.util import STOP_SIGNALS, OutOfMemory, progress_bar

BAR_INTERVAL_S = 0.1  # the progress bar's count is updated at most this often (rich redraws it 10 times a second)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; a job script requeues on it and resumes
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a program ended by Ctrl-C


class Preempted(Exception):
    """The run stopped on a stop signal (util.STOP_SIGNALS) after finishing its step and writing a checkpoint."""

    def __init__(self, step: int, checkpoint: Path, signum: int | None):
        by = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name if signum else "a signal"
        super().__init__(f"stopped by {by} at step {step}; checkpoint {checkpoint}; rerun the same command with "
                         "train.resume=auto to continue exactly where it stopped")
        self.step, self.checkpoint = step, checkpoint
        self.exit_code = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED


@contextmanager
def stop_requests(announce: bool = True):
    """A list that gets the signal number when a stop signal arrives (the step in flight finishes; the
    loop then checkpoints and stops). The first Ctrl-C says so (when `announce`) and gives SIGINT back to
    the system, so that a second one ends the process at once, wherever it is. Handlers are installed only
    in the main thread and restored afterwards."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if announce:  # a plain write: safe wherever the handler interrupts the main thread
                os.write(2, b"\nfastsr: Ctrl-C: finishing the step, then a checkpoint (Ctrl-C again stops at once, "
                            b"without one)\n")

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def as_saved(model: nn.Module) -> nn.Module:
    """`model` with its tensors in the layout of a saved weights file: itself, or a copy when training laid it
    out channels_last. A convolution sums in another order in the other layout, so scoring the training layout
    would differ from `fastsr eval` of the saved weights in the last digits."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.is_contiguous() for t in tensors):
        return model
    return deepcopy(model).to(memory_format=torch.contiguous_format)


def score_and_log(model: nn.Module, run: Run, step: int) -> str:
    """Score the model and bicubic on each validation set (evaluation runs the model in eval mode and
    restores its mode), save the side-by-side pictures, log a record per set; return a one-line summary.
    The numbers are those `fastsr eval` gives for the weights saved at this step (`as_saved`)."""
    recipe = run.recipe
    model = as_saved(model)
    # out of memory: validation's own knobs, and the training state it shares the device with
    advice = MemoryAdvice(tile="train.val_tile", metrics="train.val_metrics", cpu=None,
                          where=f"validating at step {step}, beside the training state",
                          then="resume with train.resume=auto")
    shown = []
    for name, pairs in run.val_sets.items():
        pictures = recipe.run_dir / "samples" / f"step_{step:08d}" / name
        bicubic, sr = evaluate({"Bicubic": Bicubic(recipe.scale), "model": model}, pairs, recipe.scale,
                               run.accelerator.device, metrics=run.val_metrics, tile=recipe.train.val_tile,
                               pictures=pictures, advice=advice)
        values = {m.name: sr.mean(m.name) for m in run.val_metrics}
        run.log.write(kind="val", step=step, set=name, **values,
                      **{f"bicubic_{m}": bicubic.mean(m) for m in values}, images=len(pairs))
        saved = sorted(pictures.glob("*.png"))  # logged by their paths in the run directory
        run.log.write(kind="pictures", step=step, set=name, files=[str(p.relative_to(recipe.run_dir)) for p in saved])
        shown.append(f"{name} {values['psnr']:.2f} dB (bicubic {bicubic.mean('psnr'):.2f})")
    return "val " + ", ".join(shown)


class Loop:
    def __init__(self, run: Run, phases: list[Phase]):
        self.run, self.phases = run, phases
        self.t = run.recipe.train
        self.pos = run.position
        self.log: RunLog = run.log
        acc = run.accelerator
        self.steps_per_epoch = len(run.loader)
        self.images_per_step = self.t.batch_size * acc.num_processes
        self.guard = LossGuard(self.t.nonfinite, self.t.max_skipped_steps, acc)
        self.logged: list[tuple[int, dict[str, torch.Tensor]]] = []  # (step, losses) counted since the last flush
        self.window_tic, self.window_step = time.perf_counter(), self.pos.step
        self.last_val_step, self.last_val_info = -1, ""
        self.lr_set: tuple[Phase, float] | None = None  # the phase and rate last written to its optimisers
        self.bar_due = 0.0  # perf_counter time after which the progress bar's count is next updated
        self.slow_noted: set[str] = set()  # what (validation, checkpoint) was said to near the collective timeout

    def run_phases(self) -> None:
        run, t, pos = self.run, self.t, self.pos
        total = self.steps_per_epoch * sum(p.epochs for p in self.phases)
        epoch_offsets = [sum(p.epochs for p in self.phases[:i]) for i in range(len(self.phases))]
        run.g_train.train()
        with progress_bar(run.main, t.log_every_s, run.console) as self.progress, stop_requests(run.main) as requests, \
                self._failures_explained(), StallWatch(run.recipe.data.stall_timeout_s, self._stalled) as watch:
            self.task = self.progress.add_task("", total=total, completed=pos.step, rate=0.0, info="")
            for index in range(pos.phase, len(self.phases)):
                phase = self.phases[index]
                self.progress.update(self.task, description=phase.name)
                for epoch in range(pos.epoch, phase.epochs):
                    at = epoch_offsets[index] + epoch  # the loader's epoch
                    for batch in watch.batches(run.loader.batches(at, start=pos.batch), at, pos.batch):
                        self._set_lr(phase, epoch)
                        self._step(phase, batch)
                        if pos.step % t.log_every == 0:
                            self._flush_log(phase, epoch)
                        if t.val_every and pos.step % t.val_every == 0:
                            self._outside_rate(self.validate, "validation")
                        if t.save_every and pos.step % t.save_every == 0:
                            self._outside_rate(self.checkpoint, "checkpoint")
                        if time.perf_counter() >= self.bar_due:
                            self.progress.update(self.task, completed=pos.step)
                            self.bar_due = time.perf_counter() + BAR_INTERVAL_S
                        if self._stop_requested(requests):
                            self._preempt(phase, epoch, requests)
                    pos.epoch, pos.batch = epoch + 1, 0
                self._flush_log(phase, phase.epochs - 1)
                pos.phase, pos.epoch = index + 1, 0
                self._outside_rate(self.validate, "validation")
                self._outside_rate(self.checkpoint, "checkpoint")
                self.progress.update(self.task, completed=pos.step, info=self.last_val_info)
            if requests:
                self._stopped_too_late(requests[0])

    # -- one step ------------------------------------------------------------------------------

    def _set_lr(self, phase: Phase, epoch: int) -> None:
        lr = learning_rate(phase.base_lr, self.t.lr_schedule, epoch * self.steps_per_epoch + self.pos.batch,
                           phase.epochs * self.steps_per_epoch, phase.milestones, self.t.lr_gamma)
        if self.lr_set is not None and self.lr_set[0] is phase and self.lr_set[1] == lr:
            return  # nothing else writes the optimisers' rates
        for opt in phase.optimisers:
            for group in opt.param_groups:
                group["lr"] = lr
        self.lr_set = (phase, lr)

    def _step(self, phase: Phase, batch) -> None:
        run, pos = self.run, self.pos
        batch = run.runtime.batch(*batch)
        self.guard.begin(pos.step + 1, phase.models)
        losses = phase.step(batch, self.guard.apply)
        counted = self.guard.end()
        if run.parts.ema is not None:
            run.parts.ema.update_parameters(run.parts.generator)
        pos.step += 1
        pos.batch += 1
        if counted:
            self.logged.append((pos.step, losses))
        else:
            self.log.write(kind="skipped", step=pos.step, reason="non-finite loss (train.nonfinite=skip)")

    # -- around the steps ----------------------------------------------------------------------

    def _check_losses(self, window: tuple[list[int], list[str], torch.Tensor] | None = None) -> None:
        """Stop before logging, validating or saving anything computed after a non-finite loss."""
        def last_checkpoint() -> Path | None:
            found = complete_checkpoints(self.run.run_dir)
            return found[-1] if found else None

        if self.logged:
            self.guard.check(*(window or self._window()), last_checkpoint)

    def _window(self) -> tuple[list[int], list[str], torch.Tensor]:
        """The logged steps, the names of their losses and the losses as one (steps, names) tensor,
        stacked by a single op. A window never spans two phases, so every step has the same losses."""
        names = list(self.logged[0][1])
        values = torch.stack([v for _, losses in self.logged for v in losses.values()])
        return [step for step, _ in self.logged], names, values.view(len(self.logged), len(names))

    def _flush_log(self, phase: Phase, epoch: int) -> None:
        """Read the losses back (the only host synchronisation of the loop) and log their means."""
        window = self._window() if self.logged else None
        self._check_losses(window)
        steps = self.pos.step - self.window_step
        if window is None or not steps:
            return
        rate = steps * self.images_per_step / (time.perf_counter() - self.window_tic)
        _, names, values = window
        means = {f"loss_{k}": v for k, v in zip(names, values.mean(dim=0).tolist())}
        lr = phase.optimisers[0].param_groups[0]["lr"]
        self.log.write(kind="train", step=self.pos.step, phase=phase.name, epoch=epoch, lr=lr, images_per_sec=rate,
                       **means)
        self.logged.clear()
        self.window_tic, self.window_step = time.perf_counter(), self.pos.step
        shown = " ".join(f"{k[5:]} {v:.4g}" for k, v in means.items())
        self.progress.update(self.task, completed=self.pos.step, rate=rate, info=f"{shown} {self.last_val_info}",
                             epoch=f"{epoch + 1}/{phase.epochs}", lr=f"{lr:.3g}")

    def _outside_rate(self, action, what: str) -> None:
        """Run a validation or a checkpoint without counting its time against images/sec. With several
        processes the others wait for rank 0's in a collective: say so once if it nears their timeout."""
        tic = time.perf_counter()
        action()
        spent = time.perf_counter() - tic
        self.window_tic += spent
        timeout = self.t.collective_timeout_s
        if self.run.accelerator.num_processes > 1 and spent > timeout / 2 and what not in self.slow_noted:
            self.slow_noted.add(what)
            note = (f"a {what} took {spent:.0f} s, over half of train.collective_timeout_s={timeout:g}: the "
                    "other processes wait for it in a collective and would give up at the timeout; raise it")
            self.log.write(kind="note", message=note)
            if self.run.main:
                self.run.console.print(f"[yellow]note:[/] {note}")

    def validate(self) -> None:
        self._check_losses()
        run = self.run
        if run.main and self.last_val_step != self.pos.step:
            self.last_val_step, self.last_val_info = self.pos.step, score_and_log(run.eval_model(), run, self.pos.step)
        run.accelerator.wait_for_everyone()

    def checkpoint(self) -> None:
        self._check_losses()
        run = self.run
        if run.main:
            write_training_checkpoint(run.run_dir, self.pos, run.parts, keep=self.t.keep_checkpoints)
        run.accelerator.wait_for_everyone()

    def _stop_requested(self, requests: list[int]) -> bool:
        """Whether any process got a stop signal. With several processes they must agree on the step
        to stop at, which costs a collective: asked every `log_every` steps, where the loop syncs anyway."""
        acc = self.run.accelerator
        if acc.num_processes == 1:
            return bool(requests)
        if self.pos.step % self.t.log_every:
            return False
        flag = torch.tensor([float(bool(requests))], device=acc.device)
        return acc.reduce(flag, reduction="sum").item() > 0

    def _preempt(self, phase: Phase, epoch: int, requests: list[int]) -> None:
        self._flush_log(phase, epoch)
        self.checkpoint()
        checkpoint = checkpoint_dir(self.run.run_dir, self.pos.step)
        self.log.write(kind="preempted", step=self.pos.step, signal=int(requests[0]) if requests else None,
                       checkpoint=str(checkpoint))
        raise Preempted(self.pos.step, checkpoint, requests[0] if requests else None)

    def _stopped_too_late(self, signum: int) -> None:
        """A stop signal that came after the last step, during the final validation or checkpoint: the run
        finished all the same, and says so rather than nothing."""
        by = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        note = (f"{by} came after the last step (step {self.pos.step}), as the run was finishing: it did not stop it; "
                "the run is complete and its last checkpoint written")
        self.log.write(kind="note", message=note)
        if self.run.main:
            self.run.console.print(f"[yellow]note:[/] {note}")

    def _stalled(self, epoch: int, batch: int) -> None:
        """No batch `batch` of the loader's `epoch` for data.stall_timeout_s: called in the watch thread,
        which ends the process (stall.py), telling the other processes why and letting the run directory go."""
        run, pos = self.run, self.pos
        files = run.loader.plan.files(epoch, batch)
        message = stall_message(run.loader.name, run.recipe.data.stall_timeout_s, pos.epoch, batch, pos.step + 1, files)
        before_exit = [lambda: tell_the_others(run.accelerator, message), *([run.lock.release] if run.lock else [])]
        stop_stalled(self.log, message, {"step": pos.step, "epoch": pos.epoch, "batch": batch, "backend": run.loader.name,
                                         "files": files}, display=self.progress, before_exit=before_exit)

    @contextmanager
    def _failures_explained(self):
        """Log why a run stops on a non-finite loss or out of memory (validation's OutOfMemory names its own
        knobs); turn a training step's out-of-memory error into advice."""
        try:
            yield
        except NonFiniteLoss as err:
            self.log.write(kind="nonfinite", step=self.pos.step, message=str(err))
            raise
        except OutOfMemory as err:
            self.log.write(kind="oom", step=self.pos.step, message=str(err))
            raise
        except torch.OutOfMemoryError:
            recipe = self.run.recipe
            b = recipe.train.batch_size
            err = OutOfMemory(
                f"out of memory at step {self.pos.step + 1} with train.batch_size={b} per process and data.hr_crop="
                f"{recipe.data.hr_crop}; lower train.batch_size (e.g. train.batch_size={max(1, b // 2)}) or "
                "data.hr_crop, or use runtime.mixed_precision=bf16; resume with train.resume=auto")
            self.log.write(kind="oom", step=self.pos.step, message=str(err))
            raise err from None
