"""What a run prints, in a file (a cluster job's log: stdout piped) and in a terminal (a pseudo-terminal): plain,
unwrapped progress lines in the one, rich's redrawn bar in the other."""

import os
import pty
import re
import subprocess
import sys
import time
from io import StringIO

import yaml
from conftest import PROCESS_ENV, tiny_recipe_dict

from fastsr.util import LineProgress

# A plain progress line: "pretrain 3/6 (50%) epoch 2/2 lr 0.001 35.2 img/s pixel 0.0123 ..."
PLAIN_LINE = re.compile(r"^pretrain (\d+)/(\d+) \(\d+%\) epoch (\d+)/(\d+) lr [0-9.e+-]+ [0-9.]+ img/s pixel [0-9.e+-]+")


def _train_command(photo_folder, tmp_path):
    # a run directory whose path is longer than a terminal's 80 columns
    out_dir = tmp_path / ("a_long_folder_name_for_the_runs_of_this_test_" * 2)
    recipe = tmp_path / "recipe.yaml"
    sections = {"data": {"backend": "torch", "repeat": 4},
                "train": {"epochs_pretrain": 2, "epochs_finetune": 0, "batch_size": 4, "log_every": 1,
                          "log_every_s": 0}}
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(photo_folder, out_dir, **sections)))
    return [sys.executable, "-m", "fastsr.cli", "train", str(recipe)], out_dir / "tiny"


def test_piped_output_has_plain_unwrapped_lines(photo_folder, tmp_path):
    cmd, run_dir = _train_command(photo_folder, tmp_path)
    env = {k: v for k, v in PROCESS_ENV.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "━" not in out and "…" not in out and "\x1b[" not in out  # no bar, nothing cut, no colour codes
    lines = [m for m in map(PLAIN_LINE.match, out.splitlines()) if m]
    steps = [int(m[1]) for m in lines]
    assert steps == sorted(steps) and steps[-1] == int(lines[-1][2]) == 12, out  # 6 images x 4 / 4 a batch x 2
    assert {m[3] for m in lines} == {"1", "2"} and {m[4] for m in lines} == {"2"}
    assert "pretrain 12 steps (train.epochs_pretrain=2 x 6: one process" in out
    assert f"run dir {run_dir}" in out and f"done: {run_dir / 'generator.safetensors'};" in out  # paths whole


def test_terminal_output_has_the_progress_bar(photo_folder, tmp_path):
    cmd, run_dir = _train_command(photo_folder, tmp_path)
    parent, child = pty.openpty()
    proc = subprocess.Popen(cmd, env=PROCESS_ENV, stdin=child, stdout=child, stderr=child)
    os.close(child)
    chunks = []
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # the terminal's other end closed: the process ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(parent)
    assert proc.wait(timeout=60) == 0
    out = b"".join(chunks).decode(errors="replace")
    assert "━" in out and "img/s" in out  # rich's bar, redrawn in place
    plain = [line for line in out.splitlines() if PLAIN_LINE.match(line)]
    assert not plain, plain[:3]
    assert (run_dir / "generator.safetensors").is_file()


def test_line_progress_writes_news_and_the_end_only():
    """A count alone is not news; an info is, once the interval has passed; completing always is."""
    stream = StringIO()
    progress = LineProgress(interval_s=0.0, stream=stream)
    task = progress.add_task("prepare", total=10, rate=0.0, info="")
    progress.update(task, completed=3, rate=3.0)
    assert stream.getvalue() == ""
    progress.update(task, completed=4, rate=4.0, info="cache/", epoch="1/2")
    assert stream.getvalue().startswith("prepare 4/10 (40%) epoch 1/2 4.0 img/s cache/ ETA ")
    progress.update(task, completed=10, rate=5.0)
    assert stream.getvalue().splitlines()[-1] == "prepare 10/10 (100%) epoch 1/2 5.0 img/s cache/"
    slow = LineProgress(interval_s=3600.0, stream=StringIO())
    task = slow.add_task("load", total=5, rate=0.0, info="")
    slow.update(task, completed=2, info="x")
    assert slow.stream.getvalue() == ""
    quiet = LineProgress(enabled=False, interval_s=0.0, stream=StringIO())  # the processes other than rank 0
    task = quiet.add_task("load", total=1, rate=0.0, info="")
    quiet.update(task, completed=1, info="x")
    assert quiet.stream.getvalue() == ""
