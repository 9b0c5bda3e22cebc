"""Setting a run up, in one function (`set_up`) that returns the whole `Run`: devices and speed switches,
data, models, losses, optimisers and the checkpoint to resume, everything that can fail on a user's input
checked before the run directory is touched; then the run directory, the log, the models' training copies
and the phases."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from rich.console import Console
from torch import nn

from fastsr.data import BatchSource, degradation, make_batch_source, open_cache, resolve_source
from fastsr.data.screen import apply_policy, screen_train, screen_val, without
from fastsr.data.sources import source_label
from fastsr.data.validation import eval_lr
from fastsr.engine import trackers
from fastsr.engine.checkpoint import Position, Trainables, resolve_resume, restore_training_state
from fastsr.engine.ema import GeneratorEMA
from fastsr.engine.phases import Phase, plan_phases
from fastsr.engine.runlog import RunLog
from fastsr.engine.runtime import Precision, Runtime, allow_tf32, autotune_convolutions, resolve_runtime
from fastsr.engine.safety.peers import process_group_kwargs
from fastsr.engine.safety.runlock import RunLock
from fastsr.errors import ImageError, RecipeError
from fastsr.evaluate import Metric, build_metrics
from fastsr.losses import GAN, GeneratorLoss, build_finetune_loss, build_pretrain_loss
from fastsr.model_files import start_from
from fastsr.models import DISCRIMINATORS, GENERATORS
from fastsr.recipe import Recipe, save_recipe


@dataclass(frozen=True)
class Training:
    """The copies the steps train: laid out, maybe compiled, wrapped by Accelerate. They share their
    parameters with the eager modules of `Trainables`, which evaluation, the EMA and checkpoints use."""

    generator: nn.Module
    opt_g: torch.optim.Optimizer
    pretrain_loss: GeneratorLoss | None  # None without a pretrain phase
    discriminator: nn.Module | None  # None without a finetune phase, as are the three below
    opt_d: torch.optim.Optimizer | None
    finetune_loss: GeneratorLoss | None
    gan: GAN | None  # the GAN kind that trains the discriminator


@dataclass(frozen=True)
class Run:
    """Everything the loop works with, built once by `set_up`."""

    recipe: Recipe
    console: Console
    accelerator: Accelerator
    runtime: Runtime
    precision: Precision
    loader: BatchSource
    val_sets: dict[str, list]  # name -> validation pairs, in the recipe's order
    val_metrics: list[Metric]  # what validation scores (train.val_metrics)
    trainables: Trainables  # the eager modules (evaluated, averaged and saved), their optimisers, the EMA
    training: Training
    phases: list[Phase]
    position: Position  # where the run is; the loop moves it
    resumed_from: Path | None
    log: RunLog
    lock: RunLock | None  # rank 0's hold on the run directory (a stalled run lets it go as it ends)

    @property
    def main(self) -> bool:
        """Whether this is the main process (rank 0), the one that logs, validates and writes files."""
        return self.accelerator.is_main_process

    @property
    def run_dir(self) -> Path:
        """The run's directory, out_dir/name of its recipe."""
        return self.recipe.run_dir

    def eval_model(self) -> nn.Module:
        """The generator that is validated and exported: the EMA's when there is one."""
        ema = self.trainables.ema
        return ema.module if ema is not None else self.trainables.generator


def make_accelerator(recipe: Recipe) -> Accelerator:
    """The run's Accelerator: its processes' group (with the recipe's collective timeout) and trackers."""
    trackers.check_installed(recipe.train.log_with)
    return Accelerator(cpu=not torch.cuda.is_available(), log_with=recipe.train.log_with or None,
                       project_dir=str(recipe.run_dir),
                       kwargs_handlers=[process_group_kwargs(recipe.train.collective_timeout_s)])


