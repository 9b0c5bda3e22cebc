"""Setting a run up: devices and speed switches, data, models, losses, optimisers and the checkpoint to
resume, everything that can fail on a user's input checked before the run directory is touched; then the
run directory and the models' training copies."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from rich.console import Console
from torch import nn

from fastsr.config import RecipeError
from fastsr.data import (
    BatchSource,
    ImageError,
    make_batch_source,
    open_cache,
    resolve_source,
)
from fastsr.data import degradation
from fastsr.data.screen import apply_policy, screen_train, screen_val, without
from fastsr.data.sources import source_label
from fastsr.engine import trackers
from fastsr.engine.checkpoint import (
    Position,
    Trainables,
    WeightsError,
    load_weights,
    read_config,
    resolve_resume,
    restore_training_state,
)
from fastsr.engine.ema import GeneratorEMA
from fastsr.engine.peers import process_group_kwargs
from fastsr.engine.runlock import RunLock
from fastsr.engine.runlog import RunLog
from fastsr.engine.runtime import Precision, Runtime, allow_tf32, autotune_convolutions, resolve_runtime
from fastsr.evaluate import Metric, build_metrics
from fastsr.losses import GAN, GeneratorLoss, build_generator_loss
from fastsr.models import DISCRIMINATORS, GENERATORS
from fastsr.recipe import Recipe, save_recipe


@dataclass
class Run:
    """Everything a run's phases and loop work with."""

    recipe: Recipe
    console: Console
    accelerator: Accelerator
    runtime: Runtime
    precision: Precision
    loader: BatchSource
    val_sets: dict[str, list]  # name -> validation pairs, in the recipe's order
    val_metrics: list[Metric]  # what validation scores (train.val_metrics)
    parts: Trainables  # the eager modules (evaluated, averaged and saved) and their optimisers
    loss: GeneratorLoss | None  # phase B's generator loss (None without phase B)
    gan: GAN | None  # the GAN kind that trains the discriminator (phase B)
    position: Position
    resumed_from: Path | None
    notes: list[str] = field(default_factory=list)
    log: RunLog | None = None  # once the run directory is open
    lock: RunLock | None = None  # rank 0's hold on the run directory (a stalled run lets it go as it ends)
    # The training copies (laid out, maybe compiled, wrapped by Accelerate), sharing the parameters.
    g_train: nn.Module | None = None
    d_train: nn.Module | None = None
    loss_train: GeneratorLoss | None = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def run_dir(self) -> Path:
        return self.recipe.run_dir

    def eval_model(self) -> nn.Module:
        """The generator that is validated and exported: the EMA's when there is one."""
        return self.parts.ema.module if self.parts.ema is not None else self.parts.generator


def make_accelerator(recipe: Recipe) -> Accelerator:
    """The run's Accelerator: its processes' group (with the recipe's collective timeout) and trackers."""
    trackers.check_installed(recipe.train.log_with)
    return Accelerator(cpu=not torch.cuda.is_available(), log_with=recipe.train.log_with or None,
                       project_dir=str(recipe.run_dir),
                       kwargs_handlers=[process_group_kwargs(recipe.train.collective_timeout_s)])


def set_up(recipe: Recipe, console: Console, accelerator: Accelerator) -> Run:
    cuda = torch.cuda.is_available()
    runtime = resolve_runtime(recipe.runtime, cuda)
    if cuda:
        allow_tf32()
        autotune_convolutions()
    precision = Precision(runtime.mixed_precision, accelerator.device.type)
    t = recipe.train
    torch.manual_seed(t.seed)
    degradation.require(recipe.data.degradation)

    train_samples, cache, val_sets, notes = screened_data(recipe, accelerator, console)
    loader, loader_note = make_batch_source(
        recipe.data, train_samples, recipe.scale, t.batch_size, cache=cache, seed=t.seed, rank=accelerator.process_index,
        world_size=accelerator.num_processes, device=accelerator.device)
    if len(loader) == 0:
        raise RecipeError(
            f"data.source {recipe.data.source}: {len(train_samples)} images x repeat {recipe.data.repeat} make no full "
            f"batch of {t.batch_size} per process; raise data.repeat or lower train.batch_size")

    # Built in this order (generator, discriminator, losses) so the seed gives the same initial weights.
    g = GENERATORS.create(recipe.model, scale=recipe.scale)
    if t.init_from:
        check_init_from(t.init_from, g.config)
        load_weights(g, Path(t.init_from))
    gan_phase = t.epochs_finetune > 0
    d = DISCRIMINATORS.create(recipe.discriminator) if gan_phase else None
    loss, gan, loss_notes = build_generator_loss(recipe.loss) if gan_phase else (None, None, [])
    betas, device = tuple(t.betas), accelerator.device
    parts = Trainables(
        generator=g,
        opt_g=adam(g.parameters(), t.lr, betas, device),
        discriminator=d,
        opt_d=adam(d.parameters(), t.lr_finetune or t.lr, betas, device) if gan_phase else None,
        ema=GeneratorEMA(g, t.ema) if t.ema else None)
    checkpoint = resolve_resume(t.resume, recipe.run_dir)
    position = restore_training_state(checkpoint, parts) if checkpoint is not None else Position()
    graphs_note = (f"runtime.compile={runtime.compile}: CUDA graphs need a GPU; on this CPU the models are compiled "
                   "without them") if runtime.cuda_graphs and not cuda else None
    notes = [*notes, *([loader_note] if loader_note else []), *loss_notes, *([graphs_note] if graphs_note else [])]
    val_metrics = build_metrics(t.val_metrics, recipe.scale, accelerator.device, t.metric_weight_files())
    return Run(recipe, console, accelerator, runtime, precision, loader, val_sets, val_metrics, parts, loss, gan, position,
               checkpoint, notes)


