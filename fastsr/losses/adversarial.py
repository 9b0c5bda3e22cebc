"""Adversarial losses: the GAN kinds (the discriminator's objective and the generator's), and the `adv`
term that puts the generator's side into the finetune loss.

Each kind works on raw logits (`critic(x)`: the discriminator's float logits for images `x`) with
BCE-with-logits, which is numerically stable:
- `vanilla` (SRGAN): D learns real -> 1, fake -> 0; G the non-saturating BCE(D(G(z)) -> 1).
- `ragan` (ESRGAN; Jolicoeur-Martineau's relativistic average GAN): D learns that real images look more
  real than the average fake, C(x_r) - E[C(x_f)] -> 1, and fakes less real than the average real,
  C(x_f) - E[C(x_r)] -> 0; G the symmetric opposite, so its gradient comes from the real images too. Each
  side is the mean of its two BCE terms, as the official ESRGAN code computes it (the paper writes their
  sum; its weight lambda = 5e-3 was used with the mean).
The discriminator's update is written out in `fastsr.engine.steps.finetune_step`, which runs its forwards
and backwards in the order both kinds need; a kind gives it the loss of each side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fastsr.losses.terms import LOSS_TERMS, TermConfig

Critic = Callable[[torch.Tensor], torch.Tensor]


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def d_loss(real_logits: torch.Tensor | None, fake_logits: torch.Tensor | None) -> torch.Tensor:
    """Vanilla discriminator loss: BCE(real -> 1) + BCE(fake -> 0), each averaged over its batch.

    That is mean(softplus(-real)) + mean(softplus(fake)) = -[log D(x) + log(1 - D(G(z)))],
    the standard GAN discriminator objective (the sum of the two means, not their average).
    Either argument may be None to get that term alone: ``d_loss(r, None) + d_loss(None, f)``
    equals ``d_loss(r, f)``, which lets each D forward have its own backward. Pass ``fake_logits``
    from a detached SR image so no gradient reaches the generator.
    """
    if real_logits is None and fake_logits is None:
        raise ValueError("d_loss needs real_logits, fake_logits or both")
    real = None if real_logits is None else _bce(real_logits, 1.0)
    fake = None if fake_logits is None else _bce(fake_logits, 0.0)
    if real is None or fake is None:
        return fake if real is None else real
    return real + fake


def g_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: BCE(fake -> 1) = mean(-log D(G(z))) = mean(softplus(-fake)).

    Preferred to minimising log(1 - D(G(z))), whose gradient vanishes while D wins easily.
    """
    return _bce(fake_logits, 1.0)


def ragan_d_real(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's relativistic term for the real images: BCE(C(x_r) - mean C(x_f) -> 1) / 2."""
    return _bce(real_logits - fake_logits.mean(), 1.0) / 2


def ragan_d_fake(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """D's relativistic term for the fakes: BCE(C(x_f) - mean C(x_r) -> 0) / 2."""
    return _bce(fake_logits - real_logits.mean(), 0.0) / 2


def ragan_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """G's relativistic loss: [BCE(C(x_r) - mean C(x_f) -> 0) + BCE(C(x_f) - mean C(x_r) -> 1)] / 2."""
    return (_bce(real_logits - fake_logits.mean(), 0.0) + _bce(fake_logits - real_logits.mean(), 1.0)) / 2


class GAN(Protocol):
    """A GAN kind: the discriminator's two terms (the step runs their forwards and backwards) and the
    generator's adversarial loss."""

    relativistic: bool  # whether D's terms compare with the other side's mean logit (`reference`)

    def d_real(self, real_logits: torch.Tensor, fake_reference: torch.Tensor | None) -> torch.Tensor:
        """D's loss on the real images' logits (`fake_reference`: the fakes' logits, when relativistic)."""

    def d_fake(self, fake_logits: torch.Tensor, real_reference: torch.Tensor) -> torch.Tensor:
        """D's loss on the detached fakes' logits (`real_reference`: the real images' logits, detached)."""

    def generator_loss(self, critic: Critic, real: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
        """G's adversarial loss for its output `sr` (D frozen)."""


class Vanilla:
    """SRGAN's kind: D's loss is BCE(real -> 1) + BCE(fake -> 0); G's the non-saturating BCE(D(G(z)) -> 1)."""

    relativistic = False

    def d_real(self, real_logits: torch.Tensor, fake_reference: torch.Tensor | None) -> torch.Tensor:
        """BCE(real logits -> 1); `fake_reference` is unused."""
        return d_loss(real_logits, None)

    def d_fake(self, fake_logits: torch.Tensor, real_reference: torch.Tensor) -> torch.Tensor:
        """BCE(fake logits -> 0); `real_reference` is unused."""
        return d_loss(None, fake_logits)

    def generator_loss(self, critic: Critic, real: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
        """BCE(critic(sr) -> 1); `real` is unused."""
        return g_adv_loss(critic(sr))


class Relativistic:
    """ESRGAN's kind (`ragan`): D's loss is [BCE(C(x_r) - E[C(x_f)] -> 1) + BCE(C(x_f) - E[C(x_r)] -> 0)] / 2;
    G's the same with the targets swapped, so its gradient comes from the real images too."""

    relativistic = True

    def d_real(self, real_logits: torch.Tensor, fake_reference: torch.Tensor | None) -> torch.Tensor:
        """BCE(C(x_r) - mean C(x_f) -> 1) / 2; `fake_reference` (the fakes' logits) is required."""
        return ragan_d_real(real_logits, fake_reference)

    def d_fake(self, fake_logits: torch.Tensor, real_reference: torch.Tensor) -> torch.Tensor:
        """BCE(C(x_f) - mean C(x_r) -> 0) / 2."""
        return ragan_d_fake(fake_logits, real_reference)

    def generator_loss(self, critic: Critic, real: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
        """[BCE(C(x_r) - mean C(x_f) -> 0) + BCE(C(x_f) - mean C(x_r) -> 1)] / 2, x_f = `sr`, x_r = `real`."""
        with torch.no_grad():  # D is frozen during G's update; the real logits are a constant for G
            real_logits = critic(real)
        return ragan_g_loss(real_logits, critic(sr))


GAN_KINDS = {"vanilla": Vanilla, "ragan": Relativistic}


@dataclass
class AdvTermConfig(TermConfig):
    """The `adv` loss term's recipe keys (its GAN kind), besides `weight` and `label`."""

    gan: Literal["vanilla", "ragan"] = "vanilla"  # SRGAN: vanilla; ESRGAN: ragan (relativistic average)


@LOSS_TERMS.register("adv", AdvTermConfig)
class AdvTerm(nn.Module):
    """The generator's side of the GAN kind `gan`; the same kind trains the discriminator (finetune)."""

    fp32 = False  # runs the discriminator, under autocast

    def __init__(self, config: AdvTermConfig):
        super().__init__()
        self.gan = GAN_KINDS[config.gan]()

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, critic: Critic) -> torch.Tensor:
        """G's adversarial loss (a scalar) for `sr` against `hr`, both (N, 3, H, W) in [0, 1], judged by `critic`."""
        return self.gan.generator_loss(critic, hr, sr)
