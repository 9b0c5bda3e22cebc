"""A stalled data source stops the run (fastsr/engine/safety/stall.py): the watch itself, the files a batch is cut
from, and a stall injected into each backend of a real run (tests/stall_train.py). The stall action ends
its process, so each run is a subprocess."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import PROCESS_ENV, ROOT, free_port, tiny_recipe_dict

from fastsr.data import CropPlan
from fastsr.engine.runlog import read_log
from fastsr.engine.safety.stall import StallWatch


def _dali_installed() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def test_plan_files_are_the_distinct_images_of_the_batch():
    # crops_per_image 2 = batch_size: each batch is one visit (two crops of one image), and an epoch
    # visits every image once (repeat 2)
    names = ["a.png", "b.png", "c.png"]
    plan = CropPlan([(64, 64)] * 3, names, 4, 32, 2, repeat=2, crops_per_image=2)
    for epoch in range(3):
        files = [plan.files(epoch, b) for b in range(len(plan))]
        assert all(len(f) == 1 for f in files)
        assert sorted(f[0] for f in files) == names
        assert files == [[names[v[0].index] for v in batch] for batch in plan.epoch(epoch)]
    # two ranks: each names the files of its own share
    ranks = [CropPlan([(64, 64)] * 3, names, 4, 32, 2, repeat=2, crops_per_image=2, rank=r, world_size=2)
             for r in range(2)]
    assert ranks[0].files(0, 0) != ranks[1].files(0, 0)


def test_watch_times_only_the_wait_for_a_batch():
    stalls = []
    with StallWatch(0.3, lambda *at: stalls.append(at)) as watch:
        got = []
        for item in watch.batches(iter("abc"), epoch=0):
            got.append(item)
            time.sleep(1.0)  # a long step, validation or checkpoint: not a stall
    assert got == list("abc") and stalls == []


def test_watch_reports_a_stalled_batch_once_with_its_position():
    stalled, stalls = threading.Event(), []

    def source():
        yield "first"
        assert stalled.wait(30)  # this batch comes only after the watch has reported it
        time.sleep(1.0)  # and then still later: reported once only
        yield "second"

    def on_stall(epoch, batch):
        stalls.append((epoch, batch))
        stalled.set()

    with StallWatch(0.2, on_stall) as watch:
        assert list(watch.batches(source(), epoch=3, start=5)) == ["first", "second"]
    assert stalls == [(3, 6)]


def test_watch_off_starts_no_thread():
    with StallWatch(0, lambda *at: None) as watch:
        assert list(watch.batches(range(3), epoch=0)) == [0, 1, 2]
        assert watch._thread is None


def _recipe(photo_folder: Path, tmp_path: Path, **data) -> Path:
    # 6 images x repeat 4 / batch 4: 6 steps per epoch, 2 epochs; checkpoints every 2 steps
    sections = {"data": {"repeat": 4, "cache_images": False, "stall_timeout_s": 2, **data},
                "train": {"epochs_pretrain": 2, "epochs_finetune": 0, "save_every": 2}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(photo_folder, tmp_path / "runs", **sections)))
    return path


def _train(recipe: Path, record: Path, stall: str | None = None) -> tuple[int, str]:
    """(exit status, stderr) of the training process. Its output goes to files, not pipes, so that a
    worker it left running (holding them open) cannot keep the test waiting."""
    record.mkdir()
    env = {k: v for k, v in PROCESS_ENV.items() if k != "STALL"} | ({"STALL": stall} if stall else {})
    with (record / "stdout").open("w") as out, (record / "stderr").open("w") as err:
        code = subprocess.run([sys.executable, str(ROOT / "tests" / "stall_train.py"), str(recipe), str(record)],
                              env=env, stdout=out, stderr=err, timeout=300, check=False).returncode
    return code, (record / "stderr").read_text()


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie (killed; the container's init may never reap it)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


# (backend keys, the injected stall, the batch the loop waits for: epoch, batch, steps done, newest checkpoint)
CASES = {
    # the 17th read (one per visit, 4 per batch) is the first of batch 4
    "torch": ({"backend": "torch", "workers": 0}, "read:17", (0, 4, 4, 4)),
    # worker 0 cuts batches 0, 2, 4: its 9th read is again the first of batch 4
    "torch-workers": ({"backend": "torch", "workers": 2}, "read:9", (0, 4, 4, 4)),
    # one cut per epoch here (a chunk holds the whole epoch): the second is epoch 1's
    "device": ({"backend": "device"}, "cut:2", (1, 0, 6, 6)),
    # one feed per batch, 6 in epoch 0: the 7th is epoch 1's first, the batch the loop then waits for
    "dali": ({"backend": "dali"}, "feed:7", (1, 0, 6, 6)),
}


@pytest.mark.parametrize("case", [pytest.param(name, marks=pytest.mark.skipif(
    name == "dali" and not _dali_installed(), reason="NVIDIA DALI is not installed")) for name in CASES])
def test_a_stall_in_each_backend_stops_the_run_naming_the_batch_files(photo_folder, tmp_path, case):
    data, stall, (epoch, batch, steps, newest) = CASES[case]
    record = tmp_path / "record"
    code, stderr = _train(_recipe(photo_folder, tmp_path, **data), record, stall)
    assert code == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("fastsr: error:")]
    assert len(errors) == 1, stderr[-3000:]
    error = errors[0]
    run_dir = tmp_path / "runs" / "tiny"
    last = read_log(run_dir / "log.jsonl")[-1]
    assert last["kind"] == "stalled" and last["message"] in error
    assert (last["backend"], last["epoch"], last["batch"], last["step"]) == (data["backend"], epoch, batch, steps)
    assert f"the {data['backend']} loader in 2 s" in error
    assert f"batch {batch} of epoch {epoch} (step {steps + 1})" in error
    stuck = set(json.loads((record / "stuck.json").read_text()))  # the files the injected stall sat on
    assert stuck <= set(last["files"]) and all(f in error for f in last["files"])
    # nothing written after the stall: the last checkpoint is the last one due before it
    assert max(int(p.name.removeprefix("step_")) for p in (run_dir / "checkpoints").glob("step_*")) == newest
    assert not (run_dir / "generator.safetensors").exists()
    if data.get("workers"):  # the hung worker (and the other) ended with the run
        pids = [int(p) for p in (record / "workers").read_text().split()]
        deadline = time.monotonic() + 30  # a busy machine may take a moment to end them
        while not all(map(_gone, pids)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [pid for pid in pids if not _gone(pid)]
        for pid in left:  # so that a failure leaves nothing behind
            os.kill(pid, signal.SIGKILL)
        assert len(pids) == 2 and not left


def test_a_healthy_run_with_the_watch_on_is_unaffected(photo_folder, tmp_path):
    run_dir = tmp_path / "runs" / "tiny"
    code, stderr = _train(_recipe(photo_folder, tmp_path, backend="torch", stall_timeout_s=30), tmp_path / "record")
    assert code == 0, stderr[-3000:]
    log = read_log(run_dir / "log.jsonl")
    assert [r["step"] for r in log if r["kind"] == "train"] == list(range(1, 13))
    assert not [r for r in log if r["kind"] == "stalled"] and (run_dir / "generator.safetensors").is_file()


@pytest.mark.slow
def test_distributed_a_stalled_process_ends_and_the_other_names_it_and_why(photo_folder, tmp_path):
    """Rank 1's data stalls: it stops with its line; rank 0, left in a collective, names rank 1 and the stall."""
    recipe = _recipe(photo_folder, tmp_path, backend="torch", workers=0)
    record = tmp_path / "record"
    record.mkdir()
    done = subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                           str(free_port()), str(ROOT / "tests" / "stall_train.py"), str(recipe), str(record)],
                          env={**PROCESS_ENV, "STALL": "read:5", "STALL_RANK": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    # from where each begins: torch's own logging may share a line with one
    errors = [line[line.index("fastsr: error:"):] for line in done.stderr.splitlines() if "fastsr: error:" in line]
    assert len(errors) == 2, done.stderr[-3000:]
    stalled = next(e for e in errors if e.startswith("fastsr: error: no batch from the torch loader"))
    other = next(e for e in errors if e is not stalled)
    assert "process rank 1 of 2 stopped at step 1: no batch from the torch loader in 2 s" in other, other
    assert "this process (rank 0) stops too" in other
    assert not (tmp_path / "runs" / "tiny.lock").exists()
