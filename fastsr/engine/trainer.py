"""The two-phase trainer, top to bottom.

Phase A (`epochs_pretrain`): the generator alone, pixel loss (SRResNet; also how SRCNN trains).
Phase B (`epochs_finetune`): SRGAN. Each iteration runs the generator once, updates the
discriminator on real and detached fake images, then the generator on
    pixel + w_vgg * perceptual + w_adv * adversarial + w_tv * total variation,
each weight applied exactly once, here and nowhere else.

Each step is a plain function of (models, batch, optimisers, precision); the recipe's `runtime`
switches (runtime.py) lay out and compile the training copies of the models around it, while
evaluation, EMA and checkpoints use the eager modules. The hot loop never waits for the device: losses
are read back every `log_every` steps. Accelerate places the models and runs them on one device,
several or several machines; the loader shards by process and hands over batches already on the
device. The position (phase, epoch, batch) is part of every checkpoint, and the crop plan is a
function of (seed, epoch, position), so a resumed run sees the batches the uninterrupted run would.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from rich.console import Console
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fastsr.config import Recipe, RecipeError, save_recipe
from fastsr.data import ImageError, make_batch_source, open_cache, resolve_source
from fastsr.data.screen import apply_policy, screen_train, screen_val, without
from fastsr.engine.checkpoint import (
    WeightsError, checkpoint_dir, complete_checkpoints, load_state, load_weights, read_config, resolve_resume,
    save_checkpoint, save_weights,
)
from fastsr.engine.lossguard import LossGuard, NonFiniteLoss
from fastsr.engine.runlog import RunLog, plot_curves
from fastsr.engine.runtime import Precision, allow_tf32, resolve_runtime
from fastsr.evaluate import evaluate
from fastsr.losses import PerceptualLoss, VGGWeightsUnavailable, d_loss, g_adv_loss, pixel_loss, tv_loss
from fastsr.models import Bicubic, Discriminator, build_generator
from fastsr.util import progress_bar

DISCRIMINATOR_CONFIG = {"in_channels": 3, "channels": 64}
FP32 = Precision("no")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; a job script requeues on it and resumes
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # what clusters send before killing a job


class Preempted(Exception):
    """The run stopped on SIGTERM/SIGUSR1 after finishing its step and writing a checkpoint."""

    def __init__(self, step: int, checkpoint: Path):
        super().__init__(f"stopped by a signal at step {step}; checkpoint {checkpoint}; "
                         "rerun with train.resume=auto to continue exactly where it stopped")
        self.step, self.checkpoint = step, checkpoint


@contextmanager
def stop_requests():
    """A list that gets the signal number when SIGTERM or SIGUSR1 arrives (the step in flight
    finishes; the loop then checkpoints and stops). Handlers are installed only in the main thread
    and restored afterwards."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class Position:
    """Where a run is; saved in every checkpoint."""

    step: int = 0  # optimisation steps taken, all phases together
    phase: int = 0  # index into the run's phases
    epoch: int = 0  # epoch within the phase
    batch: int = 0  # next batch within the epoch


def learning_rate(base: float, schedule: str, step_in_phase: int, phase_steps: int) -> float:
    if schedule == "constant":
        return base
    return base * 0.5 * (1 + math.cos(math.pi * step_in_phase / phase_steps))


def generator_kwargs(recipe: Recipe) -> dict:
    m = recipe.model
    if m.name == "srresnet":
        return {"name": "srresnet", "scale": recipe.scale, "res_blocks": m.res_blocks, "channels": m.channels}
    return {"name": "srcnn", "scale": recipe.scale, "kernels": list(m.srcnn_kernels), "residual": m.srcnn_residual}


# ---------------------------------------------------------------------------------------------
# The steps


def _always(loss: torch.Tensor) -> bool:
    """The steps' `apply(loss)`, asked after each backward pass whether to apply the update; the trainer
    passes LossGuard.apply, which drops a non-finite loss's update when train.nonfinite=skip."""
    return True


def pretrain_step(g, batch, opt_g, accelerator, pixel: str, precision: Precision = FP32,
                  apply=_always) -> dict[str, torch.Tensor]:
    hr, lr = batch
    with precision.autocast():
        sr = g(lr)
    loss = pixel_loss(sr.float(), hr, pixel)
    opt_g.zero_grad(set_to_none=True)
    precision.backward(accelerator, loss)
    if apply(loss):
        precision.step(opt_g)
        precision.update()
    return {"pixel": loss.detach()}


