"""Training losses, as registered terms (`pixel`, `vgg`, `adv`, `tv`) that phase B sums in one place.

The recipe's `loss` section (`LossConfig`) names phase A's pixel loss and phase B's generator loss: a list
of weighted terms (`loss.terms`), or, when that is left out, the seed script's list weighted by its knobs
`w_vgg`, `w_adv`, `w_tv`. No term carries its weight inside: `GeneratorLoss` multiplies each by its weight
exactly once. All image inputs are float tensors in [0, 1], NCHW, RGB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fastsr.config import Invalid, non_negative
from fastsr.losses.adversarial import GAN, GAN_KINDS, d_loss, g_adv_loss, ragan_g_loss
from fastsr.losses.perceptual import (
    VGG19_LAYERS,
    PerceptualLoss,
    VGGFeatures,
    VGGWeightsUnavailable,
    check_vgg_layer,
)
from fastsr.losses.pixel import pixel_loss
from fastsr.losses.terms import LOSS_TERMS, GeneratorLoss, TermConfig
from fastsr.losses.tv import tv_loss
from fastsr.registry import import_all

import_all(__name__, __path__)  # every term file registers itself, those not imported above too

_SEED_WEIGHTS = {"w_vgg": 6e-3, "w_adv": 1e-3, "w_tv": 1e-6}


@dataclass
class LossConfig:
    pixel: Literal["mse", "l1"] = "mse"  # phase A's loss (and the kind of the seed list's pixel term)
    # Phase B's generator loss: weighted terms, e.g. [{name: pixel, kind: l1, weight: 1.0e-2},
    # {name: vgg, layer: conv5_4, criterion: l1, weight: 1.0}, {name: adv, gan: ragan, weight: 5.0e-3}].
    # null: the seed's list, pixel + w_adv * adv (vanilla) + w_tv * tv + w_vgg * vgg (vgg_layer).
    terms: list[TermConfig] | None = field(default=None, metadata={"registry": LOSS_TERMS})
    w_vgg: float = _SEED_WEIGHTS["w_vgg"]
    w_adv: float = _SEED_WEIGHTS["w_adv"]
    w_tv: float = _SEED_WEIGHTS["w_tv"]
    vgg_layer: str = "conv5_4"
    # `imagenet` (torchvision's weights), a path to vgg19-dcbb9e9d.pth (checked by its hash: fastsr
    # unpickles no other file) or to a .safetensors copy of it, or `random` (untrained: a
    # meaningless loss that costs the same, for throughput benchmarks and tests only); every VGG term uses it
    vgg_weights: str = "imagenet"
    # What phase B does when the VGG19 weights can't be had: stop (`error`), or train without the
    # perceptual term and say so (`skip`, used by the quick start on machines with no network).
    vgg_missing: Literal["error", "skip"] = "error"

    def check(self) -> None:
        non_negative(self, *_SEED_WEIGHTS)
        check_vgg_layer("vgg_layer", self.vgg_layer)
        if self.terms is None:
            return
        for knob, seed in (*_SEED_WEIGHTS.items(), ("vgg_layer", "conv5_4")):
            if getattr(self, knob) != seed:
                raise Invalid(knob, "applies to the seed's term list only; with loss.terms set, give the term's "
                                    "own weight (or layer) in loss.terms")
        names = [t.log_name for t in self.terms]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice:
            raise Invalid("terms", f"has two terms logged as {twice!r}; give one a `label:`")
        if sum(t.name == "adv" for t in self.terms) != 1:
            raise Invalid("terms", "needs exactly one `adv` term: its GAN kind also trains the discriminator")


def phase_b_terms(loss: LossConfig) -> list[TermConfig]:
    """The recipe's `loss.terms`, or the seed's list (in the seed's order of summation)."""
    if loss.terms is not None:
        return loss.terms
    make = LOSS_TERMS.entry
    return [make("pixel").config(name="pixel", weight=1.0, kind=loss.pixel),
            make("adv").config(name="adv", weight=loss.w_adv, gan="vanilla"),
            make("tv").config(name="tv", weight=loss.w_tv),
            make("vgg").config(name="vgg", weight=loss.w_vgg, layer=loss.vgg_layer)]


def build_generator_loss(loss: LossConfig) -> tuple[GeneratorLoss, GAN, list[str]]:
    """(phase B's generator loss, the GAN kind that trains the discriminator, notes). Terms of weight 0
    are left out; a VGG term whose weights can't be had stops the run, or with `vgg_missing=skip` is
    left out with a note."""
    terms, gan, notes = [], GAN_KINDS["vanilla"](), []
    for config in phase_b_terms(loss):
        if config.name == "adv":
            gan = GAN_KINDS[config.gan]()
        if config.weight == 0:
            continue
        shared = {key: getattr(loss, key) for key in getattr(LOSS_TERMS.entry(config.name).cls, "shared", ())}
        try:
            module = LOSS_TERMS.create(config, **shared)
        except VGGWeightsUnavailable as err:
            if loss.vgg_missing == "error":
                raise
            notes.append(f"{err} -- phase B trains WITHOUT the perceptual (VGG) term (loss.vgg_missing=skip)")
            continue
        terms.append((config.log_name, config.weight, module))
    return GeneratorLoss(terms), gan, notes


__all__ = [
    "GAN", "GAN_KINDS", "LOSS_TERMS", "VGG19_LAYERS", "GeneratorLoss", "LossConfig", "PerceptualLoss", "TermConfig",
    "VGGFeatures", "VGGWeightsUnavailable", "build_generator_loss", "d_loss", "g_adv_loss", "phase_b_terms",
    "pixel_loss", "ragan_g_loss", "tv_loss",
]
