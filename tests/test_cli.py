import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import tiny_recipe_dict
from fastsr.cli import main
from fastsr.data import image_to_tensor, load_image
from fastsr.engine.checkpoint import save_weights
from fastsr.metrics import psnr, ssim
from fastsr.models import SRCNN, SRResNet
from fastsr.ops import imresize, quantize

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsr: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_recipe_key_is_one_line(capsys):
    assert main(["train", str(ROOT / "recipes/srgan_x4.yaml"), "train.batchsize=3"]) == 2
    assert "did you mean 'train.batch_size'" in one_line_error(capsys)


def test_missing_data_and_weights_are_one_line(capsys, tmp_path):
    assert main(["eval", "--model", "bicubic", "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: data source path not found" in one_line_error(capsys)
    assert main(["eval", "--model", str(tmp_path / "g.safetensors"), "--data", "samples"]) == 2
    assert "g.safetensors: weights file not found" in one_line_error(capsys)


def test_eval_scores_all_methods_on_the_same_pairs(photo_folder, tmp_path, capsys):
    torch.manual_seed(0)
    srcnn = SRCNN(scale=4, kernels=(9, 1, 5))
    weights = tmp_path / "srcnn.safetensors"
    save_weights(srcnn, weights, srcnn.config)
    out = tmp_path / "results.json"
    data = photo_folder / "val"
    assert main(["eval", "--model", "bicubic", "--model", f"Mine={weights}", "--model", str(weights),
                 "--data", str(data), "--scale", "4", "--json", str(out), "--pictures", str(tmp_path / "pics")]) == 0
    table = capsys.readouterr().out
    assert "Bicubic" in table and "Mine" in table and "SRCNN" in table and "Y channel" in table
    results = json.loads(out.read_text())
    assert results["images"] == ["v0", "v1"] and results["channel"] == "Y" and results["crop_border"] == 4
    # Recompute bicubic by hand: HR cropped to a multiple of 4, LR = MATLAB bicubic rounded to uint8.
    expected_psnr, expected_ssim = [], []
    for name in ("v0", "v1"):
        hr = image_to_tensor(load_image(data / f"{name}.png")).double()
        hr = hr[..., : hr.shape[-2] // 4 * 4, : hr.shape[-1] // 4 * 4]
        sr = quantize(imresize(quantize(imresize(hr, scale=1 / 4)), scale=4))
        expected_psnr.append(psnr(sr, hr, crop_border=4).item())
        expected_ssim.append(ssim(sr, hr, crop_border=4).item())
    bicubic = results["methods"]["Bicubic"]
    np.testing.assert_allclose(bicubic["psnr_per_image"], expected_psnr, atol=1e-4)
    np.testing.assert_allclose(bicubic["ssim_per_image"], expected_ssim, atol=1e-5)
    assert bicubic["psnr"] == pytest.approx(np.mean(expected_psnr), abs=1e-4)
    assert results["methods"]["Mine"] == results["methods"]["SRCNN"]
    picture = Image.open(tmp_path / "pics" / "v1.png")
    hr_w, hr_h = 80, 68  # v1 is 81x70: cropped to multiples of 4
    assert picture.size == (hr_w * 5, hr_h + 22)  # LR, Bicubic, Mine, SRCNN, HR


def test_eval_refuses_a_model_of_another_scale(tmp_path, capsys):
    model = SRResNet(scale=2, res_blocks=1, channels=8)
    save_weights(model, tmp_path / "x2.safetensors", model.config)
    assert main(["eval", "--model", str(tmp_path / "x2.safetensors"), "--scale", "4"]) == 2
    assert "model is x2, but --scale is 4" in one_line_error(capsys)


def test_upscale_tiled_equals_untiled(tmp_path):
    torch.manual_seed(0)
    model = SRResNet(scale=4, res_blocks=2, channels=8).eval()
    weights = tmp_path / "g.safetensors"
    save_weights(model, weights, model.config)
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (10, 13, 3)), np.ones((7, 7, 1)))[:67, :85].astype(np.uint8)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(smooth).save(folder / "a.png")
    Image.fromarray(np.ascontiguousarray(smooth[:33, :41])).save(folder / "b.jpg")
    assert main(["upscale", str(folder), "--weights", str(weights), "-o", str(tmp_path / "tiled"),
                 "--tile", "24", "--overlap", "16"]) == 0
    assert main(["upscale", str(folder / "a.png"), "--weights", str(weights), "-o", str(tmp_path / "whole.png"),
                 "--tile", "0"]) == 0
    tiled = load_image(tmp_path / "tiled" / "a.png").astype(int)
    whole = load_image(tmp_path / "whole.png").astype(int)
    assert tiled.shape == (67 * 4, 85 * 4, 3)
    assert np.abs(tiled - whole).max() <= 1
    assert load_image(tmp_path / "tiled" / "b.png").shape == (33 * 4, 41 * 4, 3)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["python", "accelerate"])
def test_train_script_runs_under_python_and_accelerate(launcher, photo_folder, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(photo_folder, tmp_path / "runs")))
    script = str(ROOT / "fastsr" / "train.py")
    prefix = [sys.executable] if launcher == "python" else ["accelerate", "launch", "--num_processes", "1", "--cpu"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([*prefix, script, str(recipe), "train.epochs_finetune=0", f"name={launcher}"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / launcher / "generator.safetensors").is_file()
    bad = subprocess.run([*prefix, script, str(recipe), "train.epochs=3"], capture_output=True, text=True,
                         env=env, timeout=600)
    assert bad.returncode != 0 and "unknown key 'train.epochs'" in bad.stderr