def gan_step(g, d, batch, opt_g, opt_d, accelerator, recipe: Recipe, perceptual: nn.Module | None,
             precision: Precision = FP32, apply=_always) -> dict[str, torch.Tensor]:
    hr, lr = batch
    w = recipe.loss
    with precision.autocast():
        sr = g(lr)  # the one generator forward of this iteration, used by both updates

    # Discriminator: real -> 1, detached fake -> 0. Each forward gets its own backward, because a
    # BatchNorm module run twice before one backward breaks under DDP (FACTS).
    d.requires_grad_(True)
    opt_d.zero_grad(set_to_none=True)
    with precision.autocast():
        loss_real = d_loss(d(hr).float(), None)
    precision.backward(accelerator, loss_real)
    with precision.autocast():
        loss_fake = d_loss(None, d(sr.detach()).float())
    precision.backward(accelerator, loss_fake)
    stepped = apply(loss_real + loss_fake)
    if stepped:
        precision.step(opt_d)

    # Generator, with D frozen so its update leaves D's gradients alone. Losses in fp32.
    d.requires_grad_(False)
    with precision.autocast():
        fake_logits = d(sr).float()
        loss_vgg = perceptual(sr, hr).float() if perceptual is not None else None
    sr = sr.float()
    loss_pixel = pixel_loss(sr, hr, w.pixel)
    loss_adv = g_adv_loss(fake_logits)
    loss_tv = tv_loss(sr)
    loss_g = loss_pixel + w.w_adv * loss_adv + w.w_tv * loss_tv
    out = {"pixel": loss_pixel.detach(), "adv": loss_adv.detach(), "tv": loss_tv.detach()}
    if loss_vgg is not None:
        loss_g = loss_g + w.w_vgg * loss_vgg
        out["vgg"] = loss_vgg.detach()
    opt_g.zero_grad(set_to_none=True)
    precision.backward(accelerator, loss_g)
    if stepped and apply(loss_g):  # a dropped D update drops the G update too: one step, kept or not
        precision.step(opt_g)
    if stepped:
        precision.update()
    out["g"] = loss_g.detach()
    out["d"] = (loss_real + loss_fake).detach()
    return out


# ---------------------------------------------------------------------------------------------
# Building blocks


def build_perceptual(recipe: Recipe) -> tuple[nn.Module | None, str | None]:
    """The VGG19 loss (None when switched off or, with vgg_missing=skip, unavailable) and a note
    saying what was skipped, if anything."""
    if recipe.loss.w_vgg == 0:
        return None, None
    weights = None if recipe.loss.vgg_weights == "random" else recipe.loss.vgg_weights
    try:
        return PerceptualLoss(layer=recipe.loss.vgg_layer, weights=weights), None
    except VGGWeightsUnavailable as err:
        if recipe.loss.vgg_missing == "error":
            raise
        return None, f"{err} -- phase B trains WITHOUT the perceptual (VGG) term (loss.vgg_missing=skip)"


def check_init_from(path: str, config: dict) -> None:
    found = read_config(Path(path))
    if found != config:
        raise WeightsError(f"{path}: weights are for {found}, but the recipe builds {config}; match model.* and scale")


def screened_data(recipe: Recipe, accelerator, console: Console):
    """(usable training samples, the opened data.cache or None, validation pairs, one note per skipped
    image), with the recipe's `data.bad_images` policy applied to every image the run cannot use."""
    data, scale = recipe.data, recipe.scale
    train_samples = resolve_source(data.source, "train", scale)
    val_samples = resolve_source(data.val_source or data.source, "val", scale)
    cache = open_cache(data.cache, data.source) if data.cache else None  # the run's one read of its manifest
    checking = f"checking {len(train_samples)} training images" + ("" if data.cache else " (decoding each once)")
    with console.status(checking) if accelerator.is_main_process else nullcontext():
        problems = screen_train(train_samples, data, scale, cache=cache, rank=accelerator.process_index,
                                world_size=accelerator.num_processes)
    if accelerator.num_processes > 1:
        problems = gather_object(problems)
    problems = sorted(set(problems))
    notes = apply_policy(problems, data.bad_images, "training")
    train_samples = without(train_samples, problems)
    val_pairs, val_problems = screen_val(val_samples, scale, data.degradation, data.val_images or None)
    notes += apply_policy(val_problems, data.bad_images, "validation")
    for what, found in (("training", train_samples), ("validation", val_pairs)):
        if not found:
            raise ImageError(f"data.source {data.source}: no usable {what} images left after skipping the bad ones")
    return train_samples, cache, val_pairs, notes


class OutOfMemory(RuntimeError):
    """The device ran out of memory; the message says which knobs lower the need."""


