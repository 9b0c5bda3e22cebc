"""Loss functions against hand computations; VGG layer mapping, freezing and weight loading."""

import hashlib
import math
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fastsr.losses import (
    LOSS_TERMS,
    VGG19_LAYERS,
    PerceptualLoss,
    VGGFeatures,
    VGGWeightsUnavailable,
    d_loss,
    g_adv_loss,
    perceptual,
    pixel_loss,
    tv_loss,
)
from fastsr.losses.perceptual import _vgg19_file

RECIPE_KEY = "loss.vgg_weights="


def test_vgg_layer_names_map_to_torchvision_indices():
    assert len(VGG19_LAYERS) == 32  # conv and relu for each of VGG19's 16 convs
    assert VGG19_LAYERS["conv1_1"] == 1 and VGG19_LAYERS["relu1_1"] == 2
    assert VGG19_LAYERS["conv2_1"] == 6  # after the first max-pool
    assert VGG19_LAYERS["conv5_4"] == 35 and VGG19_LAYERS["relu5_4"] == 36
    conv = VGGFeatures("conv5_4", weights=None)
    relu = VGGFeatures("relu5_4", weights=None)
    assert isinstance(conv.features[-1], nn.Conv2d) and len(conv.features) == 35
    assert isinstance(relu.features[-1], nn.ReLU) and len(relu.features) == 36
    assert conv(torch.rand(1, 3, 32, 32)).shape == (1, 512, 2, 2)


def test_vgg_stack_matches_torchvision_vgg19():
    from torchvision.models import vgg19

    with torch.device("meta"):  # shapes only; skips allocating the 548 MB model
        reference = vgg19().features.state_dict()
    ours = VGGFeatures("relu5_4", weights=None).features.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}


def test_vgg_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match="conv5_4"):
        VGGFeatures("conv6_1", weights=None)


def test_vgg_is_frozen_and_stays_eval():
    vgg = VGGFeatures("relu2_2", weights=None)
    assert not any(p.requires_grad for p in vgg.parameters())
    assert not vgg.train().training
    assert list(vgg.state_dict()) == list(vgg.features.state_dict(prefix="features."))


def test_perceptual_loss_zero_positive_and_gradients():
    torch.manual_seed(0)
    loss = PerceptualLoss("conv3_4", weights=None)
    hr = torch.rand(2, 3, 24, 24)
    assert loss(hr.clone(), hr).item() == 0.0
    sr = (hr + 0.1 * torch.randn_like(hr)).requires_grad_(True)
    value = loss(sr, hr)
    assert value.item() > 0
    value.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())


def _features_state(layer):
    torch.manual_seed(3)
    return VGGFeatures(layer, weights=None).features.state_dict()


@pytest.mark.parametrize("prefix", ["features.", ""], ids=["full-model", "features-only"])
def test_vgg_loads_state_dict_file(tmp_path, prefix):
    state = _features_state("conv2_1")
    path = tmp_path / "vgg19.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    vgg = VGGFeatures("relu1_2", weights=str(path))  # a shorter cut takes a prefix of the keys
    for k, v in vgg.features.state_dict().items():
        assert torch.equal(v, state[k])


def test_vgg_rejects_file_without_the_keys(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, str(path))
    with pytest.raises(VGGWeightsUnavailable, match=RECIPE_KEY):
        VGGFeatures("conv2_1", weights=path)


