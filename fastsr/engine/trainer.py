"""Training, top to bottom: lock the run directory (runlock.py), set the run up (setup.py), open its
directory, build its phases (phases.py), run them (loop.py), export the final generator. With several
processes, one that is lost stops the others, naming it (peers.py).

Accelerate places the models and runs them on one device, several, or several machines; the loader shards
by process and hands over batches already on the device. The recipe's `runtime` switches (runtime.py)
lay out and compile the training copies of the models, while evaluation, EMA and checkpoints use the
eager modules.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from fastsr.engine.checkpoint import save_weights
from fastsr.engine.loop import Loop
from fastsr.engine.peers import lost_processes_named
from fastsr.engine.phases import build_phases
from fastsr.engine.runlock import run_dir_lock
from fastsr.engine.runlog import plot_curves
from fastsr.engine.setup import Run, make_accelerator, open_run_dir, prepare_for_training, set_up
from fastsr.recipe import Recipe
from fastsr.util import make_console


def train(recipe: Recipe, console: Console | None = None) -> Path:
    """Run every phase of `recipe`; return the run directory (weights in run_dir/generator.safetensors)."""
    console = console or make_console()
    accelerator = make_accelerator(recipe)
    run: Run | None = None
    try:
        with lost_processes_named(accelerator, lambda: run.position.step if run else 0,
                                  recipe.train.collective_timeout_s), run_dir_lock(recipe.run_dir, accelerator) as lock:
            run = set_up(recipe, console, accelerator)  # all that can fail on a user's input, before touching the run dir
            run.lock = lock
            if lock is not None and lock.note:
                run.notes.insert(0, lock.note)
            open_run_dir(run)
            _train(run, console)
    finally:
        accelerator.end_training()  # the trackers' files closed and the processes' group ended, whatever happened
    return run.run_dir


def _train(run: Run, console: Console) -> None:
    recipe = run.recipe
    prepare_for_training(run)
    loop = Loop(run, build_phases(run))
    run.log.write(kind="run", step=run.position.step, loader=run.loader.name,
                  processes=run.accelerator.num_processes, device=str(run.accelerator.device),
                  steps_per_epoch=loop.steps_per_epoch, compile=run.runtime.compile,
                  mixed_precision=run.runtime.mixed_precision, channels_last=run.runtime.channels_last)
    if run.main:
        phases = ", ".join(f"{p.name} {p.epochs} epoch{'s' if p.epochs != 1 else ''}" for p in loop.phases)
        console.print(f"[bold]{recipe.name}[/]: {phases}; "
                      f"{loop.steps_per_epoch} steps/epoch of {loop.images_per_step} crops "
                      f"({run.loader.name} loader); {run.accelerator.num_processes} process(es) on "
                      f"{run.accelerator.device} ({run.runtime.describe()}); run dir {run.run_dir}")
    loop.run_phases()

    if run.main:
        final = run.run_dir / "generator.safetensors"
        save_weights(run.eval_model(), final, run.parts.generator.config)
        if run.log.path.is_file():
            plot_curves(run.log.path, run.run_dir / "curves.png")
        console.print(f"done: {final}; {loop.last_val_info}; pictures in {run.run_dir / 'samples'}, "
                      f"curves in {run.run_dir / 'curves.png'}")
    run.accelerator.wait_for_everyone()
