"""Training that goes wrong: a NaN loss (stop or skip), running out of memory (in a step, in validation, in
`fastsr eval` and `fastsr upscale`), a full disk mid-checkpoint. Each ends in one line naming the step or file
and what to change, and the last good checkpoint survives."""

import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage import data as skdata

from fastsr.cli import main
from fastsr.engine import checkpoint as checkpoint_module
from fastsr.engine import steps as steps_module
from fastsr.losses import pixel as pixel_module
from fastsr.engine.checkpoint import complete_checkpoints, load_state
from fastsr.engine.lossguard import LossGuard
from fastsr.engine.steps import finetune_step, pretrain_step
from fastsr.engine.trainer import train
from fastsr.errors import CheckpointWriteError, NonFiniteLoss, OutOfMemory
from fastsr.infer import MemoryAdvice
from fastsr.losses import LossConfig, adversarial, build_finetune_loss, build_pretrain_loss
from fastsr.models import DISCRIMINATORS, SRResNet, build_generator
from fastsr.recipe import load_recipe, save_recipe
from fastsr.weights import save_weights


def records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def nan_on_calls(monkeypatch, calls: set[int], name: str = "pixel_loss", module=pixel_module):
    """Make the `name` loss the training steps call (in `module`) return NaN on the given (1-based) calls."""
    real = getattr(module, name)
    count = [0]

    def poisoned(*args, **kwargs):
        count[0] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if count[0] in calls else loss

    monkeypatch.setattr(module, name, poisoned)


def one_step(run_dir, step):
    return run_dir / "checkpoints" / f"step_{step:08d}"


# 6 training images x repeat 2 / batch 4 = 3 steps per epoch; 3 epochs of pretrain = 9 steps.
PRETRAIN_ONLY = {"epochs_pretrain": 3, "epochs_finetune": 0, "save_every": 2, "log_every": 3, "keep_checkpoints": 5}


def test_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_recipe, monkeypatch):
    nan_on_calls(monkeypatch, {5})
    recipe = tiny_recipe(train=PRETRAIN_ONLY)
    with pytest.raises(NonFiniteLoss) as e:
        train(recipe)
    msg = str(e.value)
    assert "\n" not in msg and "loss pixel" in msg and "at step 5" in msg and str(one_step(recipe.run_dir, 4)) in msg
    # The check before the step-6 checkpoint caught it: nothing from after step 5 was saved.
    assert [p.name for p in complete_checkpoints(recipe.run_dir)] == ["step_00000002", "step_00000004"]
    weights = load_file(one_step(recipe.run_dir, 4) / "generator.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert records(recipe.run_dir, "nonfinite")[0]["step"] == 6
    assert not (recipe.run_dir / "generator.safetensors").exists()


def test_nan_in_the_finetune_phase_names_the_loss(tiny_recipe, monkeypatch):
    nan_on_calls(monkeypatch, {2}, "g_adv_loss", adversarial)
    with pytest.raises(NonFiniteLoss, match=r"loss adv, g became NaN or infinite at step 5"):
        train(tiny_recipe(train={"epochs_pretrain": 1, "epochs_finetune": 1, "log_every": 1}))


def test_skip_drops_bad_steps_and_the_run_finishes(tiny_recipe, monkeypatch):
    nan_on_calls(monkeypatch, {2, 5})
    run = train(tiny_recipe(train={**PRETRAIN_ONLY, "nonfinite": "skip"}))
    assert [r["step"] for r in records(run, "skipped")] == [2, 5]
    assert all(r["loss_pixel"] == r["loss_pixel"] for r in records(run, "train"))  # no NaN means logged
    assert all(torch.isfinite(w).all() for w in load_file(run / "generator.safetensors").values())


def test_skip_stops_after_too_many_bad_steps(tiny_recipe, monkeypatch):
    nan_on_calls(monkeypatch, {2, 3, 4})
    with pytest.raises(NonFiniteLoss, match=r"3 steps had a NaN .*steps 2, 3, 4.*max_skipped_steps=2"):
        train(tiny_recipe(train={**PRETRAIN_ONLY, "nonfinite": "skip", "max_skipped_steps": 2}))


def _accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_a_skipped_step_leaves_weights_optimiser_and_batchnorm_statistics_alone():
    torch.manual_seed(0)
    g = build_generator("srresnet", scale=4, res_blocks=1, channels=8)
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    hr, lr = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 8, 8)
    mse, _ = build_pretrain_loss(LossConfig())
    pretrain_step(g, (hr, lr), opt, _accelerator(), mse)  # give Adam some state
    before = {k: v.clone() for k, v in g.state_dict().items()}
    opt_before = {k: v.clone() for k, v in opt.state[next(iter(g.parameters()))].items()}
    guard = LossGuard("skip", 10, _accelerator())
    guard.start_phase([g])
    lr_bad = lr.clone()
    lr_bad[0, 0, 0, 0] = float("nan")
    losses = pretrain_step(g, (hr, lr_bad), opt, _accelerator(), mse, keep=guard.keep)
    assert not torch.isfinite(losses["pixel"]) and guard.end_step(2) is False
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())  # incl. BatchNorm running stats
    assert all(torch.equal(opt_before[k], v) for k, v in opt.state[next(iter(g.parameters()))].items())


