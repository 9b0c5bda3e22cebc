"""Tiled upscaling equals the untiled pass; the uint8 path (`upscale_image`, what `fastsr upscale` runs)
equals the float path rounded, keeps alpha, handles any size >= 1x1 and keeps its memory bounded."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastsr.cli import main
from fastsr.data import image_to_tensor
from fastsr.errors import RecipeError
from fastsr.infer import DEFAULT_OVERLAP, _tiles, check_tiling, upscale, upscale_image
from fastsr.models import build_generator
from fastsr.ops import imresize
from fastsr.weights import save_weights


def _perturb_batchnorm(model, gen):
    """Give every BatchNorm non-trivial running stats and affine parameters, as training would."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)


def _models():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    trained_like = build_generator("srresnet", scale=4, res_blocks=4, channels=32)
    _perturb_batchnorm(trained_like, gen)
    srcnn = build_generator("srcnn", scale=4, channels=(32, 16))
    nn.init.normal_(srcnn.body[-1].weight, std=0.05)  # make the conv path matter, not just bicubic
    return {
        "srresnet2": build_generator("srresnet", scale=4, res_blocks=2, channels=32),
        "srresnet4_bn": trained_like,
        "srcnn": srcnn,
        "bicubic": build_generator("bicubic", scale=4),
    }


MODELS = _models()


@pytest.fixture(scope="module")
def lr():
    torch.manual_seed(2)
    # A smooth image plus texture: closer to a photo than pure noise, still exercises every pixel.
    base = nn.functional.interpolate(torch.rand(1, 3, 10, 13), size=(75, 101), mode="bilinear")
    return (0.8 * base + 0.2 * torch.rand(1, 3, 75, 101)).clamp(0, 1)


@pytest.mark.parametrize("name", list(MODELS))
def test_tiled_matches_untiled(name, lr):
    model = MODELS[name].eval()
    with torch.no_grad():
        whole = model(lr)
    tiled = upscale(model, lr, scale=4, tile=32, overlap=16)
    assert tiled.shape == (1, 3, 300, 404)
    assert (tiled - whole).abs().max() <= 1 / 255


def test_default_overlap_is_near_exact_for_srresnet(lr):
    model = MODELS["srresnet4_bn"].eval()
    with torch.no_grad():
        whole = model(lr)
    assert (upscale(model, lr, scale=4, tile=64, overlap=32) - whole).abs().max() < 1e-4


@pytest.mark.parametrize("name", list(MODELS))
def test_one_pass_when_tile_covers_image(name, lr):
    model = MODELS[name].eval()
    small = lr[:, :, :20, :27]
    with torch.no_grad():
        whole = model(small)
    assert torch.equal(upscale(model, small, scale=4, tile=32, overlap=16), whole)
    assert torch.equal(upscale(model, small, scale=4, tile=0), whole)


def test_tiles_cover_each_pixel_once_with_margin():
    cases = [(75, 32, 16), (101, 32, 16), (64, 32, 8), (33, 32, 0), (20, 32, 16)]
    for size, tile, overlap in cases:
        tiles = _tiles(size, tile, overlap)
        kept = [i for _, a, b in tiles for i in range(a, b)]
        assert kept == list(range(size))
        for start, a, b in tiles:
            t = min(tile, size)
            assert 0 <= start and start + t <= size
            # kept pixels are overlap//2 away from any tile edge that is not the image border
            assert start == 0 or a - start >= overlap // 2
            assert start + t == size or start + t - b >= overlap // 2


def test_batch_and_one_axis_smaller_than_tile():
    model = MODELS["srcnn"].eval()
    lr = torch.rand(2, 3, 20, 77)
    with torch.no_grad():
        whole = model(lr)
    assert (upscale(model, lr, scale=4, tile=32, overlap=16) - whole).abs().max() < 1e-5


def test_rejects_wrong_scale():
    with pytest.raises(ValueError, match="scale=2"):
        upscale(MODELS["bicubic"].eval(), torch.rand(1, 3, 40, 40), scale=2, tile=32, overlap=8)


def test_runs_in_eval_mode_and_restores_train_mode(lr):
    model = MODELS["srresnet4_bn"]
    with torch.no_grad():
        expected = model.eval()(lr[:, :, :40, :40])
    model.train()
    model.blocks[0].eval()  # a mixed state must come back exactly as it was
    modes = [m.training for m in model.modules()]
    tiled = upscale(model, lr[:, :, :40, :40], scale=4, tile=32, overlap=16)
    assert (tiled - expected).abs().max() <= 1 / 255
    assert [m.training for m in model.modules()] == modes
    model.eval()


def test_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        upscale(MODELS["bicubic"], torch.rand(1, 3, 8, 8), scale=2, tile=16, overlap=16)


def _rounded(x: torch.Tensor) -> np.ndarray:
    """1xCxHxW float -> HxWxC uint8 the way an 8-bit file stores it, written independently of fastsr."""
    return np.floor(np.clip(x[0].permute(1, 2, 0).numpy(), 0, 1) * 255 + 0.5).astype(np.uint8)


