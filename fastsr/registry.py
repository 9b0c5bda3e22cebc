"""Registries of the parts a recipe names by `name:` (generators, discriminators, loss terms).

A part is a class plus a typed config (a dataclass deriving from `PartConfig`): the config's fields are
the recipe keys of that part, with their defaults, and its `check()` states their value rules. A part
file registers itself with a decorator, so adding an architecture is one file:

    @dataclass
    class TinyConfig(PartConfig):
        channels: int = 32

    @GENERATORS.register("tiny", TinyConfig)
    class Tiny(nn.Module):
        def __init__(self, scale: int = 4, channels: int = 32): ...

The registry checks at registration that each config field is a keyword of the class's `__init__` with
the same default (so the recipe and the class cannot drift apart), builds configs from recipe
sections with one-line errors that name the key and the closest valid key *of that part*, and records on
each instance the `config` dict it was built with (`{"name": ..., **init arguments}`, JSON-ready), which
is what weights are saved with and what rebuilds the part.

Parts defined outside fastsr register the same way from their own module; a recipe's `plugins:` list
and the `fastsr.models` / `fastsr.losses` entry-point groups name the modules to import (`load_plugins`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from fastsr.config import RecipeError, build_section, section_keys

ENTRY_POINT_GROUPS = ("fastsr.models", "fastsr.losses")


@dataclass
class PartConfig:
    """Base of every part's typed config: `name` is the registered name that picks the part."""

    name: str

    def check(self) -> None:
        """Raise `Invalid(field, why)` for a value the part cannot take (override in a part's config)."""


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type
    config: type[PartConfig]


class Registry:
    """Name -> (class, typed config) for one kind of part; `kind` names it in messages."""

    def __init__(self, kind: str, outside: tuple[str, ...] = ()):
        """`outside`: config fields every part of this kind has that its caller uses rather than the class
        (a loss term's `weight`): they are not constructor arguments."""
        self.kind, self.outside = kind, ("name", *outside)
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config: type[PartConfig]):
        """Class decorator: register the class as `name` with its typed `config`."""

        def add(cls: type) -> type:
            if name in self._entries and self._entries[name].cls.__qualname__ != cls.__qualname__:
                raise ValueError(f"{self.kind} {name!r} is registered twice ({self._entries[name].cls} and {cls})")
            if not (dataclasses.is_dataclass(config) and issubclass(config, PartConfig)):
                raise TypeError(f"{self.kind} {name!r}: its config must be a dataclass deriving from PartConfig")
            _check_init_matches(cls, config, f"{self.kind} {name!r}", self.outside)
            _record_config(cls, name)
            self._entries[name] = Entry(name, cls, config)
            return cls

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self._entries, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise KeyError(f"{name!r} is not a registered {self.kind}{hint}; registered: {', '.join(self.names())}. "
                           "A plugin's part needs its module imported first (a recipe's `plugins:`, `--plugin` for eval and "
                           "upscale, or a `fastsr.models` entry point)") from None

    def default(self, name: str) -> PartConfig:
        """The config of part `name` with every default."""
        return self.entry(name).config(name=name)

    def config_from(self, raw: Any, key: str, source: str) -> PartConfig:
        """Build the typed config of the part `raw["name"]` names from a recipe section; a one-line
        RecipeError names `key.FIELD` for an unknown key (with the closest key of that part), a wrong type
        or a value the part's `check()` refuses."""
        if not isinstance(raw, dict):
            raise RecipeError(f"{source}: '{key}' must be a section with a `name:` ({self.kind}), got {raw!r}")
        if not isinstance(raw.get("name"), str):
            what = "is missing" if "name" not in raw else f"must be a name, got {raw['name']!r}"
            raise RecipeError(f"{source}: {key}.name {what}: name a {self.kind} ({', '.join(self.names())})")
        try:
            entry = self.entry(raw["name"])
        except KeyError as err:
            raise RecipeError(f"{source}: {key}.name={err.args[0]}") from None
        return build_section(entry.config, raw, f"{key}.", source, owner=f"{self.kind} '{entry.name}'")

    def keys(self) -> dict[str, list[str]]:
        """Each registered part's recipe keys (its config fields), by part name."""
        return {name: section_keys(entry.config) for name, entry in sorted(self._entries.items())}

    def create(self, config: PartConfig, **extra):
        """An instance of the part `config` names, built from the config's fields and `extra` (e.g. `scale`)."""
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in self.outside}
        return self.entry(config.name).cls(**extra, **fields)

    def rebuild(self, saved: dict, source: str):
        """An instance from a saved `config` dict (`{"name": ..., **init arguments}`), its arguments checked
        as a recipe section's are, with errors naming `source` (the file it came from)."""
        if not isinstance(saved, dict) or "name" not in saved:
            raise RecipeError(f"{source}: not a fastsr {self.kind} config (no `name`)")
        entry_name = saved.get("name")
        extra = {k: v for k, v in saved.items() if k not in _config_fields(self, entry_name, source)}
        config = self.config_from({k: v for k, v in saved.items() if k not in extra}, self.kind, source)
        init = inspect.signature(self.entry(config.name).cls).parameters
        unknown = [k for k in extra if k not in init]
        if unknown:
            raise RecipeError(f"{source}: {self.kind} '{config.name}' takes no argument {unknown[0]!r}")
        return self.create(config, **extra)


