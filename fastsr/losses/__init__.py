"""Training losses, as registered terms (`pixel`, `vgg`, `adv`, `tv`) that each phase sums in one place.

The recipe's `loss` section (`LossConfig`) lists each phase's weighted terms: `loss.terms_pretrain`
(by default the pixel loss alone) and `loss.terms` (by default the reference script's list, weighted by its
knobs `w_vgg`, `w_adv`, `w_tv`). No term carries its weight inside: `GeneratorLoss` multiplies each by its
weight exactly once. All image inputs are float tensors in [0, 1], NCHW, RGB.
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

# The reference script's loss weights (SRGAN's), the defaults of its knobs.
REFERENCE_WEIGHTS = {"w_vgg": 6e-3, "w_adv": 1e-3, "w_tv": 1e-6}


@dataclass
class LossConfig:
    """The `loss` section's recipe keys: each phase's list of weighted terms and the reference script's knobs."""

    pixel: Literal["mse", "l1"] = "mse"  # the kind of the default lists' pixel term
    # The pretrain phase's loss: weighted terms, any but `adv` (no discriminator trains then), e.g.
    # [{name: pixel, kind: l1}] or a plugin's term. null: the pixel loss alone (weight 1).
    terms_pretrain: list[TermConfig] | None = field(default=None, metadata={"registry": LOSS_TERMS})
    # The finetune phase's generator loss: weighted terms, e.g. [{name: pixel, kind: l1, weight: 1.0e-2},
    # {name: vgg, layer: conv5_4, criterion: l1, weight: 1.0}, {name: adv, gan: ragan, weight: 5.0e-3}].
    # null: the reference script's list, pixel + w_adv * adv (vanilla) + w_tv * tv + w_vgg * vgg (vgg_layer).
    terms: list[TermConfig] | None = field(default=None, metadata={"registry": LOSS_TERMS})
    w_vgg: float = REFERENCE_WEIGHTS["w_vgg"]
    w_adv: float = REFERENCE_WEIGHTS["w_adv"]
    w_tv: float = REFERENCE_WEIGHTS["w_tv"]
    vgg_layer: str = "conv5_4"
    # `imagenet` (torchvision's weights), a path to vgg19-dcbb9e9d.pth (checked by its hash: fastsr
    # unpickles no other file) or to a .safetensors copy of it, or `random` (untrained: a
    # meaningless loss that costs the same, for throughput benchmarks and tests only); every VGG term uses it
    vgg_weights: str = "imagenet"
    # What a run does when the VGG19 weights can't be had: stop (`error`), or train without the
    # perceptual term and say so (`skip`, used by the quick start on machines with no network).
    vgg_missing: Literal["error", "skip"] = "error"

    def check(self) -> None:
        """Weights >= 0, `vgg_layer` a VGG19 layer, log names unique in each list, no `adv` in `terms_pretrain`;
        with `terms` set: the knobs at their defaults and exactly one `adv` term."""
        non_negative(self, *REFERENCE_WEIGHTS)
        check_vgg_layer("vgg_layer", self.vgg_layer)
        for key in ("terms_pretrain", "terms"):
            names = [t.log_name for t in getattr(self, key) or []]
            twice = next((n for n in names if names.count(n) > 1), None)
            if twice:
                raise Invalid(key, f"has two terms logged as {twice!r}; give one a `label:`")
        for key in ("terms_pretrain", "terms"):
            if any(t.name == "adv" and t.target != "hr" for t in getattr(self, key) or []):
                raise Invalid(key, "has an `adv` term with target: usm: the discriminator judges the HR itself "
                                   "(Real-ESRGAN's gan_gt_usm: false); drop the term's target")
        if self.terms_pretrain is not None and any(t.name == "adv" for t in self.terms_pretrain):
            raise Invalid("terms_pretrain", "cannot hold an `adv` term: no discriminator trains in the pretrain "
                                            "phase; put it in loss.terms")
        if self.terms is None:
            return
        for knob, default in (*REFERENCE_WEIGHTS.items(), ("vgg_layer", "conv5_4")):
            if getattr(self, knob) != default:
                raise Invalid(knob, "applies to the reference script's term list only; with loss.terms set, give "
                                    "the term's own weight (or layer) in loss.terms")
        if sum(t.name == "adv" for t in self.terms) != 1:
            raise Invalid("terms", "needs exactly one `adv` term: its GAN kind also trains the discriminator")


def pretrain_terms(loss: LossConfig) -> list[TermConfig]:
    """The recipe's `loss.terms_pretrain`, or the pixel loss alone."""
    if loss.terms_pretrain is not None:
        return loss.terms_pretrain
    return [LOSS_TERMS.entry("pixel").config(name="pixel", weight=1.0, kind=loss.pixel)]


def finetune_terms(loss: LossConfig) -> list[TermConfig]:
    """The recipe's `loss.terms`, or the reference script's list (in its order of summation)."""
    if loss.terms is not None:
        return loss.terms
    make = LOSS_TERMS.entry
    return [make("pixel").config(name="pixel", weight=1.0, kind=loss.pixel),
            make("adv").config(name="adv", weight=loss.w_adv, gan="vanilla"),
            make("tv").config(name="tv", weight=loss.w_tv),
            make("vgg").config(name="vgg", weight=loss.w_vgg, layer=loss.vgg_layer)]


def build_pretrain_loss(loss: LossConfig) -> tuple[GeneratorLoss, list[str]]:
    """(the pretrain phase's weighted loss, notes)."""
    return _weighted_sum(pretrain_terms(loss), loss)


def build_finetune_loss(loss: LossConfig) -> tuple[GeneratorLoss, GAN, list[str]]:
    """(the finetune phase's weighted generator loss, the GAN kind of its `adv` term, which also trains the
    discriminator, notes)."""
    terms = finetune_terms(loss)
    gan = GAN_KINDS[next(t for t in terms if t.name == "adv").gan]()
    generator_loss, notes = _weighted_sum(terms, loss)
    return generator_loss, gan, notes


def _weighted_sum(terms: list[TermConfig], loss: LossConfig) -> tuple[GeneratorLoss, list[str]]:
    """(the weighted sum of `terms`, notes). Terms of weight 0 are left out; a VGG term whose weights can't
    be had stops the run, or with `loss.vgg_missing=skip` is left out with a note."""
    modules, notes = [], []
    for config in terms:
        if config.weight == 0:
            continue
        shared = {key: getattr(loss, key) for key in getattr(LOSS_TERMS.entry(config.name).cls, "shared", ())}
        try:
            module = LOSS_TERMS.create(config, **shared)
        except VGGWeightsUnavailable as err:
            if loss.vgg_missing == "error":
                raise
            notes.append(f"{err} -- training WITHOUT the perceptual (VGG) term (loss.vgg_missing=skip)")
            continue
        modules.append((config.log_name, config.weight, module, config.target))
    return GeneratorLoss(modules), notes


__all__ = [
    "GAN", "GAN_KINDS", "LOSS_TERMS", "VGG19_LAYERS", "GeneratorLoss", "LossConfig", "PerceptualLoss", "TermConfig",
    "VGGFeatures", "VGGWeightsUnavailable", "build_finetune_loss", "build_pretrain_loss", "d_loss", "finetune_terms",
    "g_adv_loss", "pixel_loss", "pretrain_terms", "ragan_g_loss", "tv_loss",
]