def open_run_dir(run: Run) -> None:
    """The run directory (a fresh run never mixes its logs and checkpoints with an earlier one's: an
    earlier run there is moved aside), the resolved recipe, the trackers, the log and the notes."""
    run_dir = run.run_dir
    if run.main:
        if run.resumed_from is None and run_dir.is_dir() and any(run_dir.iterdir()):
            archived = run_dir.with_name(f"{run_dir.name}_archived_{time.strftime('%Y%m%d_%H%M%S')}")
            run_dir.rename(archived)
            run.console.print(f"{run_dir} held an earlier run: moved it to {archived}")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(run.recipe, run_dir / "recipe.yaml")
        if run.resumed_from is not None:
            run.console.print(f"resuming from {run.resumed_from} at step {run.position.step}")
        if run.recipe.train.log_with:
            trackers.start(run.accelerator, run.recipe,
                           resumed_at=run.position.step if run.resumed_from is not None else None)
    run.accelerator.wait_for_everyone()
    forward = partial(trackers.forward, run.accelerator, run_dir) if run.recipe.train.log_with else None
    run.log = RunLog(run_dir / "log.jsonl", enabled=run.main, forward=forward)
    for note in run.notes:
        if run.main:
            run.console.print(f"[yellow]note:[/] {note}")
        run.log.write(kind="note", message=note)


def prepare_for_training(run: Run) -> None:
    """The training copies: laid out, maybe compiled, then wrapped by Accelerate (compiling the bare
    module first avoids DDP graph breaks); evaluation, EMA and checkpoints keep the eager modules."""
    acc, parts, runtime = run.accelerator, run.parts, run.runtime
    run.g_train, parts.opt_g = acc.prepare(runtime.for_training(parts.generator), parts.opt_g)
    if parts.discriminator is not None:
        run.d_train, parts.opt_d = acc.prepare(runtime.for_training(parts.discriminator), parts.opt_d)
    if parts.ema is not None:
        parts.ema.to_device(acc.device)
    if run.loss is not None:
        run.loss_train = run.loss.to(acc.device).prepare(runtime.for_training)


def adam(params, lr: float, betas: tuple[float, float], device: torch.device) -> torch.optim.Adam:
    """Adam for a model that trains on `device`: fused on CUDA (a few kernel launches update all the
    parameters, where the default foreach path launches a dozen per group; under the fp16 scaler it skips an
    overflowed step on the device, without reading the flag back), torch's default elsewhere (which keeps a
    CPU run's resume bitwise). A checkpoint of either loads into the other (`checkpoint.load_optimizer_state`)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True if device.type == "cuda" else None)


def check_init_from(path: str, config: dict) -> None:
    found = read_config(Path(path))
    if found != config:
        raise WeightsError(f"{path}: weights are for {found}, but the recipe builds {config}; match model.* and scale")


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
    for name, samples in val_samples.items():
        val_sets[name], found = screen_val(samples, scale, data.degradation, data.val_images or None)
        val_problems += found
    notes = apply_policy({"training": problems, "validation": val_problems}, data.bad_images)
    train_samples = without(train_samples, problems)
    if not train_samples:
        raise ImageError(f"data.source {data.source}: no usable training images left after skipping the bad ones")
    for pairs, spec in zip(val_sets.values(), val_specs):
        if not pairs:
            raise ImageError(f"validation set {spec}: no usable images left after skipping the bad ones")
    return train_samples, cache, val_sets, notes
