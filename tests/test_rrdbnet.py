"""ESRGAN's RRDBNet generator and VGG-style discriminator: sizes, names, recipe errors, and spandrel
loading fastsr's exported weights as ESRGAN with the same outputs."""

import math

import pytest
import torch

from fastsr.errors import RecipeError
from fastsr.models import (
    DISCRIMINATORS,
    GENERATORS,
    RRDBNet,
    VGGDiscriminator,
    build_generator,
)
from fastsr.weights import save_weights

SMALL = dict(blocks=2, features=16, growth=8)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _rrdbnet_param_formula(scale, blocks, features, growth):
    conv = lambda cin, cout: cin * cout * 3 * 3 + cout  # 3x3 weights + bias
    dense = sum(conv(features + i * growth, growth) for i in range(4)) + conv(features + 4 * growth, features)
    rrdb = 3 * dense
    first = conv(3 * (4 // scale) ** 2, features)  # x2 pixel-unshuffles the input: 12 channels in
    trunk = conv(features, features)  # conv_body
    up = 2 * conv(features, features) + conv(features, features)  # conv_up1, conv_up2, conv_hr
    return first + blocks * rrdb + trunk + up + conv(features, 3)


def test_rrdbnet_param_count_at_defaults():
    assert _count(build_generator("rrdbnet", scale=4)) == _rrdbnet_param_formula(4, 23, 64, 32) == 16_697_987
    assert _count(build_generator("rrdbnet", scale=2)) == _rrdbnet_param_formula(2, 23, 64, 32) == 16_703_171


@pytest.mark.parametrize("scale", [2, 4])
def test_rrdbnet_param_count_small(scale):
    for blocks, features, growth in [(2, 16, 8), (1, 8, 4), (3, 12, 32)]:
        model = build_generator("rrdbnet", scale=scale, blocks=blocks, features=features, growth=growth)
        assert _count(model) == _rrdbnet_param_formula(scale, blocks, features, growth)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("size", [(16, 16), (7, 9), (1, 1), (1, 4)])  # odd and 1-pixel sides too (upscale takes 1x1)
def test_rrdbnet_output_shape(scale, size):
    model = build_generator("rrdbnet", scale=scale, **SMALL).eval()
    assert model.scale == scale
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 3, size[0] * scale, size[1] * scale)
    assert out.dtype == torch.float32


def test_rrdbnet_rejects_other_scales():
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        build_generator("rrdbnet", scale=3, **SMALL)


def test_rrdbnet_parameter_names_are_the_ecosystems():
    keys = set(build_generator("rrdbnet", scale=4, **SMALL).state_dict())
    expected = {f"{name}.{kind}" for name in ("conv_first", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last")
                for kind in ("weight", "bias")}
    expected |= {f"body.{n}.rdb{r}.conv{c}.{kind}" for n in range(2) for r in (1, 2, 3) for c in range(1, 6)
                 for kind in ("weight", "bias")}
    assert keys == expected


def test_rrdbnet_dense_convs_start_small():
    """ESRGAN's init: Kaiming normal (std sqrt(2 / fan_in)) scaled by 0.1 in the dense blocks, zero bias."""
    model = build_generator("rrdbnet", scale=4, blocks=2, features=64, growth=32)
    conv5 = model.body[0].rdb2.conv5
    fan_in = conv5.weight[0].numel()
    assert conv5.weight.std().item() == pytest.approx(0.1 * math.sqrt(2 / fan_in), rel=0.05)
    assert torch.count_nonzero(conv5.bias) == 0
    # the convs outside the dense blocks keep PyTorch's default init (not scaled)
    assert model.conv_body.weight.std().item() > 3 * 0.1 * math.sqrt(2 / model.conv_body.weight[0].numel())


@pytest.mark.parametrize("scale", [2, 4])
def test_rrdbnet_config_round_trip(scale):
    model = build_generator("rrdbnet", scale=scale, **SMALL, residual_scale=0.5)
    assert model.config == {"name": "rrdbnet", "scale": scale, **SMALL, "residual_scale": 0.5}
    assert "rrdbnet" in GENERATORS and GENERATORS.entry("rrdbnet").cls is RRDBNet
    rebuilt = build_generator(**model.config)
    assert isinstance(rebuilt, RRDBNet)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    config = GENERATORS.config_from({"name": "rrdbnet", **SMALL}, "model", "recipe")
    built = GENERATORS.create(config, scale=scale)
    assert built.config == {"name": "rrdbnet", "scale": scale, **SMALL, "residual_scale": 0.2}


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"blocks": 0}, r"^recipe: model\.blocks must be positive"),
        ({"features": -1}, r"^recipe: model\.features must be positive"),
        ({"growth": 0}, r"^recipe: model\.growth must be positive"),
        ({"residual_scale": 0.0}, r"^recipe: model\.residual_scale must be in \(0, 1\]"),
        ({"residual_scale": 1.5}, r"^recipe: model\.residual_scale must be in \(0, 1\]"),
        ({"blocks": "many"}, r"^recipe: model\.blocks must be int"),
        ({"block": 3}, r"^recipe: unknown key 'model\.block' .*did you mean 'model\.blocks'"),
    ],
)
def test_rrdbnet_recipe_errors_name_the_key(raw, expected):
    with pytest.raises(RecipeError, match=expected) as err:
        GENERATORS.config_from({"name": "rrdbnet", **raw}, "model", "recipe")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("size", [128, 96])
