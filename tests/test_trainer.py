import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from fastsr.data.cache import prepare_cache
from fastsr.engine import steps as steps_module
from fastsr.engine.checkpoint import complete_checkpoints, load_state
from fastsr.engine.ema import GeneratorEMA
from fastsr.engine.steps import finetune_step, pretrain_step
from fastsr.engine.trainer import train
from fastsr.models import DISCRIMINATORS, build_generator
from fastsr.recipe import load_recipe
from fastsr.weights import load_generator

from conftest import PROCESS_ENV, ROOT


def records(run_dir, kind):
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_two_phase_run_leaves_everything_a_user_needs(tiny_recipe):
    recipe = tiny_recipe(train={"val_every": 2, "save_every": 2, "ema": 0.5})
    run = train(recipe)
    steps_per_epoch = 6 * 2 // 4
    train_records = records(run, "train")
    assert [r["step"] for r in train_records] == list(range(1, 2 * steps_per_epoch + 1))
    assert {r["phase"] for r in train_records} == {"pretrain", "finetune"}
    finetune = [r for r in train_records if r["phase"] == "finetune"]
    assert all({"loss_pixel", "loss_adv", "loss_tv", "loss_vgg", "loss_d", "loss_g"} <= set(r) for r in finetune)
    val = records(run, "val")
    assert [r["step"] for r in val] == [2, 3, 4, 6]  # every 2 steps, at the end of each phase, never twice
    assert all(r["images"] == 2 and r["bicubic_psnr"] > 20 for r in val)
    assert load_recipe(run / "recipe.yaml") == recipe
    assert (run / "curves.png").stat().st_size > 1000
    pictures = run / "samples" / "step_00000006" / recipe.data.source.rsplit("/", 1)[-1]  # the source folder's name
    assert sorted(p.name for p in pictures.iterdir()) == ["v0.png", "v1.png"]
    newest = complete_checkpoints(run)[-1]
    assert len(complete_checkpoints(run)) == recipe.train.keep_checkpoints
    assert sorted(p.name for p in newest.iterdir()) == [
        "COMPLETE", "discriminator.json", "discriminator.safetensors", "ema.json", "ema.safetensors",
        "generator.json", "generator.safetensors", "state.pt"]
    state = load_state(newest)
    assert state["position"] == {"step": 6, "phase": 2, "epoch": 0, "batch": 0}
    # The exported weights are the EMA ones and rebuild without the recipe.
    exported = load_file(run / "generator.safetensors")
    ema = load_file(newest / "ema.safetensors")
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    model = load_generator(run / "generator.safetensors")
    assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_validation_on_several_sets_logs_each(tiny_recipe, photo_folder, tmp_path, backend):
    """data.val_sets: a test set by name under data.benchmark_root and a folder, each scored and logged
    under its own name, with its own pictures; the numbers equal `fastsr eval`'s on the same images exactly,
    whichever loader fed training, with the training copy laid out channels_last."""
    from fastsr.cli import main

    bench = tmp_path / "benchmarks"
    (bench / "Set5" / "HR").mkdir(parents=True)
    for name in ("v0.png", "v1.png"):
        (bench / "Set5" / "HR" / name).write_bytes((photo_folder / "val" / name).read_bytes())
    other = photo_folder / "train"
    recipe = tiny_recipe(data={"val_sets": ["set5", str(other)], "benchmark_root": str(bench), "backend": backend},
                         train={"epochs_finetune": 0}, runtime={"channels_last": "on"})
    run = train(recipe)
    assert records(run, "run")[0]["loader"] == backend and records(run, "run")[0]["channels_last"]
    val = records(run, "val")
    assert [(r["set"], r["images"]) for r in val] == [("Set5", 2), ("train", 6)]
    assert all({"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"} <= set(r) for r in val)
    step = val[0]["step"]
    assert sorted(p.name for p in (run / "samples" / f"step_{step:08d}").iterdir()) == ["Set5", "train"]
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", f"M={run / 'generator.safetensors'}", "--model", "bicubic", "--data", "set5",
                 "--data", str(other), "--data-root", str(bench), "--json", str(out)]) == 0
    sets = json.loads(out.read_text())["sets"]
    for r in val:
        assert sets[r["set"]]["methods"]["M"]["psnr"] == r["psnr"]
        assert sets[r["set"]]["methods"]["M"]["ssim"] == r["ssim"]
        assert sets[r["set"]]["methods"]["Bicubic"]["ssim"] == r["bicubic_ssim"]


