"""Real-ESRGAN's parts: the SRVGGNetCompact generator (`compact`) and the U-Net discriminator with spectral
norm (`unet_sn`): sizes, Real-ESRGAN's parameter names, spectral norm at work, spandrel opening fastsr's
exported weights as Compact with the same outputs, recipe errors, and both in the finetune step and a whole
run, where the discriminator's logits are a map per pixel."""

import json

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from fastsr.errors import RecipeError
from fastsr.models import DISCRIMINATORS, GENERATORS, build_generator
from fastsr.models.compact import Compact
from fastsr.models.unet_discriminator import UNetDiscriminator
from fastsr.recipe import find_recipe, load_recipe
from fastsr.weights import load_generator, save_weights

SN_CONVS = [f"conv{i}" for i in range(1, 9)]  # the spectrally normalised convs of Real-ESRGAN's U-Net


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _unet(**keys):
    return DISCRIMINATORS.rebuild({"name": "unet_sn", **keys}, "test")


# --- compact -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("size", [(16, 16), (7, 9), (1, 1)])
def test_compact_output_shape(scale, size):
    model = build_generator("compact", scale=scale, channels=8, convs=2).eval()
    assert model.scale == scale
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, size[0] * scale, size[1] * scale) and out.dtype == torch.float32


def test_compact_rejects_other_scales():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 8\)"):
        build_generator("compact", scale=5)


def _compact_param_formula(scale, channels, convs, prelu=True):
    conv = lambda cin, cout: cin * cout * 3 * 3 + cout  # 3x3 weights + bias
    act = channels if prelu else 0  # one PReLU slope per channel
    return conv(3, channels) + act + convs * (conv(channels, channels) + act) + conv(channels, 3 * scale * scale)


def test_compact_param_counts():
    # realesr-general-x4v3 (32 convs) and realesr-animevideov3 (16 convs), both 64 channels, x4
    assert _count(build_generator("compact", scale=4)) == _compact_param_formula(4, 64, 32) == 1_213_296
    assert _count(build_generator("compact", scale=4, convs=16)) == _compact_param_formula(4, 64, 16) == 621_424
    assert _count(build_generator("compact", scale=2, channels=8, convs=3, activation="relu")) == \
        _compact_param_formula(2, 8, 3, prelu=False)


def _compact_names(convs, prelu=True):
    """Real-ESRGAN's SRVGGNetCompact state dict: one module list `body`, a conv at each even index (its first,
    `convs` in the body, its last) and the activation after each but the last at the odd ones; of those only
    a PReLU has a parameter, `weight`."""
    last = 2 * convs + 2
    names = {f"body.{i}.{kind}" for i in range(0, last + 1, 2) for kind in ("weight", "bias")}
    if prelu:
        names |= {f"body.{i}.weight" for i in range(1, last, 2)}
    return names


@pytest.mark.parametrize("activation", ["prelu", "relu", "leakyrelu"])
def test_compact_parameter_names_are_real_esrgans(activation):
    model = build_generator("compact", scale=4, channels=8, convs=3, activation=activation)
    assert set(model.state_dict()) == _compact_names(3, prelu=activation == "prelu")
    assert isinstance(model.body, nn.ModuleList) and len(model.body) == 2 * 3 + 3
    if activation == "prelu":
        assert model.body[1].weight.shape == (8,)  # num_parameters=num_feat, as Real-ESRGAN
    else:
        slope = {"relu": None, "leakyrelu": 0.1}[activation]
        assert getattr(model.body[1], "negative_slope", None) == slope
    assert model.body[-1].out_channels == 3 * 4 * 4


def test_compact_adds_the_nearest_upsampled_input():
    model = build_generator("compact", scale=3, channels=8, convs=1)
    nn.init.zeros_(model.body[-1].weight)
    nn.init.zeros_(model.body[-1].bias)
    lr = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        assert torch.equal(model(lr), lr.repeat_interleave(3, -2).repeat_interleave(3, -1))


def test_compact_config_round_trip(tmp_path):
    model = build_generator("compact", scale=2, channels=8, convs=3, activation="leakyrelu")
    assert model.config == {"name": "compact", "scale": 2, "channels": 8, "convs": 3, "activation": "leakyrelu"}
    assert GENERATORS.entry("compact").cls is Compact
    save_weights(model, tmp_path / "g.safetensors", model.config)
    rebuilt = load_generator(tmp_path / "g.safetensors")
    assert isinstance(rebuilt, Compact) and rebuilt.config == model.config
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


