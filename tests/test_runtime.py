"""The runtime switches: what `auto` resolves to, and that compiled / mixed-precision / channels_last
steps compute what the eager fp32 step computes (same API, same losses within tolerance)."""

import copy
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from fastsr.config import RuntimeConfig
from fastsr.engine.checkpoint import load_generator
from fastsr.engine.runtime import Precision, Runtime, resolve_runtime
from fastsr.engine.steps import gan_step, pretrain_step
from fastsr.engine.trainer import train
from fastsr.losses import build_generator_loss
from fastsr.models import Discriminator, SRResNet
from fastsr.recipe import from_dict, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_auto_resolves_per_device(monkeypatch):
    assert resolve_runtime(RuntimeConfig(), cuda=False) == Runtime("off", "no", True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_runtime(RuntimeConfig(), cuda=True) == Runtime("default", "bf16", True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_runtime(RuntimeConfig(), cuda=True).mixed_precision == "no"
    explicit = RuntimeConfig(compile="max-autotune", mixed_precision="fp16", channels_last="off")
    assert resolve_runtime(explicit, cuda=False) == Runtime("max-autotune", "fp16", False)


def test_yaml_booleans_read_as_the_switch_words():
    """YAML reads unquoted off/no/true as booleans; the switches take them as their words."""
    r = load_recipe(RECIPES / "srgan_x4.yaml", ["runtime.compile=off", "runtime.mixed_precision=no",
                                                  "runtime.channels_last=true"])
    assert (r.runtime.compile, r.runtime.mixed_precision, r.runtime.channels_last) == ("off", "no", "on")


def _models(seed=0):
    torch.manual_seed(seed)
    return SRResNet(4, res_blocks=1, channels=8), Discriminator(channels=8)


def _batches(n=3):
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        hr = torch.rand(2, 3, 32, 32, generator=gen)
        out.append((hr, torch.nn.functional.avg_pool2d(hr, 4)))
    return out


def _run(runtime: Runtime, phase: str, steps=3):
    """Losses of `steps` steps from the same start, under `runtime`."""
    g, d = _models()
    opt_g, opt_d = torch.optim.Adam(g.parameters(), 1e-4), torch.optim.Adam(d.parameters(), 1e-4)
    g_train, d_train = runtime.for_training(g), runtime.for_training(d)
    precision = Precision(runtime.mixed_precision)
    loss, gan, _ = build_generator_loss(from_dict({"loss": {"vgg_weights": "random", "vgg_layer": "relu2_2"}}).loss)
    loss_train = loss.prepare(runtime.for_training)
    acc = Accelerator(cpu=True)
    out = []
    for batch in _batches(steps):
        batch = runtime.batch(*batch)
        if phase == "A":
            out.append(pretrain_step(g_train, batch, opt_g, acc, "mse", precision))
        else:
            out.append(gan_step(g_train, d_train, batch, opt_g, opt_d, acc, loss_train, gan, precision))
    return out, g


def _assert_close_losses(a, b, rtol):
    for step_a, step_b in zip(a, b):
        assert step_a.keys() == step_b.keys()
        for k in step_a:
            torch.testing.assert_close(step_a[k].float(), step_b[k].float(), rtol=rtol, atol=1e-4, msg=k)


@pytest.mark.parametrize("phase", ["A", "B"])
def test_channels_last_and_bf16_steps_match_eager_fp32(phase):
    eager, _ = _run(Runtime("off", "no", False), phase)
    _assert_close_losses(_run(Runtime("off", "no", True), phase)[0], eager, rtol=1e-4)
    _assert_close_losses(_run(Runtime("off", "bf16", True), phase)[0], eager, rtol=2e-2)  # bf16: 8-bit mantissa


def test_fp16_step_scales_its_loss_and_stays_finite():
    losses, g = _run(Runtime("off", "fp16", False), "B")
    assert all(torch.isfinite(v).all() for step in losses for v in step.values())
    assert all(torch.isfinite(p).all() for p in g.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["A", "B"])
def test_compiled_steps_match_eager(phase):
    eager, g_eager = _run(Runtime("off", "no", False), phase)
    compiled, g_compiled = _run(Runtime("default", "no", False), phase)
    _assert_close_losses(compiled, eager, rtol=1e-3)
    for a, b in zip(g_compiled.state_dict().values(), g_eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_compiled_run_saves_weights_an_eager_model_loads(tiny_recipe):
    run = train(tiny_recipe(train={"epochs_finetune": 0}, runtime={"compile": "default"}))
    keys = list(load_file(run / "generator.safetensors"))
    assert keys and not any("_orig_mod" in k for k in keys)
    model = load_generator(run / "generator.safetensors")
    assert isinstance(model, SRResNet) and not isinstance(model, torch._dynamo.eval_frame.OptimizedModule)
    checkpoint = next((run / "checkpoints").iterdir())
    assert not any("_orig_mod" in k for k in load_file(checkpoint / "generator.safetensors"))
    copy.deepcopy(model)(torch.rand(1, 3, 9, 11))  # an odd size, eager: no compile involved
