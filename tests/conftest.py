"""Shared fixtures: a tiny image folder cut from a real photograph, a tiny recipe over it, and the cleanup
after a test that registered the plugin architecture (tests/plugin_arch.py); for the tests that start real
processes, their environment and a free port."""

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from fastsr.config import merge
from fastsr.models import GENERATORS
from fastsr.recipe import from_dict, part_defaults

ROOT = Path(__file__).resolve().parents[1]
# Started processes: output as it happens, and one thread each (the CI machine has 2 cores for them all).
PROCESS_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    """A TCP port free on loopback now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """train/ (6 images) and val/ (2 images) of 64x64 (and one odd-sized) tiles of a real photo."""
    root = tmp_path_factory.mktemp("photos")
    photo = skdata.astronaut()  # 512x512x3 uint8
    tiles = [photo[y:y + 64, x:x + 64] for y in range(0, 512, 128) for x in range(0, 256, 128)]
    (root / "train").mkdir()
    (root / "val").mkdir()
    for i, tile in enumerate(tiles[:6]):
        Image.fromarray(np.ascontiguousarray(tile)).save(root / "train" / f"t{i}.png")
    Image.fromarray(np.ascontiguousarray(tiles[6])).save(root / "val" / "v0.png")
    Image.fromarray(np.ascontiguousarray(photo[300:370, 300:381])).save(root / "val" / "v1.png")  # odd size
    return root


def tiny_recipe_dict(photo_folder: Path, out_dir: Path, **sections) -> dict:
    raw = {
        "name": "tiny",
        "out_dir": str(out_dir),
        "scale": 4,
        "model": {"name": "srresnet", "res_blocks": 1, "channels": 8},
        "data": {"source": str(photo_folder), "hr_crop": 32, "repeat": 2, "workers": 0},
        "loss": {"vgg_weights": "random", "vgg_layer": "relu2_2"},
        "train": {"epochs_pretrain": 1, "epochs_finetune": 1, "batch_size": 4, "lr": 1e-3,
                  "log_every": 1, "val_every": 0, "save_every": 0},
    }
    return merge(raw, sections, part_defaults())  # as a derived recipe would: a section naming another part replaces it


@pytest.fixture
def tiny_recipe(photo_folder, tmp_path):
    def make(**sections):
        return from_dict(tiny_recipe_dict(photo_folder, tmp_path / "runs", **sections))

    return make


@pytest.fixture
def plugin_cleanup():
    """Forget the plugin after the test, so no other test sees an architecture it did not import."""
    yield
    GENERATORS._entries.pop("plainnet", None)
    sys.modules.pop("plugin_arch", None)


# Where a test runs on each device there is: the CPU, and CUDA where torch sees a GPU (`pytest -k cuda`).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def photo_crops_and_cache(tmp_path_factory, sizes: list[tuple[int, int]]):
    """(samples, cache): PNG crops of a real photograph of the given sizes as a training folder (with a
    val/ image), and their `fastsr prepare` cache."""
    from fastsr.data import Sample
    from fastsr.data.cache import prepare_cache

    root = tmp_path_factory.mktemp("photos")
    photo = skdata.astronaut()
    samples = []
    for i, (h, w) in enumerate(sizes):
        path = root / "src" / "train" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(photo[40 * i : 40 * i + h, 30 * i : 30 * i + w])).save(path)
        samples.append(Sample(path))
    (root / "src" / "val").mkdir()
    Image.fromarray(photo[:64, :64]).save(root / "src" / "val" / "v.png")
    prepare_cache(str(root / "src"), root / "cache", workers=1, progress=False)
    return samples, root / "cache"


def hide_module(monkeypatch, prefix: str) -> None:
    """Make `import PREFIX` (and its submodules) fail for the rest of the test, as on a machine without it."""
    import builtins

    def hidden(name: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    for name in [m for m in sys.modules if hidden(m)]:
        monkeypatch.delitem(sys.modules, name)
    real_import = builtins.__import__

    def without(name, *args, **kw):
        if hidden(name):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", without)


def hide_dali(monkeypatch) -> None:
    hide_module(monkeypatch, "nvidia.dali")

