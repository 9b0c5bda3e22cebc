"""torchvision's ImageNet weight files, which fastsr cannot ship: VGG19 for the perceptual loss, AlexNet and
VGG16 for the perceptual metrics. The one rule for all of them lives here:

* looked for in the torch hub cache, else downloaded there under a socket timeout, so that a machine
  without a network fails in seconds instead of hanging (torch's downloader sets no timeout of its own);
* or read from a file the user names. Nothing a user hands in is unpickled: a `.safetensors` file is read
  as such, a `.pth` only if its SHA-256 says it is torchvision's own file (and then with `weights_only`);
* failing that, a one-line error (a subclass of `WeightsUnavailable`) naming what was tried, the URL to
  download and the two places to put the file.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from fastsr.util import file_digest

# Seconds a stalled network read may block before a weight download gives up.
_DOWNLOAD_TIMEOUT_S = 10.0

# Where torchvision's weight files are published (tests check it against torchvision's own URLs).
TORCHVISION_MODELS_URL = "https://download.pytorch.org/models/"

# torchvision's VGG convolution stacks (cfg "D" and "E"): ints are conv output channels, "M" a max-pool.
VGG_CFGS: dict[int, tuple[int | str, ...]] = {
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


def vgg_features(depth: int) -> nn.Sequential:
    """torchvision's VGG ``features`` of that depth (same indices and state-dict keys, randomly initialised),
    without allocating the 120M-parameter classifier that no feature user needs."""
    layers: list[nn.Module] = []
    prev = 3
    for v in VGG_CFGS[depth]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(prev, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            prev = v
    return nn.Sequential(*layers)


class WeightsUnavailable(RuntimeError):
    """ImageNet weights could not be loaded (no network, a missing, unreadable or unknown file). Each user
    of this module raises its own subclass, so a caller can tell the loss's weights from a metric's."""


@dataclass(frozen=True)
class ImageNetFile:
    """One of torchvision's weight files and how a fastsr user supplies it."""

    what: str  # how messages name it: "VGG19 ImageNet weights"
    file: str  # torchvision's name, "{arch}-...-{first hex digits of its SHA-256}.pth": "vgg19-dcbb9e9d.pth"
    option: str  # how a user passes a local copy: "loss.vgg_weights=/path/to/vgg19-dcbb9e9d.pth"
    error: type[WeightsUnavailable]

    @property
    def url(self) -> str:
        return TORCHVISION_MODELS_URL + self.file

    @property
    def hub_path(self) -> Path:
        """Where torchvision looks for (and downloads) the file."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file

    def unavailable(self, tried: str, cause: BaseException) -> WeightsUnavailable:
        """One-line error: what was tried, why it failed, and the two ways to supply the file."""
        reason = " ".join(str(cause).split())  # some loaders' messages span several lines
        return self.error(
            f"{self.what} unavailable: {tried} ({type(cause).__name__}: {reason}). "
            f"Download {self.url} and either put it at {self.hub_path} or pass {self.option} (or a .safetensors copy)"
        )

    def from_hub(self) -> dict[str, torch.Tensor]:
        """The state dict from the torch hub cache, else downloaded there (as torchvision's
        ``Weights.get_state_dict`` does)."""
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        try:
            return torch.hub.load_state_dict_from_url(self.url, progress=False)
        except Exception as e:  # URLError, timeouts, a corrupt cache file...
            raise self.unavailable(f"tried the torch hub cache {self.hub_path} and a download", e) from e
        finally:
            socket.setdefaulttimeout(previous)

    @property
    def sha256_prefix(self) -> str:
        return self.file.removesuffix(".pth").rsplit("-", 1)[1]

    def from_file(self, path: str | os.PathLike) -> dict[str, torch.Tensor]:
        """The state dict in a user's file: a `.safetensors`, or torchvision's own `.pth` (as the SHA-256
        its name begins with identifies it)."""
        path = Path(path)
        try:
            if path.suffix == ".safetensors":
                return load_file(str(path))
            digest = file_digest(path)
            if not digest.startswith(self.sha256_prefix):
                raise ValueError(f"not torchvision's {self.file} (its SHA-256 is {digest[:16]}...), "
                                 "and fastsr unpickles no other file: convert it to .safetensors")
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # missing file, not safetensors, another .pth...
            raise self.unavailable(f"tried to load {path}", e) from e

    def features(self, state: dict[str, torch.Tensor], wanted: Iterable[str], source: str) -> dict[str, torch.Tensor]:
        """The ``wanted`` keys of the ``features`` stack, from a full-model (``features.N.*``) or a
        features-only (``N.*``) state dict."""
        prefix = "features." if any(k.startswith("features.") for k in state) else ""
        wanted = list(wanted)
        missing = [k for k in wanted if prefix + k not in state]
        if missing:
            arch = self.file.split("-")[0]
            raise self.error(
                f"{source} is not a torchvision {arch} state dict (missing {missing[0]!r} and "
                f"{len(missing) - 1} more keys); expected {self.file}, set with {self.option}"
            )
        return {k: state[prefix + k] for k in wanted}
