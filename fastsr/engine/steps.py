"""The training steps: plain functions of (models, batch, optimisers, losses, precision).

Phase A's step trains the generator alone on the pixel loss. Phase B's runs the generator once, updates
the discriminator with the GAN kind's objective on real and detached fake images, then the generator on
the recipe's weighted terms (`fastsr.losses.GeneratorLoss`, where each weight is applied once) with D
frozen, so G's update leaves D's gradients alone. Forwards run under the precision's autocast; losses are
computed in fp32. `apply(loss)` is asked after each backward whether to apply the update (the loss guard
drops a non-finite step's update when train.nonfinite=skip); nothing here reads a value back to the host.
"""

from __future__ import annotations

import torch

from fastsr.engine.runtime import Precision
from fastsr.losses import GAN, GeneratorLoss, pixel_loss

FP32 = Precision("no")


def _always(loss: torch.Tensor) -> bool:
    return True


def pretrain_step(g, batch, opt_g, accelerator, pixel: str, precision: Precision = FP32,
                  apply=_always) -> dict[str, torch.Tensor]:
    hr, lr = batch
    with precision.autocast():
        sr = g(lr)
    loss = pixel_loss(sr.float(), hr, pixel)
    opt_g.zero_grad(set_to_none=True)
    precision.backward(accelerator, loss)
    if apply(loss):
        precision.step(opt_g)
        precision.update()
    return {"pixel": loss.detach()}


def gan_step(g, d, batch, opt_g, opt_d, accelerator, loss: GeneratorLoss, gan: GAN,
             precision: Precision = FP32, apply=_always) -> dict[str, torch.Tensor]:
    hr, lr = batch
    with precision.autocast():
        sr = g(lr)  # the one generator forward of this iteration, used by both updates

    def critic(x: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            return d(x).float()

    # Discriminator: the GAN kind runs its forwards, each with its own backward.
    d.requires_grad_(True)
    opt_d.zero_grad(set_to_none=True)
    loss_d = gan.discriminator_loss(critic, hr, sr.detach(), lambda part: precision.backward(accelerator, part))
    stepped = apply(loss_d)
    if stepped:
        precision.step(opt_d)

    # Generator, with D frozen.
    d.requires_grad_(False)
    loss_g, out = loss(sr, hr, critic, precision.autocast)
    opt_g.zero_grad(set_to_none=True)
    precision.backward(accelerator, loss_g)
    if stepped and apply(loss_g):  # a dropped D update drops the G update too: one step, kept or not
        precision.step(opt_g)
    if stepped:
        precision.update()
    out["g"] = loss_g.detach()
    out["d"] = loss_d.detach()
    return out
