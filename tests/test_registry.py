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
import torch
import yaml
from PIL import Image

from fastsr.cli import main
from fastsr.config import positive
from fastsr.errors import RecipeError
from fastsr.models import GENERATORS, build_generator
from fastsr.recipe import from_dict, load_recipe
from fastsr.registry import PartConfig, PartError, Registry

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


def test_registration_checks_the_whole_contract():
    """What a registry asks of a part class, each refused at registration with one line naming the class
    and its module."""
    registry = Registry("thing", built_with=("scale",), requires={"scales": tuple, "trainable": bool})

    @dataclasses.dataclass
    class WidthConfig(PartConfig):
        width: int = 8

    def part(**body):
        attrs = {"__module__": "my_plugin", "scales": (2, 4), "trainable": True,
                 "__init__": lambda self, config, scale: None, **body}
        return type("Part", (), {k: v for k, v in attrs.items() if v is not _MISSING})

    def refusal(config=WidthConfig, **body) -> str:
        with pytest.raises(PartError) as err:
            registry.register("p", config)(part(**body))
        message = str(err.value)
        assert "\n" not in message and "Part in module my_plugin" in message
        return message

    # the old contract, keys repeated as keywords (here with a default that differs from the config's)
    assert "Part.__init__ must take (self, config: WidthConfig, scale): declare the hyperparameters once, in " \
           "WidthConfig, and read them from config" in refusal(__init__=lambda self, scale=4, width=4: None)
    assert "it has no `scale`" in refusal(__init__=lambda self, config: None)
    assert "`depth` is not passed to it" in refusal(__init__=lambda self, config, scale, depth: None)
    assert "must be a dataclass deriving from fastsr.registry.PartConfig" in refusal(config=dict)
    assert "has no class attribute `scales`: declare `scales = ...` (tuple)" in refusal(scales=_MISSING)
    assert "Part.trainable must be a bool, got 1" in refusal(trainable=1)

    class Undecorated(WidthConfig):  # @dataclass forgotten: `depth` would be no key at all
        depth: int = 2

    assert "Undecorated is not a dataclass: put @dataclass on it" in refusal(config=Undecorated)

    @dataclasses.dataclass
    class BadDefault(PartConfig):
        width: int = "8"

    assert "BadDefault.width must be int, got '8'" in refusal(config=BadDefault)

    @dataclasses.dataclass
    class FailsItsCheck(PartConfig):
        width: int = 0

        def check(self) -> None:
            positive(self, "width")

    assert "default FailsItsCheck.width must be positive (got 0); fix the default" in refusal(config=FailsItsCheck)
    assert "p" not in registry  # nothing refused was registered
    registry.register("p", WidthConfig)(part())
    assert registry.create(registry.default("p"), scale=2).config == \
        {"name": "p", "scale": 2, "width": 8, "plugin": "my_plugin"}
    # a part keeping its typed config as `self.config` would lose it to the saved dict
    registry.register("q", WidthConfig)(part(__init__=lambda self, config, scale: setattr(self, "config", config)))
    with pytest.raises(PartError, match="sets self.config"):
        registry.create(registry.default("q"), scale=2)


class _Missing:
    """Deletes a class attribute `part()` would otherwise give."""


_MISSING = _Missing()


def test_a_model_records_the_config_that_rebuilds_it():
    model = build_generator("srcnn", scale=2, kernels=(9, 1, 5), residual=False)
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
    assert json.loads(weights.with_suffix(".json").read_text()) == {"name": "plainnet", "scale": 4, "channels": 4,
                                                                     "plugin": "plugin_arch"}
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
    # Without --plugin, generator.json's `plugin` names the module to import; where it cannot be imported,
    # one line that says what to do, exit 2.
    found = _cli("eval", "--model", str(weights), "--data", val, extra_path=str(TESTS))
    assert found.returncode == 0, found.stderr
    unknown = _cli("eval", "--model", str(weights), "--data", val)
    assert unknown.returncode == 2
    message = unknown.stderr.strip()
    assert "\n" not in message and "names plugin module 'plugin_arch', which cannot be imported" in message
    assert "put it on PYTHONPATH or pass --plugin" in message


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

    from fastsr.weights import load_generator, save_weights

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
        "@ANIMALS.register('okapi', OkapiConfig)\nclass Okapi:\n    def __init__(self, config):\n"
        "        self.legs = config.legs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import zoo

    assert zoo.ANIMALS.names() == ["okapi"]
    assert zoo.ANIMALS.create(zoo.ANIMALS.config_from({"name": "okapi", "legs": 3}, "animal", "test")).config == \
        {"name": "okapi", "legs": 3, "plugin": "zoo.okapi"}


# ---------------------------------------------------------------------------------------------
# A plugin that breaks the contract: one line naming its module, through the recipe and the CLI

OLD_STYLE = """
from dataclasses import dataclass
from torch import nn
from fastsr.models import GENERATORS
from fastsr.registry import PartConfig

@dataclass
class OldConfig(PartConfig):
    channels: int = 8

@GENERATORS.register("{name}", OldConfig)
class Old(nn.Module):
    scales = (2, 4)
    trainable = True

    def __init__(self, scale: int = 4, channels: int = 16):  # the keys repeated, a default that differs
        super().__init__()
"""

