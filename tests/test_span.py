"""SPAN (`span`): sizes, the reference's parameter names and counts, the Conv3XC merge against its branches,
the merged convs kept in step with the branches, spandrel opening fastsr's weights as SPAN with the same
output, the ONNX export, the config round trip and the packaged recipe."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastsr.errors import RecipeError
from fastsr.models import GENERATORS, build_generator
from fastsr.models.span import SPAN, Conv3XC
from fastsr.recipe import find_recipe, load_recipe
from fastsr.weights import load_generator, save_weights


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _span(scale=4, **keys):
    return build_generator("span", scale=scale, **keys)


def _trained_range(model):
    """`model` with its last conv scaled so that the output peaks at 1, the range of a trained SPAN's. At
    PyTorch's initialisation it is about +-30 with the normalisation (the input is scaled by 255 and nothing
    scales it back), where float32 rounding alone differs by 1e-5 between two correct implementations that
    sum in another order. The output is linear in that conv's weight and bias, so it scales exactly."""
    with torch.no_grad():
        peak = model.eval()(torch.rand(1, 3, 8, 8)).abs().max()
        model.upsampler[0].weight.div_(peak)
        model.upsampler[0].bias.div_(peak)
    return model


def _trained_a_little(model, steps=2):
    """`model` after a few Adam steps in train mode, so that no weight is at its initial value."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(torch.rand(2, 3, 9, 10)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


# --- sizes and names -------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("size", [(16, 16), (7, 9), (1, 1)])
@pytest.mark.parametrize("training", [False, True])
def test_output_shape(scale, size, training):
    model = _span(scale, channels=8).train(training)
    assert model.scale == scale
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, size[0] * scale, size[1] * scale) and out.dtype == torch.float32


def test_rejects_other_scales():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 8\)"):
        _span(5)


def _conv3xc_params(c_in, c_out):
    """sk (1x1) + conv.0 (1x1 to 2 c_in) + conv.1 (3x3 to 2 c_out) + conv.2 (1x1 to c_out), with biases."""
    return (c_in * c_out + c_out) + (c_in * 2 * c_in + 2 * c_in) + (2 * c_in * 2 * c_out * 9 + 2 * c_out) + \
        (2 * c_out * c_out + c_out)


def _span_params(scale, c):
    """Trained parameters: conv_1, 6 SPABs of 3 Conv3XCs, conv_2, conv_cat (1x1 from 4c) and upsampler.0."""
    return _conv3xc_params(3, c) + 18 * _conv3xc_params(c, c) + _conv3xc_params(c, c) + (4 * c * c + c) + \
        (c * 3 * scale * scale * 9 + 3 * scale * scale)


def _deployed(scale, c):
    """The network inference runs: every Conv3XC a 3x3 conv, plus conv_cat and upsampler.0."""
    conv3 = lambda cin, cout: cin * cout * 9 + cout  # noqa: E731
    return conv3(3, c) + 19 * conv3(c, c) + (4 * c * c + c) + conv3(c, 3 * scale * scale)


def test_parameter_counts():
    model = _span()
    params = sum(p.numel() for p in model.parameters())
    assert params == _span_params(4, 48) == 1_840_488
    merged = sum(b.numel() for name, b in model.named_buffers() if ".eval_conv." in name)
    assert merged == 396_240  # 20 merged 3x3 convs: buffers, not parameters
    # what the state dict holds (the reference's 2,236,728, all of them parameters there) and what runs
    assert sum(v.numel() for v in model.state_dict().values()) == params + merged == 2_236_728
    assert merged + (4 * 48 * 48 + 48) + (48 * 48 * 9 + 48) == _deployed(4, 48) == 426_288
    assert sum(p.numel() for p in _span(2, channels=16).parameters()) == _span_params(2, 16)


def _reference_names(norm=True):
    """The reference SPAN's state dict: 20 Conv3XCs (sk, conv.0-2, eval_conv), conv_cat, upsampler.0."""
    convs = ["conv_1", "conv_2"] + [f"block_{i}.c{j}_r" for i in range(1, 7) for j in (1, 2, 3)]
    layers = [f"{c}.{part}" for c in convs for part in ("sk", "conv.0", "conv.1", "conv.2", "eval_conv")]
    names = {f"{layer}.{kind}" for layer in layers + ["conv_cat", "upsampler.0"] for kind in ("weight", "bias")}
    return names if norm else names | {"no_norm"}


@pytest.mark.parametrize("norm", [True, False])
def test_parameter_names_are_the_references(norm):
    model = _span(3, channels=8, norm=norm)
    assert set(model.state_dict()) == _reference_names(norm)
    assert not any("eval_conv" in name for name, _ in model.named_parameters())  # derived, never trained
    assert ("mean" in dict(model.named_buffers())) == norm  # a constant, not saved
    c = model.block_2.c3_r
    assert [m.kernel_size for m in (c.sk, *c.conv)] == [(1, 1), (1, 1), (3, 3), (1, 1)]
    assert [m.out_channels for m in (c.sk, *c.conv)] == [8, 16, 16, 8]  # the inner convs twice as wide
    assert c.eval_conv.weight.shape == (8, 8, 3, 3) and model.conv_1.eval_conv.weight.shape == (8, 3, 3, 3)
    assert model.conv_cat.weight.shape == (8, 32, 1, 1) and model.upsampler[0].weight.shape == (27, 8, 3, 3)


