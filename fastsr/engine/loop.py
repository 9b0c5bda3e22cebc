"""The loop: it walks the run's phases from its position, one optimiser step per batch, and around the
steps reads the losses back (every `train.log_every` steps: the only host synchronisation), validates,
writes checkpoints and answers stop signals. A phase runs its `steps`, drawing batches epoch after epoch
from the loader; the position (phase, epoch, batch) is saved in every checkpoint, and the crop plan is a
function of (seed, epoch, position), so a resumed run sees the batches the uninterrupted run would have.

What the loop adds to each step is kept to a few microseconds of host time (with a GPU the host must
stay ahead of the device; `benchmarks/loop_overhead.py` measures it): the learning rate is written only
when it changes, the EMA is updated without reading anything back (engine/ema.py), the progress bar is
updated a few times a second rather than every step, and a log window's losses are stacked by one op.
"""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from fastsr.engine import steps, validation
from fastsr.engine.checkpoint import checkpoint_dir, complete_checkpoints, write_training_checkpoint
from fastsr.engine.lossguard import LossGuard
from fastsr.engine.phases import Phase, learning_rate
from fastsr.engine.safety.peers import tell_the_others
from fastsr.engine.safety.signals import Preempted, stop_requests
from fastsr.engine.safety.stall import StallWatch, stall_message, stop_stalled
from fastsr.engine.setup import Run
from fastsr.errors import NonFiniteLoss, OutOfMemory
from fastsr.evaluate import Shard
from fastsr.util import progress_bar

BAR_INTERVAL_S = 0.1  # the progress bar's count is updated at most this often (rich redraws it 10 times a second)