@contextmanager
def failures_explained(log: RunLog, pos: Position, recipe: Recipe):
    """Log why a run stops on a non-finite loss; turn an out-of-memory error into advice."""
    try:
        yield
    except NonFiniteLoss as err:
        log.write(kind="nonfinite", step=pos.step, message=str(err))
        raise
    except torch.OutOfMemoryError:
        b = recipe.train.batch_size
        err = OutOfMemory(
            f"out of memory at step {pos.step + 1} with train.batch_size={b} per process and data.hr_crop="
            f"{recipe.data.hr_crop}; lower train.batch_size (e.g. train.batch_size={max(1, b // 2)}) or data.hr_crop, "
            "or use runtime.mixed_precision=bf16; resume with train.resume=auto")
        log.write(kind="oom", step=pos.step, message=str(err))
        raise err from None


def validate(model: nn.Module, pairs, recipe: Recipe, device, step: int, log: RunLog) -> tuple[float, float]:
    """Score the model and bicubic (evaluation runs the model in eval mode and restores its mode)."""
    pictures = recipe.run_dir / "samples" / f"step_{step:08d}"
    bicubic, sr = evaluate({"Bicubic": Bicubic(recipe.scale), "model": model}, pairs, recipe.scale, device, pictures=pictures)
    log.write(kind="val", step=step, psnr=sr.mean_psnr, ssim=sr.mean_ssim,
              bicubic_psnr=bicubic.mean_psnr, bicubic_ssim=bicubic.mean_ssim, images=len(pairs))
    return sr.mean_psnr, bicubic.mean_psnr


# ---------------------------------------------------------------------------------------------
# The run