# --- Conv3XC: the merge ----------------------------------------------------------------------------


def _randomised(conv3xc):
    """Every weight and bias drawn anew, the biases large, so that no term of the merge hides behind another."""
    with torch.no_grad():
        for p in conv3xc.parameters():
            p.copy_(torch.randn_like(p))
    return conv3xc


def test_conv3xc_merge_equals_the_branch_sum():
    """The merged 3x3 conv, written out with F.conv2d independently of the module, against the branches on
    random input, at every pixel: float64, so a wrong term (a bias, the shortcut, a transposed product)
    shows far above rounding."""
    conv = _randomised(Conv3XC(5, 7).double())
    x = torch.randn(2, 5, 6, 9, dtype=torch.float64)
    w1, w2, w3 = (c.weight for c in conv.conv)
    b1, b2, b3 = (c.bias for c in conv.conv)
    with torch.no_grad():
        branches = F.conv2d(F.conv2d(F.conv2d(F.pad(x, (1, 1, 1, 1)), w1, b1), w2, b2), w3, b3) + \
            F.conv2d(x, conv.sk.weight, conv.sk.bias)
        kernel, bias = conv.merged()
        merged = F.conv2d(x, kernel, bias, padding=1)
        assert branches.shape == merged.shape == (2, 7, 6, 9)
        assert (branches - merged).abs().max().item() < 1e-10 * branches.abs().max().item()
        # the module's two modes are these two computations
        assert torch.equal(conv.train()(x), branches)
        assert torch.allclose(conv.eval()(x), merged, rtol=0, atol=1e-12)
        # the padding before conv.0 is what makes the borders agree: padding the 3x3 conv instead (zeros where
        # conv.0's bias should be) differs on the border pixels only
        padded_late = F.conv2d(F.conv2d(F.conv2d(x, w1, b1), w2, b2, padding=1), w3, b3) + \
            F.conv2d(x, conv.sk.weight, conv.sk.bias)
        differs = (padded_late - merged).abs().amax((0, 1)) > 1e-6
    border = torch.ones(6, 9, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert torch.equal(differs, border)


def test_the_whole_network_gives_the_same_output_in_both_modes():
    model = _trained_a_little(_span(3, channels=8)).double()
    x = torch.rand(1, 3, 7, 10, dtype=torch.float64)
    with torch.no_grad():
        branches = model.train()(x)
        merged = model.eval()(x)
    assert (branches - merged).abs().max().item() < 1e-10 * branches.abs().max().item()


def _merged_matches_branches(model):
    for module in model.modules():
        if isinstance(module, Conv3XC):
            kernel, bias = module.merged()
            if not (torch.equal(module.eval_conv.weight, kernel) and torch.equal(module.eval_conv.bias, bias)):
                return False
    return True


def test_merged_convs_follow_the_branches():
    """Training moves the branches only; eval mode, a state dict read in any mode (a checkpoint during
    training) and a state dict loaded into an eval-mode model all see the merge of the current branches."""
    model = _span(2, channels=8)
    before = model.state_dict()["conv_2.eval_conv.weight"].clone()
    _trained_a_little(model)
    assert model.training and not _merged_matches_branches(model)  # train mode leaves eval_conv alone
    saved = model.state_dict()  # ... until it is read
    assert _merged_matches_branches(model) and not torch.equal(saved["conv_2.eval_conv.weight"], before)
    other = _trained_a_little(_span(2, channels=8)).eval()
    other.load_state_dict({k: torch.zeros_like(v) if "eval_conv" in k else v for k, v in saved.items()})
    assert _merged_matches_branches(other)  # the branches are what counts, whatever the file's eval_conv
    x = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        assert torch.equal(other(x), model.eval()(x))
    # the hooks are plain functions: a deepcopy (the exporter's, the EMA's) keeps them, on its own tensors
    twin = copy.deepcopy(model).train()
    _trained_a_little(twin)
    twin.state_dict()
    assert _merged_matches_branches(twin) and _merged_matches_branches(model)
    assert not torch.equal(twin.conv_2.eval_conv.weight, model.conv_2.eval_conv.weight)


# --- spandrel, export, round trip ------------------------------------------------------------------


# spandrel finds SPAN by its Conv3XC names (conv_1.sk, block_1.c1_r.eval_conv, conv_2, upsampler.0, ...) and
# reads channels from conv_1, scale from upsampler.0, norm from `no_norm`; its eval forward re-merges the
# branches, so equal outputs also say that fastsr's branches are the reference's.
@pytest.mark.parametrize("scale, norm", [(2, True), (4, True), (4, False)])
def test_spandrel_loads_saved_weights_as_span(tmp_path, scale, norm):
    spandrel = pytest.importorskip("spandrel")
    model = _trained_range(_trained_a_little(_span(scale, channels=16, norm=norm)))  # saved in train mode
    path = tmp_path / "span.safetensors"
    save_weights(model, path, model.config)

    descriptor = spandrel.ModelLoader().load_from_file(path)
    assert descriptor.architecture.id == "SPAN"
    assert descriptor.scale == scale
    assert descriptor.input_channels == 3 and descriptor.output_channels == 3
    assert "16nf" in descriptor.tags
    net = descriptor.model.float().eval()
    assert ("no_norm" in net.state_dict()) != norm  # built with the normalisation or without

    x = torch.rand(1, 3, 15, 17)
    with torch.no_grad():
        ours, theirs = model.eval()(x), net(x)
        clamped = descriptor(x)  # spandrel's call clamps to [0, 1]
    assert ours.shape == theirs.shape == clamped.shape == (1, 3, 15 * scale, 17 * scale)
    assert 0.5 < ours.abs().max().item() < 2  # the range the tolerance is meant for
    assert (ours - theirs).abs().max().item() < 1e-5
    assert (ours.clamp(0, 1) - clamped).abs().max().item() < 1e-5


# batch 2, odd sides, a 1x1 image, none the size the exporter traced (as tests/test_export.py)
SIZES = [(1, 16, 16), (2, 7, 11), (1, 1, 1), (1, 33, 6)]


def test_onnx_export_runs_in_onnxruntime_as_in_torch(tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx

    from fastsr.cli import main

    model = _trained_range(_trained_a_little(_span(3, channels=8)))
    weights = tmp_path / "generator.safetensors"
    save_weights(model, weights, model.config)
    out = tmp_path / "span.onnx"
    assert main(["export", str(weights), "-o", str(out)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    # inference is the merged network: 20 plain 3x3 convs, conv_cat and upsampler.0, no branch left
    ops = [node.op_type for node in onnx.load(str(out)).graph.node]
    assert ops.count("Conv") == 22 and "Pad" not in ops

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model.eval()
    for batch, h, w in SIZES:
        x = np.random.default_rng(h * w).random((batch, 3, h, w), dtype=np.float32)
        (got,) = session.run(None, {"lr": x})
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert got.shape == expected.shape == (batch, 3, h * 3, w * 3)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_config_round_trip(tmp_path):
    model = _trained_a_little(_span(3, channels=8, norm=False))
    assert model.config == {"name": "span", "scale": 3, "channels": 8, "norm": False}
    assert GENERATORS.entry("span").cls is SPAN
    save_weights(model, tmp_path / "g.safetensors", model.config)  # in train mode, as a checkpoint is
    assert json.loads((tmp_path / "g.json").read_text()) == model.config
    rebuilt = load_generator(tmp_path / "g.safetensors")
    assert isinstance(rebuilt, SPAN) and rebuilt.config == model.config and not rebuilt.training
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


# --- recipe ----------------------------------------------------------------------------------------


def test_recipe_holds_the_papers_first_stage():
    r = load_recipe(find_recipe("span_x4"))
    assert r.scale == 4 and r.model.name == "span" and (r.model.channels, r.model.norm) == (48, True)
    assert (r.data.hr_crop, r.loss.pixel, r.train.batch_size, r.train.lr) == (256, "l1", 64, 5e-4)
    assert (r.train.steps_pretrain, r.train.steps_finetune) == (1_000_000, 0)
    assert r.train.lr_schedule == "multistep" and r.train.lr_milestones == [200_000, 400_000, 600_000, 800_000]


@pytest.mark.parametrize("override, message", [
    ("model.channel=16", "unknown key 'model.channel' for generator 'span' (did you mean 'model.channels'?)"),
    ("model.channels=0", "model.channels must be positive (got 0)"),
])
def test_recipe_errors_name_the_key(override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(find_recipe("span_x4"), [override])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_recipe_trains_a_few_steps(photo_folder, tmp_path):
    spandrel = pytest.importorskip("spandrel")
    from fastsr.engine.trainer import train

    recipe = load_recipe(find_recipe("span_x4"), [
        "model.channels=8", f"out_dir={tmp_path}", f"data.source={photo_folder}", "data.cache=null",
        "data.backend=torch", "data.workers=0", "data.hr_crop=32", "data.repeat=1", "data.val_images=1",
        "train.batch_size=2", "train.steps_pretrain=2", "train.lr_milestones=[1]", "train.val_every=0",
        "train.save_every=0", "train.log_every=1"])
    run = train(recipe)
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in lines if r["kind"] == "train"] == [("pretrain", 1), ("pretrain", 2)]
    assert any(r["kind"] == "val" for r in lines)
    g = load_generator(run / "generator.safetensors")
    assert isinstance(g, SPAN) and g.config == {"name": "span", "scale": 4, "channels": 8, "norm": True}
    assert spandrel.ModelLoader().load_from_file(run / "generator.safetensors").architecture.id == "SPAN"
