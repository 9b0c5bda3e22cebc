"""SwinIR (`swinir`): output sizes at every scale and odd input sizes, parameter counts against hand counts,
the shifted-window mask against the roll it undoes and in a block's actual mixing, the reflect padding,
spandrel opening fastsr's weights as SwinIR (and the reference's state dicts loading here) with the same
outputs, ONNX export with free sizes, the config round trip, and both recipes training a few steps."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastsr.engine.trainer import train
from fastsr.errors import RecipeError
from fastsr.models import GENERATORS, build_generator
from fastsr.models.swinir import (MASKED, SwinIR, _reflect_index, _SwinBlock, relative_position_index,
                                  shifted_window_mask)
from fastsr.recipe import find_recipe, load_recipe
from fastsr.weights import load_generator, save_weights

# Tiny configs of each upsampler, a second group and heads that differ, so that every key is exercised.
TINY = {
    "pixelshuffle": dict(embed_dim=12, depths=[2, 3], num_heads=[2, 3], window_size=4, img_size=8),
    "pixelshuffledirect": dict(embed_dim=12, depths=[2, 2], num_heads=[3, 2], window_size=4, img_size=12,
                               upsampler="pixelshuffledirect"),
}
LIGHT = dict(embed_dim=60, depths=[6] * 4, num_heads=[6] * 4, upsampler="pixelshuffledirect", img_size=64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _count(model):
    return sum(p.numel() for p in model.parameters())


# --- sizes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("upsampler", TINY)
@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_output_shapes_at_every_scale_and_odd_sizes(upsampler, scale):
    model = build_generator("swinir", scale=scale, **TINY[upsampler]).eval()
    assert model.scale == scale
    with torch.no_grad():
        for h, w in [(1, 1), (3, 2), (7, 9), (8, 8), (13, 4)]:  # none, some or all sides multiples of the window
            out = model(torch.rand(2, 3, h, w))
            assert out.shape == (2, 3, h * scale, w * scale) and out.dtype == torch.float32
            assert torch.isfinite(out).all()


def test_other_scales_and_bad_keys_are_refused():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 8\)"):
        build_generator("swinir", scale=5)
    for keys, message in [(dict(num_heads=[6] * 5), "one head count per group"),
                          (dict(embed_dim=20, depths=[2], num_heads=[3]), "must each divide embed_dim 20"),
                          (dict(img_size=44), "multiple of window_size 8"),
                          (dict(img_size=8), "larger than it"),
                          (dict(window_size=1, img_size=4), "window_size"),
                          (dict(depths=[]), "depths"),
                          (dict(drop_path=1.0), "drop_path"),
                          (dict(upsampler="nearest+conv"), "upsampler")]:
        with pytest.raises(RecipeError, match=message):
            build_generator("swinir", scale=4, **keys)


# --- parameter counts ----------------------------------------------------------------------------------


def _hand_count(scale, embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, window_size=8, mlp_ratio=2.0,
                upsampler="pixelshuffle", **_):
    """Each layer's weights and biases, from the paper's description of the network."""
    conv = lambda cin, cout: cin * cout * 9 + cout  # 3x3 conv
    linear = lambda cin, cout: cin * cout + cout
    norm = lambda c: 2 * c  # LayerNorm: scale and shift
    c, hidden = embed_dim, int(embed_dim * mlp_ratio)

    def block(heads):
        table = (2 * window_size - 1) ** 2 * heads  # a bias per relative position and head
        return norm(c) + table + linear(c, 3 * c) + linear(c, c) + norm(c) + linear(c, hidden) + linear(hidden, c)

    body = sum(d * block(h) + conv(c, c) for d, h in zip(depths, num_heads))  # each RSTB ends in a conv
    total = conv(3, c) + norm(c) + body + norm(c) + conv(c, c)  # shallow conv, token norm, ..., norm, conv
    if upsampler == "pixelshuffle":
        steps = [3] if scale == 3 else [2] * {2: 1, 4: 2, 8: 3}[scale]
        total += conv(c, 64) + sum(conv(64, f * f * 64) for f in steps) + conv(64, 3)
    else:
        total += conv(c, 3 * scale * scale)
    return total


def test_parameter_counts_are_the_hand_counts():
    # Classical SwinIR-M x4; the paper reports 11.9M.
    assert _count(build_generator("swinir", scale=4)) == _hand_count(4) == 11_900_199
    # Lightweight SwinIR-S x4; the paper reports 897K, which is this count less the 24 blocks'
    # relative position bias tables (15^2 positions x 6 heads = 1,350 each).
    assert _count(build_generator("swinir", scale=4, **LIGHT)) == _hand_count(4, **LIGHT) == 929_628
    assert 929_628 - 24 * 1_350 == 897_228
    for scale in (2, 3, 8):
        for config in TINY.values():
            assert _count(build_generator("swinir", scale=scale, **config)) == _hand_count(scale, **config)


# --- the shifted windows -------------------------------------------------------------------------------


def _allowed_by_the_roll(height, width, window, shift):
    """(windows, N, N) bool, brute force: the map of each token's original (row, column), rolled as the block
    rolls its features and cut into windows; two tokens of a window may attend iff their offset in the
    window is their offset in the image, i.e. the roll did not bring them together across its wrap."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    origin = torch.stack([rows, cols], -1).roll((-shift, -shift), (0, 1))  # (H, W, 2) original coordinates
    allowed = []
    for top in range(0, height, window):
        for left in range(0, width, window):
            tokens = [(top + r, left + c) for r in range(window) for c in range(window)]
            allowed.append([[bool((origin[j] - origin[i] == torch.tensor(j) - torch.tensor(i)).all())
                             for j in tokens] for i in tokens])
    return torch.tensor(allowed)


