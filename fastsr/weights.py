"""Weights that leave a run: safetensors with a JSON file of the model's config beside them
(`generator.json` next to `generator.safetensors`), enough to rebuild the model with no recipe at hand: its
registered name, its scale, its keys and, for a plugin's architecture, the module that defines it.

Nothing a user hands in is ever unpickled: weights load through safetensors only. Training writes these
files (fastsr.engine); `eval`, `upscale`, `export` and `train.init_from` read them, without the engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as serialize
from torch import nn

from fastsr.errors import RecipeError, WeightsError
from fastsr.models import build_generator
from fastsr.util import write_atomic


def config_path(weights: Path) -> Path:
    """The model config beside a weights file: the same name with `.json`."""
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


def same_generator(a: dict, b: dict) -> bool:
    """Whether two saved configs build the same generator. The module of a plugin's architecture says where
    the class is, not what it builds, and a config may lack it, so it is left out of the comparison."""
    return {k: v for k, v in a.items() if k != "plugin"} == {k: v for k, v in b.items() if k != "plugin"}


def read_config(path: Path) -> dict:
    """The model config saved beside weights file `path`; WeightsError when either file is missing or the
    config is not valid JSON."""
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