def set_up(recipe: Recipe, console: Console, accelerator: Accelerator, lock: RunLock | None,
           position: Position) -> Run:
    """The run of `recipe`, ready for its first step (or the step after its checkpoint, which `position` is
    moved to: the run's one Position, which the lost-process watch reads too)."""
    cuda = torch.cuda.is_available()
    runtime = resolve_runtime(recipe.runtime, cuda)
    if cuda:
        allow_tf32()
        autotune_convolutions()
    precision = Precision(runtime.mixed_precision, accelerator.device.type)
    t, device = recipe.train, accelerator.device
    torch.manual_seed(t.seed)
    degradation.require(recipe.data.degradation)

    train_samples, cache, val_sets, notes = screened_data(recipe, accelerator, console)
    loader, loader_note = training_batches(recipe, accelerator, train_samples, cache)
    # Built in this order (generator, discriminator, losses) so train.seed gives the same initial weights.
    trainables = build_trainables(recipe, device)
    finetune_loss, gan, finetune_notes = build_finetune_loss(recipe.loss) if t.runs("finetune") else (None, None, [])
    pretrain_loss, pretrain_notes = build_pretrain_loss(recipe.loss) if t.runs("pretrain") else (None, [])
    checkpoint = resolve_resume(t.resume, recipe.run_dir)
    if checkpoint is not None:
        restore_training_state(checkpoint, trainables, position)
    graphs_note = (f"runtime.compile={runtime.compile}: CUDA graphs need a GPU; on this CPU the models are compiled "
                   "without them") if runtime.cuda_graphs and not cuda else None
    val_metrics = build_metrics(t.val_metrics, recipe.scale, device, t.metric_weight_files())
    notes = [*([lock.note] if lock is not None and lock.note else []), *notes, *([loader_note] if loader_note else []),
             *pretrain_notes, *finetune_notes, *([graphs_note] if graphs_note else [])]

    log = open_run_dir(recipe, accelerator, console, checkpoint, position, notes)
    training = prepare_for_training(accelerator, runtime, trainables, pretrain_loss, finetune_loss, gan)
    phases = plan_phases(t, loader.plan.batches_alone, len(loader), accelerator.num_processes,
                         optimisers={"pretrain": [training.opt_g], "finetune": [training.opt_g, training.opt_d]},
                         models={"pretrain": [trainables.generator],
                                 "finetune": [trainables.generator, trainables.discriminator]})
    return Run(recipe=recipe, console=console, accelerator=accelerator, runtime=runtime, precision=precision,
               loader=loader, val_sets=val_sets, val_metrics=val_metrics, trainables=trainables, training=training,
               phases=phases, position=position, resumed_from=checkpoint, log=log, lock=lock)


def training_batches(recipe: Recipe, accelerator: Accelerator, samples: list, cache) -> tuple[BatchSource, str | None]:
    """(this process's batch source, a note on the backend `auto` chose, or None)."""
    t = recipe.train
    loader, note = make_batch_source(recipe.data, samples, recipe.scale, t.batch_size, cache=cache, seed=t.seed,
                                     rank=accelerator.process_index, world_size=accelerator.num_processes,
                                     device=accelerator.device)
    if len(loader) == 0:
        raise RecipeError(
            f"data.source {recipe.data.source}: {len(samples)} images x repeat {recipe.data.repeat} make no full "
            f"batch of {t.batch_size} per process; raise data.repeat or lower train.batch_size")
    return loader, note


def build_trainables(recipe: Recipe, device: torch.device) -> Trainables:
    """The eager generator (from `train.init_from` when set), the discriminator when the finetune phase runs,
    their Adam optimisers and the generator's EMA (`train.ema`)."""
    t = recipe.train
    g = GENERATORS.create(recipe.model, scale=recipe.scale)
    if t.init_from:
        start_from(g, t.init_from)
    d = DISCRIMINATORS.create(recipe.discriminator) if t.runs("finetune") else None
    betas = tuple(t.betas)
    return Trainables(generator=g, opt_g=adam(g.parameters(), t.lr, betas, device), discriminator=d,
                      opt_d=adam(d.parameters(), t.lr_finetune or t.lr, betas, device) if d is not None else None,
                      ema=GeneratorEMA(g, t.ema) if t.ema else None)


def open_run_dir(recipe: Recipe, accelerator: Accelerator, console: Console, resumed_from: Path | None,
                 position: Position, notes: list[str]) -> RunLog:
    """The run directory (a fresh run never mixes its logs and checkpoints with an earlier one's: an
    earlier run there is moved aside), the resolved recipe, the trackers, the notes; the run's log."""
    run_dir, main = recipe.run_dir, accelerator.is_main_process
    if main:
        if resumed_from is None and run_dir.is_dir() and any(run_dir.iterdir()):
            archived = run_dir.with_name(f"{run_dir.name}_archived_{time.strftime('%Y%m%d_%H%M%S')}")
            run_dir.rename(archived)
            console.print(f"{run_dir} held an earlier run: moved it to {archived}")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, run_dir / "recipe.yaml")
        if resumed_from is not None:
            console.print(f"resuming from {resumed_from} at step {position.step}")
        if recipe.train.log_with:
            trackers.start(accelerator, recipe, resumed_at=position.step if resumed_from is not None else None)
    accelerator.wait_for_everyone()
    forward = partial(trackers.forward, accelerator, run_dir) if recipe.train.log_with else None
    log = RunLog(run_dir / "log.jsonl", enabled=main, forward=forward)
    for note in notes:
        if main:
            console.print(f"[yellow]note:[/] {note}")
        log.write(kind="note", message=note)
    return log