class _Exploit:
    """Unpickling this would run code: a .pth a user hands in must never get that far."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_vgg_pth_is_unpickled_only_if_it_is_torchvisions_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "vgg19-dcbb9e9d.pth"  # the right name is not enough
    torch.save({"features.0.weight": _Exploit()}, path)
    with pytest.raises(VGGWeightsUnavailable, match="not torchvision's vgg19-dcbb9e9d.pth .*convert it to .safetensors"):
        VGGFeatures("conv2_1", weights=path)
    assert "unpickled!" not in capsys.readouterr().out
    # The official file (as its hash identifies it) is loaded, with weights_only.
    state = _features_state("conv2_1")
    torch.save({f"features.{k}": v for k, v in state.items()}, path)
    monkeypatch.setattr(perceptual, "VGG19_SHA256_PREFIX", hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    vgg = VGGFeatures("conv2_1", weights=path)
    assert all(torch.equal(v, state[k]) for k, v in vgg.features.state_dict().items())


def test_vgg_missing_file_message():
    with pytest.raises(VGGWeightsUnavailable) as info:
        VGGFeatures(weights="/nonexistent.pth")
    message = str(info.value)
    assert "/nonexistent.pth" in message and RECIPE_KEY in message
    assert "\n" not in message


@pytest.mark.skipif(_vgg19_file().hub_path.exists(), reason="VGG19 weights are in the hub cache")
def test_vgg_imagenet_fails_fast_without_network():
    start = time.monotonic()
    with pytest.raises(VGGWeightsUnavailable) as info:
        VGGFeatures(weights="imagenet")
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert str(_vgg19_file().hub_path) in message
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in message
    assert RECIPE_KEY in message and "\n" not in message


def _softplus(x):
    return math.log1p(math.exp(x))


def test_adversarial_losses_by_hand():
    real, fake = [2.0, -1.0, 0.0], [0.5, -3.0, 4.0]
    # BCE(real -> 1) = softplus(-x); BCE(fake -> 0) = softplus(x); each averaged over the batch.
    expected_d = sum(_softplus(-x) for x in real) / 3 + sum(_softplus(x) for x in fake) / 3
    expected_g = sum(_softplus(-x) for x in fake) / 3
    d = d_loss(torch.tensor(real), torch.tensor(fake)).item()
    assert d == pytest.approx(expected_d, rel=1e-6)
    assert g_adv_loss(torch.tensor(fake)).item() == pytest.approx(expected_g, rel=1e-6)
    assert d_loss(torch.tensor([30.0]), torch.tensor([-30.0])).item() < 1e-12
    # one term at a time (separate backward passes per D forward) adds up to the joint loss
    split = d_loss(torch.tensor(real), None) + d_loss(None, torch.tensor(fake))
    assert split.item() == pytest.approx(expected_d, rel=1e-6)
    with pytest.raises(ValueError):
        d_loss(None, None)


def test_tv_loss_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.random((3, 2, 5, 7)).astype(np.float32)
    vertical = np.abs(np.diff(x, axis=2)).sum(axis=(1, 2, 3))
    horizontal = np.abs(np.diff(x, axis=3)).sum(axis=(1, 2, 3))
    per_image = vertical + horizontal
    assert tv_loss(torch.from_numpy(x)).item() == pytest.approx(per_image.mean(), rel=1e-5)
    assert tv_loss(torch.ones(2, 3, 4, 4)).item() == 0.0


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (4, 3, 17, 9), (2, 1, 5, 1), (3, 2, 96, 96)])
def test_tv_without_kornia_is_kornias_bit_for_bit(shape, monkeypatch):
    """Where Kornia is missing (the GPU machines) the `tv` term computes what Kornia computes, exactly."""
    kornia = pytest.importorskip("kornia")
    from fastsr.losses import tv

    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    assert torch.equal(tv.total_variation(x), kornia.losses.total_variation(x, reduction="sum"))
    with_kornia = tv_loss(x)
    monkeypatch.setattr(tv, "kornia_total_variation", None)
    assert torch.equal(tv_loss(x), with_kornia)


def test_pixel_loss():
    sr, hr = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.5, 0.5, 0.0])
    assert pixel_loss(sr, hr).item() == pytest.approx((0.25 + 0 + 1) / 3)
    assert pixel_loss(sr, hr, kind="l1").item() == pytest.approx((0.5 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="mse, l1"):
        pixel_loss(sr, hr, kind="huber")


# ---------------------------------------------------------------------------------------------
# Relativistic average GAN (ESRGAN) and finetune's term list


def test_relativistic_losses_against_a_hand_computation():
    from fastsr.losses.adversarial import ragan_d_fake, ragan_d_real, ragan_g_loss

    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.0, 1.5, -2.5])
    mr, mf = sum([2.0, -1.0, 0.5]) / 3, sum([0.0, 1.5, -2.5]) / 3
    # BCE(z -> 1) = softplus(-z), BCE(z -> 0) = softplus(z); each side the mean of its two terms
    d_real = sum(_softplus(-(r - mf)) for r in [2.0, -1.0, 0.5]) / 3 / 2
    d_fake = sum(_softplus(f - mr) for f in [0.0, 1.5, -2.5]) / 3 / 2
    g = (sum(_softplus(r - mf) for r in [2.0, -1.0, 0.5]) / 3 + sum(_softplus(-(f - mr)) for f in [0.0, 1.5, -2.5]) / 3) / 2
    assert ragan_d_real(real, fake).item() == pytest.approx(d_real, rel=1e-6)
    assert ragan_d_fake(fake, real).item() == pytest.approx(d_fake, rel=1e-6)
    assert ragan_g_loss(real, fake).item() == pytest.approx(g, rel=1e-6)


@pytest.mark.parametrize("kind", ["vanilla", "ragan"])
def test_the_finetune_step_gives_each_graph_building_forward_its_own_backward(kind):
    """The discriminator's update as `finetune_step` writes it for each GAN kind: no two graphs of D pending
    at once (BatchNorm under DDP), and D's loss the kind's objective."""
    from accelerate import Accelerator

    from fastsr.engine.runtime import Precision
    from fastsr.engine.steps import finetune_step
    from fastsr.losses import GAN_KINDS, GeneratorLoss
    from fastsr.losses.adversarial import ragan_d_fake, ragan_d_real

    log = []

    class Critic(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))

        def forward(self, x):
            log.append(("forward", torch.is_grad_enabled()))
            return self.net(x).squeeze(1)

    class Logged(Precision):
        def backward(self, accelerator, loss):
            log.append(("backward", None))
            super().backward(accelerator, loss)

    torch.manual_seed(0)
    g, d = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Upsample(scale_factor=2)), Critic()
    opt_g, opt_d = torch.optim.SGD(g.parameters(), lr=0.0), torch.optim.SGD(d.parameters(), lr=0.0)
    gan = GAN_KINDS[kind]()
    adv = LOSS_TERMS.create(LOSS_TERMS.config_from({"name": "adv", "gan": kind}, "loss.terms[0]", "test"))
    hr, lr = torch.rand(4, 3, 2, 2), torch.rand(4, 3, 1, 1)
    out = finetune_step(g, d, (hr, lr), opt_g, opt_d, Accelerator(cpu=True), GeneratorLoss([("adv", 1.0, adv)]), gan,
                        Logged())
    graph_forwards = [i for i, (what, grad) in enumerate(log) if what == "forward" and grad]
    assert graph_forwards and all(log[i + 1][0] == "backward" for i in graph_forwards)  # no two graphs pending
    with torch.no_grad():
        r, f = d(hr), d(g(lr))
    expected = d_loss(r, f) if kind == "vanilla" else ragan_d_real(r, f) + ragan_d_fake(f, r)
    torch.testing.assert_close(out["d"], expected)


def test_generator_loss_applies_each_weight_once_and_names_each_term():
    from fastsr.losses import GAN_KINDS, build_finetune_loss
    from fastsr.recipe import from_dict

    terms = [{"name": "pixel", "kind": "l1", "weight": 0.5}, {"name": "pixel", "kind": "mse", "weight": 2.0, "label": "mse"},
             {"name": "tv", "weight": 0.25}, {"name": "adv", "gan": "ragan", "weight": 0.125},
             {"name": "vgg", "weight": 0.0}]  # weight 0: left out
    loss, gan, notes = build_finetune_loss(from_dict({"loss": {"terms": terms}}).loss)
    assert isinstance(gan, GAN_KINDS["ragan"]) and notes == [] and loss.names == ["pixel", "mse", "tv", "adv"]
    sr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    critic = lambda x: x.mean(dim=(1, 2, 3))  # noqa: E731 - a stand-in discriminator
    total, values = loss(sr, hr, critic)
    assert set(values) == {"pixel", "mse", "tv", "adv"}
    torch.testing.assert_close(values["pixel"], (sr - hr).abs().mean())
    torch.testing.assert_close(values["mse"], ((sr - hr) ** 2).mean())
    torch.testing.assert_close(values["tv"], tv_loss(sr))
    expected = 0.5 * values["pixel"] + 2.0 * values["mse"] + 0.25 * values["tv"] + 0.125 * values["adv"]
    torch.testing.assert_close(total, expected)


def test_the_reference_script_knobs_weight_the_default_term_list():
    from fastsr.losses import finetune_terms
    from fastsr.recipe import from_dict

    terms = finetune_terms(from_dict({"loss": {"w_vgg": 0.5, "w_adv": 0.25, "w_tv": 0.125, "pixel": "l1",
                                              "vgg_layer": "relu5_4"}}).loss)
    assert [(t.name, t.weight) for t in terms] == [("pixel", 1.0), ("adv", 0.25), ("tv", 0.125), ("vgg", 0.5)]
    assert terms[0].kind == "l1" and terms[1].gan == "vanilla" and terms[3].layer == "relu5_4"


@pytest.mark.parametrize("loss, message", [
    ({"terms": [{"name": "adv"}], "w_vgg": 1.0}, "loss.w_vgg applies to the reference script's term list only"),
    ({"terms": [{"name": "pixel"}]}, "loss.terms needs exactly one `adv` term"),
    ({"terms": [{"name": "adv"}, {"name": "vgg"}, {"name": "vgg", "layer": "relu2_2"}]},
     "loss.terms has two terms logged as 'vgg'; give one a `label:`"),
    ({"terms": [{"name": "vgg", "layr": "conv5_4"}, {"name": "adv"}]},
     "unknown key 'loss.terms[0].layr' for loss term 'vgg' (did you mean 'loss.terms[0].layer'?)"),
    ({"terms": [{"name": "adv", "gan": "wgan"}]}, "loss.terms[0].gan='wgan' is not one of: vanilla, ragan"),
    ({"terms": [{"name": "adv", "weight": -1}]}, "loss.terms[0].weight must not be negative"),
    ({"terms": [{"name": "vgg", "layer": "conv6_1"}, {"name": "adv"}]}, "loss.terms[0].layer 'conv6_1' is not a VGG19 layer"),
    ({"terms": [{"name": "perceptual"}]}, "loss.terms[0].name='perceptual' is not a registered loss term"),
    ({"terms": {"name": "adv"}}, "loss.terms must be a list"),
])
def test_term_list_errors_name_the_key(loss, message):
    from fastsr.errors import RecipeError
    from fastsr.recipe import from_dict

    with pytest.raises(RecipeError) as err:
        from_dict({"loss": loss})
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Several VGG layers, each weighted (Real-ESRGAN's perceptual loss)

REAL_ESRGAN_LAYERS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}


def _same_weights(single, multi):
    """Load the multi-layer network's weights into a single-layer one (a prefix of its keys)."""
    state = multi.vgg.features.state_dict()
    single.vgg.features.load_state_dict({k: state[k] for k in single.vgg.features.state_dict()})
    return single


