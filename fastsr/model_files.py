"""Model files from anywhere: fastsr's own weights, or any super-resolution model spandrel opens.

Users arrive with models: the community's hundreds of ESRGAN, Compact, SPAN, SwinIR, DAT, ... files, which
every SR tool opens through spandrel (`.pth`, `.pt`, `.ckpt`, `.safetensors`). `open_generator` takes
either kind, so `fastsr eval`, `upscale` and `export` score, run and export them as fastsr's own:

* fastsr's weights (a `.safetensors` with its `generator.json` beside it) rebuild as always (fastsr.weights);
* a file of an architecture fastsr also has (a registered generator whose class names its spandrel id in
  `spandrel` and maps spandrel's hyperparameters to its recipe keys in `keys_from_spandrel`) becomes that
  fastsr module, its weights taken by name (or, for the older key layouts spandrel also reads, in order,
  shape by shape) and checked to give spandrel's output; such a model also fine-tunes (`start_from`:
  `train.init_from`), and the run saves it in fastsr's format, which spandrel opens again;
* any other file runs as spandrel built it (`SpandrelModel`): evaluated, upscaled, exported, not trained.

Nothing a user hands in is unpickled beyond spandrel's restricted unpickler, which admits tensors and
ordered dicts only: a pickle that would import anything else (and so could run code) is refused, one line.
"""

from __future__ import annotations

import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastsr.errors import RecipeError, WeightsError
from fastsr.models import GENERATORS
from fastsr.weights import config_path, load_generator, load_weights, read_config, same_generator

MODEL_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")  # what spandrel reads
_CHECK_SIZE = 16  # LR side of the input a mapped model is checked on against spandrel's network
_CHECK_TOLERANCE = 1e-4  # relative to the output's magnitude


def is_fastsr_file(path: Path) -> bool:
    """Whether `path` is fastsr's own weights: a .safetensors with the generator config beside it."""
    return path.suffix == ".safetensors" and config_path(path).is_file()


def open_generator(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The generator in `path`, in eval mode on `device`: fastsr's own weights, or a file spandrel opens (a
    fastsr module where fastsr has the architecture, else `SpandrelModel`); WeightsError in one line naming
    the file when it is missing, unreadable, refused or not an RGB super-resolution model."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if is_fastsr_file(path):
        return load_generator(path, device)
    return open_with_spandrel(path).to(device).eval()


def start_from(model: nn.Module, path: str | Path) -> nn.Module:
    """Load `train.init_from` weights `path` into `model`, the recipe's generator: fastsr's own weights of the
    same generator, or a spandrel file of an architecture fastsr trains with the same keys and scale."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if is_fastsr_file(path):
        _check_same(path, read_config(path), model.config)
        return load_weights(model, path)
    opened = open_with_spandrel(path)
    if isinstance(opened, SpandrelModel):
        raise WeightsError(f"{path}: {opened.label} is not an architecture fastsr trains (it fine-tunes spandrel "
                           f"files of {', '.join(_spandrel_trainable())}); eval, upscale and export take it")
    _check_same(path, opened.config, model.config)
    model.load_state_dict(opened.state_dict())
    return model


def _check_same(path: Path, found: dict, wanted: dict) -> None:
    """Refuse weights of another generator (architecture, keys or scale) than the recipe's."""
    if not same_generator(found, wanted):
        raise WeightsError(f"{path}: weights are for {found}, but the recipe builds {wanted}; match model.* and scale")


class SpandrelModel(nn.Module):
    """A network spandrel built, of an architecture fastsr does not have: LR in [0, 1] (N, 3, h, w) -> SR
    (N, 3, h*scale, w*scale), unclamped, the input padded (replicated) to the sizes it requires and the output
    cut back. `label` is spandrel's name of the architecture; `config` says where the weights came from."""

    trainable = False

    def __init__(self, descriptor, path: Path) -> None:
        super().__init__()
        self.net = descriptor.model
        self.scale = descriptor.scale
        self.label = descriptor.architecture.name
        self.size_requirements = descriptor.size_requirements
        self.config = {"name": f"spandrel:{descriptor.architecture.id}", "scale": self.scale, "file": str(path)}

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        h, w = lr.shape[-2:]
        pad_w, pad_h = self.size_requirements.get_padding(w, h)
        if pad_w or pad_h:
            lr = F.pad(lr, (0, pad_w, 0, pad_h), mode="replicate")
        return self.net(lr)[..., : h * self.scale, : w * self.scale]


def open_with_spandrel(path: Path) -> nn.Module:
    """The model in a file spandrel opens, on the CPU: fastsr's module of its architecture when fastsr has
    one (checked against spandrel's output), else `SpandrelModel`."""
    state, descriptor = _read(path)
    mapped = _as_fastsr(descriptor, state, path)
    return mapped if mapped is not None else SpandrelModel(descriptor, path)


