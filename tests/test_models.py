"""Shapes, parameter counts, registry round trips and the baselines' relation to imresize."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastsr.models import DISCRIMINATORS, GENERATORS, build_generator
from fastsr.ops import imresize


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize(
    "make",
    [
        lambda s: build_generator("srresnet", scale=s, res_blocks=1, channels=8),
        lambda s: build_generator("srresnet", scale=s, res_blocks=1, channels=8, upsample_input="bicubic"),
        lambda s: build_generator("srresnet", scale=s, res_blocks=1, channels=8, upsample_input="bilinear"),
        lambda s: build_generator("srcnn", scale=s, channels=(8, 4)),
        lambda s: build_generator("bicubic", scale=s),
    ],
    ids=["srresnet", "srresnet-bicubic", "srresnet-bilinear", "srcnn", "bicubic"],
)
def test_generator_output_shape_odd_input(make, scale):
    model = make(scale).eval()
    assert model.scale == scale
    with torch.no_grad():
        out = model(torch.rand(2, 3, 7, 9))
    assert out.shape == (2, 3, 7 * scale, 9 * scale)
    assert out.dtype == torch.float32


def test_srresnet_rejects_other_scales():
    with pytest.raises(ValueError, match=r"\(2, 4, 8\)"):
        build_generator("srresnet", scale=3)


def _srresnet_param_formula(scale, blocks, c, batch_norm=True):
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # weights + bias
    bn = lambda ch: 2 * ch if batch_norm else 0  # affine weight + bias (running stats are buffers)
    prelu = 1  # one shared slope per PReLU
    head = conv(3, c, 9) + prelu
    block = 2 * conv(c, c, 3) + 2 * bn(c) + prelu
    after_blocks = conv(c, c, 3) + bn(c)
    up_stage = conv(c, 4 * c, 3) + prelu
    tail = conv(c, 3, 9)
    return head + blocks * block + after_blocks + int(math.log2(scale)) * up_stage + tail


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("upsample_input, upsampler", [
    ("bicubic", lambda lr: imresize(lr, scale=4)),
    ("bilinear", lambda lr: F.interpolate(lr, scale_factor=4, mode="bilinear", align_corners=False)),
])
def test_srresnet_with_upsample_input_starts_as_the_upsampler_and_learns(upsample_input, upsampler):
    model = build_generator("srresnet", scale=4, res_blocks=2, channels=8, upsample_input=upsample_input)
    lr, hr = torch.rand(2, 3, 11, 13), torch.rand(2, 3, 44, 52)
    with torch.no_grad():
        assert torch.equal(model.eval()(lr), upsampler(lr))  # the bicubic baseline itself, for `bicubic`
    model.train()
    F.mse_loss(model(lr), hr).backward()
    assert model.tail.weight.grad.abs().sum() > 0  # the zeroed last conv is not a dead end
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    F.mse_loss(model(lr), hr).backward()
    assert model.head[0].weight.grad.abs().sum() > 0  # and after one step the whole network learns


def test_srresnet_without_upsample_input_is_the_paper_unchanged():
    paper = build_generator("srresnet", scale=4, res_blocks=2, channels=8)
    residual = build_generator("srresnet", scale=4, res_blocks=2, channels=8, upsample_input="bicubic")
    assert paper.config["upsample_input"] == "none"
    assert paper.tail.weight.abs().sum() > 0  # PyTorch's initialisation, not zeroed
    assert _count(paper) == _count(residual)  # the option adds no parameters
    with pytest.raises(ValueError, match="upsample_input='nearest' is not one of"):
        build_generator("srresnet", scale=4, upsample_input="nearest")


def test_srresnet_param_count_matches_formula():
    model = build_generator("srresnet", scale=4, res_blocks=16, channels=64)
    assert _count(model) == _srresnet_param_formula(4, 16, 64) == 1_549_462
    for scale, blocks, c in [(2, 3, 16), (8, 2, 32)]:
        model = build_generator("srresnet", scale=scale, res_blocks=blocks, channels=c)
        assert _count(model) == _srresnet_param_formula(scale, blocks, c)


def _batch_norms(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_srresnet_without_batch_norm_has_none_and_learns():
    model = build_generator("srresnet", scale=4, res_blocks=16, channels=64, batch_norm=False)
    assert not _batch_norms(model) and not list(model.buffers())  # nothing in its forward updates a buffer
    # 1,549,462 with BatchNorm, 33 BatchNorms of 2 x 64 parameters fewer
    assert _count(model) == _srresnet_param_formula(4, 16, 64, batch_norm=False) == 1_549_462 - 33 * 2 * 64
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    paper = build_generator("srresnet", scale=4, res_blocks=16, channels=64)
    assert len(_batch_norms(paper)) == 2 * 16 + 1  # the paper's default
    small = build_generator("srresnet", scale=4, res_blocks=2, channels=8, batch_norm=False)
    lr, hr = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 32, 32)
    optimiser = torch.optim.Adam(small.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.mse_loss(small(lr), hr)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def _discriminator(name: str, **keys):
    return DISCRIMINATORS.rebuild({"name": name, **keys}, "test")


@pytest.mark.parametrize("name, convs", [("srgan", 8), ("vgg128", 10)], ids=["srgan", "vgg128"])
def test_discriminators_without_batch_norm(name, convs):
    paper, plain = _discriminator(name, channels=8), _discriminator(name, channels=8, batch_norm=False)
    assert len(_batch_norms(paper)) == convs - 1  # all convs but the first, each then without a bias
    assert not _batch_norms(plain) and not list(plain.buffers())
    plain_convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert len(plain_convs) == convs and all(m.bias is not None for m in plain_convs)
    assert plain.config["batch_norm"] is False and paper.config["batch_norm"] is True
    x = torch.rand(2, 3, 64, 64)
    assert plain(x).shape == (2,)
    plain(x).sum().backward()
    assert all(p.grad is not None for p in plain.parameters())


@pytest.mark.parametrize("size", [(32, 32), (96, 96), (128, 128), (100, 140)])
def test_discriminator_any_size_at_least_32(size):
    d = _discriminator("srgan", channels=16)
    logits = d(torch.rand(2, 3, *size))
    assert logits.shape == (2,)
    assert torch.isfinite(logits).all()


def test_discriminator_is_the_paper_at_96():
    d = _discriminator("srgan")
    feats = d.features(torch.rand(1, 3, 96, 96))
    assert feats.shape == (1, 512, 6, 6)  # the adaptive pool is an identity here
    convs = [m for m in d.features if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [m.stride[0] for m in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.features) == 7
    assert d.classifier[1].in_features == 512 * 36


@pytest.mark.parametrize("size", [(31, 64), (64, 31), (16, 16)])
def test_discriminator_rejects_small_inputs(size):
    with pytest.raises(ValueError, match="32"):
        _discriminator("srgan", channels=8)(torch.rand(1, 3, *size))


def test_srcnn_with_zeroed_last_conv_is_bicubic():
    model = build_generator("srcnn", scale=4, channels=(8, 4), residual=True)
    last = model.body[-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    lr = torch.rand(1, 3, 11, 13)
    with torch.no_grad():
        assert torch.equal(model(lr), imresize(lr, scale=4))


def test_srcnn_kernels_and_validation():
    base = build_generator("srcnn", scale=4, kernels=(9, 1, 5))  # the paper's 9-1-5 base model
    assert [m.kernel_size[0] for m in base.body if isinstance(m, nn.Conv2d)] == [9, 1, 5]
    with pytest.raises(ValueError):
        build_generator("srcnn", scale=4, kernels=(9, 4, 5))


def test_bicubic_has_no_parameters_and_is_imresize():
    model = build_generator("bicubic", scale=3)
    assert list(model.parameters()) == []
    lr = torch.rand(2, 3, 10, 7)
    assert torch.equal(model(lr), imresize(lr, scale=3))


@pytest.mark.parametrize(
    "model",
    [
        build_generator("srresnet", scale=2, res_blocks=2, channels=16),
        build_generator("srresnet", scale=4, res_blocks=1, channels=8, upsample_input="bicubic"),
        build_generator("srresnet", scale=4, res_blocks=1, channels=8, batch_norm=False),
        build_generator("srcnn", scale=3, kernels=(9, 1, 5), channels=(16, 8), residual=False),
        build_generator("bicubic", scale=8),
    ],
    ids=["srresnet", "srresnet-bicubic", "srresnet-no-bn", "srcnn", "bicubic"],
)
def test_config_round_trip(model):
    config = json.loads(json.dumps(model.config))  # JSON-serialisable, survives a file
    assert config["name"] in GENERATORS
    rebuilt = build_generator(**config)
    assert type(rebuilt) is type(model)
    assert rebuilt.config == model.config
    assert rebuilt.scale == model.scale
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_build_generator_unknown_name():
    with pytest.raises(ValueError, match="bicubic, compact, rrdbnet, span, srcnn, srresnet, swinir"):
        build_generator("edsr")