def test_srcnn_trains_and_beats_its_start(tiny_recipe):
    recipe = tiny_recipe(model={"name": "srcnn", "kernels": [9, 1, 5]},
                         train={"epochs_pretrain": 4, "epochs_finetune": 0, "lr": 3e-3})
    run = train(recipe)
    losses = [r["loss_pixel"] for r in records(run, "train")]
    assert losses[-1] < losses[0]
    assert load_generator(run / "generator.safetensors").config["kernels"] == [9, 1, 5]
    # Its weights can start another run of the same architecture.
    again = tiny_recipe(name="again", model={"name": "srcnn", "kernels": [9, 1, 5]},
                        train={"epochs_finetune": 0, "init_from": str(run / "generator.safetensors")})
    assert train(again).is_dir()


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_resume_auto_continues_exactly(tiny_recipe, tmp_path, photo_folder, backend):
    """A run resumed from a mid-epoch checkpoint ends with the uninterrupted run's weights and EMA, bitwise
    (the torch loader from files; DALI from a `fastsr prepare` cache)."""
    data = {"backend": backend}
    if backend == "dali":
        prepare_cache(str(photo_folder), tmp_path / "cache", workers=1, progress=False)
        data["cache"] = str(tmp_path / "cache")
    recipe = tiny_recipe(data=data, train={"epochs_pretrain": 2, "epochs_finetune": 1, "save_every": 1,
                                           "keep_checkpoints": 20, "ema": 0.5})
    full = train(recipe)
    assert records(full, "run")[0]["loader"] == backend
    resumed_recipe = tiny_recipe(name="resumed", data=data,
                                 train={"epochs_pretrain": 2, "epochs_finetune": 1, "resume": "auto", "ema": 0.5})
    middle = full / "checkpoints" / "step_00000002"  # mid-epoch of pretrain (3 steps per epoch)
    shutil.copytree(middle, resumed_recipe.run_dir / "checkpoints" / middle.name)
    resumed = train(resumed_recipe)
    assert records(resumed, "train")[0]["step"] == 3
    for name in ("generator", "discriminator", "ema"):
        a = load_file(full / "checkpoints" / "step_00000009" / f"{name}.safetensors")
        b = load_file(resumed / "checkpoints" / "step_00000009" / f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_init_from_pretrain_weights(tiny_recipe):
    pretrained = train(tiny_recipe(train={"epochs_finetune": 0}))
    weights = pretrained / "generator.safetensors"
    recipe = tiny_recipe(name="b_only", train={"epochs_pretrain": 0, "init_from": str(weights)})
    captured = {}
    real_finetune_step = steps_module.finetune_step

    def spy(g, *args, **kwargs):
        captured.setdefault("first", {k: v.clone() for k, v in g.state_dict().items()})
        return real_finetune_step(g, *args, **kwargs)

    steps_module.finetune_step = spy
    try:
        train(recipe)
    finally:
        steps_module.finetune_step = real_finetune_step
    start = load_file(weights)
    assert all(torch.equal(captured["first"][k], start[k]) for k in start)
    with pytest.raises(ValueError, match="weights are for"):
        train(tiny_recipe(name="wrong", model={"channels": 16}, train={"epochs_pretrain": 0, "init_from": str(weights)}))


def test_finetune_step_applies_each_weight_once(monkeypatch):
    """loss_g == pixel + w_vgg * vgg + w_adv * adv + w_tv * tv, and D is not updated by G's loss."""
    from fastsr.losses import build_finetune_loss
    from fastsr.recipe import from_dict

    recipe = from_dict({"loss": {"w_vgg": 0.5, "w_adv": 0.25, "w_tv": 0.125, "vgg_weights": "random",
                                 "vgg_layer": "relu2_2"}})
    torch.manual_seed(0)
    g = build_generator("srresnet", scale=4, res_blocks=1, channels=8)
    d = DISCRIMINATORS.rebuild({"name": "srgan", "channels": 8}, "test")
    opt_g = torch.optim.SGD(g.parameters(), lr=0.0)  # lr 0: the step must not move anything
    opt_d = torch.optim.SGD(d.parameters(), lr=0.0)
    loss, gan, _ = build_finetune_loss(recipe.loss)
    batch = (torch.rand(2, 3, 32, 32), torch.rand(2, 3, 8, 8))
    out = finetune_step(g, d, batch, opt_g, opt_d, Accelerator(cpu=True), loss, gan)
    expected = out["pixel"] + 0.5 * out["vgg"] + 0.25 * out["adv"] + 0.125 * out["tv"]
    torch.testing.assert_close(out["g"], expected)
    # D's gradients are those of its own loss only: recompute them from scratch and compare.
    d_grads = [p.grad.clone() for p in d.parameters()]
    d.zero_grad()
    sr = g(batch[1]).detach()
    d.requires_grad_(True)
    from fastsr.losses import d_loss

    d_loss(d(batch[0]), d(sr)).backward()
    for got, want in zip(d_grads, [p.grad for p in d.parameters()]):
        torch.testing.assert_close(got, want)


def _pixel_loss(kind: str):
    """The pretrain phase's default loss: the pixel loss of `kind` alone."""
    from fastsr.losses import LossConfig, build_pretrain_loss

    return build_pretrain_loss(LossConfig(pixel=kind))[0]


def test_pretrain_step_learns_a_fixed_batch():
    torch.manual_seed(0)
    g = build_generator("srresnet", scale=4, res_blocks=1, channels=8)
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    hr = torch.rand(2, 3, 32, 32)
    batch = (hr, torch.nn.functional.avg_pool2d(hr, 4))
    acc = Accelerator(cpu=True)
    l1 = _pixel_loss("l1")
    first = pretrain_step(g, batch, opt, acc, l1)["pixel"]
    for _ in range(20):
        last = pretrain_step(g, batch, opt, acc, l1)["pixel"]
    assert last < 0.5 * first


def test_ema_update_is_bitwise_averaged_models_own():
    """The loop's EMA update (no host read-back per step) gives exactly what AveragedModel.update_parameters
    gives: the first copy, the averages of weights and BatchNorm statistics, the int64 counters, n_averaged."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    g = build_generator("srresnet", scale=4, res_blocks=1, channels=8)  # BatchNorm: float and int64 buffers
    ours, theirs = GeneratorEMA(g, 0.75), AveragedModel(g, multi_avg_fn=get_ema_multi_avg_fn(0.75), use_buffers=True)
    g.to(memory_format=torch.channels_last)  # as the run lays it out before the loop starts
    opt, acc = torch.optim.Adam(g.parameters(), lr=1e-2), Accelerator(cpu=True)
    hr = torch.rand(2, 3, 32, 32)
    for _ in range(3):
        pretrain_step(g, (hr, torch.nn.functional.avg_pool2d(hr, 4)), opt, acc, _pixel_loss("mse"))
        ours.update_parameters(g)
        theirs.update_parameters(g)
    mine, want = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == want.keys() and all(torch.equal(mine[k], want[k]) for k in want)
    assert not torch.equal(mine["module.head.0.weight"], g.head[0].weight)  # an average, not a copy


def test_fresh_run_keeps_an_earlier_run_aside(tiny_recipe):
    recipe = tiny_recipe(train={"epochs_finetune": 0})
    first = train(recipe)
    first_log = (first / "log.jsonl").read_text()
    second = train(recipe)
    archived = [p for p in second.parent.iterdir() if p.name.startswith("tiny_archived_")]
    assert len(archived) == 1 and (archived[0] / "log.jsonl").read_text() == first_log
    assert [r["step"] for r in records(second, "train")] == [1, 2, 3]  # not appended to the old log


def test_learning_rate_schedules():
    from fastsr.engine.phases import learning_rate

    assert [learning_rate(1.0, "constant", s, 10) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    cosine = [learning_rate(1.0, "cosine", s, 10) for s in range(10)]
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5) and 0 < cosine[9] < 0.03
    assert all(a > b for a, b in zip(cosine, cosine[1:]))


def test_cosine_schedule_reaches_the_optimisers(tiny_recipe):
    run = train(tiny_recipe(train={"lr": 1e-3, "lr_finetune": 1e-4, "lr_schedule": "cosine"}))
    lrs = {(r["phase"], r["step"]): r["lr"] for r in records(run, "train")}
    assert lrs[("pretrain", 1)] == pytest.approx(1e-3) and lrs[("pretrain", 3)] == pytest.approx(2.5e-4)
    assert lrs[("finetune", 4)] == pytest.approx(1e-4) and lrs[("finetune", 6)] == pytest.approx(2.5e-5)


def test_bad_input_fails_before_the_run_directory_is_touched(tiny_recipe, tmp_path):
    with pytest.raises(ValueError, match="data source path not found"):
        train(tiny_recipe(data={"source": str(tmp_path / "nowhere")}))
    recipe = tiny_recipe(loss={"vgg_weights": str(tmp_path / "vgg.pth"), "vgg_missing": "error"})
    with pytest.raises(RuntimeError, match="vgg.pth"):
        train(recipe)
    assert not recipe.run_dir.exists()
    # A resume into another architecture leaves the existing run (and its recipe) as it was.
    run = train(tiny_recipe(train={"epochs_finetune": 0}))
    saved = (run / "recipe.yaml").read_text()
    with pytest.raises(ValueError, match="the recipe builds"):
        train(tiny_recipe(model={"res_blocks": 2}, train={"epochs_finetune": 0, "resume": "auto"}))
    assert (run / "recipe.yaml").read_text() == saved


def test_esrgan_trains_both_phases_logging_each_term_under_its_name(tiny_recipe):
    """ESRGAN's parts through the whole trainer: RRDBNet, the VGG-style discriminator, L1 pretrain, then the
    recipe's term list with the relativistic GAN; each weight applied once, each term logged by its name."""
    recipe = tiny_recipe(
        name="esrgan", model={"name": "rrdbnet", "blocks": 1, "features": 8, "growth": 4},
        discriminator={"name": "vgg128", "channels": 8},
        loss={"pixel": "l1", "vgg_layer": "conv5_4",  # the reference list's layer: the terms name their own
              "terms": [{"name": "pixel", "kind": "l1", "weight": 1e-2},
                        {"name": "vgg", "layer": "relu2_2", "criterion": "l1", "weight": 1.0, "label": "percep"},
                        {"name": "adv", "gan": "ragan", "weight": 5e-3}]})
    run = train(recipe)
    finetune = [r for r in records(run, "train") if r["phase"] == "finetune"]
    assert finetune and all({k for k in r if k.startswith("loss_")} ==
                            {"loss_pixel", "loss_percep", "loss_adv", "loss_d", "loss_g"} for r in finetune)
    for r in finetune:  # log_every 1: each record is one step's losses
        assert r["loss_g"] == pytest.approx(1e-2 * r["loss_pixel"] + r["loss_percep"] + 5e-3 * r["loss_adv"], rel=1e-5)
    saved = json.loads((run / "generator.json").read_text())
    assert saved == {"name": "rrdbnet", "scale": 4, "blocks": 1, "features": 8, "growth": 4, "residual_scale": 0.2}
    assert load_generator(run / "generator.safetensors").config == saved
    assert json.loads((run / "checkpoints" / "step_00000006" / "discriminator.json").read_text())["name"] == "vgg128"


CHARBONNIER = '''
from dataclasses import dataclass

import torch
from torch import nn

from fastsr.losses import LOSS_TERMS, TermConfig


@dataclass
class CharbonnierConfig(TermConfig):
    eps: float = 1e-3  # the smoothing of |x| near 0


@LOSS_TERMS.register("charbonnier", CharbonnierConfig)
class Charbonnier(nn.Module):
    fp32 = True

    def __init__(self, config: CharbonnierConfig):
        super().__init__()
        self.eps = config.eps

    def forward(self, sr, hr, critic):
        return torch.sqrt((sr - hr) ** 2 + self.eps ** 2).mean()
'''


def test_a_plugin_loss_term_trains_the_pretrain_phase(tiny_recipe, tmp_path, monkeypatch):
    """Any registered term works in either phase: a plugin's Charbonnier term as the pretrain loss."""
    (tmp_path / "charbonnier_term.py").write_text(CHARBONNIER)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tiny_recipe(plugins=["charbonnier_term"], train={"epochs_finetune": 0},
                         loss={"terms_pretrain": [{"name": "charbonnier", "eps": 0.01}, {"name": "tv", "weight": 1e-6}]})
    run = train(recipe)
    logged = records(run, "train")
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert all({"loss_charbonnier", "loss_tv"} <= set(r) and "loss_pixel" not in r for r in logged)
    first = logged[0]["loss_charbonnier"]
    assert 0.01 < first < 1.0  # sqrt(d^2 + eps^2) of images in [0, 1]


def test_the_pretrain_phase_refuses_an_adversarial_term(tiny_recipe):
    from fastsr.errors import RecipeError

    with pytest.raises(RecipeError, match=r"loss.terms_pretrain cannot hold an `adv` term"):
        tiny_recipe(loss={"terms_pretrain": [{"name": "pixel"}, {"name": "adv"}]})


def test_a_phase_takes_steps_or_epochs_not_both(tiny_recipe):
    from fastsr.errors import RecipeError

    with pytest.raises(RecipeError, match=r"train.steps_finetune and train.epochs_finetune are both set"):
        tiny_recipe(train={"steps_finetune": 4})
    run = train(tiny_recipe(train={"epochs_pretrain": None, "steps_pretrain": 4, "epochs_finetune": None,
                                   "steps_finetune": 2}))
    assert [(r["phase"], r["step"]) for r in records(run, "train")] == [
        ("pretrain", 1), ("pretrain", 2), ("pretrain", 3), ("pretrain", 4), ("finetune", 5), ("finetune", 6)]


@pytest.mark.slow
def test_a_x3_plugin_generator_trains_and_its_weights_evaluate_without_naming_the_plugin(tiny_recipe, plugin_cleanup):
    """The scale a recipe may ask for is the generator's own (plugin_arch declares 2, 3, 4); the trained
    generator.json names its module, so `fastsr eval` imports it itself, in a fresh process."""
    recipe = tiny_recipe(scale=3, plugins=["plugin_arch"], model={"name": "plainnet", "channels": 4},
                         data={"hr_crop": 30}, train={"epochs_finetune": 0})
    run = train(recipe)
    weights = run / "generator.safetensors"
    assert json.loads(weights.with_suffix(".json").read_text()) == {"name": "plainnet", "scale": 3, "channels": 4,
                                                                     "plugin": "plugin_arch"}
    env = {**PROCESS_ENV, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "fastsr.cli", "eval", "--model", f"Plain={weights}", "--scale", "3",
                           "--data", str(recipe.data.source) + "/val", "--json", str(run / "eval.json")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    validated = next(r for r in records(run, "val"))["psnr"]
    (scored,) = json.loads((run / "eval.json").read_text())["sets"].values()
    assert scored["methods"]["Plain"]["psnr"] == validated
