"""Ctrl-C saves: a real SIGINT sent to the run's whole process group, as a terminal sends it, under each way
of starting a run (selected with `-k preempt`, like the other stop-signal tests)."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import PROCESS_ENV, ROOT, free_port, tiny_recipe_dict

from fastsr.data.torch_backend import _ignore_stop_signals, _workers_starting
from fastsr.engine.checkpoint import load_state, resolve_resume
from fastsr.engine.runlog import read_log
from fastsr.engine.safety.runlock import lock_path
from fastsr.engine.safety.signals import EXIT_INTERRUPTED


def _recipe(photo_folder, tmp_path, data=None, **train) -> Path:
    path = tmp_path / "recipe.yaml"
    sections = {"data": {"backend": "torch", "workers": 2, **(data or {})},
                "train": {"epochs_pretrain": 500, "epochs_finetune": 0, "batch_size": 2, **train}}
    path.write_text(yaml.safe_dump(tiny_recipe_dict(photo_folder, tmp_path / "runs", **sections)))
    return path


def _start(cmd, tmp_path) -> tuple[subprocess.Popen, Path]:
    """`cmd` in a session of its own, as a terminal's foreground job; stderr to a file, read as it grows."""
    err = tmp_path / "stderr.txt"
    proc = subprocess.Popen(cmd, env=PROCESS_ENV, stdout=subprocess.DEVNULL, stderr=err.open("w"), text=True,
                            start_new_session=True)
    return proc, err


