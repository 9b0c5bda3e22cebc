"""Several processes, several "machines" on loopback, and the way clusters stop jobs.

Selected by `pytest -k "distributed or multinode or preempt or resume"`. On a machine without a GPU
the processes form a gloo group (`accelerate launch --multi_gpu` with the trainer's `cpu=True`)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROCESS_ENV, ROOT, free_port, tiny_recipe_dict
from safetensors.torch import load_file

import fastsr.engine.steps as steps_module
from fastsr.cli import main
from fastsr.engine.checkpoint import complete_checkpoints, load_state, resolve_resume
from fastsr.engine.safety.signals import EXIT_PREEMPTED, Preempted
from fastsr.engine.trainer import train
from fastsr.recipe import load_recipe


def _weights(path):
    return load_file(path)


def _parameters(weights):
    """All but BatchNorm's running statistics: DDP broadcasts those from rank 0 at the start of each
    forward, so after the last step each rank holds the statistics of its own last batch (rank 0's
    are the ones exported)."""
    return {k: v for k, v in weights.items() if not k.endswith(("running_mean", "running_var"))}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# Preemption and resume (in-process: a real signal, delivered to this process mid-run)


@pytest.mark.parametrize("sig, phase_step", [(signal.SIGTERM, 2), (signal.SIGUSR1, 5)])
def test_preempt_by_signal_then_resume_equals_uninterrupted(tiny_recipe, monkeypatch, sig, phase_step):
    """Stop mid-epoch (step 2, pretrain; or step 5, finetune), resume=auto, end bitwise where an
    uninterrupted run ends (CPU, torch loader)."""
    sections = dict(data={"backend": "torch"}, train={"epochs_pretrain": 2, "epochs_finetune": 1})
    full = train(tiny_recipe(name="full", **sections))

    steps = {"n": 0}
    real_pretrain, real_gan = steps_module.pretrain_step, steps_module.finetune_step

    def signal_at(real):
        def step(*args, **kwargs):
            out = real(*args, **kwargs)
            steps["n"] += 1
            if steps["n"] == phase_step:
                os.kill(os.getpid(), sig)  # arrives mid-step in real life; the step still completes
            return out
        return step

    monkeypatch.setattr(steps_module, "pretrain_step", signal_at(real_pretrain))
    monkeypatch.setattr(steps_module, "finetune_step", signal_at(real_gan))
    before = signal.getsignal(sig)
    with pytest.raises(Preempted) as stopped:
        train(tiny_recipe(name="stopped", **sections))
    assert signal.getsignal(sig) is before  # the trainer's handler is gone with the run
    assert stopped.value.step == phase_step
    run = stopped.value.checkpoint.parent.parent
    assert complete_checkpoints(run)[-1] == stopped.value.checkpoint
    assert load_state(stopped.value.checkpoint)["position"]["step"] == phase_step

    monkeypatch.setattr(steps_module, "pretrain_step", real_pretrain)
    monkeypatch.setattr(steps_module, "finetune_step", real_gan)
    sections["train"]["resume"] = "auto"
    resumed = train(tiny_recipe(name="stopped", **sections))
    for name in ("generator", "discriminator"):
        last = f"step_{9:08d}"
        assert _same(_weights(full / "checkpoints" / last / f"{name}.safetensors"),
                     _weights(resumed / "checkpoints" / last / f"{name}.safetensors")), name
    assert _same(_weights(full / "generator.safetensors"), _weights(resumed / "generator.safetensors"))


def _recipe_file(photo_folder, tmp_path, **sections) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(photo_folder, tmp_path / "runs", **sections)))
    return path


def _sigterm_once_training(proc: subprocess.Popen, log: Path, timeout: float = 180) -> tuple[str, str]:
    """SIGTERM `proc` once its run has logged a training step; its (stdout, stderr) when it exits."""
    deadline = time.time() + timeout
    while time.time() < deadline and not (log.is_file() and '"kind": "train"' in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=timeout)


def test_preempt_sigterm_exits_with_the_documented_code(photo_folder, tmp_path):
    recipe = _recipe_file(photo_folder, tmp_path, train={"epochs_pretrain": 500, "epochs_finetune": 0})
    proc = subprocess.Popen([sys.executable, str(ROOT / "fastsr" / "train.py"), str(recipe)], env=PROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "runs" / "tiny" / "log.jsonl"
    _, err = _sigterm_once_training(proc, log)
    assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    assert "train.resume=auto" in err
    checkpoint = resolve_resume("auto", tmp_path / "runs" / "tiny")
    assert checkpoint is not None and load_state(checkpoint)["position"]["step"] > 0


def test_resume_after_kill_9_during_a_checkpoint_write_picks_the_previous_one(tmp_path):
    """A process killed (SIGKILL) while writing a checkpoint leaves the previous one loadable and chosen."""
    marker = tmp_path / "writing"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        import fastsr.engine.checkpoint as ck
        from fastsr.models import build_generator
        run = Path({str(tmp_path / "run")!r})
        model = build_generator("srcnn", scale=4)
        ck.save_checkpoint(run, 1, {{"generator": (model, model.config)}}, {{"position": {{"step": 1}}}}, keep=3)
        real = ck.save_weights
        def slow(module, path, config):
            real(module, path, config)
            Path({str(marker)!r}).write_text("x")
            time.sleep(60)
        ck.save_weights = slow
        ck.save_checkpoint(run, 2, {{"generator": (model, model.config)}}, {{"position": {{"step": 2}}}}, keep=3)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=PROCESS_ENV)
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    assert marker.exists()
    leftovers = list((tmp_path / "run" / "checkpoints").iterdir())
    assert any(p.name.startswith(".step_00000002") for p in leftovers)  # the half-written one is there...
    chosen = resolve_resume("auto", tmp_path / "run")
    assert chosen.name == "step_00000001"  # ...and never picked
    assert load_state(chosen)["position"]["step"] == 1


# ---------------------------------------------------------------------------------------------
# Several processes (gloo on CPU)


def _launch(recipe, out, *accelerate_args, overrides=(), env=None):
    cmd = ["accelerate", "launch", "--multi_gpu", *accelerate_args, str(ROOT / "tests" / "dist_train.py"),
           str(recipe), str(out), *overrides]
    return subprocess.Popen(cmd, env={**PROCESS_ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("nonfinite", ["skip", "stop"])
def test_distributed_processes_agree_on_bad_images_and_a_nan_on_one_rank(photo_folder, tmp_path, nonfinite):
    """Bad files are found by the processes' shares of the decoding, then skipped by all; a NaN on rank 1
    alone is skipped by both (else DDP would hang) or stops both, naming the step."""
    data = tmp_path / "data"
    shutil.copytree(photo_folder, data)
    (data / "train" / "zero.png").write_bytes(b"")
    (data / "train" / "text.png").write_text("not an image")
    recipe = _recipe_file(data, tmp_path, data={"repeat": 4, "backend": "torch", "bad_images": "skip"},
                          train={"epochs_pretrain": 1, "epochs_finetune": 0, "batch_size": 2, "log_every": 2,
                                 "nonfinite": nonfinite})
    proc = _launch(recipe, tmp_path / "w", "--num_processes", "2", "--main_process_port", str(free_port()),
                   env={"NAN_AT": "1:3"})
    out, err = proc.communicate(timeout=600)
    log = [yaml.safe_load(line) for line in (tmp_path / "runs" / "tiny" / "log.jsonl").read_text().splitlines()]
    notes = [r["message"] for r in log if r["kind"] == "note"]
    assert sum("zero.png" in n for n in notes) == 1 and sum("text.png" in n for n in notes) == 1
    assert next(r for r in log if r["kind"] == "run")["steps_per_epoch"] == 6 * 4 // (2 * 2)
    if nonfinite == "skip":
        assert proc.returncode == 0, err[-3000:]
        assert [r["step"] for r in log if r["kind"] == "skipped"] == [3]
        ranks = [_parameters(_weights(tmp_path / "w" / f"rank{r}.safetensors")) for r in (0, 1)]
        assert _same(*ranks) and all(torch.isfinite(v).all() for v in ranks[0].values())
    else:
        assert proc.returncode != 0
        assert "became NaN or infinite at step 3" in err
        assert next(r for r in log if r["kind"] == "nonfinite")["step"] == 4


@pytest.mark.slow
def test_distributed_two_processes_train_identical_weights(photo_folder, tmp_path):
    recipe = _recipe_file(photo_folder, tmp_path, data={"repeat": 4, "backend": "torch"},
                          train={"epochs_pretrain": 1, "epochs_finetune": 1, "batch_size": 2, "log_every": 1,
                                 "lr_scaling": "linear", "log_with": ["tensorboard"]})
    proc = _launch(recipe, tmp_path / "w", "--num_processes", "2", "--main_process_port", str(free_port()))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    rank0, rank1 = _weights(tmp_path / "w" / "rank0.safetensors"), _weights(tmp_path / "w" / "rank1.safetensors")
    assert _same(_parameters(rank0), _parameters(rank1))
    run = tmp_path / "runs" / "tiny"
    assert _same(rank0, _weights(run / "generator.safetensors"))  # rank 0 exported what both hold
    records = [yaml.safe_load(line) for line in (run / "log.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["kind"] == "run")
    assert start["processes"] == 2 and start["steps_per_epoch"] == 6 * 4 // (2 * 2)
    assert {r["lr"] for r in records if r["kind"] == "train"} == {2e-3}  # lr 1e-3 x 2 processes (linear rule)
    assert len(list((run / "tiny").glob("events.out.tfevents.*"))) == 1  # the tracker runs on rank 0 only
    # validation spread over both processes (v0 on rank 0, v1 on rank 1), gathered: what one process's eval of
    # the exported weights gives, to the last digit
    val = [r for r in records if r["kind"] == "val"][-1]
    table = tmp_path / "eval.json"
    assert main(["eval", "--model", str(run / "generator.safetensors"), "--data", str(photo_folder / "val"),
                 "--json", str(table), "--device", "cpu"]) == 0
    scored = json.loads(table.read_text())["sets"]["val"]["methods"]
    assert val["images"] == 2 and val["psnr"] == scored["SRResNet"]["psnr"] and val["ssim"] == scored["SRResNet"]["ssim"]



@pytest.mark.slow
def test_a_recipe_runs_the_same_steps_at_the_same_rates_on_one_or_two_processes(photo_folder, tmp_path):
    """Run length and schedules count optimiser steps: epochs are converted at one process's batches per
    epoch, so two processes run the steps one does, each at the rate one process uses there."""
    sections = {"epochs_pretrain": 1, "epochs_finetune": None, "steps_finetune": 5, "batch_size": 2, "log_every": 1,
             "lr_schedule": "multistep", "lr_milestones": [4], "lr_milestones_finetune": [2]}
    schedules = {}
    for processes in (1, 2):
        where = tmp_path / str(processes)
        where.mkdir()
        recipe = _recipe_file(photo_folder, where, data={"repeat": 4, "backend": "torch"}, train=sections)
        if processes == 1:
            train(load_recipe(recipe))
        else:
            proc = _launch(recipe, where / "w", "--num_processes", "2", "--main_process_port", str(free_port()))
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
        log = [yaml.safe_load(line) for line in (where / "runs" / "tiny" / "log.jsonl").read_text().splitlines()]
        schedules[processes] = [(r["phase"], r["step"], r["lr"]) for r in log if r["kind"] == "train"]
        assert next(r for r in log if r["kind"] == "run")["phases"] == {"pretrain": 12, "finetune": 5}
    assert schedules[1] == schedules[2]
    assert [step for _, step, _ in schedules[1]] == list(range(1, 18))
    assert [lr for _, _, lr in schedules[1]][3:5] == [1e-3, 5e-4]  # milestone 4: after 4 steps of pretrain

@pytest.mark.slow
def test_multinode_two_machines_on_loopback_train_and_checkpoint(photo_folder, tmp_path):
    recipe = _recipe_file(photo_folder, tmp_path, data={"repeat": 4, "backend": "torch"},
                          train={"epochs_pretrain": None, "steps_pretrain": 6, "epochs_finetune": 0, "batch_size": 2,
                                 "save_every": 2})  # 6 steps: one epoch of the two processes' loaders
    port = str(free_port())
    common = ["--num_machines", "2", "--num_processes", "2", "--main_process_ip", "127.0.0.1",
              "--main_process_port", port]
    procs = [_launch(recipe, tmp_path / "w", *common, "--machine_rank", str(rank)) for rank in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    ranks = [_parameters(_weights(tmp_path / "w" / f"rank{r}.safetensors")) for r in (0, 1)]
    assert _same(*ranks)
    checkpoints = complete_checkpoints(tmp_path / "runs" / "tiny")
    assert [p.name for p in checkpoints][-1] == "step_00000006" and load_state(checkpoints[-1])["position"]["step"] == 6


# ---------------------------------------------------------------------------------------------
# launch.sh


@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu[07-09,12]", ["gpu07", "gpu08", "gpu09", "gpu12"]),
    ("a1,b2", ["a1", "b2"]),
    ("rack1-[1-2]-x,login", ["rack1-1-x", "rack1-2-x", "login"]),
    ("node[001-002],gpu[7]", ["node001", "node002", "gpu7"]),
])
def test_multinode_slurm_nodelist_expansion(nodelist, hosts):
    from fastsr.cluster import expand_nodelist

    assert expand_nodelist(nodelist) == hosts


def _dry_run(env_extra, *args):
    env = {k: v for k, v in PROCESS_ENV.items() if not k.startswith(("SLURM_", "NNODES", "NODE_RANK", "MASTER_"))}
    done = subprocess.run(["bash", str(ROOT / "launch.sh"), "--dry-run", *args], env={**env, **env_extra},
                          capture_output=True, text=True, timeout=120)
    return done


def test_multinode_launch_dry_run_under_fake_slurm():
    slurm = {"SLURM_JOB_ID": "42", "SLURM_JOB_NUM_NODES": "4", "SLURM_NODEID": "2",
             "SLURM_JOB_NODELIST": "gpu[07-09,12]", "SLURM_GPUS_ON_NODE": "8"}
    done = _dry_run(slurm, "recipes/srgan_x4.yaml", "train.batch_size=32")
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("launch.sh (node 2): accelerate launch --multi_gpu")
    for expected in ("--num_machines 4", "--machine_rank 2", "--main_process_ip gpu07", "--num_processes 32",
                     "recipes/srgan_x4.yaml train.batch_size=32"):
        assert expected in line, expected
    explicit = _dry_run({}, "--nodes", "2", "--node-rank", "1", "--head", "10.1.1.1", "--port", "1234",
                        "--procs-per-node", "2", "r.yaml")
    assert "--num_machines 2 --machine_rank 1 --main_process_ip 10.1.1.1 --main_process_port 1234 " \
           "--num_processes 4" in explicit.stdout
    assert explicit.stdout.startswith("launch.sh (node 1): ")  # the label from the rank the command passes on
    from_env = _dry_run({"NNODES": "3", "NODE_RANK": "2"}, "--node-rank", "1", "r.yaml")
    assert from_env.stdout.startswith("launch.sh (node 1): ") and "--machine_rank 1 " in from_env.stdout
    bad = _dry_run({}, "--nodes", "2", "--node-rank", "2", "r.yaml")
    assert bad.returncode != 0 and "node rank 2 is outside 2 node(s)" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("procs", [1, 2])
def test_preempt_launch_sh_passes_sigterm_on_and_exits_75(photo_folder, tmp_path, procs):
    """With 2 processes (gloo) they must also agree on the step to stop at."""
    recipe = _recipe_file(photo_folder, tmp_path, data={"backend": "torch"},
                          train={"epochs_pretrain": 500, "epochs_finetune": 0, "batch_size": 2, "log_every": 2})
    env = {k: v for k, v in PROCESS_ENV.items() if not k.startswith("SLURM_")}
    env["MASTER_PORT"] = str(free_port())
    proc = subprocess.Popen(["bash", str(ROOT / "launch.sh"), "--procs-per-node", str(procs), str(recipe)], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "runs" / "tiny" / "log.jsonl"
    out, err = _sigterm_once_training(proc, log)
    assert proc.returncode == 75, err[-2000:]
    assert ("--num_processes 1 --cpu" if procs == 1 else "--multi_gpu") in out
    assert '"kind": "preempted"' in log.read_text()
    checkpoint = resolve_resume("auto", tmp_path / "runs" / "tiny")
    step = load_state(checkpoint)["position"]["step"]
    assert step > 0 and (procs == 1 or step % 2 == 0)  # several processes stop at a log_every boundary


@pytest.mark.slow
def test_eval_on_two_processes_gives_one_processs_table_exactly(photo_folder, tmp_path, capsys):
    """`fastsr eval --processes 2`: each process scores every other image (gloo on the CPU), rank 0 gathers the
    per-image values in the set's order and prints and writes the table: equal to one process's, value for value;
    each writes its images' pictures of the --report page, which rank 0 writes: the same folder, byte for byte."""
    from fastsr.models import build_generator
    from fastsr.weights import save_weights

    torch.manual_seed(0)
    model = build_generator("srresnet", scale=4, res_blocks=1, channels=8)
    weights = tmp_path / "g.safetensors"
    save_weights(model, weights, model.config)
    data = tmp_path / "three"  # an odd count: the processes' shares differ
    shutil.copytree(photo_folder / "val", data)
    shutil.copy(photo_folder / "train" / "t0.png", data / "t0.png")
    tables = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}.json"
        assert main(["eval", "--model", "bicubic", "--model", str(weights), "--data", str(data), "--json", str(out),
                     "--device", "cpu", "--processes", str(n), "--report", str(tmp_path / f"r{n}")]) == 0
        tables[n] = json.loads(out.read_text())
    assert tables[1]["sets"] == tables[2]["sets"] and tables[2]["sets"]["three"]["images"] == ["t0", "v0", "v1"]
    pages = {n: {p.relative_to(tmp_path / f"r{n}"): p.read_bytes() for p in (tmp_path / f"r{n}").rglob("*.*")}
             for n in (1, 2)}
    assert len(pages[1]) == 1 + 3 * 4 and pages[1] == pages[2]  # the page, and 4 panels of each image
