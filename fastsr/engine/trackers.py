"""Experiment trackers (`train.log_with`) through Accelerate: checked before the run, started once the run
directory exists, fed from the run's log records (`RunLog.write` hands each one to `forward`), ended with
the run. The JSONL log stays the source of truth; the trackers get its numbers and pictures.
"""

from __future__ import annotations

from pathlib import Path

import accelerate.utils
import numpy as np
from accelerate import Accelerator
from PIL import Image

from fastsr.errors import RecipeError
from fastsr.recipe import Recipe, to_dict

EXTRAS = ("tensorboard", "wandb", "mlflow", "aim")  # the trackers with an extra in pyproject.toml
NOT_SCALARS = ("step", "time")  # a record's position, not a measurement

# How each tracker that can show pictures takes one image (an HxWx3 uint8 array) in its `log_images`,
# and the keyword arguments it needs; the others get the scalars only.
IMAGE_FORMS = {
    "tensorboard": (lambda image: image[None], {"dataformats": "NHWC"}),  # SummaryWriter.add_images: a batch
    "wandb": (lambda image: [image], {}),  # a list, each made a wandb.Image
}


def check_installed(names: list[str]) -> None:
    """A one-line error for the first tracker whose package is missing, before anything is touched."""
    for name in names:
        if not getattr(accelerate.utils, f"is_{name}_available")():
            install = f'pip install "fastsr[{name}]"' if name in EXTRAS else f"pip install {name}"
            raise RecipeError(f"train.log_with: the {name} tracker is not installed; {install} "
                              "(or drop it from train.log_with)")


def start(accelerator: Accelerator, recipe: Recipe, resumed_at: int | None) -> None:
    """Start the trackers under the run directory (`project_dir`; wandb's local files too), the resolved
    recipe as their config. A resumed run appends to the same TensorBoard directory and hides what the
    stopped run logged after its checkpoint (`purge_step`), since the resumed run logs those steps again."""
    kwargs = {"wandb": {"dir": str(recipe.run_dir)}}
    if resumed_at is not None:
        kwargs["tensorboard"] = {"purge_step": resumed_at + 1}
    accelerator.init_trackers(recipe.name, config=flat(to_dict(recipe)), init_kwargs=kwargs)


def flat(value, prefix: str = "") -> dict:
    """{"train": {"betas": [0.9, 0.999]}} -> {"train.betas.0": 0.9, "train.betas.1": 0.999}: trackers'
    configs (TensorBoard's hparams) take scalars only; an empty list leaves no key."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return {prefix: value}
    out = {}
    for key, inner in items:
        out |= flat(inner, f"{prefix}.{key}" if prefix else str(key))
    return out


def forward(accelerator: Accelerator, run_dir: Path, record: dict) -> None:
    """A log record to the trackers: `train` -> scalars `train/<key>`, `val` -> `val/<set>/<key>`,
    `pictures` -> images `pictures/<set>/<file stem>` (files relative to the run directory)."""
    kind, step = record.get("kind"), record.get("step")
    if kind == "train":
        accelerator.log({f"train/{k}": v for k, v in numbers(record).items()}, step=step)
    elif kind == "val":
        where = record["set"]
        accelerator.log({f"val/{where}/{k}": v for k, v in numbers(record).items()}, step=step)
    elif kind == "pictures":
        takers = [t for t in accelerator.trackers if t.name in IMAGE_FORMS]
        where = record["set"]
        for file in record["files"] if takers else ():
            tag, image = f"pictures/{where}/{Path(file).stem}", np.asarray(Image.open(run_dir / file).convert("RGB"))
            for tracker in takers:
                form, kwargs = IMAGE_FORMS[tracker.name]
                tracker.log_images({tag: form(image)}, step=step, **kwargs)


def numbers(record: dict) -> dict:
    """The record's numeric fields that are scalars to plot (no booleans, nor the step and time)."""
    return {k: v for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_SCALARS}
