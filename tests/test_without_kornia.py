"""Kornia is optional (the lent GPU machines lack it): fastsr imports and trains without it, the `tv` term
computing Kornia's sums itself, and only `data.degradation=kornia` needs it, saying so in one line."""

import subprocess
import sys

import pytest
import yaml
from conftest import PROCESS_ENV, ROOT, hide_module, tiny_recipe_dict

from fastsr.cli import main
from fastsr.engine.runlog import read_log

# benchmarks/hide/sitecustomize.py: on the path of a fresh interpreter, it refuses to import what FASTSR_HIDE names
WITHOUT_KORNIA = {**PROCESS_ENV, "FASTSR_HIDE": "kornia", "PYTHONPATH": str(ROOT / "benchmarks" / "hide")}

TRAIN = """
import sys

import fastsr.cli, fastsr.data, fastsr.engine.trainer, fastsr.losses
from fastsr.engine.trainer import train
from fastsr.recipe import load_recipe

train(load_recipe(sys.argv[1]))
print("kornia imported:", any(m == "kornia" or m.startswith("kornia.") for m in sys.modules))
"""


def _recipe(photo_folder, tmp_path, **sections):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(photo_folder, tmp_path / "runs", **sections)))
    return path


@pytest.mark.slow  # a training run in a fresh interpreter: ~10 s
def test_imports_and_trains_both_phases_without_kornia(photo_folder, tmp_path):
    recipe = _recipe(photo_folder, tmp_path, train={"epochs_pretrain": 1, "epochs_finetune": 1, "log_every": 1})
    done = subprocess.run([sys.executable, "-c", TRAIN, str(recipe)], env=WITHOUT_KORNIA, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kornia imported: False" in done.stdout
    finetune = [r for r in read_log(tmp_path / "runs" / "tiny" / "log.jsonl")
                if r["kind"] == "train" and r["phase"] == "finetune"]
    assert finetune and all(r["loss_tv"] > 0 for r in finetune)  # the `tv` term, by fastsr's own sums


def test_kornia_degradation_without_kornia_is_one_line_naming_the_key(photo_folder, tmp_path, capsys, monkeypatch):
    hide_module(monkeypatch, "kornia")
    assert main(["train", str(_recipe(photo_folder, tmp_path)), "data.degradation=kornia"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsr: error: ") and "\n" not in err and "Traceback" not in err
    assert "data.degradation=kornia needs Kornia" in err
    assert "pip install kornia" in err and "data.degradation=matlab" in err