def test_finetune_step_applies_nothing_when_refused():
    torch.manual_seed(0)
    g = build_generator("srresnet", scale=4, res_blocks=1, channels=8)
    d = DISCRIMINATORS.rebuild({"name": "srgan", "channels": 8}, "test")
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    loss, gan, _ = build_finetune_loss(load_recipe("recipes/quickstart.yaml", ["loss.w_vgg=0"]).loss)
    params = [p.clone() for p in (*g.parameters(), *d.parameters())]
    finetune_step(g, d, (torch.rand(2, 3, 32, 32), torch.rand(2, 3, 8, 8)), opt_g, opt_d, _accelerator(), loss, gan,
                  keep=lambda loss: False)
    assert all(torch.equal(a, b) for a, b in zip(params, (*g.parameters(), *d.parameters())))


def test_out_of_memory_suggests_a_smaller_batch(tiny_recipe, monkeypatch, tmp_path, capsys):
    real = steps_module.pretrain_step

    def oom_on_second(g, batch, *args, **kwargs):
        if oom_on_second.calls == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        oom_on_second.calls += 1
        return real(g, batch, *args, **kwargs)

    oom_on_second.calls = 0
    monkeypatch.setattr(steps_module, "pretrain_step", oom_on_second)
    recipe = tiny_recipe(train={"epochs_finetune": 0})
    with pytest.raises(OutOfMemory, match=r"at step 2 with train.batch_size=4 .*train.batch_size=2"):
        train(recipe)
    assert records(recipe.run_dir, "oom")[0]["step"] == 1
    # Through the CLI: one line, exit 2.
    oom_on_second.calls = 0
    save_recipe(recipe, tmp_path / "r.yaml")
    assert main(["train", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsr: error: out of memory at step 2") and "\n" not in err


def oom_when_inferring(monkeypatch):
    """SRResNet's forward runs out of device memory under inference mode (validation, eval, upscale: never a
    training step), as CUDA does when an image's tiles do not fit."""
    real = SRResNet.forward

    def forward(self, x):
        if torch.is_inference_mode_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real(self, x)

    monkeypatch.setattr(SRResNet, "forward", forward)


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory):
    """A 512x512 photograph (128x128 LR at x4), alone in a folder: big enough to tile."""
    folder = tmp_path_factory.mktemp("big")
    Image.fromarray(skdata.astronaut()).save(folder / "astronaut.png")
    return folder / "astronaut.png"


@pytest.fixture
def srresnet_weights(tmp_path):
    model = build_generator("srresnet", scale=4, res_blocks=1, channels=8)
    save_weights(model, tmp_path / "g.safetensors", model.config)
    return tmp_path / "g.safetensors"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsr: error: out of memory ") and "\n" not in err and "Traceback" not in err
    return err


def test_out_of_memory_in_validation_names_the_validation_tile(tiny_recipe, monkeypatch, big_photo):
    oom_when_inferring(monkeypatch)
    recipe = tiny_recipe(data={"val_source": str(big_photo.parent)},
                         train={"epochs_finetune": 0, "val_tile": 96})  # 3 steps, then validation
    with pytest.raises(OutOfMemory) as e:
        train(recipe)
    msg = str(e.value)
    assert msg.startswith("out of memory upscaling astronaut (128x128 LR) in tiles of 96 LR pixels on cpu, "
                          "validating at step 3, beside the training state; ")
    assert "lower train.val_tile (e.g. train.val_tile=48)" in msg and "train.resume=auto" in msg
    assert "batch_size" not in msg and "\n" not in msg
    assert [r["step"] for r in records(recipe.run_dir, "oom")] == [3]
    assert records(recipe.run_dir, "oom")[0]["message"] == msg
    assert records(recipe.run_dir, "train")[-1]["step"] == 3  # the training steps ran; validation stopped it


@pytest.mark.parametrize("tile, advice", [
    ("128", "lower --tile (e.g. --tile 64)"),
    ("0", "tile it with --tile (e.g. --tile 256)"),  # 300x280 LR, whole
    ("48", "the tiles are already small: use a smaller model"),  # halving would go under the 32-pixel minimum
])
def test_out_of_memory_in_upscale_names_the_tile_and_the_image(tile, advice, monkeypatch, tmp_path,
                                                               srresnet_weights, capsys):
    oom_when_inferring(monkeypatch)
    src = tmp_path / "photo.png"
    Image.fromarray(np.ascontiguousarray(skdata.astronaut()[:280, :300])).save(src)
    out = tmp_path / "photo_x4.png"
    assert main(["upscale", str(src), "--weights", str(srresnet_weights), "-o", str(out), "--tile", tile,
                 "--device", "cpu"]) == 2
    err = one_line(capsys)
    how = f"in tiles of {tile} LR pixels" if tile != "0" else "whole (--tile 0)"
    assert f"upscaling {src} (300x280 LR) {how} on cpu; {advice}" in err
    assert not out.exists()


def test_out_of_memory_in_eval_names_its_tile_option(monkeypatch, big_photo, srresnet_weights, capsys):
    oom_when_inferring(monkeypatch)
    assert main(["eval", "--model", "bicubic", "--model", str(srresnet_weights), "--data", str(big_photo),
                 "--tile", "100", "--device", "cpu"]) == 2
    err = one_line(capsys)
    assert "upscaling astronaut (128x128 LR) in tiles of 100 LR pixels on cpu; lower --tile (e.g. --tile 50)" in err
    assert main(["eval", "--model", "bicubic", "--tile", "16"]) == 2  # a tile within the overlap is refused first
    assert "--tile: need tile >= 0 and 0 <= overlap < tile, got tile=16, overlap=32" in capsys.readouterr().err


def test_out_of_memory_in_a_perceptual_metric_says_to_leave_it_out(monkeypatch, big_photo, capsys):
    from fastsr import perceptual_metrics

    def network(sr, hr):  # LPIPS on the whole 512x512 image, out of device memory
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(perceptual_metrics, "build_perceptual_metric", lambda name, device, weights=None: network)
    assert main(["eval", "--model", "bicubic", "--data", str(big_photo), "--metrics", "psnr,lpips",
                 "--device", "cpu"]) == 2
    err = one_line(capsys)
    assert "scoring astronaut (512x512 HR) with lpips on cpu; lpips runs on the whole image: leave it out of " \
           "--metrics" in err


def test_out_of_memory_advice_on_a_gpu():
    """The wording where the CPU is the way out, and for an image upscaled whole; "cuda" without a GPU here."""
    cli = MemoryAdvice(tile="--tile", metrics="--metrics", cpu="--device cpu")
    assert cli.for_tiles("0801.png", 339, 510, 0, 32, "cuda") == (
        "out of memory upscaling 0801.png (510x339 LR) whole (--tile 0) on cuda; tile it with --tile (e.g. --tile 256)")
    assert cli.for_tiles("0801.png", 339, 510, 256, 32, "cuda").endswith("lower --tile (e.g. --tile 128)")
    assert cli.for_tiles("0801.png", 339, 510, 64, 32, "cuda").endswith(  # 32 would be no more than the overlap
        "the tiles are already small: run it on the CPU (--device cpu) or use a smaller model")
    assert cli.for_tiles("a.png", 20, 17, 256, 32, "cuda").endswith(  # one tile, smaller than the tile size
        "the tiles are already small: run it on the CPU (--device cpu) or use a smaller model")


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tiny_recipe, monkeypatch, tmp_path, capsys):
    real_save = torch.save

    def disk_full_on_third(obj, path, *args, **kwargs):
        disk_full_on_third.calls += 1
        if disk_full_on_third.calls == 3:
            with open(path, "wb") as f:  # a partial write, then the disk is full
                f.write(b"\x00" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    disk_full_on_third.calls = 0
    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full_on_third)
    recipe = tiny_recipe(train={**PRETRAIN_ONLY, "save_every": 1})
    with pytest.raises(CheckpointWriteError) as e:
        train(recipe)
    msg = str(e.value)
    intact = one_step(recipe.run_dir, 2)
    assert "No space left on device" in msg and f"{intact} is intact" in msg and "train.resume=auto" in msg
    assert [p.name for p in complete_checkpoints(recipe.run_dir)] == ["step_00000001", "step_00000002"]
    assert list((recipe.run_dir / "checkpoints").glob(".*")) == []  # the partial one is gone
    assert load_state(intact)["position"]["step"] == 2
    # Space freed: the run resumes from the intact checkpoint and finishes.
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    resumed = train(tiny_recipe(train={**PRETRAIN_ONLY, "resume": "auto"}))
    assert records(resumed, "train")[0]["step"] == 3 and (resumed / "generator.safetensors").is_file()


def test_a_real_write_failure_mid_checkpoint_leaves_the_previous_checkpoint(tmp_path):
    """The OS refuses the write (RLIMIT_FSIZE makes write() fail with EFBIG part way, as a full disk fails
    with ENOSPC); run in a child process, as the limit applies to the whole process."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        import torch
        from fastsr.engine.checkpoint import CheckpointWriteError, save_checkpoint
        from fastsr.models import build_generator
        run = {str(tmp_path)!r}
        small = build_generator("srresnet", scale=4, res_blocks=1, channels=8)
        big = build_generator("srresnet", scale=4, res_blocks=4, channels=64)
        save_checkpoint(run, 1, {{"generator": (small, small.config)}}, {{"step": 1}}, keep=2)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process at the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            save_checkpoint(run, 2, {{"generator": (big, big.config)}}, {{"step": 2}}, keep=2)
        except CheckpointWriteError as e:
            print(e)
            sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "File too large" in done.stdout and "step_00000001 is intact" in done.stdout
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000001"]
    assert os.listdir(tmp_path / "checkpoints") == ["step_00000001"]
    assert load_state(one_step(tmp_path, 1)) == {"step": 1}