def train(recipe: Recipe, console: Console | None = None) -> Path:
    """Run every phase of `recipe`; return the run directory (weights in run_dir/generator.safetensors)."""
    cuda = torch.cuda.is_available()
    runtime = resolve_runtime(recipe.runtime, cuda)
    accelerator = Accelerator(cpu=not cuda)
    if cuda:
        allow_tf32()
    precision = Precision(runtime.mixed_precision, accelerator.device.type)
    main = accelerator.is_main_process
    console = console or Console()
    t = recipe.train
    run_dir = recipe.run_dir
    torch.manual_seed(t.seed)

    # Data, models, losses and the checkpoint to resume: everything that can fail on a user's input
    # is checked before the run directory is touched.
    scale = recipe.scale
    train_samples, cache, val_pairs, skip_notes = screened_data(recipe, accelerator, console)
    loader, loader_note = make_batch_source(
        recipe.data, train_samples, scale, t.batch_size, cache=cache, seed=t.seed, rank=accelerator.process_index,
        world_size=accelerator.num_processes, device=accelerator.device)
    if len(loader) == 0:
        raise RecipeError(
            f"data.source {recipe.data.source}: {len(train_samples)} images x repeat {recipe.data.repeat} make no full batch "
            f"of {t.batch_size} per process; raise data.repeat or lower train.batch_size")

    g = build_generator(**generator_kwargs(recipe))
    g_config = g.config  # the model's own, complete config: what its weights are saved with
    if t.init_from:
        check_init_from(t.init_from, g_config)
        load_weights(g, Path(t.init_from))
    phases = [(name, n) for name, n in (("pretrain", t.epochs_pretrain), ("finetune", t.epochs_finetune)) if n > 0]
    gan = t.epochs_finetune > 0
    d = Discriminator(**DISCRIMINATOR_CONFIG) if gan else None
    perceptual, vgg_note = build_perceptual(recipe) if gan else (None, None)
    opt_g = torch.optim.Adam(g.parameters(), lr=t.lr, betas=tuple(t.betas))
    opt_d = torch.optim.Adam(d.parameters(), lr=t.lr_finetune or t.lr, betas=tuple(t.betas)) if gan else None
    ema = AveragedModel(g, multi_avg_fn=get_ema_multi_avg_fn(t.ema), use_buffers=True) if t.ema else None
    checkpoint = resolve_resume(t.resume, run_dir)
    pos = Position()
    if checkpoint is not None:
        state = load_state(checkpoint)
        if state["generator"] != g_config:
            raise WeightsError(f"{checkpoint}: was trained with {state['generator']}, the recipe builds {g_config}")
        pos = Position(**state["position"])
        load_weights(g, checkpoint / "generator.safetensors")
        opt_g.load_state_dict(state["opt_g"])
        if gan and "opt_d" in state:
            load_weights(d, checkpoint / "discriminator.safetensors")
            opt_d.load_state_dict(state["opt_d"])
        if ema is not None and "ema_n_averaged" in state:
            load_weights(ema.module, checkpoint / "ema.safetensors")
            ema.n_averaged.fill_(state["ema_n_averaged"])
        torch.set_rng_state(state["torch_rng"])
        if main:
            console.print(f"resuming from {checkpoint} at step {pos.step}")

    # The run directory: a fresh run never mixes its logs and checkpoints with an earlier one's.
    if main:
        if checkpoint is None and run_dir.is_dir() and any(run_dir.iterdir()):
            archived = run_dir.with_name(f"{run_dir.name}_archived_{time.strftime('%Y%m%d_%H%M%S')}")
            run_dir.rename(archived)
            console.print(f"{run_dir} held an earlier run: moved it to {archived}")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, run_dir / "recipe.yaml")
    accelerator.wait_for_everyone()
    log = RunLog(run_dir / "log.jsonl", enabled=main)
    for note in (*skip_notes, loader_note, vgg_note):
        if note and main:
            console.print(f"[yellow]note:[/] {note}")
            log.write(kind="note", message=note)

    # g, d: the eager modules (evaluated, averaged and saved); g_train, d_train, vgg_train: the copies
    # that train (laid out, maybe compiled, wrapped by Accelerate), sharing their parameters.
    g_train, opt_g = accelerator.prepare(runtime.for_training(g), opt_g)
    d_train = vgg_train = None
    if gan:
        d_train, opt_d = accelerator.prepare(runtime.for_training(d), opt_d)
    if ema is not None:
        ema.to(accelerator.device)
    if perceptual is not None:
        vgg_train = runtime.for_training(perceptual.to(accelerator.device))

    def eval_model() -> nn.Module:
        return ema.module if ema is not None else g

    def checkpoint_now() -> None:
        check_losses()
        if main:
            models = {"generator": (g, g_config)}
            state = {"position": asdict(pos), "generator": g_config, "opt_g": opt_g.state_dict(),
                     "torch_rng": torch.get_rng_state()}
            if gan:
                models["discriminator"] = (d, DISCRIMINATOR_CONFIG)
                state["opt_d"] = opt_d.state_dict()
            if ema is not None:
                models["ema"] = (ema.module, g_config)
                state["ema_n_averaged"] = int(ema.n_averaged)
            save_checkpoint(run_dir, pos.step, models, state, keep=t.keep_checkpoints)
        accelerator.wait_for_everyone()

    last_val = {"step": -1, "info": ""}

    def validate_now() -> None:
        check_losses()
        if main and last_val["step"] != pos.step:
            psnr, bic = validate(eval_model(), val_pairs, recipe, accelerator.device, pos.step, log)
            last_val.update(step=pos.step, info=f"val {psnr:.2f} dB (bicubic {bic:.2f})")
        accelerator.wait_for_everyone()

    # The loop.
    lr_factor = {"none": 1.0, "linear": accelerator.num_processes, "sqrt": math.sqrt(accelerator.num_processes)}[t.lr_scaling]
    steps_per_epoch = len(loader)
    total = steps_per_epoch * sum(n for _, n in phases)
    images_per_step = t.batch_size * accelerator.num_processes
    epoch_offsets = [sum(n for _, n in phases[:i]) for i in range(len(phases))]
    log.write(kind="run", step=pos.step, loader=loader.name, processes=accelerator.num_processes,
              device=str(accelerator.device), steps_per_epoch=steps_per_epoch, compile=runtime.compile,
              mixed_precision=runtime.mixed_precision, channels_last=runtime.channels_last)
    if main:
        console.print(f"[bold]{recipe.name}[/]: {', '.join(f'{p} {n} epochs' for p, n in phases)}; "
                      f"{steps_per_epoch} steps/epoch of {images_per_step} crops ({loader.name} loader); "
                      f"{accelerator.num_processes} process(es) on {accelerator.device} ({runtime.describe()}); run dir {run_dir}")
    g_train.train()
    logged: list[tuple[int, dict[str, torch.Tensor]]] = []  # (step, losses) of the steps that counted since the last flush
    window = {"tic": time.perf_counter(), "step": pos.step}
    guard = LossGuard(t.nonfinite, t.max_skipped_steps, accelerator)

    def last_checkpoint() -> Path | None:
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None

    def check_losses() -> None:
        """Stop before logging, validating or saving anything computed after a non-finite loss."""
        guard.check(logged, last_checkpoint)

    def flush_log(phase: str, epoch: int) -> None:
        """Read the losses back (the only host synchronisation of the loop) and log their means."""
        check_losses()
        steps = pos.step - window["step"]
        if not logged or not steps:
            return
        rate = steps * images_per_step / (time.perf_counter() - window["tic"])
        keys = list(logged[0][1])  # a window never spans two phases, so every step has the same losses
        values = torch.stack([torch.stack([losses[k] for k in keys]) for _, losses in logged]).mean(dim=0).tolist()
        means = {f"loss_{k}": v for k, v in zip(keys, values)}
        log.write(kind="train", step=pos.step, phase=phase, epoch=epoch, lr=opt_g.param_groups[0]["lr"],
                  images_per_sec=rate, **means)
        logged.clear()
        window.update(tic=time.perf_counter(), step=pos.step)
        shown = " ".join(f"{k[5:]} {v:.4g}" for k, v in means.items())
        progress.update(task, rate=rate, info=f"{shown} {last_val['info']}")

    def stop_requested(requests: list[int]) -> bool:
        """Whether any process got a stop signal. With several processes they must agree on the step
        to stop at, which costs a collective: asked every `log_every` steps, where the loop syncs anyway."""
        if accelerator.num_processes == 1:
            return bool(requests)
        if pos.step % t.log_every:
            return False
        flag = torch.tensor([float(bool(requests))], device=accelerator.device)
        return accelerator.reduce(flag, reduction="sum").item() > 0

    def outside_rate(action) -> None:
        """Run a validation or a checkpoint without counting its time against images/sec."""
        tic = time.perf_counter()
        action()
        window["tic"] += time.perf_counter() - tic

    with progress_bar(main) as progress, stop_requests() as requests, failures_explained(log, pos, recipe):
        task = progress.add_task("", total=total, completed=pos.step, rate=0.0, info="")
        for phase_index in range(pos.phase, len(phases)):
            phase, epochs = phases[phase_index]
            progress.update(task, description=phase)
            base_lr = (t.lr if phase == "pretrain" else (t.lr_finetune or t.lr)) * lr_factor
            optimisers = [opt_g] if phase == "pretrain" else [opt_g, opt_d]
            for epoch in range(pos.epoch, epochs):
                for batch in loader.batches(epoch_offsets[phase_index] + epoch, start=pos.batch):
                    lr = learning_rate(base_lr, t.lr_schedule, epoch * steps_per_epoch + pos.batch,
                                       epochs * steps_per_epoch)
                    for group in (group for opt in optimisers for group in opt.param_groups):
                        group["lr"] = lr
                    batch = runtime.batch(*batch)
                    guard.begin(pos.step + 1, [g] if phase == "pretrain" else [g, d])
                    if phase == "pretrain":
                        losses = pretrain_step(g_train, batch, opt_g, accelerator, recipe.loss.pixel, precision,
                                               guard.apply)
                    else:
                        losses = gan_step(g_train, d_train, batch, opt_g, opt_d, accelerator, recipe, vgg_train,
                                          precision, guard.apply)
                    counted = guard.end()
                    if ema is not None:
                        ema.update_parameters(g)
                    pos.step += 1
                    pos.batch += 1
                    if counted:
                        logged.append((pos.step, losses))
                    else:
                        log.write(kind="skipped", step=pos.step, reason="non-finite loss (train.nonfinite=skip)")
                    if pos.step % t.log_every == 0:
                        flush_log(phase, epoch)
                    if t.val_every and pos.step % t.val_every == 0:
                        outside_rate(validate_now)
                    if t.save_every and pos.step % t.save_every == 0:
                        outside_rate(checkpoint_now)
                    progress.update(task, completed=pos.step)
                    if stop_requested(requests):
                        flush_log(phase, epoch)
                        checkpoint_now()
                        checkpoint = checkpoint_dir(run_dir, pos.step)
                        log.write(kind="preempted", step=pos.step, signal=int(requests[0]) if requests else None,
                                  checkpoint=str(checkpoint))
                        raise Preempted(pos.step, checkpoint)
                pos.epoch, pos.batch = epoch + 1, 0
            flush_log(phase, epochs - 1)
            pos.phase, pos.epoch = phase_index + 1, 0
            outside_rate(validate_now)
            outside_rate(checkpoint_now)
            progress.update(task, info=last_val["info"])

    if main:
        save_weights(eval_model(), run_dir / "generator.safetensors", g_config)
        if log.path.is_file():
            plot_curves(log.path, run_dir / "curves.png")
        console.print(f"done: {run_dir / 'generator.safetensors'}; {last_val['info']}; "
                      f"pictures in {run_dir / 'samples'}, curves in {run_dir / 'curves.png'}")
    accelerator.wait_for_everyone()
    return run_dir
