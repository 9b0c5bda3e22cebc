"""The recipe machinery: YAML files with `base:` inheritance and `key=value` overrides, turned into typed,
validated dataclasses; and the run's own sections (data, train, runtime).

A recipe may name a `base:` recipe (a path relative to itself) whose values it overrides; after the
recipe path the command line may override any key with dotted `key=value` pairs
(`train.batch_size=32`). A section with a `name:` (a registered part: `model`, `discriminator`, each loss
term) that a derived recipe or an override gives another name is replaced, not merged, since another part
has other keys. Every error is one line naming the file and the key, and an unknown key comes with the
closest valid one, because a typo that silently falls back to a default wastes a training run.

This module is a foundation: it knows nothing of the parts. A dataclass field holding a part carries its
registry in the field's metadata (`metadata={"registry": GENERATORS}`), which builds and checks it; the
`Recipe` that puts the sections together lives in `fastsr.recipe`.
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

from fastsr.errors import RecipeError
from fastsr.ops.resample import MODES

# ---------------------------------------------------------------------------------------------
# The real-world degradation's section (fastsr.data.realworld runs it)

KERNEL_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_KINDS = ("up", "down", "keep")
MAX_KERNEL = 21  # every blur kernel is zero-padded to this size (BasicSR's pulse_tensor and np.pad)
_KINDS_DEFAULT = list(KERNEL_KINDS)
_KIND_PROBS = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]


@dataclass
class RealESRGANConfig:
    """`data.realesrgan`: the ranges and probabilities each sample's degradation is drawn from, used when
    `data.degradation=realesrgan`. Keys and defaults are Real-ESRGAN's (options/train_realesrnet_x4plus.yml,
    the same for train_realesrgan_x4plus.yml); the fixed choices its code makes are noted where they apply."""

    gt_usm: bool = True  # degrade the unsharp-masked HR (yml `gt_usm`; feed_data blurs `self.gt_usm`)
    # Kernel sizes: the odd sizes from the first to the second (BasicSR's dataset: `kernel_range`, 7..21; the
    # yml's blur_kernel_size 21 is read but never used). A sinc kernel below 13 takes cutoffs from pi/3, else pi/5.
    kernel_range: list[int] = field(default_factory=lambda: [7, MAX_KERNEL])
    # the first degradation (yml `datasets.train` for the kernels, top level for the rest)
    kernel_list: list[Literal[KERNEL_KINDS]] = field(default_factory=lambda: list(_KINDS_DEFAULT))
    kernel_prob: list[float] = field(default_factory=lambda: list(_KIND_PROBS))
    sinc_prob: float = 0.1  # a sinc kernel instead of one from kernel_list
    blur_sigma: list[float] = field(default_factory=lambda: [0.2, 3.0])
    betag_range: list[float] = field(default_factory=lambda: [0.5, 4.0])  # generalized Gaussian's shape
    betap_range: list[float] = field(default_factory=lambda: [1.0, 2.0])  # plateau's shape
    resize_prob: list[float] = field(default_factory=lambda: [0.2, 0.7, 0.1])  # up, down, keep
    resize_range: list[float] = field(default_factory=lambda: [0.15, 1.5])
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_range: list[float] = field(default_factory=lambda: [1.0, 30.0])  # Gaussian sigma, in 8-bit levels
    poisson_scale_range: list[float] = field(default_factory=lambda: [0.05, 3.0])
    gray_noise_prob: float = 0.4
    jpeg_range: list[int] = field(default_factory=lambda: [30, 95])  # quality, inclusive
    # the second degradation
    second_blur_prob: float = 0.8
    kernel_list2: list[Literal[KERNEL_KINDS]] = field(default_factory=lambda: list(_KINDS_DEFAULT))
    kernel_prob2: list[float] = field(default_factory=lambda: list(_KIND_PROBS))
    sinc_prob2: float = 0.1
    blur_sigma2: list[float] = field(default_factory=lambda: [0.2, 1.5])
    betag_range2: list[float] = field(default_factory=lambda: [0.5, 4.0])
    betap_range2: list[float] = field(default_factory=lambda: [1.0, 2.0])
    resize_prob2: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.3])
    resize_range2: list[float] = field(default_factory=lambda: [0.3, 1.2])  # of the LR size
    gaussian_noise_prob2: float = 0.5
    noise_range2: list[float] = field(default_factory=lambda: [1.0, 25.0])
    poisson_scale_range2: list[float] = field(default_factory=lambda: [0.05, 2.5])
    gray_noise_prob2: float = 0.4
    jpeg_range2: list[int] = field(default_factory=lambda: [30, 95])
    # the final step: a sinc filter after the resize to the LR size (else none), cutoff in [pi/3, pi]
    final_sinc_prob: float = 0.8
    # the resize modes, drawn uniformly (feed_data's random.choice(['area', 'bilinear', 'bicubic']))
    resize_modes: list[Literal[MODES]] = field(default_factory=lambda: list(MODES))

    def check(self) -> None:
        """Raise Invalid naming the key for a probability outside [0, 1], probabilities that do not sum to 1,
        a reversed range or one outside what its operation accepts, an even kernel size, a JPEG quality
        outside 1..100."""
        for key in ("sinc_prob", "sinc_prob2", "second_blur_prob", "final_sinc_prob", "gaussian_noise_prob",
                    "gaussian_noise_prob2", "gray_noise_prob", "gray_noise_prob2"):
            if not 0 <= getattr(self, key) <= 1:
                raise Invalid(key, f"is a probability: it must be in [0, 1] (got {getattr(self, key)})")
        for key in ("kernel_list", "kernel_list2", "resize_modes"):
            if not getattr(self, key) or len(set(getattr(self, key))) != len(getattr(self, key)):
                raise Invalid(key, f"must name at least one choice, each once (got {getattr(self, key)})")
        for key, names in (("kernel_prob", "kernel_list"), ("kernel_prob2", "kernel_list2"),
                           ("resize_prob", None), ("resize_prob2", None)):
            probs = getattr(self, key)
            count = len(getattr(self, names)) if names else len(RESIZE_KINDS)
            what = f"one per entry of {names}" if names else "for up, down, keep"
            if len(probs) != count:
                raise Invalid(key, f"needs {count} probabilities, {what} (got {probs})")
            if any(p < 0 for p in probs) or abs(sum(probs) - 1) > 1e-6:
                raise Invalid(key, f"must be non-negative and sum to 1 (got {probs}, sum {sum(probs):.6g})")
        lo, hi = _pair(self, "kernel_range")
        if lo % 2 == 0 or hi % 2 == 0 or not 3 <= lo <= hi <= MAX_KERNEL:
            raise Invalid("kernel_range", f"must be two odd sizes with 3 <= first <= second <= {MAX_KERNEL} "
                                          f"(got {self.kernel_range})")
        for key in ("blur_sigma", "blur_sigma2", "betag_range", "betag_range2", "betap_range", "betap_range2"):
            if _pair(self, key)[0] <= 0:
                raise Invalid(key, f"must be positive (got {getattr(self, key)})")
        for key in ("betag_range", "betag_range2", "betap_range", "betap_range2"):
            lo, hi = _pair(self, key)
            if not lo <= 1 <= hi:  # BasicSR draws beta below 1 half the time and above 1 the other half
                raise Invalid(key, f"must span 1 (half the draws fall below it, half above; got {getattr(self, key)})")
        for key in ("resize_range", "resize_range2"):
            lo, hi = _pair(self, key)
            if not 0 < lo <= 1 <= hi:
                raise Invalid(key, f"must be [down, up] with 0 < down <= 1 <= up (got {getattr(self, key)})")
        for key in ("noise_range", "noise_range2", "poisson_scale_range", "poisson_scale_range2"):
            if _pair(self, key)[0] < 0:
                raise Invalid(key, f"must not be negative (got {getattr(self, key)})")
        for key in ("jpeg_range", "jpeg_range2"):
            lo, hi = _pair(self, key)
            if not 1 <= lo <= hi <= 100:
                raise Invalid(key, f"is a JPEG quality range within 1..100 (got {getattr(self, key)})")


def _pair(config: RealESRGANConfig, key: str) -> tuple[float, float]:
    """The range `key` of `config` as (low, high), refused unless it is two numbers, low <= high."""
    value = getattr(config, key)
    if len(value) != 2 or value[0] > value[1]:
        raise Invalid(key, f"must be a range [low, high] with low <= high (got {value})")
    return value[0], value[1]



@dataclass
class DataConfig:
    """The recipe's `data:` section: where the training and validation images come from, how training
    crops are cut and augmented, and which loader backend serves them."""

    source: str = "samples"  # `samples`, a DIV2K root, or an image folder
    val_source: str | None = None  # default: the held-out split of `source`
    # Validate on several sets instead, each logged under its own name (val/Set5/psnr, ...), each read as
    # `fastsr eval --data` reads it: test-set names (set5, set14, b100, urban100, manga109, under
    # benchmark_root), image folders (whole), a DIV2K root (its valid split), `samples`.
    val_sets: list[str] = field(default_factory=list)
    benchmark_root: str = "data/benchmarks"  # where the test sets are (`fastsr download-benchmarks`)
    hr_crop: int = 96  # HR patch size; a multiple of the scale
    repeat: int = 1  # crops taken from each training image per epoch
    augment: bool = True  # random flips and 90-degree rotations
    channel_shuffle: bool = False  # random RGB permutation: removes the colour bias of small sets
    # How training LR is made from HR: `matlab` (the protocol's bicubic), `kornia` (a bicubic that is not
    # MATLAB's), or `realesrgan` (Real-ESRGAN's random second-order chain of blur, resize, noise and JPEG, each
    # sample its own, on the batch's device after any backend; its ranges are `data.realesrgan`)
    degradation: Literal["matlab", "kornia", "realesrgan"] = "matlab"
    realesrgan: RealESRGANConfig = field(default_factory=RealESRGANConfig)
    # `device`: the whole training set decoded in device memory, each batch cut there (from the cache,
    # or decoding the files once); `dali`: NVIDIA DALI (crops and downscale on the GPU); `torch`: the
    # portable loader; `auto`: `device` when the run has a `cache` that fits under device_budget_gb, else
    # DALI where it is installed and can run here, else torch (the run's log says which, and why)
    backend: Literal["auto", "device", "dali", "torch"] = "auto"
    cache: str | None = None  # a decode-once cache of `source`'s training images (`fastsr prepare`)
    # GB of device memory the `device` backend may fill with the decoded images (each mirror-padded by
    # the kernel's margin: DIV2K's 800 take about 6.7); null: half the GPU's free memory when the run starts,
    # 4 on the CPU
    device_budget_gb: float | None = None
    crops_per_image: int = 1  # crops cut per visit to an image (spreads a file decode over k crops)
    workers: int = 2  # torch: loader worker processes (0: in the main process); DALI: CPU threads
    cache_images: bool = True  # torch loader: keep decoded training images in memory (small data sets)
    # Seconds the loop may wait for one batch (not a step, validation or checkpoint) before the run stops
    # naming the backend and the batch's files (a hung worker, a stuck network filesystem; 0: never).
    # Below train.collective_timeout_s (300), so that a stalled process names its cause before the
    # other processes' collectives time out waiting for it.
    stall_timeout_s: float = 180.0
    val_images: int = 0  # validate on the first N held-out images (0: all)
    # Images a run cannot use (unreadable, truncated, transparent, smaller than the crop or too small to
    # score), found before the first step: `error` refuses the run naming them, `skip` leaves them out
    # and names each in the console and the log.
    bad_images: Literal["error", "skip"] = "error"

    def check(self) -> None:
        """Raise Invalid for a value out of range or a contradiction between keys (val_sets with
        val_source, a set named twice). Whether hr_crop suits the scale is checked with the whole recipe
        (fastsr.recipe)."""
        positive(self, "hr_crop", "repeat", "crops_per_image")
        non_negative(self, "workers", "val_images", "stall_timeout_s")
        if self.device_budget_gb is not None:
            positive(self, "device_budget_gb")
        if self.val_sets and self.val_source is not None:
            raise Invalid("val_sets", "and data.val_source are both set: list every validation set in data.val_sets")
        if len(set(self.val_sets)) != len(self.val_sets):
            raise Invalid("val_sets", f"names a set twice ({self.val_sets})")
        if self.degradation != "realesrgan":
            default = RealESRGANConfig()
            changed = next((f.name for f in dataclasses.fields(default)
                            if getattr(self.realesrgan, f.name) != getattr(default, f.name)), None)
            if changed:
                raise Invalid(f"realesrgan.{changed}", f"is set but data.degradation is {self.degradation}: set "
                                                       "data.degradation=realesrgan, or drop the data.realesrgan keys")


# The two phases of a run, in order, named as the reference script's knobs (epochs_pretrain, epochs_finetune),
# and the epochs each runs when a recipe gives it no length.
PHASES = ("pretrain", "finetune")
DEFAULT_EPOCHS = {"pretrain": 100, "finetune": 0}


@dataclass
class TrainConfig:
    """The recipe's `train:` section: each phase's length, the optimiser and its learning-rate schedule,
    EMA, resuming, and how often the run logs, validates and writes checkpoints."""

    # How long each phase runs, in optimiser steps: each step takes one batch per process, so the global batch
    # is train.batch_size x processes, and a recipe runs the same steps at the same learning rates on 1 or 64
    # GPUs. Or in epochs (the reference script's knobs), when a phase's steps are null: an epoch is the steps
    # ONE process takes to see the training crops once (images x data.repeat // batch_size), converted to steps
    # once when the run starts and logged; under N processes those steps see the data N times. A phase with
    # steps set takes no other epochs than the default; a phase of length 0 is skipped.
    steps_pretrain: int | None = None  # pretrain: the generator alone on loss.terms_pretrain (MSE pre-training)
    steps_finetune: int | None = None  # finetune: the GAN, G on loss.terms and D by the GAN kind
    epochs_pretrain: int | None = DEFAULT_EPOCHS["pretrain"]
    epochs_finetune: int | None = DEFAULT_EPOCHS["finetune"]
    batch_size: int = 16  # per process
    lr: float = 1e-4  # Adam, pretrain (and finetune unless lr_finetune is set)
    lr_finetune: float | None = None
    # `cosine` decays each phase's learning rate to 0 over the phase (settles the weights and the
    # BatchNorm statistics by the end of a short run); `constant` is SRGAN's schedule; `multistep`
    # multiplies it by lr_gamma at each of the phase's milestones (ESRGAN's schedule).
    lr_schedule: Literal["constant", "cosine", "multistep"] = "constant"
    lr_milestones: list[int] = field(default_factory=list)  # multistep: steps into pretrain
    lr_milestones_finetune: list[int] | None = None  # multistep: steps into finetune (null: lr_milestones)
    lr_gamma: float = 0.5  # multistep: the factor at each milestone
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # With N processes the global batch is N x batch_size; `linear` multiplies the learning rates by
    # N (Goyal et al.), `sqrt` by sqrt(N) (gentler, often better for Adam), `none` keeps them.
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    ema: float = 0.0  # decay of an exponential moving average of the generator (0: off)
    init_from: str | None = None  # generator weights (.safetensors) to start from, e.g. a pretrain run's
    resume: str = "none"  # none | auto (newest complete checkpoint of this run) | a checkpoint dir
    seed: int = 0
    log_every: int = 10  # steps between loss read-backs (each one synchronises the device)
    # Where output goes to a file rather than a terminal (a cluster job's log), a plain progress line comes with
    # the log window every log_every steps, at most this often (in a terminal a progress bar is redrawn instead).
    log_every_s: float = 30.0
    val_every: int = 500  # steps between validations (0: only at the end of each phase)
    # What validation scores, for the model and for bicubic: PSNR/SSIM (Y, the protocol's) and the
    # perceptual LPIPS (AlexNet) and DISTS, which need their backbone weights (fastsr.perceptual_metrics).
    val_metrics: list[Literal["psnr", "ssim", "lpips", "dists"]] = field(default_factory=lambda: ["psnr", "ssim"])
    # Validation runs the model on tiles of this many LR pixels (0: each image whole), as `fastsr eval --tile`;
    # lower it when validation runs out of memory. Tiles overlap by 32 LR pixels (fastsr.infer): a tile is larger.
    val_tile: int = 256
    # Local backbone files of the perceptual metrics, as `fastsr eval --metric-weights`: `lpips=PATH`, `dists=PATH`
    # (default: the torch hub cache, else a download).
    metric_weights: list[str] = field(default_factory=list)
    save_every: int = 500  # steps between checkpoints (0: only at the end of each phase)
    keep_checkpoints: int = 2
    # A NaN or infinite loss: `stop` ends the run naming the step, writing no checkpoint after it (the
    # last good one stays); `skip` drops that step's update (which costs a host sync per step) and
    # stops only after more than `max_skipped_steps` of them.
    nonfinite: Literal["stop", "skip"] = "stop"
    max_skipped_steps: int = 10
    # Experiment trackers that also get the log's scalars and pictures, through Accelerate (`tensorboard`,
    # `wandb`, `mlflow`, `aim`, ...: any it supports); local ones write under the run directory.
    log_with: list[str] = field(default_factory=list)
    # With several processes, how long one waits in a collective for the others (gradient averaging, the
    # barrier while rank 0 validates or writes a checkpoint) before it gives a lost or hung process up, names
    # it and stops (torch's default is 30 minutes); above the longest validation + checkpoint of the run.
    collective_timeout_s: float = 300.0

    def check(self) -> None:
        """Raise Invalid for a value out of range, a phase given both steps and epochs, no phase to train, or a
        log_with tracker Accelerate does not support (only then is Accelerate imported)."""
        positive(self, "batch_size", "log_every", "keep_checkpoints", "collective_timeout_s")
        non_negative(self, "log_every_s")
        if "psnr" not in self.val_metrics or len(set(self.val_metrics)) != len(self.val_metrics):
            raise Invalid("val_metrics", f"must include psnr and name each metric once (got {self.val_metrics})")
        for entry in self.metric_weights:
            name, sep, path = entry.partition("=")
            if not sep or not path or name not in ("lpips", "dists"):
                raise Invalid("metric_weights", f"entries are lpips=PATH or dists=PATH (got {entry!r})")

        non_negative(self, "val_every", "save_every", "max_skipped_steps", "val_tile")
        for phase in PHASES:
            steps, epochs = f"steps_{phase}", f"epochs_{phase}"
            for key in (steps, epochs):
                if getattr(self, key) is not None:
                    non_negative(self, key)
            if getattr(self, steps) is not None and getattr(self, epochs) not in (None, DEFAULT_EPOCHS[phase]):
                raise Invalid(steps, f"and train.{epochs} are both set: give the phase one length (set the other "
                                     "to null)")
        if 0 < self.val_tile <= 32:  # fastsr.infer.check_tiling's rule at evaluation's overlap
            raise Invalid("val_tile", f"must be 0 (whole images) or more than the tiles' 32-pixel overlap "
                                      f"(got {self.val_tile})")
        if self.lr <= 0 or (self.lr_finetune is not None and self.lr_finetune <= 0):
            raise Invalid("lr", "and train.lr_finetune must be positive")
        if not any(self.runs(phase) for phase in PHASES):
            raise Invalid("steps_pretrain", "and train.steps_finetune (or train.epochs_pretrain and "
                                            "train.epochs_finetune) are all unset or 0: nothing to train")
        if not 0 <= self.ema < 1:
            raise Invalid("ema", f"must be in [0, 1) (got {self.ema})")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise Invalid("betas", f"must be two numbers in [0, 1) (got {self.betas})")
        if not 0 < self.lr_gamma <= 1:
            raise Invalid("lr_gamma", f"must be in (0, 1] (got {self.lr_gamma})")
        for key in ("lr_milestones", "lr_milestones_finetune"):
            steps = getattr(self, key) or []
            if any(s <= 0 for s in steps) or steps != sorted(set(steps)):
                raise Invalid(key, f"must be increasing positive step counts (got {steps})")
        if self.log_with:
            # Accelerate's own list, imported only when asked for: importing Accelerate costs a second
            from accelerate.utils import LoggerType

            known = [t.value for t in LoggerType if t is not LoggerType.ALL]
            for name in self.log_with:
                if name not in known:
                    close = difflib.get_close_matches(name, known, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise Invalid("log_with", f"{name!r} is not a tracker Accelerate supports{hint}: "
                                              f"one of {', '.join(known)}")

    def length(self, phase: str) -> tuple[int, str]:
        """The length phase `phase` (one of PHASES) is given: (its `steps_`, "steps") when set, else (its
        `epochs_`, "epochs")."""
        steps = getattr(self, f"steps_{phase}")
        return (steps, "steps") if steps is not None else (getattr(self, f"epochs_{phase}") or 0, "epochs")

    def runs(self, phase: str) -> bool:
        """Whether phase `phase` has any length."""
        return self.length(phase)[0] > 0

    def phase_steps(self, phase: str, epoch_steps: int) -> int:
        """The optimiser steps of phase `phase`, a length in epochs at `epoch_steps` steps each (the steps of
        one process's epoch, whatever the number of processes)."""
        count, unit = self.length(phase)
        return count * epoch_steps if unit == "epochs" else count

    def metric_weight_files(self) -> dict[str, str]:
        """train.metric_weights as {metric: file}."""
        return dict(entry.split("=", 1) for entry in self.metric_weights)


@dataclass
class RuntimeConfig:
    """The recipe's `runtime:` section: the speed switches (torch.compile, mixed precision, channels_last),
    each `auto` by default. They change speed and numerics, not what the recipe trains."""

    # `auto` picks by device, as measured (benchmarks/RESULTS.md): on a GPU compile + bf16 +
    # channels_last; on a CPU eager fp32 + channels_last (compiling costs minutes there and bf16 is
    # slower without AMX; channels_last speeds up the GAN step through oneDNN).
    # torch.compile mode; `reduce-overhead` (and `max-autotune`) also replay each compiled forward and backward
    # as a CUDA graph (one launch for the whole graph; needs fixed shapes, README "Speed switches")
    compile: Literal["auto", "off", "default", "reduce-overhead", "max-autotune"] = "auto"
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # autocast dtype (fp16 adds a grad scaler)
    channels_last: Literal["auto", "on", "off"] = "auto"  # NHWC memory layout for the models and batches


class Invalid(ValueError):
    """Raised by a section's `check()`: `key` (a field of that section) cannot take its value, `why` says so."""

    def __init__(self, key: str, why: str):
        super().__init__(f"{key} {why}")
        self.key, self.why = key, why


# ---------------------------------------------------------------------------------------------
# Reading: bases and overrides


def read_raw(path: str | Path, overrides: list[str] = (), part_defaults: dict[str, str] | None = None) -> dict:
    """The untyped mapping of a recipe file, its `base:` chain merged in and `key=value` overrides applied;
    `part_defaults` names the part a section without `name:` means (`{"model": "srresnet"}`)."""
    defaults = part_defaults or {}
    return apply_overrides(_read_with_bases(Path(path), (), defaults), overrides, defaults)


def apply_overrides(raw: dict, overrides: list[str], part_defaults: dict[str, str] | None = None) -> dict:
    """The untyped mapping `raw` with dotted `key=value` overrides applied (values read as YAML)."""
    for item in overrides:
        key, value = _parse_override(item)
        raw = merge(raw, _nested(key, value), part_defaults)
    return raw


def _read_with_bases(path: Path, chain: tuple[Path, ...], defaults: dict[str, str]) -> dict:
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
    parent = _read_with_bases(path.parent / base, chain + (resolved,), defaults)
    return merge(parent, data, defaults)


def merge(base: dict, top: dict, part_defaults: dict[str, str] | None = None) -> dict:
    """`top` over `base`, section by section; a section naming another part (`name:`) replaces the base's.
    A part section without a name is the part `part_defaults` gives for its key, so naming that part
    merges with it."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            below_name = below.get("name", (part_defaults or {}).get(key))
            if value.get("name", below_name) == below_name:
                out[key] = merge(below, value)
                continue
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


def _nested(key: str, value: Any) -> dict:
    """`a.b.c`, v -> {"a": {"b": {"c": v}}}."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


# ---------------------------------------------------------------------------------------------
# Typed construction


def section_keys(cls, prefix: str = "") -> list[str]:
    """Every dotted key of the dataclass `cls`; a part field lists the keys of every registered part."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        registry = f.metadata.get("registry")
        if registry is not None:
            keys.append(prefix + f.name if _is_list(hints[f.name]) else f"{prefix}{f.name}.name")
            if not _is_list(hints[f.name]):
                keys += sorted({f"{prefix}{f.name}.{k}" for part_keys in registry.keys().values() for k in part_keys
                                if k != "name"})
        elif dataclasses.is_dataclass(hints[f.name]):
            keys += section_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _is_list(hint: Any) -> bool:
    return any(typing.get_origin(a) is list for a in (hint, *typing.get_args(hint)))


def _suggest(key: str, keys: list[str]) -> str:
    leaf = key.rsplit(".", 1)[-1]
    # A bare reference-script knob (`batch_size=32`) should point to its section (`train.batch_size`).
    by_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    close = by_leaf or difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def build_section(cls, raw: Any, prefix: str, source: str, *, owner: str | None = None,
                  suggest_from: list[str] | None = None):
    """An instance of the dataclass `cls` from the mapping `raw` (the section at `prefix`), every value
    checked against its type, then the whole by the section's `check()`; `owner` names the part whose
    section this is, for unknown keys."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: '{prefix.rstrip('.')}' must be a section (a mapping), got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    suggest_from = suggest_from if suggest_from is not None else section_keys(cls, prefix)
    for key in raw:
        if key not in fields:
            full = prefix + str(key)
            part = f" for {owner}" if owner else ""
            raise RecipeError(f"{source}: unknown key '{full}'{part}{_suggest(full, suggest_from)}")
    kwargs = {}
    for name, value in raw.items():
        hint, registry = hints[name], fields[name].metadata.get("registry")
        key = prefix + name
        if registry is not None:
            if isinstance(value, dict) and "name" not in value and fields[name].default_factory is not dataclasses.MISSING:
                value = {"name": fields[name].default_factory().name, **value}  # keys of the default part
            kwargs[name] = _build_parts(registry, value, hint, key, source)
        elif dataclasses.is_dataclass(hint):
            kwargs[name] = build_section(hint, value, f"{key}.", source, suggest_from=suggest_from)
        else:
            kwargs[name] = _coerce(value, hint, key, source)
    section = cls(**kwargs)
    if hasattr(section, "check"):
        try:
            section.check()
        except Invalid as bad:
            raise RecipeError(f"{source}: {prefix}{bad.key} {bad.why}") from None
    return section


def _build_parts(registry, value: Any, hint: Any, key: str, source: str):
    """A part (`model: {name: ...}`), or a list of parts (`loss.terms`), through its registry."""
    if not _is_list(hint):
        return registry.config_from(value, key, source)
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
        if type(None) in typing.get_args(hint):
            return None
    if not isinstance(value, (list, tuple)):
        raise RecipeError(f"{source}: {key} must be a list of sections with a `name:`, got {value!r}")
    return [registry.config_from(item, f"{key}[{i}]", source) for i, item in enumerate(value)]


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
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{source}: {key} must be a mapping (name: value, ...), got {value!r}")
        return {_coerce(k, args[0], f"{key} (a name)", source): _coerce(v, args[1], f"{key}.{k}", source)
                for k, v in value.items()}
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


def positive(config, *names: str) -> None:
    """`Invalid` for the first of `names` (fields of `config`) that is not > 0."""
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise Invalid(name, f"must be positive (got {value})")


def non_negative(config, *names: str) -> None:
    """`Invalid` for the first of `names` (fields of `config`) that is < 0 (or NaN)."""
    for name in names:
        value = getattr(config, name)
        if not value >= 0:
            raise Invalid(name, f"must not be negative (got {value})")