NEW_STYLE = """
from dataclasses import dataclass
from torch import nn
from fastsr.config import positive
from fastsr.models import GENERATORS
from fastsr.registry import PartConfig

{config_decorator}
class NewConfig(PartConfig):
    channels: int = {default}

    def check(self) -> None:
        positive(self, "channels")

@GENERATORS.register("{name}", NewConfig)
class New(nn.Module):
{scales}    trainable = True

    def __init__(self, config: NewConfig, scale: int):
        super().__init__()
"""


def _plugin_module(tmp_path: Path, monkeypatch, module: str, source: str) -> Path:
    """`module`.py in tmp_path (on sys.path) and a recipe naming it and the generator it registers."""
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / f"{module}.yaml"
    recipe.write_text(yaml.safe_dump({"plugins": [module], "model": {"name": module}}))
    return recipe


def _new_style(config_decorator="@dataclass", default=8, scales="    scales = (2, 4)\n") -> str:
    return NEW_STYLE.format(config_decorator=config_decorator, default=default, scales=scales, name="{name}")


@pytest.mark.parametrize("source, says", [
    (OLD_STYLE, ("Old.__init__ must take (self, config: OldConfig, scale): declare the hyperparameters once, "
                 "in OldConfig, and read them from config")),
    (_new_style(config_decorator=""), "NewConfig is not a dataclass: put @dataclass on it"),
    (_new_style(scales=""), "New has no class attribute `scales`"),
    ("raise RuntimeError('boom')\n", "failed while being imported: RuntimeError: boom"),
    (_new_style(default=0), "default NewConfig.channels must be positive (got 0); fix the default"),
], ids=["old-style-init", "no-dataclass", "no-scales", "raises", "bad-default"])
def test_a_plugin_breaking_the_contract_is_one_line_naming_it(tmp_path, monkeypatch, request, source, says):
    module = "broken_" + request.node.callspec.id.replace("-", "_")
    recipe = _plugin_module(tmp_path, monkeypatch, module, source.replace("{name}", module))
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    assert f"plugins[0]='{module}'" in message and says in message
    assert module not in GENERATORS


def test_a_plugin_breaking_the_contract_stops_the_cli_with_one_line(tmp_path):
    (tmp_path / "old_style_plugin.py").write_text(OLD_STYLE.replace("{name}", "old_style"))
    recipe = tmp_path / "old.yaml"
    recipe.write_text(yaml.safe_dump({"plugins": ["old_style_plugin"], "model": {"name": "old_style"}}))
    done = _cli("train", str(recipe), extra_path=str(tmp_path))
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert "plugins[0]='old_style_plugin'" in message and "module old_style_plugin" in message
    assert "Old.__init__ must take (self, config: OldConfig, scale)" in message


def test_a_scale_is_what_the_generator_declares(plugin_cleanup):
    """No fixed list of scales: the plugin's generator declares 3, SRResNet does not."""
    recipe = from_dict({"plugins": ["plugin_arch"], "scale": 3, "model": {"name": "plainnet"}})
    assert recipe.scale == 3 and recipe.model.name == "plainnet"
    model = GENERATORS.create(recipe.model, scale=recipe.scale)
    assert model(torch.rand(1, 3, 5, 7)).shape == (1, 3, 15, 21)
    with pytest.raises(RecipeError) as err:
        from_dict({"scale": 3, "model": {"name": "srresnet"}})
    assert "\n" not in str(err.value)
    assert "scale 3 is not one generator 'srresnet' is built for ((2, 4, 8))" in str(err.value)


def test_a_saved_plugin_model_names_its_module_and_loads_without_it_imported(tmp_path, plugin_cleanup):
    import plugin_arch  # noqa: F401 - registers plainnet here

    from fastsr.weights import save_weights

    model = GENERATORS.create(GENERATORS.config_from({"name": "plainnet", "channels": 3}, "model", "test"), scale=3)
    assert model.config == {"name": "plainnet", "scale": 3, "channels": 3, "plugin": "plugin_arch"}
    save_weights(model.eval(), tmp_path / "p.safetensors", model.config)
    x = torch.rand(1, 3, 6, 5)
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x).detach(), tmp_path / "y.pt")
    code = ("import sys, torch; from fastsr.weights import load_generator; "
            "assert 'plugin_arch' not in sys.modules; "
            f"m = load_generator({str(tmp_path / 'p.safetensors')!r}); "
            f"assert torch.equal(m(torch.load({str(tmp_path / 'x.pt')!r})), torch.load({str(tmp_path / 'y.pt')!r})); "
            "print(type(m).__module__, m.config['plugin'])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["plugin_arch", "plugin_arch"]


def test_a_saved_config_naming_a_missing_plugin_is_one_line():
    saved = {"name": "nowhere_net", "scale": 4, "channels": 3, "plugin": "no_such_plugin_module"}
    with pytest.raises(RecipeError) as err:
        build_generator(**saved, source="g.json")
    assert str(err.value) == ("g.json: names plugin module 'no_such_plugin_module', which cannot be imported "
                              "(No module named 'no_such_plugin_module'); put it on PYTHONPATH or pass --plugin")
    # a fastsr model's saved config (no `plugin`) loads as before
    assert build_generator(name="bicubic", scale=3).config == {"name": "bicubic", "scale": 3}
