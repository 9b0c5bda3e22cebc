"""Generators (SRResNet, SRCNN, Bicubic), the SRGAN discriminator, and a name -> class registry.

Every model takes and returns float images in [0, 1], NCHW, RGB. Each generator has a ``scale``
attribute and a JSON-serialisable ``config`` property such that ``build_generator(**model.config)``
rebuilds the same architecture (this is what checkpoints store beside the weights).
"""

from __future__ import annotations

from torch import nn

from fastsr.models.bicubic import Bicubic
from fastsr.models.discriminator import Discriminator
from fastsr.models.srcnn import SRCNN
from fastsr.models.srresnet import SRResNet

GENERATORS: dict[str, type[nn.Module]] = {"srresnet": SRResNet, "srcnn": SRCNN, "bicubic": Bicubic}


def build_generator(name: str, **kwargs) -> nn.Module:
    """Instantiate the generator registered as ``name`` with ``kwargs`` as constructor arguments."""
    try:
        cls = GENERATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown generator {name!r}; valid names: {', '.join(sorted(GENERATORS))}"
        ) from None
    return cls(**kwargs)


__all__ = ["GENERATORS", "build_generator", "SRResNet", "Discriminator", "SRCNN", "Bicubic"]