@pytest.mark.parametrize("height, width, window, shift", [(8, 12, 4, 2), (4, 4, 4, 2), (12, 8, 4, 1),
                                                          (16, 8, 8, 4), (6, 9, 3, 1)])
def test_shifted_window_mask_keeps_apart_what_the_roll_joined(height, width, window, shift):
    mask = shifted_window_mask(height, width, window, shift)
    allowed = _allowed_by_the_roll(height, width, window, shift)
    assert mask.shape == allowed.shape == ((height // window) * (width // window), window ** 2, window ** 2)
    assert torch.equal(mask == 0, allowed) and torch.equal(mask != 0, mask == MASKED)
    assert not allowed.all()  # the last window row and column join tokens from opposite edges


def test_a_shifted_block_mixes_only_tokens_the_mask_allows():
    """Which input tokens each output token of a shifted block depends on (autograd, float64): its own and
    those of its shifted window the roll did not bring across the wrap, nothing else."""
    height, width, window, shift = 8, 12, 4, 2
    block = _SwinBlock(8, 2, window, shift, 2.0, 0.0, 8).double().eval()
    x = torch.randn(1, height, width, 8, dtype=torch.float64, requires_grad=True)
    out = block(x, relative_position_index(window), shifted_window_mask(height, width, window, shift))
    allowed = _allowed_by_the_roll(height, width, window, shift)
    # where each original position sits after the roll: which window, which token of it
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    r, c = (rows - shift) % height, (cols - shift) % width
    where = ((r // window) * (width // window) + c // window, (r % window) * window + c % window)
    for i in range(height):
        for j in range(width):
            (grad,) = torch.autograd.grad(out[0, i, j].sum(), x, retain_graph=True)
            depends = grad[0].abs().sum(-1) > 1e-12
            win, token = where[0][i, j], where[1][i, j]
            expected = (where[0] == win) & allowed[win, token][where[1]]
            assert torch.equal(depends, expected), (i, j)


def test_relative_position_index_points_at_the_offset():
    window = 3
    index = relative_position_index(window)
    for i in range(window * window):
        for j in range(window * window):
            dr, dc = i // window - j // window, i % window - j % window
            assert index[i, j] == (dr + window - 1) * (2 * window - 1) + dc + window - 1


@pytest.mark.parametrize("size, padded", [(5, 8), (7, 8), (8, 8), (13, 16), (2, 8), (1, 8), (3, 12)])
def test_reflect_padding_is_f_pads_and_repeats_for_short_sides(size, padded):
    index = _reflect_index(size, padded, torch.device("cpu"))
    x = torch.arange(float(size)).view(1, 1, 1, size)
    if padded - size < size:  # where F.pad's reflect works: the same
        assert torch.equal(x[..., index], F.pad(x, (0, padded - size, 0, 0), mode="reflect"))
    assert torch.equal(index[:size], torch.arange(size))
    if size > 1:  # mirrored about the last sample again and again: a triangle wave of period 2 * (size - 1)
        assert torch.equal(index, torch.tensor([min(i % (2 * size - 2), 2 * size - 2 - i % (2 * size - 2))
                                                for i in range(padded)]))
    else:
        assert (index == 0).all()


# --- spandrel and the reference's state dicts -----------------------------------------------------------


@pytest.mark.parametrize("upsampler, scale", [("pixelshuffle", 4), ("pixelshuffle", 3), ("pixelshuffledirect", 2)])
def test_spandrel_loads_exported_weights_as_swinir(tmp_path, upsampler, scale):
    spandrel = pytest.importorskip("spandrel")
    config = TINY[upsampler]
    model = build_generator("swinir", scale=scale, **config).eval()
    path = tmp_path / "swinir.safetensors"
    save_weights(model, path, model.config)

    descriptor = spandrel.ModelLoader().load_from_file(path)
    assert descriptor.architecture.id == "SwinIR"
    assert descriptor.scale == scale
    assert descriptor.input_channels == 3 and descriptor.output_channels == 3
    detected = descriptor.model.hyperparameters
    expected = dict(embed_dim=12, depths=config["depths"], num_heads=config["num_heads"], window_size=4,
                    mlp_ratio=2.0, upsampler=upsampler, img_size=config["img_size"], upscale=scale, img_range=1.0,
                    resi_connection="1conv")
    assert {k: detected[k] for k in expected} == expected
    assert f"s{config['img_size']}w4" in descriptor.tags and "12dim" in descriptor.tags

    net = descriptor.model.float().eval()
    with torch.no_grad():
        for h, w in [(15, 17), (config["img_size"],) * 2, (5, 9)]:  # at img_size spandrel uses its stored mask
            x = torch.rand(2, 3, h, w)
            ours, theirs = model(x), net(x)
            assert ours.shape == theirs.shape == (2, 3, h * scale, w * scale)
            assert (ours - theirs).abs().max().item() < 1e-5


@pytest.mark.parametrize("upsampler", TINY)
def test_a_reference_state_dict_loads_with_the_same_names_and_outputs(upsampler):
    """The reference network (spandrel's copy of it) has the same state dict names, shapes, dtypes and
    derived entries, in the same order, and its weights load here strictly to the same outputs."""
    arch = pytest.importorskip("spandrel.architectures.SwinIR")
    config = dict(TINY[upsampler])
    model = build_generator("swinir", scale=2, **config).eval()
    reference = arch.SwinIR(upscale=2, mlp_ratio=2.0, upsampler=config.pop("upsampler", "pixelshuffle"),
                            resi_connection="1conv", **config).eval()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for key, tensor in theirs.items():
        assert ours[key].shape == tensor.shape and ours[key].dtype == tensor.dtype, key
        if key.endswith(("attn_mask", "relative_position_index")):
            assert torch.equal(ours[key], tensor), key
    model.load_state_dict(theirs)
    x = torch.rand(1, 3, 11, 6)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() < 1e-5


def test_weights_for_another_img_size_are_refused(tmp_path):
    from fastsr.errors import WeightsError
    from fastsr.weights import load_weights

    model = build_generator("swinir", scale=2, **TINY["pixelshuffle"])
    save_weights(model, tmp_path / "g.safetensors", model.config)
    other = build_generator("swinir", scale=2, **{**TINY["pixelshuffle"], "img_size": 12})
    with pytest.raises(WeightsError, match="attn_mask"):
        load_weights(other, tmp_path / "g.safetensors")


def test_config_round_trip(tmp_path):
    model = build_generator("swinir", scale=3, **TINY["pixelshuffledirect"])
    assert model.config == {"name": "swinir", "scale": 3, "embed_dim": 12, "depths": [2, 2], "num_heads": [3, 2],
                             "window_size": 4, "mlp_ratio": 2.0, "upsampler": "pixelshuffledirect", "img_size": 12,
                             "drop_path": 0.1}
    assert GENERATORS.entry("swinir").cls is SwinIR
    save_weights(model, tmp_path / "g.safetensors", model.config)
    rebuilt = load_generator(tmp_path / "g.safetensors")
    assert isinstance(rebuilt, SwinIR) and rebuilt.config == model.config
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


def test_drop_path_drops_whole_samples_while_training_only():
    model = build_generator("swinir", scale=2, **{**TINY["pixelshuffle"], "drop_path": 0.5})
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model(x))
        assert not torch.equal(model.train()(x), model.eval()(x))


# --- ONNX ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("upsampler, scale", [("pixelshuffle", 3), ("pixelshuffledirect", 4)])
def test_onnx_export_has_free_sizes_and_runs_as_torch(tmp_path, upsampler, scale):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from fastsr.cli import main

    model = build_generator("swinir", scale=scale, **TINY[upsampler]).eval()
    weights, out = tmp_path / "g.safetensors", tmp_path / "g.onnx"
    save_weights(model, weights, model.config)
    assert main(["export", str(weights), "-o", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (lr,), (sr,) = session.get_inputs(), session.get_outputs()
    assert lr.shape == ["batch", 3, "height", "width"]
    assert sr.shape == ["batch", 3, f"height*{scale}", f"width*{scale}"]
    rng = np.random.default_rng(0)
    for batch, h, w in [(1, 16, 16), (2, 7, 11), (1, 1, 1), (1, 33, 6), (3, 4, 9), (1, 12, 20)]:
        x = rng.random((batch, 3, h, w), dtype=np.float32)
        (got,) = session.run(None, {"lr": x})
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert got.shape == expected.shape == (batch, 3, h * scale, w * scale)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


# --- recipes -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swinir_x4", "swinir_light_x4"])
def test_each_swinir_recipe_trains_a_few_steps(name, photo_folder, tmp_path):
    """Each recipe, cut to a tiny model and two steps, on small photographs."""
    recipe = load_recipe(find_recipe(name), [
        "model.embed_dim=12", "model.depths=[2]", "model.num_heads=[2]", "model.window_size=4", "model.img_size=8",
        f"out_dir={tmp_path}", f"data.source={photo_folder}", "data.cache=null", "data.backend=torch",
        "data.workers=0", "data.val_sets=[]", "data.hr_crop=32", "data.repeat=1", "data.val_images=1",
        "train.batch_size=2", "train.epochs_pretrain=null", "train.steps_pretrain=2", "train.val_every=0",
        "train.save_every=0"])
    assert recipe.model.upsampler == {"swinir_x4": "pixelshuffle", "swinir_light_x4": "pixelshuffledirect"}[name]
    run = train(recipe)
    generator = load_generator(run / "generator.safetensors")
    assert isinstance(generator, SwinIR) and generator.config["embed_dim"] == 12
