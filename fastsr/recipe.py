"""The recipe: every section of a run, from YAML (with `base:` and `key=value` overrides) to a typed, checked
`Recipe`. The sections of the run itself are in `fastsr.config`; a part's section (`model`, `discriminator`,
each of `loss.terms`) is the typed config its registry owns, so its keys, defaults and value rules live in
the part's own file. What this module adds are the rules that join sections (a crop the discriminator can
take, a scale the generator can be built for) and the loading of plugins before anything is built.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fastsr.config import DataConfig, RuntimeConfig, TrainConfig, build_section, read_raw
from fastsr.errors import RecipeError
from fastsr.losses import LossConfig
from fastsr.models import DISCRIMINATORS, GENERATORS
from fastsr.registry import PartConfig, load_plugins


@dataclass
class Recipe:
    """A run's typed, checked recipe: the top-level keys (`name`, `out_dir`, `scale`, `plugins`), the parts'
    sections (`model`, `discriminator`) and the run's (`data`, `loss`, `train`, `runtime`)."""

    name: str = "run"
    out_dir: str = "runs"  # the run directory is out_dir/name
    scale: int = 4
    # Modules to import before the recipe is read, so the parts they register can be named here
    # (installed packages can use the `fastsr.models` / `fastsr.losses` entry points instead).
    plugins: list[str] = field(default_factory=list)
    model: PartConfig = field(default_factory=lambda: GENERATORS.default("srresnet"),
                              metadata={"registry": GENERATORS})
    discriminator: PartConfig = field(default_factory=lambda: DISCRIMINATORS.default("srgan"),
                                      metadata={"registry": DISCRIMINATORS})  # finetune only
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @property
    def run_dir(self) -> Path:
        """`out_dir/name`, where the run writes."""
        return Path(self.out_dir) / self.name


# The recipes shipped inside the package, so an installed wheel has them; a checkout's `recipes/` links here.
PACKAGED = Path(__file__).resolve().parent / "recipes"


def packaged_recipes() -> dict[str, Path]:
    """Name -> file of every packaged recipe (`srgan_x4` -> .../fastsr/recipes/srgan_x4.yaml)."""
    return {p.stem: p for p in sorted(PACKAGED.glob("*.yaml"))}


def find_recipe(spec: str | Path) -> Path:
    """A recipe file: `spec` itself when it is a file, else the packaged recipe of that name."""
    path = Path(spec)
    if path.is_file():
        return path
    packaged = packaged_recipes()
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if path.parent == Path(".") and name in packaged:
        return packaged[name]
    close = difflib.get_close_matches(name, list(packaged), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise RecipeError(f"{spec}: recipe not found: not a file, nor a packaged recipe{hint}; "
                      f"`fastsr recipes` lists them ({', '.join(packaged)})")


def load_recipe(spec: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read a recipe (a file, following `base:`, or a packaged recipe's name), apply `key=value`
    overrides, validate. An error is reported against the file, or against the command line when the file
    alone is a valid recipe (the overrides broke it)."""
    path = find_recipe(spec)
    defaults = part_defaults()
    try:
        return from_dict(read_raw(path, overrides, defaults), source=str(path))
    except RecipeError:
        if not overrides or not _valid(path, defaults):
            raise
    return from_dict(read_raw(path, overrides, defaults), source="command line")


def _valid(path: Path, defaults: dict[str, str]) -> bool:
    try:
        from_dict(read_raw(path, (), defaults), source=str(path))
    except RecipeError:
        return False
    return True


def part_defaults() -> dict[str, str]:
    """The part a recipe's part section without a `name:` means: {"model": "srresnet", "discriminator": "srgan"}."""
    return {f.name: f.default_factory().name for f in dataclasses.fields(Recipe) if "registry" in f.metadata}


def from_dict(raw: dict, source: str = "recipe") -> Recipe:
    """A checked `Recipe` from a raw recipe dict, its `plugins` imported first; errors name `source`."""
    plugins = raw.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise RecipeError(f"{source}: plugins must be a list of module names, got {plugins!r}")
    load_plugins(plugins, source)
    recipe = build_section(Recipe, raw, prefix="", source=source)
    _check_joins(recipe, source)
    return recipe


def to_dict(recipe: Recipe) -> dict:
    """The recipe as nested plain dicts and lists (every key, defaults included)."""
    return dataclasses.asdict(recipe)


def save_recipe(recipe: Recipe, path: Path) -> None:
    """Write `to_dict(recipe)` as YAML to `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))


def _check_joins(r: Recipe, source: str) -> None:
    """The rules between sections (each section checked its own keys as it was built)."""
    def fail(key: str, why: str):
        raise RecipeError(f"{source}: {key} {why}")

    generator = GENERATORS.entry(r.model.name).cls
    if r.scale not in generator.scales:
        fail("scale", f"{r.scale} is not one generator '{r.model.name}' is built for ({generator.scales})")
    if not generator.trainable:
        fail("model.name", f"'{r.model.name}' has nothing to train; it is a baseline for `fastsr eval`")
    if r.data.hr_crop % r.scale:
        fail("data.hr_crop", f"must be a multiple of scale {r.scale} (got {r.data.hr_crop})")
    critic = DISCRIMINATORS.entry(r.discriminator.name).cls
    multiple = getattr(critic, "size_multiple", 1)
    if r.train.runs("finetune") and (r.data.hr_crop < critic.min_size or r.data.hr_crop % multiple):
        rule = f"at least {critic.min_size}" + (f" and a multiple of {multiple}" if multiple > 1 else "")
        fail("data.hr_crop", f"must be {rule} for the discriminator '{r.discriminator.name}' (got {r.data.hr_crop})")
    k = r.data.crops_per_image
    if r.data.repeat % k or r.train.batch_size % k:
        fail("data.crops_per_image", f"({k}) must divide data.repeat ({r.data.repeat}) and train.batch_size "
             f"({r.train.batch_size})")
