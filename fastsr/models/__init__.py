"""Generators and discriminators, one file per architecture, each registered by name.

Every model takes and returns float images in [0, 1], NCHW, RGB. A generator has a ``scale`` attribute,
the class attributes the registry documents (``scales``, ``trainable``) and, like every registered part built
by its registry, a JSON-ready ``config`` dict (its name, its scale, its config's fields and, for a plugin's
class, the module that defines it) that ``build_generator(**config)`` rebuilds: this is what
``generator.json`` holds beside the weights. Importing this package imports every module in
it, so each architecture file registers itself; a plugin registers its own the same way (see
``fastsr.registry``).
"""

from __future__ import annotations

from torch import nn

from fastsr.models.bicubic import Bicubic
from fastsr.models.discriminator import Discriminator
from fastsr.models.registry import DISCRIMINATORS, GENERATORS
from fastsr.models.rrdbnet import RRDBNet
from fastsr.models.srcnn import SRCNN
from fastsr.models.srresnet import SRResNet
from fastsr.models.vgg_discriminator import VGGDiscriminator
from fastsr.registry import import_all

import_all(__name__, __path__)  # the architecture files not imported above register too


def build_generator(name: str, source: str = "generator config", **arguments) -> nn.Module:
    """The generator registered as ``name``, built from a saved config's arguments (``scale`` and the
    architecture's keys), each checked as a recipe's are; errors name ``source``."""
    return GENERATORS.rebuild({"name": name, **arguments}, source)


__all__ = ["DISCRIMINATORS", "GENERATORS", "build_generator", "SRResNet", "RRDBNet", "Discriminator",
           "VGGDiscriminator", "SRCNN", "Bicubic"]
