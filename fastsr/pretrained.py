"""torchvision's ImageNet weight files, which fastsr cannot ship: VGG19 for the perceptual loss, AlexNet and
VGG16 for the perceptual metrics. The one rule for all of them lives here:

* looked for in the torch hub cache, else downloaded there under a socket timeout, so that a machine
  without a network fails in seconds instead of hanging (torch's downloader sets no timeout of its own).
  The download says so in one line of fastsr's on stderr (torch's own "Downloading:" line is not printed),
  and a server that cannot be reached is remembered for the rest of the process: the next file from it
  fails at once, with no second attempt or line;
* or read from a file the user names. Nothing a user hands in is unpickled: a `.safetensors` file is read
  as such, a `.pth` only if its SHA-256 says it is torchvision's own file (and then with `weights_only`);
* failing that, a one-line error (a subclass of `WeightsUnavailable`) naming what was tried, the URL to
  download and the two places to put the file.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch
from safetensors.torch import load_file
from torch import nn

from fastsr.errors import WeightsUnavailable
from fastsr.util import file_digest

# Seconds a stalled network read may block before a weight download gives up.
_DOWNLOAD_TIMEOUT_S = 10.0

# Where torchvision's weight files are published (tests check it against torchvision's own URLs).
TORCHVISION_MODELS_URL = "https://download.pytorch.org/models/"

# Each file's size in MB, for the line that announces its download (tests check them against torchvision's).
SIZES_MB = {"vgg19-dcbb9e9d.pth": 548, "vgg16-397923af.pth": 528, "alexnet-owt-7be5be79.pth": 233}

# Servers (host:port) that could not be reached in this process, with the error: not tried again.
_UNREACHABLE: dict[str, BaseException] = {}

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


def _unreachable(e: BaseException) -> bool:
    """Whether `e` says the server could not be reached at all (no network, refused, timed out): true of any
    file from it, unlike an HTTP error or a bad hash, which concern this file only."""
    if isinstance(e, urllib.error.HTTPError):
        return False
    return isinstance(e, (urllib.error.URLError, TimeoutError, ConnectionError))


@dataclass(frozen=True)
class ImageNetFile:
    """One of torchvision's weight files and how a fastsr user supplies it."""

    what: str  # how messages name it: "VGG19 ImageNet weights"
    file: str  # torchvision's name, "{arch}-...-{first hex digits of its SHA-256}.pth": "vgg19-dcbb9e9d.pth"
    option: str  # how a user passes a local copy: "loss.vgg_weights=/path/to/vgg19-dcbb9e9d.pth"
    error: type[WeightsUnavailable]

    @property
    def url(self) -> str:
        """Where torchvision publishes the file."""
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
        """The state dict from the torch hub cache, else downloaded there (checked against the SHA-256 its
        name begins with, as torchvision's ``Weights.get_state_dict`` does)."""
        server = urlsplit(self.url).netloc
        if not self.hub_path.is_file() and server in _UNREACHABLE:
            raise self.unavailable(f"tried the torch hub cache {self.hub_path}; no download, as {server} could not "
                                   "be reached earlier in this process", _UNREACHABLE[server])
        try:
            if not self.hub_path.is_file():
                self._download()
            return torch.load(self.hub_path, map_location="cpu", weights_only=True)
        except Exception as e:  # URLError, timeouts, a bad hash, a corrupt cache file...
            if _unreachable(e):
                _UNREACHABLE[server] = e
            raise self.unavailable(f"tried the torch hub cache {self.hub_path} and a download", e) from e

    def _download(self) -> None:
        """Fetch the file into the hub cache under a socket timeout, saying so in one line; torch's lower-level
        downloader, which unlike ``load_state_dict_from_url`` prints nothing of its own with progress off."""
        size = f" ({SIZES_MB[self.file]} MB)" if self.file in SIZES_MB else ""
        sys.stderr.write(f"fastsr: downloading {self.what}{size} from {self.url} to {self.hub_path}\n")
        self.hub_path.parent.mkdir(parents=True, exist_ok=True)
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        try:
            torch.hub.download_url_to_file(self.url, str(self.hub_path), self.sha256_prefix, progress=False)
        finally:
            socket.setdefaulttimeout(previous)

    @property
    def sha256_prefix(self) -> str:
        """The first hex digits of the file's SHA-256, from its name (`dcbb9e9d` of vgg19-dcbb9e9d.pth)."""
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
