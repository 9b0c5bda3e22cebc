"""One run per directory: real runs in real processes, real locks (engine/safety/runlock.py)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import PROCESS_ENV, ROOT, free_port, tiny_recipe_dict

from fastsr.engine.runlog import read_log
from fastsr.engine.safety.runlock import RunLock, lock_path
from fastsr.engine.trainer import train
from fastsr.errors import RunDirLocked


def _recipe(photo_folder, tmp_path, file="recipe.yaml", **train):
    path = tmp_path / file
    path.write_text(yaml.safe_dump(tiny_recipe_dict(photo_folder, tmp_path / "runs",
                                                    train={"epochs_finetune": 0, **train})))
    return path


def _fastsr(*args, **kw):
    return subprocess.run([sys.executable, "-m", "fastsr.cli", *map(str, args)], env=PROCESS_ENV, capture_output=True,
                          text=True, timeout=300, **kw)


def _wait_for_training(log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not (log.is_file() and '"kind": "train"' in log.read_text()):
        assert time.time() < deadline, "the run never logged a step"
        time.sleep(0.2)


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_second_run_of_any_kind_refuses_a_live_runs_directory_and_touches_nothing(photo_folder, tmp_path):
    recipe = _recipe(photo_folder, tmp_path, epochs_pretrain=100000, save_every=50)  # runs until stopped
    first = subprocess.Popen([sys.executable, "-m", "fastsr.cli", "train", str(recipe)], env=PROCESS_ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "runs" / "tiny"
    try:
        _wait_for_training(run_dir / "log.jsonl")
        holder = json.loads(lock_path(run_dir).read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        other = _recipe(photo_folder, tmp_path, "other.yaml", epochs_pretrain=1, lr=5e-4)  # same out_dir and name
        for args in ([recipe], [recipe, "train.resume=auto"], [other]):
            done = _fastsr("train", *args)
            assert done.returncode == 2, done.stderr[-2000:]
            lines = done.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("fastsr: error: "), done.stderr
            assert f"{run_dir} is in use by another run (pid {first.pid} on {socket.gethostname()}" in lines[0]
            assert "name=" in lines[0]
        assert first.poll() is None  # the live run goes on, in its own directory
        assert sorted(p.name for p in run_dir.parent.iterdir()) == ["tiny", "tiny.lock"]
        assert json.loads(lock_path(run_dir).read_text())["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 75, err[-2000:]
    assert not lock_path(run_dir).exists()  # released with the run
    # Now that nobody holds it, a fresh run moves the earlier run aside as before.
    done = _fastsr("train", _recipe(photo_folder, tmp_path, epochs_pretrain=1))
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(run_dir.parent.glob("tiny_archived_*"))) == 1 and not lock_path(run_dir).exists()


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_note(tiny_recipe, tmp_path):
    recipe = tiny_recipe(train={"epochs_pretrain": 1, "epochs_finetune": 0})
    lock = lock_path(recipe.run_dir)
    lock.parent.mkdir(parents=True)
    pid = _dead_pid()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": "2026-01-01 00:00:00",
                                "command": "fastsr train old.yaml"}))
    run = train(recipe)
    notes = [r["message"] for r in read_log(run / "log.jsonl") if r["kind"] == "note"]
    assert any(f"took over the lock of pid {pid}" in n and "gone" in n for n in notes), notes
    assert not lock.exists()


def test_a_lock_of_a_live_process_that_reused_a_dead_holders_pid_is_taken_over(tiny_recipe):
    """A pid is reused: the holder's recorded start time tells the process it named from a later one."""
    recipe = tiny_recipe(train={"epochs_pretrain": 1, "epochs_finetune": 0})
    lock = lock_path(recipe.run_dir)
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started_ticks": "1",
                                "since": "2026-01-01 00:00:00", "command": "fastsr train old.yaml"}))
    run = train(recipe)
    assert any("took over the lock" in r["message"] for r in read_log(run / "log.jsonl") if r["kind"] == "note")


def test_a_lock_file_from_another_machine_is_never_taken_over(tiny_recipe):
    recipe = tiny_recipe(train={"epochs_pretrain": 1, "epochs_finetune": 0})
    lock = lock_path(recipe.run_dir)
    lock.parent.mkdir(parents=True)
    written = json.dumps({"host": "gpu07", "pid": 4242, "since": "2026-01-01 00:00:00", "command": "fastsr train x"})
    lock.write_text(written)
    with pytest.raises(RunDirLocked, match=r"locked by a run on another machine \(pid 4242 on gpu07.*delete .*tiny\.lock"):
        train(recipe)
    assert lock.read_text() == written and not recipe.run_dir.exists()


def test_the_lock_is_exclusive_and_released(tmp_path):
    run_dir = tmp_path / "runs" / "x"
    first = RunLock(run_dir)
    first.acquire()
    with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
        RunLock(run_dir).acquire()  # another open file description: flock refuses it, even in this process
    first.release()
    assert not lock_path(run_dir).exists()
    again = RunLock(run_dir)
    again.acquire()
    assert again.note is None  # a released lock leaves nothing to take over
    again.release()


@pytest.mark.slow
def test_with_two_processes_rank_0_locks_and_both_refuse(photo_folder, tmp_path):
    """The other processes learn rank 0's refusal before they start, and stop with it."""
    recipe = _recipe(photo_folder, tmp_path, epochs_pretrain=1)
    held = RunLock(tmp_path / "runs" / "tiny")
    held.acquire()
    try:
        cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
               str(free_port()), str(ROOT / "fastsr" / "train.py"), str(recipe)]
        done = subprocess.run(cmd, env=PROCESS_ENV, capture_output=True, text=True, timeout=300)
    finally:
        held.release()
    assert done.returncode != 0
    # each process says it (torch's own warnings may land in the same pipe, even mid-line)
    assert done.stderr.count("fastsr: error: ") == 2, done.stderr[-3000:]
    assert done.stderr.count(f"{tmp_path / 'runs' / 'tiny'} is in use by another run (pid {os.getpid()}") == 2
    assert not (tmp_path / "runs" / "tiny").exists()
