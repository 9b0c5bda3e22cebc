"""A built wheel, installed into a fresh environment and run from outside the checkout, has everything
a user runs: the packaged recipes, `fastsr quickstart`, `fastsr train NAME`, `eval` and `upscale`."""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd, env, timeout=600):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def borrow_site_packages(python: Path) -> None:
    """Let the environment of `python` import the dependencies installed where this test runs (torch is
    gigabytes), but not fastsr: a .pth file lists this interpreter's site-packages folders. `venv
    --system-site-packages` would not do: run from inside a venv, it borrows the base interpreter's packages,
    not the venv's. The listed folders are added to the path, not read as site folders, so their own .pth
    files (an editable install of fastsr among them) are not run; the new environment's own site-packages,
    where the wheel goes, come first."""
    ours = {*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else []),
            sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    folders = [f for f in dict.fromkeys(sorted(ours)) if Path(f).is_dir()]
    theirs = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    (Path(theirs) / "borrowed_site_packages.pth").write_text("\n".join(folders) + "\n")


@pytest.mark.slow
def test_built_wheel_runs_outside_the_checkout(tmp_path):
    # Build from a copy, so the checkout gets no build/ or egg-info; no build isolation: setuptools is here.
    src = tmp_path / "src"
    anywhere = shutil.ignore_patterns(".git", "*.egg-info", "__pycache__", ".pytest_cache")

    def ignore(folder, names):  # and a checkout's own outputs, at its top only (fastsr/data is code)
        top = {"build", "dist", "runs", "data"} if Path(folder) == ROOT else set()
        return anywhere(folder, names) | (top & set(names))

    shutil.copytree(ROOT, src, symlinks=True, ignore=ignore)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
          str(src)], tmp_path, os.environ)
    wheel = next((tmp_path / "dist").glob("fastsr-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {Path(n).name for n in names if n.startswith("fastsr/recipes/")}
    assert {p.name for p in (ROOT / "fastsr" / "recipes").glob("*.yaml")} == packaged
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, os.environ)
    python, fastsr = venv / "bin" / "python", venv / "bin" / "fastsr"
    borrow_site_packages(python)
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp_path, os.environ)
    outside = tmp_path / "user"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run([python, "-c", "import fastsr; print(fastsr.__file__)"], outside, env).strip()
    assert Path(where).is_relative_to(venv), where

    assert "srgan_x4" in _run([fastsr, "recipes"], outside, env)
    table = _run([fastsr, "quickstart", "--out", "qs"], outside, env)
    assert "Bicubic" in table and "SRCNN" in table and "SRGAN" in table
    assert (outside / "qs" / "quickstart" / "generator.safetensors").is_file()
    _run([fastsr, "train", "quickstart", "out_dir=runs", "name=mine", "train.epochs_pretrain=1",
          "train.epochs_finetune=0"], outside, env)
    weights = outside / "runs" / "mine" / "generator.safetensors"
    assert "Mine" in _run([fastsr, "eval", "--model", "bicubic", "--model", f"Mine={weights}", "--data", "samples"],
                          outside, env)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(outside / "in.png")
    _run([fastsr, "upscale", "in.png", "--weights", str(weights), "-o", "out.png"], outside, env)
    assert Image.open(outside / "out.png").size == (120, 80)
