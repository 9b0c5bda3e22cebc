import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_recipe_dict
from PIL import Image

from fastsr.cli import main
from fastsr.data import image_to_tensor, load_image
from fastsr.data.images import load_image_with_alpha
from fastsr.metrics import psnr, ssim
from fastsr.models import build_generator
from fastsr.ops import imresize, quantize
from fastsr.weights import save_weights

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
    srcnn = build_generator("srcnn", scale=4, kernels=(9, 1, 5))
    weights = tmp_path / "srcnn.safetensors"
    save_weights(srcnn, weights, srcnn.config)
    out = tmp_path / "results.json"
    data = photo_folder / "val"
    assert main(["eval", "--model", "bicubic", "--model", f"Mine={weights}", "--model", str(weights),
                 "--data", str(data), "--scale", "4", "--json", str(out), "--pictures", str(tmp_path / "pics")]) == 0
    table = capsys.readouterr().out
    assert "Bicubic" in table and "Mine" in table and "SRCNN" in table and "unrounded, as BasicSR" in table
    results = json.loads(out.read_text())
    assert results["channel"] == "Y" and results["y"] == "basicsr" and results["crop_border"] == 4 and results["metrics"] == ["psnr", "ssim"]
    assert list(results["sets"]) == ["val"] and results["sets"]["val"]["images"] == ["v0", "v1"]
    methods = results["sets"]["val"]["methods"]
    # Recompute bicubic by hand: HR cropped to a multiple of 4, LR = MATLAB bicubic rounded to uint8.
    expected_psnr, expected_ssim = [], []
    for name in ("v0", "v1"):
        hr = image_to_tensor(load_image(data / f"{name}.png")).double()
        hr = hr[..., : hr.shape[-2] // 4 * 4, : hr.shape[-1] // 4 * 4]
        sr = quantize(imresize(quantize(imresize(hr, scale=1 / 4)), scale=4))
        expected_psnr.append(psnr(sr, hr, crop_border=4).item())
        expected_ssim.append(ssim(sr, hr, crop_border=4).item())
    bicubic = methods["Bicubic"]
    np.testing.assert_allclose(bicubic["per_image"]["psnr"], expected_psnr, atol=1e-4)
    np.testing.assert_allclose(bicubic["per_image"]["ssim"], expected_ssim, atol=1e-5)
    assert bicubic["psnr"] == pytest.approx(np.mean(expected_psnr), abs=1e-4)
    assert methods["Mine"] == methods["SRCNN"]
    picture = Image.open(tmp_path / "pics" / "val" / "v1.png")
    hr_w, hr_h = 80, 68  # v1 is 81x70: cropped to multiples of 4
    assert picture.size == (hr_w * 5, hr_h + 22)  # LR, Bicubic, Mine, SRCNN, HR


def test_eval_with_matlab_y_rounds_y_and_scores_a_gray_file_on_its_levels(photo_folder, tmp_path, capsys):
    """`--y matlab`: the published tables' convention, stated in the caption and the JSON; a 1-channel file is
    scored on its own levels, an RGB file on rounded Y (each recomputed here from the files)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    rgb = load_image(photo_folder / "val" / "v0.png")
    Image.fromarray(rgb).save(folder / "colour.png")
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    tables = {}
    for y in ("matlab", "basicsr"):
        out = tmp_path / f"{y}.json"
        assert main(["eval", "--model", "bicubic", "--data", str(folder), "--json", str(out), "--y", y]) == 0
        tables[y] = json.loads(out.read_text())
        caption = " ".join(capsys.readouterr().out.split())
        assert ("MATLAB rgb2ycbcr on uint8 (rounded" in caption) == (y == "matlab")
    assert tables["matlab"]["y"] == "matlab"
    values = tables["matlab"]["sets"]["mixed"]["methods"]["Bicubic"]["per_image"]["psnr"]
    for name, value in zip(tables["matlab"]["sets"]["mixed"]["images"], values):
        hr = image_to_tensor(load_image(folder / f"{name}.png")).double()
        hr = hr[..., : hr.shape[-2] // 4 * 4, : hr.shape[-1] // 4 * 4]
        sr = quantize(imresize(quantize(imresize(hr, scale=1 / 4)), scale=4))
        assert value == pytest.approx(psnr(sr, hr, 4, y="matlab", gray=name == "gray").item(), abs=1e-10)
    gray = tables["matlab"]["sets"]["mixed"]["images"].index("gray")
    other = tables["basicsr"]["sets"]["mixed"]["methods"]["Bicubic"]["per_image"]["psnr"][gray]
    assert values[gray] < other - 1  # raw gray levels, not the studio range's 219/255 of them


def test_eval_refuses_a_model_of_another_scale(tmp_path, capsys):
    model = build_generator("srresnet", scale=2, res_blocks=1, channels=8)
    save_weights(model, tmp_path / "x2.safetensors", model.config)
    assert main(["eval", "--model", str(tmp_path / "x2.safetensors"), "--scale", "4"]) == 2
    assert "model is x2, but --scale is 4" in one_line_error(capsys)


def test_upscale_tiled_equals_untiled(tmp_path):
    torch.manual_seed(0)
    model = build_generator("srresnet", scale=4, res_blocks=2, channels=8).eval()
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


@pytest.fixture
def bicubic_weights(tmp_path) -> Path:
    model = build_generator("bicubic", scale=4)
    save_weights(model, tmp_path / "bicubic.safetensors", model.config)
    return tmp_path / "bicubic.safetensors"


def _as_uint8(x: torch.Tensor) -> np.ndarray:
    return quantize(x)[0].mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _transparent(mode: str) -> Image.Image:
    rng = np.random.default_rng(5)
    alpha = np.zeros((9, 13), np.uint8)
    alpha[:, 6:] = 255  # a hard edge, where bicubic overshoots and the clamp matters
    alpha[4] = 100
    rgba = Image.fromarray(np.dstack([rng.integers(0, 256, (9, 13, 3), dtype=np.uint8), alpha]), "RGBA")
    if mode == "P":
        img = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
        img.info["transparency"] = 2
        return img
    return rgba.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_upscale_keeps_transparency(mode, bicubic_weights, tmp_path):
    src = tmp_path / "in.png"
    _transparent(mode).save(src)
    pixels = load_image_with_alpha(src)
    assert pixels.shape[2] == 4
    assert main(["upscale", str(src), "--weights", str(bicubic_weights), "-o", str(tmp_path / "out.png"),
                 "--tile", "8", "--overlap", "6"]) == 0
    with Image.open(tmp_path / "out.png") as im:
        assert im.mode == ("LA" if mode == "LA" else "RGBA")  # grayscale in, grayscale out
        out = np.asarray(im)
    # the bicubic model on the colour and bicubic on the alpha: imresize of all four channels, rounded (on a gray
    # image stacked to RGB its three channels are equal, so their luma is each of them)
    expected = _as_uint8(imresize(image_to_tensor(pixels), scale=4))
    np.testing.assert_array_equal(out, expected[:, :, [0, 3]] if mode == "LA" else expected)


def test_upscale_opaque_alpha_writes_rgb_and_jpeg_refuses_transparency(bicubic_weights, tmp_path, capsys):
    opaque = _transparent("RGBA")
    opaque.putalpha(255)
    opaque.save(tmp_path / "opaque.png")
    assert main(["upscale", str(tmp_path / "opaque.png"), "--weights", str(bicubic_weights),
                 "-o", str(tmp_path / "opaque.jpg")]) == 0
    with Image.open(tmp_path / "opaque.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (52, 36)
    capsys.readouterr()
    _transparent("RGBA").save(tmp_path / "t.png")
    assert main(["upscale", str(tmp_path / "t.png"), "--weights", str(bicubic_weights),
                 "-o", str(tmp_path / "t.jpg")]) == 2
    err = one_line_error(capsys)
    assert f"{tmp_path / 't.png'} -> {tmp_path / 't.jpg'}" in err and "transparency" in err and ".png" in err
    assert not (tmp_path / "t.jpg").exists()


@pytest.mark.parametrize("suffix, fmt", [(".jpeg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP"), (".tiff", "TIFF")])
def test_upscale_writes_the_format_of_the_suffix(suffix, fmt, bicubic_weights, tmp_path):
    Image.fromarray(np.full((5, 3, 3), 90, np.uint8)).save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), "--weights", str(bicubic_weights),
                 "-o", str(tmp_path / f"out{suffix}")]) == 0
    with Image.open(tmp_path / f"out{suffix}") as im:
        assert im.format == fmt and im.size == (12, 20)


def test_upscale_unknown_suffix_fails_before_any_work(tmp_path, capsys):
    # neither the input nor the weights exist: the suffix is checked first
    assert main(["upscale", str(tmp_path / "in.png"), "--weights", str(tmp_path / "g.safetensors"),
                 "-o", str(tmp_path / "out.gif")]) == 2
    assert "out.gif: unknown image suffix .gif" in one_line_error(capsys)


def test_upscale_bad_tiling_is_one_line(bicubic_weights, tmp_path, capsys):
    assert main(["upscale", str(tmp_path), "--weights", str(bicubic_weights), "-o", str(tmp_path / "out"),
                 "--tile", "16", "--overlap", "16"]) == 2
    assert "overlap < tile" in one_line_error(capsys)


def test_upscale_folder_writes_the_good_images_and_names_the_bad(bicubic_weights, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(folder / "a.png")  # 1x1 works too
    (folder / "b.png").write_text("not an image")
    Image.fromarray(np.full((40, 40, 3), 7, np.uint8)).save(folder / "c.png")
    (folder / "c.png").write_bytes((folder / "c.png").read_bytes()[:60])  # truncated
    _transparent("RGBA").save(folder / "d.png")
    assert main(["upscale", str(folder), "--weights", str(bicubic_weights), "-o", str(tmp_path / "out")]) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "d.png"]
    assert load_image(tmp_path / "out" / "a.png").shape == (4, 4, 3)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "Traceback" not in "".join(err)
    assert str(folder / "b.png") in err[0] and str(folder / "c.png") in err[1]
    assert "2 of 4 images could not be upscaled" in err[2]
    # a single unreadable file: one line, exit 2
    assert main(["upscale", str(folder / "b.png"), "--weights", str(bicubic_weights),
                 "-o", str(tmp_path / "b_x4.png")]) == 2
    assert str(folder / "b.png") in one_line_error(capsys)
    # two images that would both be written to a.png: refused before any work
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(folder / "a.jpg")
    assert main(["upscale", str(folder), "--weights", str(bicubic_weights), "-o", str(tmp_path / "out2")]) == 2
    assert "several images are named a.*" in one_line_error(capsys) and not (tmp_path / "out2").exists()


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


def test_train_refuses_an_out_dir_that_is_a_file_and_leaves_it_alone(photo_folder, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(photo_folder, tmp_path / "runs")))
    taken = tmp_path / "notes.txt"
    taken.write_bytes(b"not a folder\n")
    assert main(["train", str(recipe), f"out_dir={taken}"]) == 2
    err = one_line_error(capsys)
    assert f"{taken}: is a file" in err and "choose another out_dir" in err
    assert taken.read_bytes() == b"not a folder\n"
    assert main(["train", str(recipe), f"out_dir={taken / 'runs'}"]) == 2  # a folder above out_dir a file
    assert f"{taken}: is a file, so out_dir {taken / 'runs'} cannot be made inside it" in one_line_error(capsys)
    # the run directory (out_dir/name) a file: refused before the run is set up, and no lock left beside it
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").write_bytes(b"not a folder\n")
    assert main(["train", str(recipe)]) == 2
    err = one_line_error(capsys)
    assert f"{tmp_path / 'runs' / 'tiny'}: is a file" in err and "choose another out_dir or name" in err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["tiny"]
    assert (tmp_path / "runs" / "tiny").read_bytes() == b"not a folder\n"


def test_an_override_error_names_the_command_line_and_a_file_error_the_file(tmp_path, capsys):
    assert main(["train", "quickstart_srcnn", "train.batchsize=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fastsr: error: command line: unknown key 'train.batchsize' (did you mean 'train.batch_size'?)"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {batchsize: 8}\n")
    assert main(["train", str(bad), "train.lr=1e-3"]) == 2
    assert capsys.readouterr().err.strip().startswith(f"fastsr: error: {bad}: unknown key 'train.batchsize'")


def test_train_without_a_recipe_asks_for_the_recipe_only(capsys):
    with pytest.raises(SystemExit):
        main(["train"])
    err = capsys.readouterr().err
    assert "required: recipe" in err and "key=value" not in err.splitlines()[-1]


@pytest.mark.parametrize("command", ["eval", "upscale", "export", "quickstart", "download-div2k",
                                     "download-benchmarks", "prepare", "train"])
def test_every_option_and_argument_has_help(command):
    """Each argument of each command says what it is; a default worth knowing is shown."""
    from fastsr.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        assert action.help, f"fastsr {command}: {action.option_strings or action.dest} has no help"
        if action.default not in (None, False, [], "==SUPPRESS==") and action.option_strings:
            assert "default" in action.help, f"fastsr {command} {action.option_strings[0]}: default not shown"


def test_top_level_help_keeps_command_names_whole(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert "download-\n" not in description and "Train" in description
