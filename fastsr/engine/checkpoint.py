"""Weights that leave a run, and the resumable state of a run.

Weights are safetensors with a JSON file of the model's config beside them (`generator.json` next
to `generator.safetensors`), enough to rebuild the model with no recipe at hand. Nothing a user
hands in is ever unpickled: weights load through safetensors, and fastsr's own resumable state
through `torch.load(weights_only=True)`.

A checkpoint is a directory `checkpoints/step_XXXXXXXX/` that is written under a temporary name
and renamed into place only once complete, so a crash or a kill mid-write never leaves a
half-written checkpoint that `resume=auto` could pick. What it holds is written and read in one place,
`write_training_checkpoint` / `restore_training_state`: each model's weights (+ config), and `state.pt`
with the position, the generator's config (checked on resume), the optimisers' states, the EMA's count
and the torch RNG state.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as serialize
from torch import nn

from fastsr.config import RecipeError
from fastsr.models import build_generator
from fastsr.util import fsync_dir, write_atomic

STATE_FILE = "state.pt"
COMPLETE = "COMPLETE"  # written last inside a checkpoint directory


class WeightsError(ValueError):
    """A weights file or checkpoint cannot be used; the message names it and says why."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the message names the one left intact."""


def config_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_weights(model: nn.Module, path: Path, config: dict) -> None:
    """Write `path` (.safetensors) and its config (.json) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # clone(): safetensors refuses tensors that share storage, and this detaches from the device.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    # Serialised here and written by Python, so a failed write (a full disk) raises OSError with its
    # errno; safetensors' own file writer reports it as a SafetensorError.
    data = serialize(tensors, metadata={"format": "pt"})
    write_atomic(path, data)
    write_atomic(config_path(path), json.dumps(config, indent=2).encode())


def read_config(path: Path) -> dict:
    if not Path(path).is_file():
        raise WeightsError(f"{path}: weights file not found")
    cfg_file = config_path(path)
    if not cfg_file.is_file():
        raise WeightsError(f"{path}: no {cfg_file.name} beside it; fastsr needs the model config it writes with the weights")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{cfg_file}: not valid JSON ({err.msg} at line {err.lineno})") from None


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load safetensors weights into `model`, with a one-line error for any mismatch."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: fastsr loads weights only from .safetensors files (never pickles)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err}); re-export or re-download it") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (
            f"missing {missing[:3]}" if missing
            else f"unexpected {unexpected[:3]}" if unexpected
            else f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, the model wants {tuple(own[wrong[0]].shape)}"
        )
        raise WeightsError(f"{path}: weights do not fit this model ({detail}); check scale and architecture")
    model.load_state_dict(state)
    return model


def load_generator(path: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a generator from its config and load its weights; eval mode."""
    config = read_config(path)
    if not isinstance(config, dict):
        raise WeightsError(f"{config_path(path)}: not a fastsr generator config")
    try:
        model = build_generator(**config, source=str(config_path(path)))
    except (RecipeError, TypeError, ValueError) as err:
        raise WeightsError(str(err)) from None  # it names the .json
    return load_weights(model, path).to(device).eval()


# ---------------------------------------------------------------------------------------------
# Resumable checkpoints


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

    step: int = 0  # optimisation steps taken, all phases together
    phase: int = 0  # index into the run's phases
    epoch: int = 0  # epoch within the phase
    batch: int = 0  # next batch within the epoch


@dataclass
class Trainables:
    """What a checkpoint saves besides the position: the eager models, their optimisers, the EMA."""

    generator: nn.Module
    opt_g: torch.optim.Optimizer
    discriminator: nn.Module | None = None
    opt_d: torch.optim.Optimizer | None = None
    ema: nn.Module | None = None  # fastsr.engine.ema.GeneratorEMA (torch's AveragedModel) of the generator


def write_training_checkpoint(run_dir: Path, position: Position, parts: Trainables, keep: int) -> Path:
    g = parts.generator
    models = {"generator": (g, g.config)}
    state = {"position": asdict(position), "generator": g.config, "opt_g": parts.opt_g.state_dict(),
             "torch_rng": torch.get_rng_state()}
    if parts.discriminator is not None:
        models["discriminator"] = (parts.discriminator, parts.discriminator.config)
        state["opt_d"] = parts.opt_d.state_dict()
    if parts.ema is not None:
        models["ema"] = (parts.ema.module, g.config)
        state["ema_n_averaged"] = int(parts.ema.n_averaged)
    return save_checkpoint(run_dir, position.step, models, state, keep=keep)


def restore_training_state(checkpoint: Path, parts: Trainables) -> Position:
    """Load `checkpoint` into `parts` (the parts it has: a phase A checkpoint holds no discriminator) and
    the torch RNG; the position to continue from. A checkpoint of another generator is refused."""
    checkpoint = Path(checkpoint)
    state = load_state(checkpoint)
    g = parts.generator
    if state["generator"] != g.config:
        raise WeightsError(f"{checkpoint}: was trained with {state['generator']}, the recipe builds {g.config}")
    load_weights(g, checkpoint / "generator.safetensors")
    load_optimizer_state(parts.opt_g, state["opt_g"])
    if parts.discriminator is not None and "opt_d" in state:
        load_weights(parts.discriminator, checkpoint / "discriminator.safetensors")
        load_optimizer_state(parts.opt_d, state["opt_d"])
    if parts.ema is not None and "ema_n_averaged" in state:
        load_weights(parts.ema.module, checkpoint / "ema.safetensors")
        parts.ema.n_averaged.fill_(state["ema_n_averaged"])
    torch.set_rng_state(state["torch_rng"])
    return Position(**state["position"])


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
    try:
        return torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means the same thing to the user
        raise WeightsError(f"{checkpoint}/{STATE_FILE}: cannot read the training state ({err})") from None