def _ctrl_c_once_training(proc, run_dir: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    log = run_dir / "log.jsonl"
    while not (log.is_file() and '"kind": "train"' in log.read_text()):
        assert time.time() < deadline and proc.poll() is None, "the run never logged a step"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: every process of the foreground group


def _run_ended(run_dir: Path, timeout: float = 180) -> None:
    """A run releases its lock last: the run is over (also when its launcher exited before it)."""
    deadline = time.time() + timeout
    while lock_path(run_dir).exists():
        assert time.time() < deadline, "the run never ended"
        time.sleep(0.2)


def _assert_saved(run_dir: Path, err: str, every: int = 1, announced: bool = True) -> int:
    if announced:
        assert "Ctrl-C: finishing the step, then a checkpoint" in err
    assert "stopped by Ctrl-C at step" in err and "train.resume=auto" in err, err[-3000:]
    stop = [r for r in read_log(run_dir / "log.jsonl") if r["kind"] == "preempted"]
    assert len(stop) == 1 and stop[0]["signal"] == signal.SIGINT
    checkpoint = resolve_resume("auto", run_dir)
    step = load_state(checkpoint)["position"]["step"]
    assert step == stop[0]["step"] > 0 and step % every == 0
    assert "DataLoader worker" not in err  # the loader's workers outlived the Ctrl-C
    return step


ENTRIES = {
    "fastsr train": lambda recipe: [sys.executable, "-m", "fastsr.cli", "train", str(recipe)],
    "python fastsr/train.py": lambda recipe: [sys.executable, str(ROOT / "fastsr" / "train.py"), str(recipe)],
    # launch.sh starts accelerate in a session of its own and passes the Ctrl-C it gets on
    "launch.sh": lambda recipe: ["bash", str(ROOT / "launch.sh"), "--port", str(free_port()), str(recipe)],
}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_preempt_ctrl_c_saves_a_checkpoint_and_exits_130(photo_folder, tmp_path, entry):
    recipe = _recipe(photo_folder, tmp_path)
    proc, err = _start(ENTRIES[entry](recipe), tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    _ctrl_c_once_training(proc, run_dir)
    assert proc.wait(timeout=180) == EXIT_INTERRUPTED, err.read_text()[-3000:]
    step = _assert_saved(run_dir, err.read_text())
    assert not lock_path(run_dir).exists()
    # and the run goes on from there
    done = subprocess.run([sys.executable, "-m", "fastsr.cli", "train", str(recipe), "train.resume=auto",
                           "train.epochs_pretrain=1"], env=PROCESS_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"at step {step}" in done.stdout


def test_preempt_ctrl_c_saves_with_dali(photo_folder, tmp_path):
    pytest.importorskip("nvidia.dali")
    recipe = _recipe(photo_folder, tmp_path, data={"backend": "dali"})
    proc, err = _start([sys.executable, "-m", "fastsr.cli", "train", str(recipe)], tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    _ctrl_c_once_training(proc, run_dir)
    assert proc.wait(timeout=180) == EXIT_INTERRUPTED, err.read_text()[-3000:]
    _assert_saved(run_dir, err.read_text())
    assert next(r for r in read_log(run_dir / "log.jsonl") if r["kind"] == "run")["loader"] == "dali"


def test_preempt_a_second_ctrl_c_stops_at_once_without_a_checkpoint(photo_folder, tmp_path):
    recipe = _recipe(photo_folder, tmp_path)  # steps slowed below, so the second Ctrl-C lands mid-step
    script = ("import sys, time; import fastsr.engine.steps as s; real = s.pretrain_step\n"
              "s.pretrain_step = lambda *a, **k: (time.sleep(1.0), real(*a, **k))[1]\n"
              "from fastsr.cli import main; sys.exit(main(sys.argv[1:]))")
    proc, err = _start([sys.executable, "-c", script, "train", str(recipe)], tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    _ctrl_c_once_training(proc, run_dir)
    deadline = time.time() + 60
    while "Ctrl-C again stops at once" not in err.read_text():
        assert time.time() < deadline, err.read_text()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=10) == -signal.SIGINT  # ended by the signal itself, mid-step
    assert not any(r["kind"] == "preempted" for r in read_log(run_dir / "log.jsonl"))
    assert resolve_resume("auto", run_dir) is None  # save_every=0: no checkpoint was written


@pytest.mark.slow
def test_preempt_ctrl_c_under_accelerate_launch_one_process(photo_folder, tmp_path):
    """accelerate's own launcher stops at the Ctrl-C (its KeyboardInterrupt) and sends SIGTERM to the whole process
    tree, loader workers included (killing it all 5 s later); the training process it started still finishes the
    step and writes the checkpoint, its workers serving to the end. The launcher copies the process's stderr through a pipe
    and its KeyboardInterrupt can drop the chunk read as it arrives, the Ctrl-C's announcement among them (seen
    on a busy machine), so only what follows is checked."""
    recipe = _recipe(photo_folder, tmp_path)
    proc, err = _start(["accelerate", "launch", "--num_processes", "1", "--cpu", str(ROOT / "fastsr" / "train.py"),
                        str(recipe)], tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    _ctrl_c_once_training(proc, run_dir)
    proc.wait(timeout=180)
    _run_ended(run_dir)
    _assert_saved(run_dir, err.read_text(), announced=False)


@pytest.mark.slow
def test_preempt_ctrl_c_under_accelerate_launch_two_processes(photo_folder, tmp_path):
    """torchrun's agent passes the Ctrl-C on to each process's group (their loader workers included); the
    processes agree on a step at a train.log_every boundary, save, and stop."""
    recipe = _recipe(photo_folder, tmp_path, log_every=3)
    proc, err = _start(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                        str(free_port()), str(ROOT / "fastsr" / "train.py"), str(recipe)], tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    _ctrl_c_once_training(proc, run_dir)
    assert proc.wait(timeout=180) != 0
    text = err.read_text()
    _assert_saved(run_dir, text, every=3)
    assert text.count("stopped by Ctrl-C at step") == 2  # each process


def test_preempt_a_ctrl_c_after_the_last_step_is_said_and_the_run_finishes(tiny_recipe, monkeypatch, capsys):
    """Ctrl-C during the run's final validation: nothing is left to stop, and the run says so (not a silent 0)."""
    from fastsr.engine.loop import Loop
    from fastsr.engine.trainer import train

    validate = Loop.validate

    def validate_then_ctrl_c(loop):
        validate(loop)
        if loop.pos.phase == len(loop.run.phases):  # the last phase is over: its final validation
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Loop, "validate", validate_then_ctrl_c)
    run_dir = train(tiny_recipe(train={"epochs_finetune": 0}))
    assert (run_dir / "generator.safetensors").is_file()
    notes = [r["message"] for r in read_log(run_dir / "log.jsonl") if r["kind"] == "note"]
    assert len(notes) == 1 and notes[0].startswith("Ctrl-C came after the last step (step 3)"), notes
    assert "did not stop it" in capsys.readouterr().out
    assert not [r for r in read_log(run_dir / "log.jsonl") if r["kind"] == "preempted"]


def _worker_starting(go) -> None:
    """A loader worker between its fork and its init function, until `go` is set."""
    go.wait(60)
    _ignore_stop_signals(0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_preempt_a_stop_signal_as_a_loader_worker_starts_does_not_kill_it(sig):
    """A terminal's Ctrl-C reaches every process of the group, and accelerate's launcher answers it with SIGTERM
    to the whole process tree: a torch loader worker forked just then, before its init function ignores them,
    holds the signal and drops it, and goes on serving (dead, it would fail the training process's step)."""
    context = multiprocessing.get_context("fork")  # as DataLoader's workers on Linux
    go = context.Event()
    previous = signal.signal(sig, signal.SIG_DFL)  # the child's until it ignores it: the signal would kill it
    try:
        with _workers_starting():
            worker = context.Process(target=_worker_starting, args=(go,))
            worker.start()
    finally:
        signal.signal(sig, previous)
    os.kill(worker.pid, sig)
    time.sleep(0.5)  # time for it to die, were the signal not held
    assert worker.is_alive()
    go.set()
    worker.join(60)
    assert worker.exitcode == 0