def test_vgg128_output_shape(size):
    d = DISCRIMINATORS.rebuild({"name": "vgg128", "channels": 8}, "test")
    logits = d(torch.rand(2, 3, size, size))
    assert logits.shape == (2,)
    assert torch.isfinite(logits).all()


def test_vgg128_pool_is_identity_at_128():
    d = DISCRIMINATORS.rebuild({"name": "vgg128", "channels": 8}, "test")
    seen = {}
    d.pool.register_forward_hook(lambda module, args, out: seen.update(inp=args[0].shape, out=out.shape))
    d(torch.rand(2, 3, 128, 128))
    assert seen["inp"] == seen["out"] == (2, 64, 4, 4)
    assert d.linear1.in_features == 8 * 8 * 4 * 4 and d.linear2.out_features == 1


def test_vgg128_refuses_below_32():
    d = DISCRIMINATORS.rebuild({"name": "vgg128", "channels": 8}, "test")
    assert d(torch.rand(2, 3, 32, 32)).shape == (2,)  # batch 2: BatchNorm in train mode needs > 1 value
    with pytest.raises(ValueError, match=r"at least 32x32, got \(31, 40\)"):
        d(torch.rand(1, 3, 31, 40))


def test_vgg128_registered_with_esrgan_layout():
    config = DISCRIMINATORS.config_from({"name": "vgg128", "channels": 16}, "discriminator", "recipe")
    d = DISCRIMINATORS.create(config)
    assert isinstance(d, VGGDiscriminator) and d.config == {"name": "vgg128", "channels": 16, "batch_norm": True}
    assert VGGDiscriminator.min_size == 32
    names = {k.rsplit(".", 1)[0] for k, _ in d.named_parameters()}
    convs = {f"conv{k}_{j}" for k in range(5) for j in range(2)}
    bns = {f"bn{k}_{j}" for k in range(5) for j in range(2)} - {"bn0_0"}
    assert names == convs | bns | {"linear1", "linear2"}
    assert d.conv0_0.bias is not None and all(getattr(d, c).bias is None for c in convs - {"conv0_0"})
    assert [getattr(d, f"conv{k}_1").out_channels for k in range(5)] == [16, 32, 64, 128, 128]
    assert d.conv4_1.kernel_size == (4, 4) and d.conv4_1.stride == (2, 2)
    with pytest.raises(RecipeError, match=r"discriminator\.channels must be positive"):
        DISCRIMINATORS.config_from({"name": "vgg128", "channels": 0}, "discriminator", "recipe")


# spandrel's ESRGAN fixes the dense-block growth at 32 (it would refuse growth 8 with a shape mismatch),
# so the exported models use growth 32; blocks and features it infers from the weights' shapes.
@pytest.mark.parametrize("scale, size", [(4, (16, 16)), (2, (16, 16)), (2, (15, 17))])
def test_spandrel_loads_exported_weights_as_esrgan(tmp_path, scale, size):
    spandrel = pytest.importorskip("spandrel")
    model = build_generator("rrdbnet", scale=scale, blocks=2, features=16, growth=32).eval()
    path = tmp_path / "rrdbnet.safetensors"
    save_weights(model, path, model.config)

    descriptor = spandrel.ModelLoader().load_from_file(path)
    assert descriptor.architecture.id == "ESRGAN"
    assert descriptor.scale == scale
    assert descriptor.input_channels == 3 and descriptor.output_channels == 3
    assert "16nf" in descriptor.tags and "2nb" in descriptor.tags
    assert ("unshuffle" in descriptor.tags) == (scale == 2)

    net = descriptor.model.float().eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        ours, theirs = model(x), net(x)
        clamped = descriptor(x)  # spandrel's call clamps to [0, 1]
    assert theirs.shape == ours.shape == clamped.shape == (1, 3, size[0] * scale, size[1] * scale)
    assert (ours - theirs).abs().max().item() < 1e-5
    if size[0] % 4 == 0 and size[1] % 4 == 0:
        # Otherwise the descriptor first pads an x2 input to a multiple of 4 its own way, which changes
        # the border pixels; the network itself (above) pads odd sides exactly as fastsr does.
        assert (ours.clamp(0, 1) - clamped).abs().max().item() < 1e-5
