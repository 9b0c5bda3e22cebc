"""A lost process stops the others (engine/safety/peers.py): 2 gloo processes, one really killed (SIGKILL) or hung
(SIGSTOP); the other stops within the collective timeout naming it, the launchers exit non-zero, and
`train.resume=auto` continues from the last complete checkpoint. Selected by `-k distributed`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from conftest import PROCESS_ENV, ROOT, free_port, tiny_recipe_dict

from fastsr.engine.checkpoint import complete_checkpoints, load_state
from fastsr.engine.runlog import read_log
from fastsr.engine.safety.peers import GRACE_S, collective_failed

ENV = {k: v for k, v in PROCESS_ENV.items() if not k.startswith("SLURM_")}


def _recipe(photo_folder, tmp_path, **train) -> Path:
    path = tmp_path / "recipe.yaml"
    sections = {"data": {"backend": "torch", "repeat": 4},
                "train": {"epochs_pretrain": 200, "epochs_finetune": 0, "batch_size": 2, "save_every": 2, **train}}
    path.write_text(yaml.safe_dump(tiny_recipe_dict(photo_folder, tmp_path / "runs", **sections)))
    return path


def _training_process(recipe: Path, rank: int, timeout: float = 120) -> int:
    """The pid of the training process of `rank` running `recipe` (found by its command line and RANK)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if (any(a.endswith(b"train.py") for a in cmdline) and str(recipe).encode() in cmdline
                    and f"RANK={rank}".encode() in environ and b"accelerate" not in cmdline[1:2]):
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no training process of rank {rank}")