def _uint8(lr: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray((lr[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())


def test_upscale_image_is_the_float_path_rounded(lr):
    model = MODELS["srcnn"]
    pixels = _uint8(lr[:, :, :37, :45])
    expected = _rounded(upscale(model, image_to_tensor(pixels), scale=4, tile=24, overlap=8))
    out = upscale_image(model, pixels, 4, "cpu", tile=24, overlap=8)
    assert out.dtype == np.uint8 and out.shape == (148, 180, 3)
    np.testing.assert_array_equal(out, expected)


def test_upscale_image_enlarges_alpha_with_bicubic(lr):
    pixels = _uint8(lr[:, :, :37, :45])
    alpha = np.zeros(pixels.shape[:2], np.uint8)
    alpha[:, 20:] = 255  # a hard edge: bicubic overshoots past 0 and 1 there, so the clamp matters
    alpha[10:16] = 128
    out = upscale_image(MODELS["srcnn"], np.dstack([pixels, alpha]), 4, "cpu", tile=24, overlap=8)
    assert out.shape == (148, 180, 4)
    np.testing.assert_array_equal(out[:, :, :3], upscale_image(MODELS["srcnn"], pixels, 4, "cpu", tile=24, overlap=8))
    whole = imresize(torch.from_numpy(alpha).double().div(255)[None, None], scale=4)
    assert whole.min() < 0 and whole.max() > 1
    np.testing.assert_array_equal(out[:, :, 3], _rounded(whole)[:, :, 0])


SIZES = [(1, 1), (1, 7), (5, 3), (2, 9)]


@pytest.mark.parametrize("name", ["srresnet2", "srcnn", "bicubic"])
def test_any_size_from_1x1(name):
    model = MODELS[name].eval()
    rng = np.random.default_rng(3)
    for h, w in SIZES:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        with torch.no_grad():
            whole = _rounded(model(image_to_tensor(pixels)))
        assert whole.shape == (4 * h, 4 * w, 3)
        np.testing.assert_array_equal(upscale_image(model, pixels, 4, "cpu", tile=0), whole)
        for tile, overlap in [(4, 2), (2, 1), (1, 0)]:  # tiles smaller than the image, down to 1x1
            assert upscale_image(model, pixels, 4, "cpu", tile=tile, overlap=overlap).shape == whole.shape


def test_tiny_tiles_of_bicubic_are_exact():
    """Bicubic reads 2 LR pixels either side, so overlap 4 (2 pixels of context kept) is exact at any size."""
    pixels = np.random.default_rng(4).integers(0, 256, (6, 11, 3), dtype=np.uint8)
    whole = upscale_image(MODELS["bicubic"], pixels, 4, "cpu", tile=0)
    np.testing.assert_array_equal(upscale_image(MODELS["bicubic"], pixels, 4, "cpu", tile=5, overlap=4), whole)


@pytest.mark.parametrize("tile", [0, 1, DEFAULT_OVERLAP, DEFAULT_OVERLAP + 1, 256])
def test_the_validation_tile_key_takes_the_tiles_evaluation_can_run(tile):
    """train.val_tile's rule (fastsr.config) is check_tiling's at the overlap evaluation tiles with."""
    from fastsr.recipe import load_recipe

    try:
        check_tiling(tile, DEFAULT_OVERLAP)
        tiles = True
    except ValueError:
        tiles = False
    try:
        load_recipe("quickstart", [f"train.val_tile={tile}"])
        accepted = True
    except RecipeError as err:
        assert "train.val_tile must be 0 (whole images) or more than the tiles' 32-pixel overlap" in str(err)
        accepted = False
    assert accepted == tiles


_PEAK_RSS = """
import json, os
import numpy as np
from torch import nn
from fastsr.infer import upscale_image

model = nn.Upsample(scale_factor=4)  # cheap: what is measured is the stitching, not the model
lr = np.random.default_rng(0).integers(0, 256, (750, 1000, 3), dtype=np.uint8)
upscale_image(model, lr[:40, :40], 4, "cpu", tile=32, overlap=16)  # warm up torch's one-off allocations
before = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
out = upscale_image(model, lr, 4, "cpu", tile=128, overlap=16)
# VmHWM, this process's own peak: ru_maxrss would carry over the peak of the (large) pytest process it forked from
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"grown": peak - before, "out_bytes": out.nbytes}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident size from /proc")
def test_upscale_image_memory_is_the_uint8_output_not_a_float_one():
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    float_output = result["out_bytes"] * 4  # 137 MiB for this 4000x3000 output
    # uint8 output (34 MiB) plus a few tile-sized buffers; any full-size float output would alone be 137 MiB
    # (the float path measured 415 MiB here).
    assert result["grown"] < 0.75 * float_output, result


# BT.601 luma weights, full range: what a grayscale output is made of (fastsr.ops.rgb_to_gray)
LUMA = np.array([0.299, 0.587, 0.114])


def _upscaled(src: Path, weights: Path, out: Path) -> np.ndarray:
    assert main(["upscale", str(src), "--weights", str(weights), "-o", str(out), "--tile", "0"]) == 0
    with Image.open(out) as im:
        return np.asarray(im), im.mode


@pytest.fixture
def random_weights(tmp_path) -> Path:
    """A random (untrained) generator: its three output channels differ, as a trained one's slightly do."""
    torch.manual_seed(0)
    model = build_generator("srresnet", scale=4, res_blocks=1, channels=8)
    save_weights(model, tmp_path / "g.safetensors", model.config)
    return tmp_path / "g.safetensors"


def _gray(h: int = 9, w: int = 11) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


def test_upscale_gives_grayscale_back_as_the_luma_of_the_colour_output(random_weights, tmp_path):
    gray = _gray()
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB").save(tmp_path / "rgb.png")  # the same, as RGB
    colour, colour_mode = _upscaled(tmp_path / "rgb.png", random_weights, tmp_path / "rgb_x4.png")
    out, mode = _upscaled(tmp_path / "gray.png", random_weights, tmp_path / "gray_x4.png")
    assert colour_mode == "RGB" and colour.shape == (36, 44, 3)  # an RGB image stays RGB
    assert np.ptp(colour.astype(int), axis=2).max() > 1  # the model's channels differ: the case this is about
    assert mode == "L" and out.shape == (36, 44)
    # the model ran on the gray image stacked to RGB; its output folded into one channel and rounded
    assert np.abs(out - colour @ LUMA).max() <= 0.5 + 1e-9


def test_upscale_keeps_the_alpha_of_a_grayscale_image(random_weights, tmp_path):
    gray, alpha = _gray(), np.tile(np.linspace(0, 255, 11).astype(np.uint8), (9, 1))
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([gray, gray, gray, alpha]), "RGBA").save(tmp_path / "rgba.png")
    colour, colour_mode = _upscaled(tmp_path / "rgba.png", random_weights, tmp_path / "rgba_x4.png")
    out, mode = _upscaled(tmp_path / "gray.png", random_weights, tmp_path / "gray_x4.png")
    assert colour_mode == "RGBA" and mode == "LA" and out.shape == (36, 44, 2)
    assert np.abs(out[:, :, 0] - colour[:, :, :3] @ LUMA).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(out[:, :, 1], colour[:, :, 3])


def test_self_ensemble_is_the_mean_of_the_eight_transformed_runs_by_hand(lr):
    """SelfEnsemble equals averaging, written out, the model's outputs on the 8 flips/rotations of a
    non-square input, each turned back; tiled, it stays within a level of the whole image."""
    from fastsr.infer import SelfEnsemble

    model = MODELS["srresnet2"].eval()
    x = lr[..., :40, :57]
    with torch.no_grad():
        by_hand = [
            model(x),
            model(x.flip(-1)).flip(-1),
            model(x.flip(-2)).flip(-2),
            model(x.flip(-1).flip(-2)).flip(-2).flip(-1),
            model(x.transpose(-1, -2)).transpose(-1, -2),
            model(x.transpose(-1, -2).flip(-1)).flip(-1).transpose(-1, -2),
            model(x.transpose(-1, -2).flip(-2)).flip(-2).transpose(-1, -2),
            model(x.transpose(-1, -2).flip(-1).flip(-2)).flip(-2).flip(-1).transpose(-1, -2),
        ]
        ensemble = SelfEnsemble(model)(x)
    torch.testing.assert_close(ensemble, torch.stack(by_hand).mean(0), atol=1e-6, rtol=0)
    assert not torch.allclose(ensemble, by_hand[0], atol=1e-3)  # the transforms matter for this model
    tiled = upscale(SelfEnsemble(model), x, scale=4, tile=24, overlap=16)
    assert (tiled - ensemble).abs().max() <= 1 / 255


def test_self_ensemble_in_eval_and_upscale(tmp_path, random_weights, capsys):
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(src)
    plain, ensembled = tmp_path / "plain.png", tmp_path / "plus.png"
    assert main(["upscale", str(src), "--weights", str(random_weights), "-o", str(plain)]) == 0
    assert main(["upscale", str(src), "--weights", str(random_weights), "-o", str(ensembled), "--self-ensemble"]) == 0
    assert np.asarray(Image.open(plain)).shape == np.asarray(Image.open(ensembled)).shape == (80, 96, 3)
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(ensembled)))
    folder = tmp_path / "set"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "a.png")
    out = tmp_path / "scores.json"
    assert main(["eval", "--model", "bicubic", "--model", f"G={random_weights}", "--data", str(folder),
                 "--self-ensemble", "--json", str(out), "--device", "cpu"]) == 0
    methods = next(iter(json.loads(out.read_text())["sets"].values()))["methods"]
    assert sorted(methods) == ["Bicubic", "G+"]  # bicubic is not ensembled: it is flip- and rotation-equivariant
