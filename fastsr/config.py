"""Recipes: YAML files turned into a typed, validated `Recipe`.

A recipe may name a `base:` recipe (a path relative to itself) whose values it overrides; after the
recipe path the command line may override any key with dotted `key=value` pairs
(`train.batch_size=32`). Every error is one line naming the file and the key, and an unknown key
comes with the closest valid one, because a typo that silently falls back to a default wastes a
training run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class RecipeError(ValueError):
    """A recipe or an override is wrong; the message says where and what to do."""


@dataclass
class ModelConfig:
    name: Literal["srresnet", "srcnn"] = "srresnet"
    res_blocks: int = 16  # SRResNet residual blocks (the seed's knob)
    channels: int = 64  # SRResNet feature channels
    srcnn_kernels: list[int] = field(default_factory=lambda: [9, 5, 5])  # [9, 1, 5] is the paper's base
    srcnn_residual: bool = True  # add the bicubic image to SRCNN's output (false: the paper's form)


@dataclass
class DataConfig:
    source: str = "samples"  # `samples`, a DIV2K root, or an image folder
    val_source: str | None = None  # default: the held-out split of `source`
    hr_crop: int = 96  # HR patch size; a multiple of the scale
    repeat: int = 1  # crops taken from each training image per epoch
    augment: bool = True  # random flips and 90-degree rotations
    channel_shuffle: bool = False  # random RGB permutation: removes the colour bias of small sets
    degradation: Literal["matlab", "kornia"] = "matlab"  # kornia's bicubic is not MATLAB's
    # `dali`: NVIDIA DALI (crops and downscale on the GPU); `torch`: the portable loader; `auto`: DALI
    # where it is installed and can run here, else torch (the run's log says which, and why)
    backend: Literal["auto", "dali", "torch"] = "auto"
    cache: str | None = None  # a decode-once cache of `source`'s training images (`fastsr prepare`)
    crops_per_image: int = 1  # crops cut per visit to an image (spreads a file decode over k crops)
    workers: int = 2  # torch: loader worker processes (0: in the main process); DALI: CPU threads
    cache_images: bool = True  # torch loader: keep decoded training images in memory (small data sets)
    val_images: int = 0  # validate on the first N held-out images (0: all)
    # Images a run cannot use (unreadable, truncated, transparent, smaller than the crop or too small to
    # score), found before the first step: `error` refuses the run naming them, `skip` leaves them out
    # and names each in the console and the log.
    bad_images: Literal["error", "skip"] = "error"


@dataclass
class LossConfig:
    pixel: Literal["mse", "l1"] = "mse"
    w_vgg: float = 6e-3
    w_adv: float = 1e-3
    w_tv: float = 1e-6
    vgg_layer: str = "conv5_4"
    # `imagenet` (torchvision's weights), a path to vgg19-dcbb9e9d.pth (checked by its hash: fastsr
    # unpickles no other file) or to a .safetensors copy of it, or `random` (untrained: a
    # meaningless loss that costs the same, for throughput benchmarks and tests only)
    vgg_weights: str = "imagenet"
    # What phase B does when the VGG19 weights can't be had: stop (`error`), or train without the
    # perceptual term and say so (`skip`, used by the quick start on machines with no network).
    vgg_missing: Literal["error", "skip"] = "error"


@dataclass
class TrainConfig:
    epochs_pretrain: int = 100  # phase A: pixel loss, generator only
    epochs_finetune: int = 0  # phase B: GAN fine-tuning
    batch_size: int = 16  # per process
    lr: float = 1e-4  # Adam, phase A (and phase B unless lr_finetune is set)
    lr_finetune: float | None = None
    # `cosine` decays each phase's learning rate to 0 over the phase (settles the weights and the
    # BatchNorm statistics by the end of a short run); `constant` is the paper's schedule.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # With N processes the global batch is N x batch_size; `linear` multiplies the learning rates by
    # N (Goyal et al.), `sqrt` by sqrt(N) (gentler, often better for Adam), `none` keeps them.
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    ema: float = 0.0  # decay of an exponential moving average of the generator (0: off)
    init_from: str | None = None  # generator weights (.safetensors) to start from, e.g. phase A's
    resume: str = "none"  # none | auto (newest complete checkpoint of this run) | a checkpoint dir
    seed: int = 0
    log_every: int = 10  # steps between loss read-backs (each one synchronises the device)
    val_every: int = 500  # steps between validations (0: only at the end of each phase)
    save_every: int = 500  # steps between checkpoints (0: only at the end of each phase)
    keep_checkpoints: int = 2
    # A NaN or infinite loss: `stop` ends the run naming the step, writing no checkpoint after it (the
    # last good one stays); `skip` drops that step's update (which costs a host sync per step) and
    # stops only after more than `max_skipped_steps` of them.
    nonfinite: Literal["stop", "skip"] = "stop"
    max_skipped_steps: int = 10


@dataclass
class RuntimeConfig:
    # `auto` picks by device, as measured (benchmarks/RESULTS.md): on a GPU compile + bf16 +
    # channels_last; on a CPU eager fp32 + channels_last (compiling costs minutes there and bf16 is
    # slower without AMX; channels_last made the GAN step 1.6x faster).
    compile: Literal["auto", "off", "default", "max-autotune"] = "auto"  # torch.compile mode
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # autocast dtype (fp16 adds a grad scaler)
    channels_last: Literal["auto", "on", "off"] = "auto"  # NHWC memory layout for the models and batches


@dataclass
class Recipe:
    name: str = "run"
    out_dir: str = "runs"  # the run directory is out_dir/name
    scale: int = 4
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


# ---------------------------------------------------------------------------------------------
# Loading


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe file (following `base:`), apply `key=value` overrides, validate."""
    path = Path(path)
    raw = _read_with_bases(path, chain=())
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return from_dict(raw, source=str(path))


