"""Soak: 2 processes on CPU (gloo, the torch loader's worker processes) stopped three times at random steps by
SIGTERM or Ctrl-C (SIGINT), each time resumed with train.resume=auto, end with the weights of an uninterrupted
run, bit for bit, and leave no process, open file descriptor or shared-memory segment behind."""

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROCESS_ENV, ROOT, free_port, tiny_recipe_dict
from safetensors.torch import load_file

from fastsr.engine.runlog import read_log

SLOW = {**PROCESS_ENV, "STEP_SLEEP_S": "0.25"}  # steps slowed, so that each signal lands mid-run
CYCLES = 3  # the seed below draws SIGTERM, SIGINT, SIGTERM


def _launch(recipe: Path, name: str, out: Path, *overrides: str, env=SLOW) -> subprocess.Popen:
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
           str(ROOT / "tests" / "dist_train.py"), str(recipe), str(out), f"name={name}", *overrides]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _logged_step(log: Path) -> int:
    try:
        return max((r["step"] for r in read_log(log) if r["kind"] == "train"), default=0)
    except (OSError, ValueError):  # not written yet, or a line being written
        return 0


def _traces(root: Path) -> tuple[list[int], list[str]]:
    """Processes whose command line names `root`, and open file descriptors (of any process) into it."""
    procs, fds = [], []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if str(root).encode() in (entry / "cmdline").read_bytes():
                procs.append(int(entry.name))
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd).startswith(str(root)):
                    fds.append(f"{entry.name}:{os.readlink(fd)}")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return procs, fds


@pytest.mark.slow
def test_preempt_soak_two_processes_three_stops_and_resumes_end_bitwise_equal(photo_folder, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(
        photo_folder, tmp_path / "runs", data={"backend": "torch", "workers": 2, "repeat": 4},
        train={"epochs_pretrain": None, "steps_pretrain": 18, "epochs_finetune": None, "steps_finetune": 12,
               "batch_size": 2, "log_every": 1, "ema": 0.9})))  # 3 + 2 epochs of the two processes' loaders
    shm_before, fds_before = set(os.listdir("/dev/shm")), sorted(os.listdir("/proc/self/fd"))

    full = _launch(recipe, "full", tmp_path / "w_full", env=PROCESS_ENV)
    _, err = full.communicate(timeout=600)
    assert full.returncode == 0, err[-3000:]

    rng = random.Random(14)
    log = tmp_path / "runs" / "soak" / "log.jsonl"
    stops = []
    for cycle in range(CYCLES + 1):
        proc = _launch(recipe, "soak", tmp_path / "w_soak", "train.resume=auto")
        if cycle < CYCLES:
            start = stops[-1][1] if stops else 0
            target = start + rng.randint(1, 4)  # 6 steps an epoch, 30 in all
            sig = rng.choice([signal.SIGTERM, signal.SIGINT])
            deadline = time.time() + 300
            while _logged_step(log) < target:
                assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
                time.sleep(0.05)
            proc.send_signal(sig)  # to torchrun's agent, which passes it on to each process's group
        _, err = proc.communicate(timeout=600)
        if cycle == CYCLES:
            assert proc.returncode == 0, err[-3000:]
            break
        assert proc.returncode != 0, err[-3000:]
        stopped = [r for r in read_log(log) if r["kind"] == "preempted"]
        assert len(stopped) == cycle + 1 and stopped[-1]["signal"] == sig, err[-3000:]
        stops.append((sig, stopped[-1]["step"]))
    runs = [r["step"] for r in read_log(log) if r["kind"] == "run"]
    assert runs == [0] + [step for _, step in stops], (runs, stops)  # each resume began where the stop saved

    for name in ("generator.safetensors", "checkpoints/step_00000030/discriminator.safetensors"):
        a, b = load_file(tmp_path / "runs" / "full" / name), load_file(tmp_path / "runs" / "soak" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (name, stops)

    deadline = time.time() + 30  # the last processes may still be on their way out
    while _traces(tmp_path) != ([], []) and time.time() < deadline:
        time.sleep(0.5)
    assert _traces(tmp_path) == ([], [])
    assert set(os.listdir("/dev/shm")) - shm_before == set()
    assert sorted(os.listdir("/proc/self/fd")) == fds_before
