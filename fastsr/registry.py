"""Registries of the parts a recipe names by `name:` (generators, discriminators, loss terms).

A part is a class plus a typed config (a dataclass deriving from `PartConfig`). The config declares the
part's hyperparameters once: its fields are the part's recipe keys, with their defaults (a comment on each
says what it is), and its `check()` states their value rules. The class's constructor takes that config
(as torchtitan's components do) and reads `config.x`; it repeats no key. A part file registers itself with
a decorator, so adding an architecture is one file:

    @dataclass
    class TinyConfig(PartConfig):
        channels: int = 32  # feature channels

        def check(self) -> None:
            positive(self, "channels")

    @GENERATORS.register("tiny", TinyConfig)
    class Tiny(nn.Module):
        scales = (2, 3, 4)  # the upscaling factors it can be built for
        trainable = True  # False for a baseline with nothing to train

        def __init__(self, config: TinyConfig, scale: int):
            super().__init__()
            self.scale = scale
            self.body = nn.Conv2d(3, config.channels, 3, padding=1)  # ...

Each registry says what its parts are built with besides their config (`built_with`: a generator's
`scale`) and which class attributes the rest of fastsr reads without building one (`requires`: a
generator's `scales` and `trainable`). `register` checks the whole contract when the class is defined and
refuses a part that breaks it with one line naming the class, its module and what to change: the config
is not a `@dataclass` deriving from `PartConfig`, a required class attribute is missing or of the wrong
type, `__init__` does not take `config` first, a default does not have its field's type, or the
all-default config fails its own `check()`.

The registry builds configs from recipe sections with one-line errors that name the key and the closest
valid key *of that part*; `create` builds the part and records on the instance the JSON-ready `config`
dict it was built from (`{"name": ..., **built_with, **fields}`, plus `"plugin": MODULE` for a part
defined outside fastsr), which is what weights are saved with and what `rebuild` rebuilds the part from,
importing the plugin module first when the part is not registered yet.

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

from fastsr.config import build_section, section_keys
from fastsr.errors import RecipeError

ENTRY_POINT_GROUPS = ("fastsr.models", "fastsr.losses")
_MISSING = object()


class PartError(RecipeError):
    """A part class (or its config) breaks the registry's contract; the message names the class, its
    module and what to change."""


@dataclass
class PartConfig:
    """Base of every part's typed config: `name` is the registered name that picks the part."""

    name: str

    def check(self) -> None:
        """Raise `Invalid(field, why)` for a value the part cannot take (override in a part's config)."""


@dataclass(frozen=True)
class Entry:
    """One registered part: its name, class and typed config class."""

    name: str
    cls: type
    config: type[PartConfig]