def from_dict(raw: dict, source: str = "recipe") -> Recipe:
    recipe = _build(Recipe, raw, prefix="", source=source)
    _check_values(recipe, source)
    return recipe


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def save_recipe(recipe: Recipe, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    if not path.is_file():
        where = f" (base of {chain[-1]})" if chain else ""
        raise RecipeError(f"{path}: recipe not found{where}; check the path")
    resolved = path.resolve()
    if resolved in chain:
        loop = " -> ".join(str(p) for p in (*chain, resolved))
        raise RecipeError(f"{path}: circular base: {loop}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{path}:{line}: malformed YAML: {problem}") from None
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:
        # PyYAML parsed the text but could not build a value from it (e.g. the date 2021-02-30)
        raise RecipeError(f"{path}: a value cannot be read ({err}); quote it if it is meant as text") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys to values, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    parent = _read_with_bases(path.parent / base, chain + (resolved,))
    return _merge(parent, data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"override {item!r}: expected key=value, e.g. train.batch_size=32")
    try:
        value = yaml.safe_load(text) if text else ""
    except Exception:  # noqa: BLE001 - malformed YAML, or a value PyYAML cannot build (2021-02-30, 0x_)
        value = text  # take it as a string and let the type check decide
    return key.strip(), value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# Typed construction


def all_keys(cls=Recipe, prefix: str = "") -> list[str]:
    """Every valid dotted key, for suggestions and docs."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _suggest(key: str) -> str:
    keys = all_keys()
    leaf = key.rsplit(".", 1)[-1]
    # A bare seed knob (`batch_size=32`) should point to its section (`train.batch_size`).
    by_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    close = by_leaf or difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _build(cls, raw: Any, prefix: str, source: str):
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: '{prefix.rstrip('.')}' must be a section (a mapping), got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            full = prefix + str(key)
            raise RecipeError(f"{source}: unknown key '{full}'{_suggest(full)}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{prefix}{name}.", source)
        else:
            kwargs[name] = _coerce(value, hint, prefix + name, source)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, source)
    if origin is Literal:
        if isinstance(value, bool):  # YAML reads unquoted on/off/yes/no as booleans
            value = next((w for w in _BOOL_WORDS[value] if w in args), value)
        if value not in args:
            choices = ", ".join(map(str, args))
            raise RecipeError(f"{source}: {key}={value!r} is not one of: {choices}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{source}: {key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        # PyYAML reads `1e-4` (no dot) as a string; NaN, infinity and ints past float range are refused
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except (ValueError, OverflowError):
                number = math.nan
            if math.isfinite(number):
                return number
            raise RecipeError(f"{source}: {key} must be a finite number, got {value!r}")
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise RecipeError(f"{source}: {key} must be {hint.__name__}, got {value!r}")


_BOOL_WORDS = {True: ("on", "yes", "true"), False: ("off", "no", "false")}

_POSITIVE = ("data.hr_crop", "data.repeat", "data.crops_per_image", "train.batch_size", "train.log_every", "train.keep_checkpoints",
             "model.res_blocks", "model.channels")
_NON_NEGATIVE = ("train.epochs_pretrain", "train.epochs_finetune", "train.val_every", "train.save_every",
                 "data.workers", "data.val_images", "train.max_skipped_steps", "loss.w_vgg", "loss.w_adv", "loss.w_tv")


def _get_dotted(recipe: Recipe, key: str) -> Any:
    value = recipe
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _check_values(r: Recipe, source: str) -> None:
    def fail(key: str, why: str):
        raise RecipeError(f"{source}: {key} {why}")

    if r.scale not in (2, 4, 8):
        fail("scale", f"must be 2, 4 or 8 (got {r.scale})")
    for key in _POSITIVE + _NON_NEGATIVE:
        value = _get_dotted(r, key)
        if key in _POSITIVE and not value > 0:
            fail(key, f"must be positive (got {value})")
        if not value >= 0:
            fail(key, f"must not be negative (got {value})")
    if r.train.lr <= 0 or (r.train.lr_finetune is not None and r.train.lr_finetune <= 0):
        fail("train.lr", "and train.lr_finetune must be positive")
    if r.data.hr_crop % r.scale:
        fail("data.hr_crop", f"must be a multiple of scale {r.scale} (got {r.data.hr_crop})")
    if r.data.hr_crop < 32 and r.train.epochs_finetune:
        fail("data.hr_crop", f"must be at least 32 for the discriminator (got {r.data.hr_crop})")
    k = r.data.crops_per_image
    if r.data.repeat % k or r.train.batch_size % k:
        fail("data.crops_per_image", f"({k}) must divide data.repeat ({r.data.repeat}) and train.batch_size "
             f"({r.train.batch_size})")
    if r.train.epochs_pretrain + r.train.epochs_finetune == 0:
        fail("train.epochs_pretrain", "and train.epochs_finetune are both 0: nothing to train")
    if len(r.model.srcnn_kernels) != 3 or any(k <= 0 or k % 2 == 0 for k in r.model.srcnn_kernels):
        fail("model.srcnn_kernels", f"must be three odd sizes such as [9, 5, 5] (got {r.model.srcnn_kernels})")
    if not 0 <= r.train.ema < 1:
        fail("train.ema", f"must be in [0, 1) (got {r.train.ema})")
    if len(r.train.betas) != 2 or not all(0 <= b < 1 for b in r.train.betas):
        fail("train.betas", f"must be two numbers in [0, 1) (got {r.train.betas})")
    from fastsr.losses import VGG19_LAYERS  # here, not at the top: it imports torch and kornia

    if r.loss.vgg_layer not in VGG19_LAYERS:
        close = difflib.get_close_matches(r.loss.vgg_layer, VGG19_LAYERS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; one of {', '.join(VGG19_LAYERS)}"
        fail("loss.vgg_layer", f"{r.loss.vgg_layer!r} is not a VGG19 layer{hint}")
