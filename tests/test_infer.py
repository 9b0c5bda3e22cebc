"""Tiled upscaling equals the untiled pass."""

import pytest
import torch
from torch import nn

from fastsr.infer import _tiles, upscale
from fastsr.models import SRCNN, Bicubic, SRResNet


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
    trained_like = SRResNet(scale=4, res_blocks=4, channels=32)
    _perturb_batchnorm(trained_like, gen)
    srcnn = SRCNN(scale=4, channels=(32, 16))
    nn.init.normal_(srcnn.body[-1].weight, std=0.05)  # make the conv path matter, not just bicubic
    return {
        "srresnet2": SRResNet(scale=4, res_blocks=2, channels=32),
        "srresnet4_bn": trained_like,
        "srcnn": srcnn,
        "bicubic": Bicubic(scale=4),
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