def test_multi_layer_loss_is_the_weighted_sum_of_single_layer_losses():
    torch.manual_seed(0)
    multi = PerceptualLoss(REAL_ESRGAN_LAYERS, weights=None, criterion="l1")
    hr = torch.rand(2, 3, 40, 40)
    sr = (hr + 0.1 * torch.randn_like(hr)).clamp(0, 1)
    expected = 0.0
    for layer, weight in REAL_ESRGAN_LAYERS.items():
        single = _same_weights(PerceptualLoss(layer, weights=None, criterion="l1"), multi)
        expected += weight * single(sr, hr).double()
    assert multi(sr, hr).item() == pytest.approx(expected.item(), rel=1e-6)
    assert multi(hr.clone(), hr).item() == 0.0


def test_multi_layer_features_come_from_one_forward_to_the_deepest_layer():
    torch.manual_seed(1)
    loss = PerceptualLoss({"conv3_4": 1.0, "conv1_2": 0.1, "relu1_2": 0.5}, weights=None, criterion="l1")
    vgg = loss.vgg
    assert len(vgg.features) == VGG19_LAYERS["conv3_4"]  # cut after the deepest, whatever the mapping's order
    assert vgg.layer == ("conv1_2", "relu1_2", "conv3_4")
    calls = []
    for module in vgg.features:
        module.register_forward_hook(lambda m, i, o: calls.append(m))
    loss(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    assert len(calls) == 2 * len(vgg.features)  # each module once for SR, once for HR
    x = torch.rand(1, 3, 16, 16)
    taken = vgg(x)
    assert list(taken) == ["conv1_2", "relu1_2", "conv3_4"]
    # conv names are the conv outputs, before the ReLU (not overwritten by an in-place one)
    assert (taken["conv1_2"] < 0).any() and torch.equal(taken["relu1_2"], taken["conv1_2"].clamp(min=0))
    for layer in taken:
        single = _same_weights(PerceptualLoss(layer, weights=None), loss).vgg
        assert torch.equal(single(x), taken[layer])


def test_multi_layer_loss_gradients_reach_sr_only():
    torch.manual_seed(2)
    loss = PerceptualLoss(REAL_ESRGAN_LAYERS, weights=None, criterion="l1")
    hr = torch.rand(2, 3, 24, 24).requires_grad_(True)
    sr = (hr.detach() + 0.1 * torch.randn(2, 3, 24, 24)).requires_grad_(True)
    loss(sr, hr).backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert hr.grad is None
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())