def _wait_for_checkpoint(run_dir: Path, step: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not any(load_state(c)["position"]["step"] >= step for c in complete_checkpoints(run_dir)):
        assert time.time() < deadline, "no checkpoint"
        time.sleep(0.2)


def _errors(text: str) -> list[str]:
    """fastsr's error lines, from where each begins (torch's own logging may share a line with one)."""
    return [line[line.index("fastsr: error: "):] for line in text.splitlines() if "fastsr: error: " in line]


@pytest.mark.slow
def test_distributed_a_killed_process_stops_the_other_and_launch_sh_exits_non_zero(photo_folder, tmp_path):
    recipe = _recipe(photo_folder, tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    env = {**ENV, "MASTER_PORT": str(free_port())}
    launch = subprocess.Popen(["bash", str(ROOT / "launch.sh"), "--procs-per-node", "2", str(recipe)], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(run_dir, 4)
    os.kill(_training_process(recipe, 1), signal.SIGKILL)  # as the OOM killer does
    _, err = launch.communicate(timeout=120)
    assert launch.returncode not in (0, 75), err[-3000:]
    lines = _errors(err)
    assert len(lines) == 1 and "lost process rank 1 of 2 at step" in lines[0], err[-3000:]
    assert "train.resume=auto" in lines[0]
    last = load_state(complete_checkpoints(run_dir)[-1])["position"]["step"]

    env["MASTER_PORT"] = str(free_port())
    done = subprocess.run(["bash", str(ROOT / "launch.sh"), "--procs-per-node", "2", str(recipe),
                           "train.resume=auto", "train.epochs_pretrain=3"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at step {last}" in done.stdout
    runs = [r for r in read_log(run_dir / "log.jsonl") if r["kind"] == "run"]
    assert runs[-1]["step"] == last and runs[-1]["processes"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("kind, how", [("allreduce", "exit"), ("barrier", "hang"), ("ddp_buffers", "hang"),
                                       ("ddp_buffers", "hang-twice")])
def test_distributed_gloo_collective_failures_are_recognised(kind, how):
    """Real gloo errors, one of each kind a lost peer gives: a reset connection, a timed-out receive or send,
    and "Application timeout caused pair closure" (no gloo source path in it) from DDP's buffer sync."""
    cmd = [sys.executable, str(ROOT / "tests" / "collective_failure.py"), kind, how, str(free_port())]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    caught = json.loads(done.stdout.strip().splitlines()[-1])
    assert caught["type"] == "RuntimeError" and caught["collective_failed"], caught
    if how == "hang-twice":
        assert "pair closure" in caught["message"]


def _raise_from(code):
    try:
        code()
    except Exception as err:  # noqa: BLE001
        return err
    raise AssertionError("nothing raised")


def _model_error():
    raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")


def test_distributed_nccl_errors_are_collective_failures_and_others_are_not():
    """NCCL's errors reach Python as DistBackendError, in the words of torch's ProcessGroupNCCL.cpp; errors of a
    model, a loss or the user's input are not a lost process, even when their text mentions a timeout."""
    watchdog = ("Watchdog caught collective operation timeout: WorkNCCL(SeqNum=12, OpType=ALLREDUCE, NumelIn=1, "
                "NumelOut=1, Timeout(ms)=600000) ran for 600035 milliseconds before timing out.")
    assert collective_failed(dist.DistBackendError(watchdog))
    assert collective_failed(dist.DistBackendError("NCCL communicator was aborted on rank 1."))
    assert collective_failed(RuntimeError(f"[Rank 0] {watchdog}"))
    assert collective_failed(dist.DistNetworkError("Connection reset by peer"))
    assert not collective_failed(_raise_from(lambda: torch.nn.Linear(3, 5)(torch.rand(2, 4))))
    assert not collective_failed(_raise_from(_model_error))
    assert not collective_failed(ValueError("train.batch_size: Timed out"))
    assert not collective_failed(KeyboardInterrupt())


@pytest.mark.slow
def test_distributed_a_hung_process_is_given_up_after_the_collective_timeout(photo_folder, tmp_path):
    """Two "machines" on loopback; rank 1 stops answering (SIGSTOP: alive, its connections open), so only the
    timeout can end rank 0's wait. The timeout leaves room for a slow start on a busy machine."""
    timeout_s = 20
    recipe = _recipe(photo_folder, tmp_path, collective_timeout_s=timeout_s)
    port = str(free_port())
    machines = [subprocess.Popen(["accelerate", "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
                                  "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                                  "--main_process_port", port, str(ROOT / "fastsr" / "train.py"), str(recipe)],
                                 env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for rank in (0, 1)]
    hung = None
    try:
        _wait_for_checkpoint(tmp_path / "runs" / "tiny", 2)
        hung = _training_process(recipe, 1)
        os.kill(hung, signal.SIGSTOP)
        tic = time.monotonic()
        _, err = machines[0].communicate(timeout=120)
        waited = time.monotonic() - tic
    finally:
        if hung is not None:
            os.kill(hung, signal.SIGKILL)
        machines[1].communicate(timeout=120)
    assert machines[0].returncode != 0
    lines = _errors(err)
    assert len(lines) == 1 and "lost process rank 1 of 2" in lines[0], err[-3000:]
    assert f"train.collective_timeout_s={timeout_s} s" in lines[0]
    # the timeout and the wait for the others' word, with room for a busy machine; far below torch's 30 minutes
    assert waited < timeout_s + GRACE_S + 60


@pytest.mark.slow
def test_distributed_a_validation_near_the_collective_timeout_is_noted(photo_folder, tmp_path):
    """Rank 1 waits for rank 0's validation in a barrier: a validation taking over half the timeout is said."""
    recipe = _recipe(photo_folder, tmp_path, epochs_pretrain=1, save_every=0, collective_timeout_s=3)
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
           str(ROOT / "tests" / "dist_train.py"), str(recipe), str(tmp_path / "w")]
    done = subprocess.run(cmd, env={**ENV, "VAL_SLEEP_S": "2"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    notes = [r["message"] for r in read_log(tmp_path / "runs" / "tiny" / "log.jsonl") if r["kind"] == "note"]
    assert len(notes) == 1 and "a validation took 2 s, over half of train.collective_timeout_s=3" in notes[0], notes