def _config_fields(registry: Registry, name: Any, source: str) -> set[str]:
    try:
        return {f.name for f in dataclasses.fields(registry.entry(name).config)}
    except KeyError as err:
        raise RecipeError(f"{source}: {err.args[0]}") from None


def _check_init_matches(cls: type, config: type, what: str, outside: tuple[str, ...]) -> None:
    """Every config field (but those `outside`) is a keyword of `cls.__init__` with the same default."""
    params = inspect.signature(cls.__init__).parameters
    for f in dataclasses.fields(config):
        if f.name in outside:
            continue
        if f.name not in params:
            raise TypeError(f"{what}: config field {f.name!r} is not an argument of {cls.__name__}.__init__")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if _jsonable(params[f.name].default) != _jsonable(default):
            raise TypeError(f"{what}: {cls.__name__}.__init__ default {f.name}={params[f.name].default!r} differs "
                            f"from its config's {default!r}")


def _record_config(cls: type, name: str) -> None:
    """Give every instance of `cls` a `config` dict: its registered name and the arguments it was built
    with, defaults included (tuples as lists, so the dict survives JSON)."""
    if getattr(cls.__init__, "_records_config", False):
        return
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = {k: _jsonable(v) for k, v in list(bound.arguments.items())[1:]}
        object.__setattr__(self, "config", {"name": name, **arguments})

    recording_init._records_config = True
    cls.__init__ = recording_init


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def import_all(package: str, path: list[str]) -> None:
    """Import every module of `package` (its `__path__`), so each part file in it registers itself: a new
    architecture or loss term is its file alone, with no list to add it to."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")


def load_plugins(modules: list[str] = (), source: str = "recipe") -> None:
    """Import each module named in a recipe's `plugins:` and (once per process) every module of the fastsr
    entry-point groups, so the parts they define register themselves. A module that cannot be imported is a
    one-line error."""
    _load_entry_points()
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise RecipeError(f"{source}: plugins[{i}]={module!r} cannot be imported ({err}); "
                              "put it on PYTHONPATH or install it") from None


@functools.cache
def _load_entry_points() -> None:
    for group in ENTRY_POINT_GROUPS:
        for point in entry_points(group=group):
            try:
                point.load()
            except Exception as err:  # noqa: BLE001 - a broken plugin must not hide behind a traceback
                raise RecipeError(f"entry point {point.name} ({point.value}) of {group} failed to load: "
                                  f"{' '.join(str(err).split())}") from None
