"""The resumable state of a run, written and read in one place (`write_training_checkpoint` /
`restore_training_state`).

A checkpoint is a directory `checkpoints/step_XXXXXXXX/` that is written under a temporary name and renamed
into place only once complete, so a crash or a kill mid-write never leaves a half-written checkpoint that
`resume=auto` could pick. It holds each model's weights with its config (fastsr.weights), and `state.pt`
with the position, the generator's config (checked on resume), the optimisers' states, the EMA's count and
the torch RNG state, read back with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fastsr.errors import CheckpointWriteError, WeightsError
from fastsr.util import fsync_dir
from fastsr.weights import load_weights, same_generator, save_weights

STATE_FILE = "state.pt"
COMPLETE = "COMPLETE"  # written last inside a checkpoint directory


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of `step` lives (complete once it holds the COMPLETE marker)."""
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def save_checkpoint(run_dir: Path, step: int, models: dict[str, tuple[nn.Module, dict]], state: dict, keep: int) -> Path:
    """Write models (name -> (module, config)) and `state` as one checkpoint; keep the newest `keep`."""
    final = checkpoint_dir(run_dir, step)
    root = final.parent
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, (module, config) in models.items():
            save_weights(module, tmp / f"{name}.safetensors", config)
        torch.save(state, tmp / STATE_FILE)
        (tmp / COMPLETE).write_text(str(step))
        fsync_dir(tmp)
    except OSError as err:  # a full disk, a quota, a vanished mount: the older checkpoints are untouched
        shutil.rmtree(tmp, ignore_errors=True)
        previous = complete_checkpoints(run_dir)
        kept = f"the last complete checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointWriteError(f"{final}: could not write the checkpoint ({err.strerror or err}); {kept}. "
                                   f"Free space under {root} and rerun with train.resume=auto") from None
    if final.exists():  # the same step saved again (e.g. end of phase right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    for old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if (p / COMPLETE).is_file() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """`none` -> None; `auto` -> the newest complete checkpoint, if any; else a checkpoint path."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise WeightsError(f"{path}: not a complete fastsr checkpoint (no {COMPLETE} marker); pick one under {run_dir}/checkpoints")
    return path


@dataclass
class Position:
    """Where a run is; saved in every checkpoint."""

    step: int = 0  # optimiser steps taken, all phases together
    phase: int = 0  # index into the run's phases
    epoch: int = 0  # the loader's epoch, counted from the phase's first
    batch: int = 0  # the loader's next batch within that epoch


@dataclass
class Trainables:
    """What a checkpoint saves besides the position: the eager models, their optimisers, the EMA."""

    generator: nn.Module
    opt_g: torch.optim.Optimizer
    discriminator: nn.Module | None = None
    opt_d: torch.optim.Optimizer | None = None
    ema: nn.Module | None = None  # fastsr.engine.ema.GeneratorEMA (torch's AveragedModel) of the generator


def write_training_checkpoint(run_dir: Path, position: Position, trainables: Trainables, keep: int) -> Path:
    """Write the checkpoint of `position.step`: the models' weights and the training state; keep the newest
    `keep` checkpoints."""
    t = trainables
    g = t.generator
    models = {"generator": (g, g.config)}
    state = {"position": asdict(position), "generator": g.config, "opt_g": t.opt_g.state_dict(),
             "torch_rng": torch.get_rng_state()}
    if t.discriminator is not None:
        models["discriminator"] = (t.discriminator, t.discriminator.config)
        state["opt_d"] = t.opt_d.state_dict()
    if t.ema is not None:
        models["ema"] = (t.ema.module, g.config)
        state["ema_n_averaged"] = int(t.ema.n_averaged)
    return save_checkpoint(run_dir, position.step, models, state, keep=keep)


def restore_training_state(checkpoint: Path, trainables: Trainables, position: Position) -> None:
    """Load `checkpoint` into `trainables` (what it holds: a pretrain checkpoint has no discriminator),
    the torch RNG, and `position` (moved to where the checkpoint was written). A checkpoint of another
    generator is refused."""
    checkpoint = Path(checkpoint)
    state = load_state(checkpoint)
    g = trainables.generator
    if not same_generator(state["generator"], g.config):
        raise WeightsError(f"{checkpoint}: was trained with {state['generator']}, the recipe builds {g.config}")
    load_weights(g, checkpoint / "generator.safetensors")
    load_optimizer_state(trainables.opt_g, state["opt_g"])
    if trainables.discriminator is not None and "opt_d" in state:
        load_weights(trainables.discriminator, checkpoint / "discriminator.safetensors")
        load_optimizer_state(trainables.opt_d, state["opt_d"])
    if trainables.ema is not None and "ema_n_averaged" in state:
        load_weights(trainables.ema.module, checkpoint / "ema.safetensors")
        trainables.ema.n_averaged.fill_(state["ema_n_averaged"])
    torch.set_rng_state(state["torch_rng"])
    for key, value in state["position"].items():
        setattr(position, key, value)


# How an optimizer computes, not what it has learnt: chosen for the device of the run that resumes.
_IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load a saved optimizer state, keeping `optimizer`'s implementation. torch's `load_state_dict` would
    take the saved groups' `fused` / `foreach` flags too: a run resumed on a CPU from a GPU checkpoint would
    keep fused Adam, one resumed on a GPU from a CPU checkpoint would lose it (and read Adam's step counts
    back from the device every step). With the resuming optimizer's flags, its step counts are also placed
    as it places them (on the device for fused Adam)."""
    groups = [{**group, **{k: own[k] for k in _IMPLEMENTATION if k in own}}
              for group, own in zip(saved["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({**saved, "param_groups": groups})


def load_state(checkpoint: Path) -> dict:
    """The `state.pt` mapping of checkpoint directory `checkpoint` (position, optimisers, RNG state), loaded
    onto the CPU with weights_only=True; a missing or unreadable file raises WeightsError."""
    try:
        return torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the same thing to the user
        raise WeightsError(f"{checkpoint}/{STATE_FILE}: cannot read the training state ({err})") from None