def test_multi_layer_perceptual_loss_refuses_bad_mappings():
    with pytest.raises(ValueError, match="no VGG19 layer given"):
        PerceptualLoss({}, weights=None)
    with pytest.raises(ValueError, match="'conv1_2' has a negative weight"):
        PerceptualLoss({"conv1_2": -0.1}, weights=None)
    with pytest.raises(ValueError, match="unknown VGG19 layer 'conv6_1'"):
        PerceptualLoss({"conv6_1": 1.0}, weights=None)


def test_vgg_term_with_layers_builds_from_a_recipe(tmp_path):
    from fastsr.losses import build_finetune_loss
    from fastsr.recipe import from_dict, load_recipe, to_dict

    path = tmp_path / "recipe.yaml"
    path.write_text("loss:\n  vgg_weights: random\n  terms:\n"
                    "    - {name: vgg, criterion: l1, layers: {conv1_2: 0.1, conv2_2: 0.1, conv3_4: 1, conv4_4: 1, "
                    "conv5_4: 1}}\n"
                    "    - {name: adv, gan: ragan, weight: 5.0e-3}\n")
    recipe = load_recipe(path)
    config = recipe.loss.terms[0]
    assert config.layers == REAL_ESRGAN_LAYERS and all(isinstance(w, float) for w in config.layers.values())
    assert from_dict(to_dict(recipe)).loss.terms[0].layers == REAL_ESRGAN_LAYERS  # the saved recipe reads back
    torch.manual_seed(4)
    loss, _, notes = build_finetune_loss(recipe.loss)
    assert notes == [] and loss.names == ["vgg", "adv"]
    term = loss.terms[0]
    assert term.loss.layer_weights == REAL_ESRGAN_LAYERS and term.loss.criterion == "l1"
    assert term.config["layers"] == REAL_ESRGAN_LAYERS  # recorded as built
    reference = PerceptualLoss(REAL_ESRGAN_LAYERS, weights=None, criterion="l1")
    reference.load_state_dict(term.loss.state_dict())
    sr, hr = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    _, values = loss(sr, hr, lambda x: x.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(values["vgg"], reference(sr, hr), rtol=1e-6, atol=0)


@pytest.mark.parametrize("term, message", [
    ({"layers": {"conv5_5": 1.0}}, "loss.terms[0].layers 'conv5_5' is not a VGG19 layer (did you mean 'conv5_4'?)"),
    ({"layers": {"conv1_2": -0.1, "conv5_4": 1.0}}, "loss.terms[0].layers.conv1_2 must not be negative (got -0.1)"),
    ({"layer": "relu5_4", "layers": {"conv5_4": 1.0}},
     "loss.terms[0].layers replaces `layer` (here 'relu5_4'): give one of them"),
    ({"layers": {}}, "loss.terms[0].layers is empty"),
    ({"layers": ["conv5_4"]}, "loss.terms[0].layers must be a mapping"),
    ({"layers": {"conv5_4": "high"}}, "loss.terms[0].layers.conv5_4 must be a finite number"),
])
def test_vgg_layers_errors_name_the_key(term, message):
    from fastsr.errors import RecipeError
    from fastsr.recipe import from_dict

    with pytest.raises(RecipeError) as err:
        from_dict({"loss": {"terms": [{"name": "vgg", **term}, {"name": "adv"}]}})
    assert message in str(err.value) and "\n" not in str(err.value)
