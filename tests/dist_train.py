"""Run by the distributed tests under `accelerate launch`: `fastsr train RECIPE [overrides]`, then every rank
writes the generator weights it ended with to OUT/rank{R}.safetensors, so a test can check that the ranks
agree. NAN_AT="RANK:CALL" makes that rank's pixel loss NaN on that call (1-based); STEP_SLEEP_S=S makes
every training step take S seconds longer (so that a test's signal lands mid-run), VAL_SLEEP_S=S every
validation."""

import os
import sys
import time
from pathlib import Path

from accelerate import PartialState
from safetensors.torch import save_file

import fastsr.engine.steps as steps
import fastsr.engine.validation as validation
import fastsr.losses.pixel as pixel
from fastsr.cli import main
from fastsr.models import GENERATORS

if __name__ == "__main__":
    recipe_path, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    built = []
    real_create = GENERATORS.create
    GENERATORS.create = lambda *args, **kw: built.append(real_create(*args, **kw)) or built[-1]
    if "NAN_AT" in os.environ:
        rank, call = map(int, os.environ["NAN_AT"].split(":"))
        real_loss, calls = pixel.pixel_loss, []

        def pixel_loss(*args, **kwargs):
            calls.append(1)
            loss = real_loss(*args, **kwargs)
            return loss * float("nan") if (PartialState().process_index, len(calls)) == (rank, call) else loss

        pixel.pixel_loss = pixel_loss
    if "STEP_SLEEP_S" in os.environ:
        pause = float(os.environ["STEP_SLEEP_S"])
        for name in ("pretrain_step", "finetune_step"):
            real_step = getattr(steps, name)
            setattr(steps, name, lambda *a, _real=real_step, **k: (time.sleep(pause), _real(*a, **k))[1])
    if "VAL_SLEEP_S" in os.environ:
        real_validate, wait = validation.validate, float(os.environ["VAL_SLEEP_S"])
        validation.validate = lambda *a, **k: (time.sleep(wait), real_validate(*a, **k))[1]
    code = main(["train", recipe_path, *overrides])
    if code == 0:
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous() for k, v in built[0].state_dict().items()}
        save_file(weights, out / f"rank{PartialState().process_index}.safetensors")
    sys.exit(code)