class Registry:
    """Name -> (class, typed config) for one kind of part; `kind` names it in messages."""

    def __init__(self, kind: str, built_with: tuple[str, ...] = (), requires: dict[str, type] | None = None,
                 outside: tuple[str, ...] = ()):
        """`built_with`: the keyword arguments every part of this kind is built with besides its config (a
        generator's `scale`); `requires`: the class attributes every part of this kind declares, by type (a
        generator's `scales: tuple`); `outside`: config fields every part of this kind has that its caller
        uses rather than the class (a loss term's `weight`): they are not recorded in the instance's config."""
        self.kind, self.built_with, self.requires = kind, tuple(built_with), dict(requires or {})
        self.outside = ("name", *outside)
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config: type[PartConfig]):
        """Class decorator: register the class as `name` with its typed `config`, after checking the
        contract (a `PartError` otherwise)."""

        def add(cls: type) -> type:
            if name in self._entries and self._entries[name].cls.__qualname__ != cls.__qualname__:
                old = self._entries[name].cls
                raise PartError(f"{self.kind} {name!r} is registered twice ({old.__qualname__} in {old.__module__}, "
                                f"{cls.__qualname__} in {cls.__module__}): give one another name")
            self._check_contract(name, cls, config)
            self._entries[name] = Entry(name, cls, config)
            return cls

        return add

    def _check_contract(self, name: str, cls: type, config: Any) -> None:
        what = f"{self.kind} {name!r} ({cls.__qualname__} in module {cls.__module__})"

        def fail(why: str):
            raise PartError(f"{what}: {why}")

        label = getattr(config, "__name__", repr(config))
        if not (isinstance(config, type) and issubclass(config, PartConfig)):
            fail(f"its config {label} must be a dataclass deriving from fastsr.registry.PartConfig")
        if "__dataclass_fields__" not in vars(config):  # a subclass of a dataclass is one, with its base's fields
            fail(f"{label} is not a dataclass: put @dataclass on it, or its fields are not config keys")
        for attr, kind in self.requires.items():
            value = getattr(cls, attr, _MISSING)
            if value is _MISSING:
                fail(f"{cls.__name__} has no class attribute `{attr}`: declare `{attr} = ...` ({kind.__name__}) "
                     f"in its class body")
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                fail(f"{cls.__name__}.{attr} must be a {kind.__name__}, got {value!r}")
        self._check_init(cls, config, fail)
        self._check_defaults(name, config, fail)

    def _check_init(self, cls: type, config: type, fail) -> None:
        passed = (*self.built_with, *getattr(cls, "shared", ()))
        wanted = ", ".join(("self", f"config: {config.__name__}", *passed))
        take = (f"{cls.__name__}.__init__ must take ({wanted}): declare the hyperparameters once, in "
                f"{config.__name__}, and read them from config")
        try:
            params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        except (TypeError, ValueError):
            fail(f"{take} (its signature cannot be read)")
        if not params or params[0].name != "config" or params[0].kind not in (
                inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            now = ", ".join(str(p) for p in params)
            fail(f"{take} (it takes ({now}))")
        rest = {p.name: p for p in params[1:]}
        catch_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in rest.values())
        for key in passed:
            if key not in rest and not catch_all:
                fail(f"{take} (it has no `{key}`)")
        for p in rest.values():
            needed = p.default is inspect.Parameter.empty and p.kind not in (
                inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
            if needed and p.name not in passed:
                fail(f"{take} (`{p.name}` is not passed to it: make it a field of {config.__name__})")

    def _check_defaults(self, name: str, config: type, fail) -> None:
        """Every field has a default of its annotated type, and the all-default config passes `check()`:
        the defaults go through `build_section` as a recipe section's values would."""
        defaults = {}
        for f in dataclasses.fields(config):
            if f.name == "name":
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                fail(f"{config.__name__}.{f.name} has no default: give every field a default")
            defaults[f.name] = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        try:
            build_section(config, {"name": name, **defaults}, f"{config.__name__}.", "default")
        except RecipeError as err:
            fail(f"the default {str(err).removeprefix('default: ')}; fix the default or the check")
        except Exception as err:  # noqa: BLE001 - annotations that cannot be resolved, a check that crashes
            fail(f"its defaults cannot be checked: {type(err).__name__} ({_first_line(err)}) in {config.__name__}")

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry:
        """The `Entry` registered as `name`; otherwise a one-line KeyError with the closest name and how a
        plugin's part gets registered."""
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

    def create(self, config: PartConfig, **built_with):
        """`cls(config, **built_with)` for the part `config` names (`built_with`: e.g. a generator's `scale`,
        a loss term's shared keys), with the JSON-ready `config` dict it was built from set on the instance:
        `{"name": ..., **built_with, **fields}` (fields `outside` left out, tuples as lists), plus
        `"plugin": MODULE` when the class is defined outside fastsr, so `rebuild` can import it."""
        entry = self.entry(config.name)
        instance = entry.cls(config, **built_with)
        if isinstance(getattr(instance, "__dict__", {}).get("config"), PartConfig):
            raise PartError(f"{self.kind} {config.name!r} ({entry.cls.__qualname__} in module {entry.cls.__module__}): "
                            "its __init__ sets self.config, which the registry sets to the saved config dict: "
                            "keep the typed config under another name")
        record = {"name": config.name, **{k: _jsonable(v) for k, v in built_with.items()},
                  **{f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)
                     if f.name not in self.outside}}
        module = entry.cls.__module__
        if module != "__main__" and module != "fastsr" and not module.startswith("fastsr."):
            record["plugin"] = module
        object.__setattr__(instance, "config", record)
        return instance

    def rebuild(self, saved: dict, source: str):
        """An instance from a saved `config` dict (what `create` records), its fields checked as a recipe
        section's are, with errors naming `source` (the file it came from). A part not registered yet whose
        dict names its `plugin` module has that module imported first."""
        if not isinstance(saved, dict) or "name" not in saved:
            raise RecipeError(f"{source}: not a fastsr {self.kind} config (no `name`)")
        saved = dict(saved)
        plugin = saved.pop("plugin", None)
        name = saved["name"]
        if plugin is not None and isinstance(name, str) and name not in self:
            _import_plugin(plugin, source)
        fields = _config_fields(self, name, source)
        extra = {k: v for k, v in saved.items() if k not in fields}
        config = self.config_from({k: v for k, v in saved.items() if k not in extra}, self.kind, source)
        takes = (*self.built_with, *getattr(self.entry(config.name).cls, "shared", ()))
        unknown = [k for k in extra if k not in takes]
        if unknown:
            raise RecipeError(f"{source}: {self.kind} '{config.name}' takes no argument {unknown[0]!r}")
        missing = [k for k in self.built_with if k not in extra]
        if missing:
            raise RecipeError(f"{source}: {self.kind} '{config.name}' needs `{missing[0]}`")
        return self.create(config, **extra)



