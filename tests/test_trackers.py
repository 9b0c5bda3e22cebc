"""`train.log_with`: the trackers get what log.jsonl holds (read back from TensorBoard's event files), and
asking for a tracker that is unknown or not installed is a one-line error before the run directory exists."""

import json
import re
import shutil
from pathlib import Path

import accelerate.utils
import numpy as np
import pytest
import yaml
from accelerate.utils import LoggerType
from conftest import tiny_recipe_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fastsr.cli import main
from fastsr.engine import trackers
from fastsr.engine.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def events(run_dir: Path, name: str = "tiny") -> EventAccumulator:
    # Accelerate's TensorBoard tracker writes to project_dir/project_name: run_dir/<recipe name>
    found = EventAccumulator(str(run_dir / name), size_guidance={"scalars": 0, "images": 0})  # 0: keep all
    found.Reload()
    return found


def as_logged(value: float) -> float:
    return float(np.float32(value))  # TensorBoard keeps scalars as float32


def test_tensorboard_holds_the_logs_scalars_and_pictures(tiny_recipe, photo_folder, tmp_path):
    bench = tmp_path / "benchmarks"
    (bench / "Set5" / "HR").mkdir(parents=True)
    (bench / "Set5" / "HR" / "b0.png").write_bytes((photo_folder / "train" / "t0.png").read_bytes())
    recipe = tiny_recipe(train={"log_with": ["tensorboard"], "val_every": 2},
                         data={"val_sets": ["set5", str(photo_folder / "val")], "benchmark_root": str(bench)})
    run = train(recipe)
    tb = events(run)
    val = records(run, "val")
    assert [(r["step"], r["set"]) for r in val] == [(s, name) for s in (2, 3, 4, 6) for name in ("Set5", "val")]
    for name in ("Set5", "val"):  # each set under its own name
        for key in ("psnr", "ssim", "bicubic_psnr"):
            assert [(e.step, e.value) for e in tb.Scalars(f"val/{name}/{key}")] == [
                (r["step"], as_logged(r[key])) for r in val if r["set"] == name]
    train_records = records(run, "train")
    loss_keys = {k for r in train_records for k in r if k.startswith("loss_")}
    assert {"loss_pixel", "loss_adv", "loss_vgg", "loss_d"} <= loss_keys
    for key in loss_keys | {"lr", "images_per_sec"}:
        assert [(e.step, e.value) for e in tb.Scalars(f"train/{key}")] == [
            (r["step"], as_logged(r[key])) for r in train_records if key in r]
    # The side-by-side pictures of every validation, as the log names them and as the PNGs hold them.
    pictures = [p for p in records(run, "pictures") if p["set"] == "val"]
    assert [(p["step"], p["files"]) for p in pictures] == [
        (s, [f"samples/step_{s:08d}/val/v0.png", f"samples/step_{s:08d}/val/v1.png"]) for s in (2, 3, 4, 6)]
    assert sorted(tb.Tags()["images"]) == ["pictures/Set5/b0", "pictures/val/v0", "pictures/val/v1"]
    shown = tb.Images("pictures/val/v1")
    assert [e.step for e in shown] == [2, 3, 4, 6]
    png = Image.open(run / "samples/step_00000006/val/v1.png")
    assert (shown[-1].width, shown[-1].height) == png.size
    # The resolved recipe is the trackers' config, flattened to scalars.
    (hparams,) = (run / "tiny").glob("*/hparams.yml")
    config = yaml.safe_load(hparams.read_text())
    assert config["train.batch_size"] == 4 and config["train.betas.1"] == 0.999 and config["model.name"] == "srresnet"


def test_a_resumed_run_appends_to_the_same_events_without_repeating_steps(tiny_recipe):
    recipe = tiny_recipe(train={"log_with": ["tensorboard"], "epochs_pretrain": 2, "epochs_finetune": 0,
                                "save_every": 1, "keep_checkpoints": 10})
    run = train(recipe)
    for later in sorted((run / "checkpoints").iterdir())[2:]:  # as if stopped after the checkpoint of step 2
        shutil.rmtree(later)
    train(tiny_recipe(train={"log_with": ["tensorboard"], "epochs_pretrain": 2, "epochs_finetune": 0,
                             "save_every": 1, "keep_checkpoints": 10, "resume": "auto"}))
    assert len(list((run / "tiny").glob("events.out.tfevents.*"))) == 2
    resumed = [r for r in records(run, "train") if r["step"] > 2][-4:]  # the resumed run's steps 3 to 6
    # Steps 3 to 6 of the first run are hidden in favour of the resumed run's (the same losses: exact resume).
    logged = [(e.step, e.value) for e in events(run).Scalars("train/loss_pixel")]
    assert [step for step, _ in logged] == [1, 2, 3, 4, 5, 6]
    assert logged[2:] == [(r["step"], as_logged(r["loss_pixel"])) for r in resumed]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsr: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture
def tiny_recipe_file(photo_folder, tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(photo_folder, tmp_path / "runs")))
    return path


def test_a_tracker_that_is_not_installed_stops_before_the_run_directory(tiny_recipe_file, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    assert main(["train", str(tiny_recipe_file), "train.log_with=[tensorboard]"]) == 2
    err = one_line_error(capsys)
    assert "train.log_with" in err and 'pip install "fastsr[tensorboard]"' in err
    assert not (tmp_path / "runs").exists()


def test_an_unknown_tracker_is_one_line_naming_the_key(tiny_recipe_file, tmp_path, capsys):
    assert main(["train", str(tiny_recipe_file), "train.log_with=[tensorbord]"]) == 2
    err = one_line_error(capsys)
    assert "train.log_with 'tensorbord' is not a tracker" in err and "did you mean 'tensorboard'" in err
    assert main(["train", str(tiny_recipe_file), "train.log_with=[all]"]) == 2  # not one tracker: whatever is here
    assert "train.log_with 'all'" in one_line_error(capsys)
    assert not (tmp_path / "runs").exists()


def test_every_tracker_accelerate_supports_can_be_checked_and_the_extras_exist():
    assert all(hasattr(accelerate.utils, f"is_{t.value}_available") for t in LoggerType if t is not LoggerType.ALL)
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+)
    for extra in trackers.EXTRAS:
        assert re.search(rf'^{extra} = \["{extra}', pyproject, re.MULTILINE), extra
    assert re.search(r'^dev = \[.*"tensorboard', pyproject, re.MULTILINE)  # so CI runs the tests above
