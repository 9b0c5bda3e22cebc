"""Run by the distributed tests under `accelerate launch`: train RECIPE (with overrides), then every
rank writes the generator weights it ended with to OUT/rank{R}.safetensors, so a test can check that
the ranks agree. NAN_AT="RANK:CALL" makes that rank's pixel loss NaN on that call (1-based)."""

import os
import sys
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file

import fastsr.engine.steps as steps
from fastsr.engine.trainer import train
from fastsr.models import GENERATORS
from fastsr.recipe import load_recipe

if __name__ == "__main__":
    recipe_path, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    built = []
    real_create = GENERATORS.create
    GENERATORS.create = lambda *args, **kw: built.append(real_create(*args, **kw)) or built[-1]
    if "NAN_AT" in os.environ:
        rank, call = map(int, os.environ["NAN_AT"].split(":"))
        real_loss, calls = steps.pixel_loss, []

        def pixel_loss(*args, **kwargs):
            calls.append(1)
            loss = real_loss(*args, **kwargs)
            return loss * float("nan") if (PartialState().process_index, len(calls)) == (rank, call) else loss

        steps.pixel_loss = pixel_loss
    train(load_recipe(recipe_path, overrides))
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous() for k, v in built[0].state_dict().items()}
    save_file(weights, out / f"rank{PartialState().process_index}.safetensors")