def _import_plugin(module: Any, source: str) -> None:
    if not isinstance(module, str) or not module:
        raise RecipeError(f"{source}: `plugin` must be a module name, got {module!r}")
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - whatever the module raises, one line
        raise RecipeError(f"{source}: names plugin module {module!r}, which cannot be imported "
                          f"({_first_line(err)}); put it on PYTHONPATH or pass --plugin") from None


def _config_fields(registry: Registry, name: Any, source: str) -> set[str]:
    try:
        return {f.name for f in dataclasses.fields(registry.entry(name).config)}
    except KeyError as err:
        raise RecipeError(f"{source}: {err.args[0]}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message (its kind where it has none)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def import_all(package: str, path: list[str]) -> None:
    """Import every module of `package` (its `__path__`), so each part file in it registers itself: a new
    architecture or loss term is its file alone, with no list to add it to."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")


def load_plugins(modules: list[str] = (), source: str = "recipe") -> None:
    """Import each module named in a recipe's `plugins:` and (once per process) every module of the fastsr
    entry-point groups, so the parts they define register themselves. Whatever goes wrong while a module is
    imported (it is not found, a part it registers breaks the contract, it raises) is one line naming it."""
    _load_entry_points()
    for i, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise RecipeError(f"{source}: plugins[{i}]={module!r} cannot be imported ({_first_line(err)}); "
                              "put it on PYTHONPATH or install it") from None
        except RecipeError as err:  # a part it registers breaks the contract: the message says what to change
            raise RecipeError(f"{source}: plugins[{i}]={module!r}: {_first_line(err)}") from None
        except Exception as err:  # noqa: BLE001 - a broken plugin must not hide behind a traceback
            raise RecipeError(f"{source}: plugins[{i}]={module!r} failed while being imported: "
                              f"{type(err).__name__}: {_first_line(err)}") from None


@functools.cache
def _load_entry_points() -> None:
    for group in ENTRY_POINT_GROUPS:
        for point in entry_points(group=group):
            try:
                point.load()
            except Exception as err:  # noqa: BLE001 - a broken plugin must not hide behind a traceback
                raise RecipeError(f"entry point {point.name} ({point.value}) of {group} failed to load: "
                                  f"{_first_line(err)}") from None