def _read(path: Path):
    """(the file's state dict, spandrel's model descriptor), or a one-line WeightsError saying what it is."""
    try:
        import spandrel
    except ImportError:
        raise WeightsError(f"{path}: not fastsr's weights (no {config_path(path).name} beside it), and opening other "
                           "model files needs spandrel: pip install spandrel") from None
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise WeightsError(f"{path}: not a model file fastsr opens: fastsr's .safetensors (with its .json) or a "
                           f"{', '.join(MODEL_SUFFIXES)} file spandrel recognises")
    loader = spandrel.ModelLoader()
    try:
        state = _load_state(loader, path)
    except pickle.UnpicklingError as err:
        if "forbidden" in str(err):
            raise WeightsError(f"{path}: refused: its pickle asks for {str(err).split()[1]}, which weights never "
                               "need and which could run code; fastsr loads tensors only") from None
        raise WeightsError(f"{path}: not a readable model file ({_first_line(err)})") from None
    except Exception as err:  # torch, zipfile and safetensors each raise their own on a damaged file
        raise WeightsError(f"{path}: not a readable model file ({_first_line(err)}); re-download it") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: holds no state dict of tensors; not a model file")
    keys = sorted(state)
    try:
        descriptor = loader.load_from_state_dict(dict(state))
    except spandrel.UnsupportedModelError:
        raise WeightsError(f"{path}: not an architecture spandrel {spandrel.__version__} recognises (keys "
                           f"{', '.join(keys[:3])}, ...); fastsr opens fastsr's weights and spandrel's architectures"
                           ) from None
    except Exception as err:
        raise WeightsError(f"{path}: spandrel could not build a model from it ({_first_line(err)})") from None
    _check_usable(descriptor, path)
    return state, descriptor


def _load_state(loader, path: Path) -> dict:
    """The state dict in `path` as spandrel reads it. spandrel tries a .pt as TorchScript first and, when that
    fails, reports TorchScript's error even for a pickle it then refused ("corrupted ... re-download"); a .pt
    that is not a TorchScript archive (a torch.save file) is read as the .pth it is, through a link, so a
    refusal or a damaged pickle is named for what it is."""
    if path.suffix.lower() != ".pt" or _is_torchscript(path):
        with warnings.catch_warnings():  # TorchScript's loader, which torch deprecates
            warnings.simplefilter("ignore", FutureWarning)
            return loader.load_state_dict_from_file(path)
    with tempfile.TemporaryDirectory() as folder:
        alias = Path(folder) / "model.pth"
        alias.symlink_to(path.resolve())
        return loader.load_state_dict_from_file(alias)


def _is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive: a zip with the `constants.pkl` torch.jit.save writes (torch.save's
    zip has none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def _check_usable(descriptor, path: Path) -> None:
    """An RGB image-to-image super-resolution model, which is what fastsr scores and runs."""
    import spandrel

    kind = descriptor.architecture.name
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR":
        raise WeightsError(f"{path}: a {descriptor.purpose.lower()} model ({kind}), not super-resolution; fastsr "
                           "scores and runs SR models only")
    channels = (descriptor.input_channels, descriptor.output_channels)
    if channels != (3, 3):
        raise WeightsError(f"{path}: a model of {channels[0]} input and {channels[1]} output channels ({kind}; "
                           "grayscale or with alpha); fastsr runs RGB models, 3 channels in and out")


def _as_fastsr(descriptor, state: dict, path: Path) -> nn.Module | None:
    """fastsr's own module of the descriptor's architecture, keys and scale with its weights, if fastsr has it
    and it computes what spandrel's network computes; else None."""
    for name in GENERATORS.names():
        cls = GENERATORS.entry(name).cls
        if getattr(cls, "spandrel", None) != descriptor.architecture.id or descriptor.scale not in cls.scales:
            continue
        keys = cls.keys_from_spandrel(descriptor.model.hyperparameters)
        if keys is None:
            return None
        try:
            model = GENERATORS.rebuild({"name": name, "scale": descriptor.scale, **keys}, str(path))
        except RecipeError:
            return None
        if not _take_weights(model, state, descriptor.model.state_dict()):
            return None
        return model.eval() if _same_output(model.eval(), descriptor.model.eval()) else None
    return None


def _take_weights(model: nn.Module, state: dict, theirs: dict) -> bool:
    """Load the file's tensors into `model` by name, or else spandrel's network's in order when every shape
    matches (the older layouts spandrel renames on loading, such as ESRGAN's `model.0.weight` ...)."""
    own = model.state_dict()
    if set(state) == set(own) and all(state[k].shape == own[k].shape for k in own):
        model.load_state_dict(state)
        return True
    if len(theirs) == len(own) and all(a.shape == b.shape for a, b in zip(theirs.values(), own.values())):
        model.load_state_dict(dict(zip(own, theirs.values())))
        return True
    return False


@torch.no_grad()
def _same_output(ours: nn.Module, theirs: nn.Module) -> bool:
    x = torch.rand(1, 3, _CHECK_SIZE, _CHECK_SIZE, generator=torch.Generator().manual_seed(0))
    a, b = ours(x), theirs(x)
    return a.shape == b.shape and bool((a - b).abs().max() <= _CHECK_TOLERANCE * (1 + b.abs().max()))


def _spandrel_trainable() -> list[str]:
    """The spandrel architecture ids fastsr fine-tunes."""
    return sorted({cls.spandrel for cls in (GENERATORS.entry(n).cls for n in GENERATORS.names())
                   if getattr(cls, "spandrel", None) and getattr(cls, "trainable", False)})


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
