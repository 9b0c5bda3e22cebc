"""Training, top to bottom: lock the run directory (safety/runlock.py), set the run up (setup.py), run its
phases (loop.py), export the final generator. With several processes, one that is lost stops the others,
naming it (safety/peers.py).

Accelerate places the models and runs them on one device, several, or several machines; the loader shards
by process and hands over batches already on the device. The recipe's `runtime` switches (runtime.py)
lay out and compile the training copies of the models, while evaluation, EMA and checkpoints use the
eager modules.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from fastsr.engine.checkpoint import Position
from fastsr.engine.loop import Loop
from fastsr.engine.phases import Phase
from fastsr.engine.runlog import plot_curves
from fastsr.engine.safety.peers import lost_processes_named
from fastsr.engine.safety.runlock import run_dir_lock
from fastsr.engine.setup import Run, make_accelerator, set_up
from fastsr.recipe import Recipe
from fastsr.util import make_console
from fastsr.weights import save_weights


def train(recipe: Recipe, console: Console | None = None) -> Path:
    """Run every phase of `recipe`; return the run directory (weights in run_dir/generator.safetensors)."""
    console = console or make_console()
    accelerator = make_accelerator(recipe)
    position = Position()  # where the run is: moved by a resume, then by every step
    try:
        with lost_processes_named(accelerator, position, recipe.train.collective_timeout_s), \
                run_dir_lock(recipe.run_dir, accelerator) as lock:
            run = set_up(recipe, console, accelerator, lock, position)
            describe(run)
            loop = Loop(run)
            loop.run_phases()
            finish(run, loop.last_val_info)
    finally:
        accelerator.end_training()  # the trackers' files closed and the processes' group ended, whatever happened
    return recipe.run_dir


def describe(run: Run) -> None:
    """What the run is about to do, each phase's length in optimiser steps (a length given in epochs converted
    once, here): in its log, and on rank 0's console."""
    acc, loader, runtime, t = run.accelerator, run.loader, run.runtime, run.recipe.train
    run.log.write(kind="run", step=run.position.step, loader=loader.name, processes=acc.num_processes,
                  device=str(acc.device), steps_per_epoch=len(loader), epoch_steps=loader.plan.batches_alone,
                  global_batch=t.batch_size * acc.num_processes, phases={p.name: p.steps for p in run.phases},
                  compile=runtime.compile, mixed_precision=runtime.mixed_precision, channels_last=runtime.channels_last)
    if run.main:
        phases = ", ".join(_length(p, t, loader.plan.batches_alone) for p in run.phases)
        run.console.print(f"[bold]{run.recipe.name}[/]: {phases} of {t.batch_size * acc.num_processes} crops "
                          f"({t.batch_size} per process; the {loader.name} loader's epoch is {len(loader)} steps); "
                          f"{acc.num_processes} process(es) on {acc.device} ({runtime.describe()}); "
                          f"run dir {run.run_dir}")


def _length(phase: Phase, train, epoch_steps: int) -> str:
    """`pretrain 208 steps`, and where the recipe gave epochs, how they became steps."""
    count, unit = train.length(phase.name)
    given = (f" (train.epochs_{phase.name}={count} x {epoch_steps}: one process's batches per epoch)"
             if unit == "epochs" else "")
    return f"{phase.name} {phase.steps} steps{given}"


def finish(run: Run, last_val_info: str) -> None:
    """Rank 0 saves the final generator beside its config and draws the curves; every process waits for it."""
    if run.main:
        final = run.run_dir / "generator.safetensors"
        save_weights(run.eval_model(), final, run.trainables.generator.config)
        if run.log.path.is_file():
            plot_curves(run.log.path, run.run_dir / "curves.png")
        run.console.print(f"done: {final}; {last_val_info}; pictures in {run.run_dir / 'samples'}, "
                          f"curves in {run.run_dir / 'curves.png'}")
    run.accelerator.wait_for_everyone()