def prepare_for_training(accelerator: Accelerator, runtime: Runtime, trainables: Trainables,
                         pretrain_loss: GeneratorLoss | None, finetune_loss: GeneratorLoss | None,
                         gan: GAN | None) -> Training:
    """The training copies: laid out, maybe compiled, then wrapped by Accelerate (compiling the bare module
    first avoids DDP graph breaks); evaluation, EMA and checkpoints keep the eager modules."""
    t = trainables
    g, opt_g = accelerator.prepare(runtime.for_training(t.generator), t.opt_g)
    d, opt_d = (accelerator.prepare(runtime.for_training(t.discriminator), t.opt_d) if t.discriminator is not None
                else (None, None))
    if t.ema is not None:
        t.ema.to_device(accelerator.device)
    prepared = [loss.to(accelerator.device).prepare(runtime.for_training) if loss is not None else None
                for loss in (pretrain_loss, finetune_loss)]
    return Training(generator=g, opt_g=opt_g, pretrain_loss=prepared[0], discriminator=d, opt_d=opt_d,
                    finetune_loss=prepared[1], gan=gan)


def adam(params, lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.Adam:
    """Adam for a model that trains on `device`: fused on CUDA (a few kernel launches update all the
    parameters, where the default foreach path launches a dozen per group; under the fp16 scaler it skips an
    overflowed step on the device, without reading the flag back), torch's default elsewhere (which keeps a
    CPU run's resume bitwise). A checkpoint of either loads into the other (`checkpoint.load_optimizer_state`)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True if device.type == "cuda" else None)


def screened_data(recipe: Recipe, accelerator, console: Console):
    """(usable training samples, the opened data.cache or None, validation pairs by set name, one note per
    skipped image), with the recipe's `data.bad_images` policy applied once to every image the run cannot
    use, training and validation alike."""
    data, scale = recipe.data, recipe.scale
    train_samples = resolve_source(data.source, "train", scale)
    # A listed set is read as `fastsr eval --data` reads it (a plain folder whole); the default, the
    # held-out split of the source (or data.val_source).
    val_specs, split = (data.val_sets, "eval") if data.val_sets else ([data.val_source or data.source], "val")
    val_samples = {source_label(spec): resolve_source(spec, split, scale, benchmark_root=data.benchmark_root)
                   for spec in val_specs}
    if len(val_samples) != len(val_specs):
        raise RecipeError(f"data.val_sets {val_specs}: two sets have the same name ({', '.join(val_samples)}); "
                          "rename a folder")
    cache = open_cache(data.cache, data.source) if data.cache else None  # the run's one read of its manifest
    checking = f"checking {len(train_samples)} training images" + ("" if data.cache else " (decoding each once)")
    with console.status(checking) if accelerator.is_main_process else nullcontext():
        problems = screen_train(train_samples, data, scale, cache=cache, rank=accelerator.process_index,
                                world_size=accelerator.num_processes)
    if accelerator.num_processes > 1:
        problems = gather_object(problems)
    problems = sorted(set(problems))
    val_sets, val_problems = {}, []
    lr_method = eval_lr(data, scale, recipe.train.seed)  # one for every set: image i of each from (seed, i)
    for name, samples in val_samples.items():
        val_sets[name], found = screen_val(samples, scale, lr_method, data.val_images or None)
        val_problems += found
    notes = apply_policy({"training": problems, "validation": val_problems}, data.bad_images)
    train_samples = without(train_samples, problems)
    if not train_samples:
        raise ImageError(f"data.source {data.source}: no usable training images left after skipping the bad ones")
    for pairs, spec in zip(val_sets.values(), val_specs):
        if not pairs:
            raise ImageError(f"validation set {spec}: no usable images left after skipping the bad ones")
    return train_samples, cache, val_sets, notes
