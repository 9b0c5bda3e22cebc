"""The runtime switches: what `auto` resolves to, and that compiled / mixed-precision / channels_last
steps compute what the eager fp32 step computes (same API, same losses within tolerance)."""

import copy
import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from safetensors.torch import load_file
from torch import nn
from torch.optim import optimizer as torch_optimizer
from torch.utils._python_dispatch import TorchDispatchMode

from fastsr.config import RuntimeConfig
from fastsr.data.validation import Pair
from fastsr.engine.ema import GeneratorEMA
from fastsr.engine.runtime import Precision, Runtime, autotune_convolutions, resolve_runtime
from fastsr.engine.setup import adam
from fastsr.engine.steps import finetune_step, pretrain_step
from fastsr.engine.trainer import train
from fastsr.evaluate import evaluate
from fastsr.losses import LossConfig, build_finetune_loss, build_pretrain_loss
from fastsr.models import DISCRIMINATORS, SRResNet, build_generator
from fastsr.recipe import from_dict, load_recipe
from fastsr.weights import load_generator

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_auto_resolves_per_device(monkeypatch):
    assert resolve_runtime(RuntimeConfig(), cuda=False) == Runtime("off", "no", True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_runtime(RuntimeConfig(), cuda=True) == Runtime("default", "bf16", True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_runtime(RuntimeConfig(), cuda=True).mixed_precision == "no"
    explicit = RuntimeConfig(compile="max-autotune", mixed_precision="fp16", channels_last="off")
    assert resolve_runtime(explicit, cuda=False) == Runtime("max-autotune", "fp16", False)
    graphed = resolve_runtime(RuntimeConfig(compile="reduce-overhead"), cuda=True)
    assert graphed.compile == "reduce-overhead" and graphed.cuda_graphs and explicit.compile
    assert not resolve_runtime(RuntimeConfig(), cuda=True).cuda_graphs  # `default`: kernels fused, no graphs


def test_adam_is_fused_on_cuda_only():
    params = [nn.Parameter(torch.zeros(3))]
    assert adam(params, 1e-3, (0.9, 0.99), torch.device("cuda")).param_groups[0]["fused"] is True
    cpu = adam(params, 1e-3, (0.9, 0.99), torch.device("cpu")).param_groups[0]
    assert not cpu["fused"] and cpu["foreach"] is None and cpu["betas"] == (0.9, 0.99)  # torch's default


def test_yaml_booleans_read_as_the_switch_words():
    """YAML reads unquoted off/no/true as booleans; the switches take them as their words."""
    r = load_recipe(RECIPES / "srgan_x4.yaml", ["runtime.compile=off", "runtime.mixed_precision=no",
                                                  "runtime.channels_last=true"])
    assert (r.runtime.compile, r.runtime.mixed_precision, r.runtime.channels_last) == ("off", "no", "on")


def _models(seed=0):
    torch.manual_seed(seed)
    return (
        build_generator("srresnet", scale=4, res_blocks=1, channels=8),
        DISCRIMINATORS.rebuild({"name": "srgan", "channels": 8}, "test"),
    )


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
    loss, gan, _ = build_finetune_loss(from_dict({"loss": {"vgg_weights": "random", "vgg_layer": "relu2_2"}}).loss)
    loss_train = loss.prepare(runtime.for_training)
    mse, _ = build_pretrain_loss(LossConfig())
    acc = Accelerator(cpu=True)
    out = []
    for batch in _batches(steps):
        batch = runtime.start_step(*batch)
        if phase == "pretrain":
            out.append(pretrain_step(g_train, batch, opt_g, acc, mse, precision))
        else:
            out.append(finetune_step(g_train, d_train, batch, opt_g, opt_d, acc, loss_train, gan, precision))
    return out, g


def _assert_close_losses(a, b, rtol):
    for step_a, step_b in zip(a, b):
        assert step_a.keys() == step_b.keys()
        for k in step_a:
            torch.testing.assert_close(step_a[k].float(), step_b[k].float(), rtol=rtol, atol=1e-4, msg=k)


@pytest.mark.parametrize("phase", ["pretrain", "finetune"])
def test_channels_last_and_bf16_steps_match_eager_fp32(phase):
    eager, _ = _run(Runtime("off", "no", False), phase)
    _assert_close_losses(_run(Runtime("off", "no", True), phase)[0], eager, rtol=1e-4)
    _assert_close_losses(_run(Runtime("off", "bf16", True), phase)[0], eager, rtol=2e-2)  # bf16: 8-bit mantissa


def test_fp16_step_scales_its_loss_and_stays_finite():
    losses, g = _run(Runtime("off", "fp16", False), "finetune")
    assert all(torch.isfinite(v).all() for step in losses for v in step.values())
    assert all(torch.isfinite(p).all() for p in g.parameters())


class _HostTraffic(TorchDispatchMode):
    """Records every copy from the host to another device (on a GPU, a blocking copy: a host sync)."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
            src = args[1] if func is torch.ops.aten.copy_.default else args[0]
            if src.device.type == "cpu" and out.device.type != "cpu":
                self.copies.append((str(func), tuple(src.shape)))
        return out


@pytest.mark.parametrize("mode", ["no", "bf16", "fp16"])
@pytest.mark.parametrize("gan_kind", ["vanilla", "ragan"])
def test_the_steps_neither_wait_for_the_device_nor_copy_from_the_host(mode, gan_kind, monkeypatch):
    """Both steps with the optimisers a GPU run builds (fused Adam inside Accelerate's wrapper, the fp16
    scaler) and the EMA update, on the meta device: a tensor read back to the host (`.item()`, `bool()`,
    the scaler's overflow check) fails there, and the copies from the host are recorded. On a GPU each would
    make the host wait for the device."""
    monkeypatch.setattr(torch_optimizer, "_get_fused_kernels_supported_devices",
                        lambda: ["cuda", "cpu", "meta"])  # fused Adam has meta kernels; torch lists the real devices
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    # imresize inside the forward
    g = build_generator("srresnet", scale=4, res_blocks=1, channels=8, upsample_input="bicubic")
    ema = GeneratorEMA(g, 0.9)
    g, d = g.to("meta"), DISCRIMINATORS.rebuild({"name": "srgan", "channels": 8}, "test").to("meta")
    ema.to_device("meta")
    raw = {"vgg_weights": "random", "terms": [{"name": "pixel"}, {"name": "vgg", "layer": "relu2_2"},
                                              {"name": "adv", "gan": gan_kind}, {"name": "tv"}]}
    loss, gan, _ = build_finetune_loss(from_dict({"loss": raw}).loss)
    loss, mse = loss.to("meta"), build_pretrain_loss(LossConfig())[0].to("meta")
    opt_g, opt_d = (AcceleratedOptimizer(adam(m.parameters(), 1e-3, (0.9, 0.99), torch.device("cuda")),
                                         device_placement=False) for m in (g, d))
    precision = Precision(mode, "cpu")
    hr = torch.rand(2, 3, 32, 32, device="meta")
    batch = (hr, torch.nn.functional.avg_pool2d(hr, 4))

    def steps():
        pretrain_step(g, batch, opt_g, acc, mse, precision)
        finetune_step(g, d, batch, opt_g, opt_d, acc, loss, gan, precision)
        ema.update_parameters(g)

    steps()  # the first steps build what later ones reuse (Adam's state, imresize's weights on the device)
    with _HostTraffic() as traffic:
        steps()
    assert traffic.copies == []


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["pretrain", "finetune"])
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


def test_evaluation_runs_without_cudnn_autotuning(monkeypatch):
    """Training turns cuDNN's autotuning on for its fixed shapes; evaluation's images of many sizes run with it
    off, and leave it as they found it."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    autotune_convolutions()
    assert torch.backends.cudnn.benchmark
    seen = []

    class Probe(nn.Module):
        def forward(self, lr):
            seen.append(torch.backends.cudnn.benchmark)
            return torch.nn.functional.interpolate(lr, scale_factor=4)

    pairs = [Pair("a", torch.rand(1, 3, 40, 44), torch.rand(1, 3, 10, 11)),
             Pair("b", torch.rand(1, 3, 48, 36), torch.rand(1, 3, 12, 9))]
    evaluate({"probe": Probe()}, pairs, 4, "cpu")
    assert seen == [False, False] and torch.backends.cudnn.benchmark


def test_a_tiny_run_without_batch_norm_trains_both_phases(tiny_recipe):
    run = train(tiny_recipe(model={"batch_norm": False}, discriminator={"batch_norm": False}))
    assert json.loads((run / "generator.json").read_text())["batch_norm"] is False
    model = load_generator(run / "generator.safetensors")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    finetune = [r for r in lines if r["kind"] == "train" and r["phase"] == "finetune"]
    assert finetune and all(torch.isfinite(torch.tensor(r["loss_g"])) for r in finetune)


@pytest.mark.slow
def test_a_cuda_graph_run_without_batch_norm_matches_eager(tiny_recipe, monkeypatch):
    """compile=reduce-overhead (CUDA graphs on a GPU; on this CPU torch compiles without them) with the
    BatchNorm-free parts: the run trains both phases as the eager run does, each step begun as a new
    iteration of the graphs, and says it has no graphs here."""
    begun = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: begun.append(1))
    sections = {"model": {"batch_norm": False}, "discriminator": {"batch_norm": False}}
    eager = train(tiny_recipe(name="eager", runtime={"compile": "off"}, **sections))
    assert not begun
    graphed = train(tiny_recipe(name="graphed", runtime={"compile": "reduce-overhead"}, **sections))
    logs = {run: [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
            for run in (eager, graphed)}
    assert next(r for r in logs[graphed] if r["kind"] == "run")["compile"] == "reduce-overhead"
    steps = [r for r in logs[graphed] if r["kind"] == "train"]
    assert len(begun) == steps[-1]["step"] == 6  # 3 steps of each phase
    assert any("CUDA graphs need a GPU" in r.get("message", "") for r in logs[graphed] if r["kind"] == "note")
    for a, b in zip(steps, [r for r in logs[eager] if r["kind"] == "train"]):
        for key in (k for k in a if k.startswith("loss_")):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (a["step"], key)
    weights = {run: load_file(run / "generator.safetensors") for run in (eager, graphed)}
    for k, v in weights[eager].items():
        torch.testing.assert_close(weights[graphed][k], v, rtol=1e-3, atol=1e-4)