class Loop:
    """Runs a `Run`'s phases (`run_phases`), one `_step` per batch, with the log, validation, checkpoints,
    stop signals and failures handled around the steps."""

    def __init__(self, run: Run):
        self.run, self.t, self.pos, self.log = run, run.recipe.train, run.position, run.log
        self.images_per_step = self.t.batch_size * run.accelerator.num_processes  # the global batch
        self.guard = LossGuard(self.t.nonfinite, self.t.max_skipped_steps, run.accelerator)
        self.logged: list[tuple[int, dict[str, torch.Tensor]]] = []  # (step, losses) counted since the last flush
        self.window_tic, self.window_step = time.perf_counter(), self.pos.step
        self.last_val_step, self.last_val_info = -1, ""
        self.lr_set: tuple[Phase, float] | None = None  # the phase and rate last written to its optimisers
        self.bar_due = 0.0  # perf_counter time after which the progress bar's count is next updated
        self.slow_noted: set[str] = set()  # what (validation, checkpoint) was said to near the collective timeout

    def run_phases(self) -> None:
        """Train from the run's position to the end of its last phase, validating and writing a checkpoint at
        the end of each phase. Raises Preempted after a stop signal's checkpoint, NonFiniteLoss, or
        OutOfMemory with the recipe keys to lower; a stalled loader ends the process (data.stall_timeout_s)."""
        run, t, pos = self.run, self.t, self.pos
        run.training.generator.train()
        with progress_bar(run.main, t.log_every_s, run.console) as self.progress, stop_requests(run.main) as requests, \
                self._failures_explained(), StallWatch(run.recipe.data.stall_timeout_s, self._stalled) as watch:
            self.task = self.progress.add_task("", total=run.phases[-1].end, completed=pos.step, rate=0.0, info="")
            for index in range(pos.phase, len(run.phases)):
                phase = run.phases[index]
                self.progress.update(self.task, description=phase.name)
                self.guard.start_phase(phase.models)
                while pos.step < phase.end:
                    epoch = phase.first_epoch + pos.epoch  # the loader's
                    for batch in watch.batches(run.loader.batches(epoch, start=pos.batch), epoch, pos.batch):
                        self._set_lr(phase)
                        self._step(phase, batch)
                        if pos.step % t.log_every == 0:
                            self._flush_log(phase)
                        if t.val_every and pos.step % t.val_every == 0:
                            self._outside_rate(self.validate, "validation")
                        if t.save_every and pos.step % t.save_every == 0:
                            self._outside_rate(self.checkpoint, "checkpoint")
                        if time.perf_counter() >= self.bar_due:
                            self.progress.update(self.task, completed=pos.step)
                            self.bar_due = time.perf_counter() + BAR_INTERVAL_S
                        if self._stop_requested(requests):
                            self._preempt(phase, requests)
                        if pos.step == phase.end:
                            break
                    else:
                        pos.epoch, pos.batch = pos.epoch + 1, 0
                self._flush_log(phase)
                pos.phase, pos.epoch, pos.batch = index + 1, 0, 0
                self._outside_rate(self.validate, "validation")
                self._outside_rate(self.checkpoint, "checkpoint")
                self.progress.update(self.task, completed=pos.step, info=self.last_val_info)
            if requests:
                self._stopped_too_late(requests[0])

    # -- one step ------------------------------------------------------------------------------

    def _set_lr(self, phase: Phase) -> None:
        lr = learning_rate(phase.base_lr, self.t.lr_schedule, self.pos.step - phase.first_step, phase.steps,
                           phase.milestones, self.t.lr_gamma)
        if self.lr_set is not None and self.lr_set[0] is phase and self.lr_set[1] == lr:
            return  # nothing else writes the optimisers' rates
        for opt in phase.optimisers:
            for group in opt.param_groups:
                group["lr"] = lr
        self.lr_set = (phase, lr)

    def _step(self, phase: Phase, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        run, train, pos = self.run, self.run.training, self.pos
        batch = run.runtime.start_step(*batch)
        if phase.name == "pretrain":
            losses = steps.pretrain_step(train.generator, batch, train.opt_g, run.accelerator, train.pretrain_loss,
                                         run.precision, self.guard.keep)
        else:
            losses = steps.finetune_step(train.generator, train.discriminator, batch, train.opt_g, train.opt_d,
                                         run.accelerator, train.finetune_loss, train.gan, run.precision,
                                         self.guard.keep)
        counted = self.guard.end_step(pos.step + 1)
        if run.trainables.ema is not None:
            run.trainables.ema.update_parameters(run.trainables.generator)
        pos.step += 1
        pos.batch += 1
        if counted:
            self.logged.append((pos.step, losses))
        else:
            self.log.write(kind="skipped", step=pos.step, reason="non-finite loss (train.nonfinite=skip)")

    # -- around the steps ----------------------------------------------------------------------

    def _check_losses(self, window: tuple[list[int], list[str], torch.Tensor] | None = None) -> None:
        """Stop before logging, validating or saving anything computed after a non-finite loss."""
        if self.logged:
            self.guard.check(*(window or self._window()), self._last_checkpoint)

    def _last_checkpoint(self) -> Path | None:
        found = complete_checkpoints(self.run.run_dir)
        return found[-1] if found else None

    def _window(self) -> tuple[list[int], list[str], torch.Tensor]:
        """The logged steps, the names of their losses and the losses as one (steps, names) tensor,
        stacked by a single op. A window never spans two phases, so every step has the same losses."""
        names = list(self.logged[0][1])
        values = torch.stack([v for _, losses in self.logged for v in losses.values()])
        return [step for step, _ in self.logged], names, values.view(len(self.logged), len(names))

    def _flush_log(self, phase: Phase) -> None:
        """Read the losses back (the only host synchronisation of the loop) and log their means."""
        epoch = min(self.pos.epoch, phase.epochs - 1)  # of the phase, as the progress shows it
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
        """Score the eval model on the validation sets and log it (not twice at one step): every process scores
        its share of the images and rank 0 logs the whole sets' values. First raises NonFiniteLoss
        (train.nonfinite=stop) if a loss since the last read was not finite."""
        self._check_losses()
        run = self.run
        if self.last_val_step != self.pos.step:
            self.last_val_step = self.pos.step
            shard = Shard(run.accelerator.process_index, run.accelerator.num_processes)
            self.last_val_info = validation.validate(run.eval_model(), run.val_sets, run.val_metrics, run.recipe,
                                                     run.accelerator.device, self.log, self.pos.step, shard)
        run.accelerator.wait_for_everyone()

    def checkpoint(self) -> None:
        """Write a checkpoint of the current step (rank 0; the oldest beyond train.keep_checkpoints removed);
        every process waits at a barrier. Checks the losses first, so no checkpoint follows a non-finite one."""
        self._check_losses()
        run = self.run
        if run.main:
            write_training_checkpoint(run.run_dir, self.pos, run.trainables, keep=self.t.keep_checkpoints)
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

    def _preempt(self, phase: Phase, requests: list[int]) -> None:
        self._flush_log(phase)
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
        before_exit = [partial(tell_the_others, run.accelerator, message), *([run.lock.release] if run.lock else [])]
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