# spandrel's Compact is found by `body.0.weight` and `body.1.weight` (the PReLU's slopes), so it opens the
# default (prelu) network; channels, convs and scale it reads from the weights' shapes.
@pytest.mark.parametrize("scale", [2, 4])
def test_spandrel_loads_exported_weights_as_compact(tmp_path, scale):
    spandrel = pytest.importorskip("spandrel")
    model = build_generator("compact", scale=scale, channels=16, convs=3).eval()
    path = tmp_path / "compact.safetensors"
    save_weights(model, path, model.config)

    descriptor = spandrel.ModelLoader().load_from_file(path)
    assert descriptor.architecture.id == "Compact"
    assert descriptor.scale == scale
    assert descriptor.input_channels == 3 and descriptor.output_channels == 3
    assert "16nf" in descriptor.tags and "3nc" in descriptor.tags

    net = descriptor.model.float().eval()
    x = torch.rand(1, 3, 15, 17)
    with torch.no_grad():
        ours, theirs = model(x), net(x)
        clamped = descriptor(x)  # spandrel's call clamps to [0, 1]
    assert ours.shape == theirs.shape == clamped.shape == (1, 3, 15 * scale, 17 * scale)
    assert (ours - theirs).abs().max().item() < 1e-5
    assert (ours.clamp(0, 1) - clamped).abs().max().item() < 1e-5


# --- unet_sn -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("size", [(8, 8), (32, 32), (40, 64), (96, 128)])
def test_unet_gives_a_logit_per_pixel(size, skip):
    d = _unet(channels=8, skip_connection=skip)
    logits = d(torch.rand(2, 3, *size))
    assert logits.shape == (2, 1, *size) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("size", [(4, 8), (8, 4)])
def test_unet_refuses_below_its_min_size(size):
    assert UNetDiscriminator.min_size == 8
    with pytest.raises(ValueError, match=r"at least 8x8"):
        _unet(channels=8)(torch.rand(1, 3, *size))


@pytest.mark.parametrize("size", [(12, 16), (16, 36), (33, 32)])
def test_unet_refuses_sides_that_are_not_multiples_of_8(size):
    with pytest.raises(ValueError, match=r"multiples of 8"):
        _unet(channels=8)(torch.rand(1, 3, *size))


def test_unet_parameter_names_are_real_esrgans():
    d = _unet(channels=16)
    plain = {f"conv{i}.{kind}" for i in (0, 9) for kind in ("weight", "bias")}
    assert set(d.state_dict()) == plain | {f"{c}.weight_{kind}" for c in SN_CONVS for kind in ("orig", "u", "v")}
    assert {name for name, _ in d.named_parameters()} == plain | {f"{c}.weight_orig" for c in SN_CONVS}
    assert {name for name, _ in d.named_buffers()} == {f"{c}.weight_{kind}" for c in SN_CONVS for kind in ("u", "v")}
    convs = [getattr(d, f"conv{i}") for i in range(10)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128, 64, 32, 16, 16, 16, 1]
    assert [c.kernel_size[0] for c in convs] == [3, 4, 4, 4, 3, 3, 3, 3, 3, 3]
    assert [c.stride[0] for c in convs] == [1, 2, 2, 2, 1, 1, 1, 1, 1, 1]
    assert [c.bias is not None for c in convs] == [True] + [False] * 8 + [True]
    # Real-ESRGAN's size at its defaults: 64 channels
    assert _count(_unet()) == 3 * 64 * 9 + 64 + sum(
        cin * cout * k * k for cin, cout, k in [(64, 128, 4), (128, 256, 4), (256, 512, 4), (512, 256, 3),
                                                (256, 128, 3), (128, 64, 3), (64, 64, 3), (64, 64, 3)]) + 64 * 9 + 1


def _spectral_norm(weight: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2).item()


def test_unet_spectral_norm_bounds_each_conv():
    """After forwards in train mode (one power iteration each), each SN conv's weight as used has its largest
    singular value at 1, whatever the stored weight's: power iteration estimates sigma from below, so the
    norm approaches 1 from above (measured after 30 forwards: at most 1.0095 with this seed, 1.018 over seeds
    0 to 4; about 1.3 after one forward)."""
    d = _unet(channels=8).train()
    with torch.no_grad():
        for c in SN_CONVS:
            getattr(d, c).weight_orig.mul_(10)  # without the normalisation each would be about 7
        assert all(_spectral_norm(getattr(d, c).weight_orig) > 5 for c in SN_CONVS)
        x = torch.rand(2, 3, 16, 16)
        for _ in range(30):
            d(x)
    norms = [_spectral_norm(getattr(d, c).weight) for c in SN_CONVS]
    assert all(1 - 1e-4 < n < 1.05 for n in norms), norms
    # eval mode runs no power iteration: the estimate (u, v) stays as it is
    d.eval()
    before = {c: getattr(d, c).weight_u.clone() for c in SN_CONVS}
    with torch.no_grad():
        d(x)
    assert all(torch.equal(getattr(d, c).weight_u, before[c]) for c in SN_CONVS)


