"""Registered parts: per-architecture recipe keys and errors, sections that name another part, plugins
(a recipe's `plugins:`, `--plugin`, a `fastsr.models` entry point) trained, evaluated and upscaled."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fastsr.cli import main
from fastsr.config import RecipeError
from fastsr.models import GENERATORS, SRCNN
from fastsr.recipe import from_dict, load_recipe
from fastsr.registry import PartConfig, Registry

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
TESTS = Path(__file__).resolve().parent


def refused(recipe: str, *overrides: str) -> str:
    with pytest.raises(RecipeError) as err:
        load_recipe(RECIPES / recipe, list(overrides))
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("recipe, override, message", [
    ("srgan_x4.yaml", "model.res_block=8",
     "unknown key 'model.res_block' for generator 'srresnet' (did you mean 'model.res_blocks'?)"),
    ("srcnn_x4.yaml", "model.srcnn_kernels=[9,1,5]",
     "unknown key 'model.srcnn_kernels' for generator 'srcnn' (did you mean 'model.kernels'?)"),
    ("esrgan_x4.yaml", "model.res_blocks=4", "unknown key 'model.res_blocks' for generator 'rrdbnet'"),
    ("esrgan_x4.yaml", "model.blocks=0", "model.blocks must be positive (got 0)"),
    ("srcnn_x4.yaml", "model.kernels=[9,2,5]", "model.kernels must be three odd sizes"),
    ("quickstart.yaml", "model.upsample_input=bicubc", "model.upsample_input='bicubc' is not one of: none, bicubic"),
    ("srgan_x4.yaml", "model.name=srresnett",
     "model.name='srresnett' is not a registered generator (did you mean 'srresnet'?)"),
    ("srgan_x4.yaml", "model.name=[1]", "model.name must be a name"),
    ("srgan_x4.yaml", "model.name=bicubic", "model.name 'bicubic' has nothing to train"),
    ("esrgan_x4.yaml", "scale=8", "scale 8 is not one generator 'rrdbnet' is built for"),
    ("srgan_x4.yaml", "discriminator.chanels=32",
     "unknown key 'discriminator.chanels' for discriminator 'srgan' (did you mean 'discriminator.channels'?)"),
    ("esrgan_x4.yaml", "data.hr_crop=24", "data.hr_crop must be at least 32 for the discriminator 'vgg128'"),
    ("srgan_x4.yaml", "plugins=[no_such_plugin_module]", "plugins[0]='no_such_plugin_module' cannot be imported"),
    ("srgan_x4.yaml", "res_blocks=8", "(did you mean 'model.res_blocks'?)"),
])
def test_part_keys_are_checked_per_architecture(recipe, override, message):
    assert message in refused(recipe, override)


def test_a_section_naming_another_part_replaces_the_base_one():
    # srcnn_x4 derives from srresnet_x4, whose model section has srresnet's keys
    srcnn = load_recipe(RECIPES / "srcnn_x4.yaml").model
    assert (srcnn.name, srcnn.kernels, srcnn.residual) == ("srcnn", [9, 5, 5], True)
    switched = load_recipe(RECIPES / "srgan_x4.yaml", ["model.name=srcnn", "model.kernels=[9,1,5]"]).model
    assert (switched.name, switched.kernels, switched.channels) == ("srcnn", [9, 1, 5], [64, 32])
    kept = load_recipe(RECIPES / "srgan_x4.yaml", ["model.res_blocks=4"]).model
    assert (kept.name, kept.res_blocks, kept.channels) == ("srresnet", 4, 64)
    assert from_dict({"discriminator": {"channels": 16}}).discriminator.name == "srgan"  # the default part


def test_registration_refuses_a_config_that_drifts_from_the_class():
    registry = Registry("thing")

    @dataclasses.dataclass
    class WidthConfig(PartConfig):
        width: int = 8

    with pytest.raises(TypeError, match="config field 'width' is not an argument"):
        registry.register("a", WidthConfig)(type("A", (), {"__init__": lambda self, depth=1: None}))
    with pytest.raises(TypeError, match="default width=4 differs from its config's 8"):
        registry.register("b", WidthConfig)(type("B", (), {"__init__": lambda self, width=4: None}))
    with pytest.raises(TypeError, match="must be a dataclass deriving from PartConfig"):
        registry.register("c", dict)(type("C", (), {}))


def test_a_model_records_the_config_that_rebuilds_it():
    model = SRCNN(scale=2, kernels=(9, 1, 5), residual=False)
    assert model.config == {"name": "srcnn", "scale": 2, "kernels": [9, 1, 5], "channels": [64, 32],
                            "residual": False}
    rebuilt = GENERATORS.rebuild(json.loads(json.dumps(model.config)), "generator.json")
    assert rebuilt.config == model.config
    with pytest.raises(RecipeError, match=r"generator.json: generator.kernels must be three odd sizes"):
        GENERATORS.rebuild({**model.config, "kernels": [9, 1]}, "generator.json")
    with pytest.raises(RecipeError, match="takes no argument 'depth'"):
        GENERATORS.rebuild({**model.config, "depth": 3}, "generator.json")


# ---------------------------------------------------------------------------------------------
# Plugins


def _plugin_recipe(photo_folder: Path, tmp_path: Path) -> Path:
    recipe = {"name": "plain", "out_dir": str(tmp_path / "runs"), "scale": 4, "plugins": ["plugin_arch"],
              "model": {"name": "plainnet", "channels": 4},
              "data": {"source": str(photo_folder), "hr_crop": 32, "repeat": 2, "workers": 0, "backend": "torch"},
              "train": {"epochs_pretrain": 2, "batch_size": 4, "lr": 1e-3, "log_every": 1, "val_every": 0,
                        "save_every": 0}}
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cli(*args: str, extra_path: str = "") -> subprocess.CompletedProcess:
    """`fastsr ARGS` in a fresh interpreter (so nothing registered in this one leaks in)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (extra_path, os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.run([sys.executable, "-m", "fastsr.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


def test_a_plugin_architecture_is_trained_evaluated_and_upscaled(photo_folder, tmp_path, plugin_cleanup):
    assert main(["train", str(_plugin_recipe(photo_folder, tmp_path))]) == 0
    weights = tmp_path / "runs" / "plain" / "generator.safetensors"
    assert json.loads(weights.with_suffix(".json").read_text()) == {"name": "plainnet", "scale": 4, "channels": 4}
    val = str(photo_folder / "val")
    scored = _cli("eval", "--plugin", "plugin_arch", "--model", "bicubic", "--model", f"Plain={weights}",
                  "--data", val, "--json", str(tmp_path / "scores.json"), extra_path=str(TESTS))
    assert scored.returncode == 0, scored.stderr
    assert set(json.loads((tmp_path / "scores.json").read_text())["sets"]["val"]["methods"]) == {"Bicubic", "Plain"}
    out = tmp_path / "v0_x4.png"
    upscaled = _cli("upscale", str(photo_folder / "val" / "v0.png"), "--weights", str(weights), "-o", str(out),
                    "--plugin", "plugin_arch", extra_path=str(TESTS))
    assert upscaled.returncode == 0, upscaled.stderr
    assert Image.open(out).size == (256, 256)
    # Without the plugin the architecture is unknown: one line that says what to do, exit 2.
    unknown = _cli("eval", "--model", str(weights), "--data", val, extra_path=str(TESTS))
    assert unknown.returncode == 2
    message = unknown.stderr.strip()
    assert "\n" not in message and "'plainnet' is not a registered generator" in message and "plugin" in message


def test_a_fastsr_models_entry_point_registers_without_naming_the_plugin(tmp_path):
    dist = tmp_path / "fastsr_plain_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fastsr-plain-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fastsr.models]\nplainnet = plugin_arch\n")
    code = ("from fastsr.recipe import from_dict; r = from_dict({'model': {'name': 'plainnet', 'channels': 3}}); "
            "print(r.model)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS)])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "PlainNetConfig(name='plainnet', channels=3)" in done.stdout
    # and without the entry point, the same recipe is refused
    env["PYTHONPATH"] = str(TESTS)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "'plainnet' is not a registered generator" in done.stderr


def test_a_saved_plugin_model_loads_with_the_same_output(tmp_path, plugin_cleanup):
    """The weights exported by a plugin run rebuild the same network (checked through the registry)."""
    import plugin_arch  # noqa: F401 - registers plainnet here
    import torch

    from fastsr.engine.checkpoint import load_generator, save_weights

    model = GENERATORS.create(GENERATORS.default("plainnet"), scale=2)
    save_weights(model, tmp_path / "p.safetensors", model.config)
    again = load_generator(tmp_path / "p.safetensors")
    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, 9, 7), dtype=np.float32))
    torch.testing.assert_close(again(x), model.eval()(x))


def test_a_new_part_file_in_a_package_registers_with_no_other_edit(tmp_path, monkeypatch):
    """How models/ and losses/ find their part files: a file dropped into the package is imported."""
    package = tmp_path / "zoo"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from fastsr.registry import Registry, import_all\nANIMALS = Registry('animal')\nimport_all(__name__, __path__)\n")
    (package / "okapi.py").write_text(
        "from dataclasses import dataclass\nfrom fastsr.registry import PartConfig\nfrom zoo import ANIMALS\n\n"
        "@dataclass\nclass OkapiConfig(PartConfig):\n    legs: int = 4\n\n"
        "@ANIMALS.register('okapi', OkapiConfig)\nclass Okapi:\n    def __init__(self, legs=4):\n        self.legs = legs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import zoo

    assert zoo.ANIMALS.names() == ["okapi"]
    assert zoo.ANIMALS.create(zoo.ANIMALS.config_from({"name": "okapi", "legs": 3}, "animal", "test")).config == \
        {"name": "okapi", "legs": 3}