def test_unet_weights_survive_a_checkpoint(tmp_path):
    """A checkpoint's discriminator.safetensors (no spectral-norm version metadata in the file) loads back with
    its power-iteration state, so a resumed run's D answers as before."""
    from fastsr.weights import load_weights

    d = _unet(channels=8).train()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        for _ in range(3):
            d(x)
    save_weights(d, tmp_path / "d.safetensors", d.config)
    back = load_weights(DISCRIMINATORS.rebuild(d.config, "test"), tmp_path / "d.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(d.state_dict().values(), back.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(back.eval()(x), d.eval()(x))


def test_unet_takes_the_images_in_0_1_as_they_are():
    """No [-1, 1] mapping inside, as Real-ESRGAN feeds its discriminator: conv0 sees the input itself."""
    d = _unet(channels=8)
    seen = {}
    d.conv0.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    x = torch.rand(1, 3, 16, 16)
    d(x)
    assert torch.equal(seen["x"], x)


# --- recipes -------------------------------------------------------------------------------------------


def test_recipe_builds_both_by_name():
    recipe = load_recipe(find_recipe("quickstart"), ["model.name=compact", "model.convs=16",
                                                      "discriminator.name=unet_sn", "discriminator.channels=32"])
    g = GENERATORS.create(recipe.model, scale=recipe.scale)
    d = DISCRIMINATORS.create(recipe.discriminator)
    assert isinstance(g, Compact) and g.config == {"name": "compact", "scale": 4, "channels": 64, "convs": 16,
                                                   "activation": "prelu"}
    assert isinstance(d, UNetDiscriminator) and d.config == {"name": "unet_sn", "channels": 32,
                                                             "skip_connection": True}


@pytest.mark.parametrize("override, message", [
    ("model.conv=16", "unknown key 'model.conv' for generator 'compact' (did you mean 'model.convs'?)"),
    ("model.activation=gelu", "model.activation='gelu' is not one of: prelu, relu, leakyrelu"),
    ("model.channels=0", "model.channels must be positive (got 0)"),
    ("model.convs=-1", "model.convs must be 0 or more (got -1)"),
    ("discriminator.skip_conection=false",
     ("unknown key 'discriminator.skip_conection' for discriminator 'unet_sn' "
      "(did you mean 'discriminator.skip_connection'?)")),
    ("discriminator.channels=0", "discriminator.channels must be positive (got 0)"),
])
def test_recipe_errors_name_the_key(override, message):
    parts = ["model.name=compact", "discriminator.name=unet_sn", override]
    with pytest.raises(RecipeError) as err:
        load_recipe(find_recipe("quickstart"), parts)
    assert message in str(err.value) and "\n" not in str(err.value)


# --- training ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gan", ["vanilla", "ragan"])
def test_finetune_step_takes_a_logit_map(gan):
    """The step and both GAN kinds on (N, 1, H, W) logits: BCE-with-logits averaged over every element, as
    Real-ESRGAN's vanilla GAN loss; both networks learn."""
    from fastsr.engine.steps import finetune_step
    from fastsr.losses import build_finetune_loss
    from fastsr.recipe import from_dict

    g = build_generator("compact", scale=4, channels=8, convs=2)
    d = _unet(channels=8)
    terms = [{"name": "pixel", "kind": "l1", "weight": 1.0}, {"name": "adv", "gan": gan, "weight": 0.1}]
    loss, kind, _ = build_finetune_loss(from_dict({"loss": {"terms": terms}}).loss)
    opt_g = torch.optim.SGD(g.parameters(), lr=0.1)
    opt_d = torch.optim.SGD(d.parameters(), lr=0.1)
    g_before = [p.detach().clone() for p in g.parameters()]
    d_before = [p.detach().clone() for p in d.parameters()]
    batch = (torch.rand(2, 3, 32, 32), torch.rand(2, 3, 8, 8))
    for _ in range(2):
        out = finetune_step(g, d, batch, opt_g, opt_d, Accelerator(cpu=True), loss, kind)
    assert all(v.shape == () and torch.isfinite(v) for v in out.values())
    assert all(not torch.equal(a, b) for a, b in zip(g_before, g.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d_before, d.parameters()))


def test_compact_and_unet_train_both_phases(tiny_recipe):
    from fastsr.engine.trainer import train

    recipe = tiny_recipe(name="realesrgan", model={"name": "compact", "channels": 8, "convs": 2},
                         discriminator={"name": "unet_sn", "channels": 8},
                         train={"epochs_pretrain": None, "epochs_finetune": None,
                                "steps_pretrain": 1, "steps_finetune": 2})
    run = train(recipe)
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [(r["phase"], r["step"]) for r in lines if r["kind"] == "train"]
    assert steps == [("pretrain", 1), ("finetune", 2), ("finetune", 3)]
    assert all(torch.isfinite(torch.tensor(r["loss_d"])) for r in lines if r.get("phase") == "finetune"
               and r["kind"] == "train")
    assert json.loads((run / "generator.json").read_text()) == {"name": "compact", "scale": 4, "channels": 8,
                                                                "convs": 2, "activation": "prelu"}
    assert isinstance(load_generator(run / "generator.safetensors"), Compact)
