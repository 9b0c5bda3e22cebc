"""The training steps: plain functions of (models, batch, optimisers, losses, precision).

Phase A's step trains the generator alone on the pixel loss. Phase B's runs the generator once, updates
the discriminator with the GAN kind's objective on real and detached fake images, then the generator on
the recipe's weighted terms (`fastsr.losses.GeneratorLoss`, where each weight is applied once) with D
frozen, so G's update leaves D's gradients alone. Forwards run under the precision's autocast; losses are
computed in fp32. `apply(loss)` is asked after each backward whether to apply the update (the loss guard
drops a non-finite step's update when train.nonfinite=skip).

Lean on a GPU: nothing here reads a value back to the host or copies one from it (tests/test_runtime.py
runs the steps on the meta device, where either would fail). Gradients are dropped at the start of a step
(`set_to_none`), so the last step's are not alive during this step's forward. The losses a step returns
(kept on the device until the log reads them) are copies, never a compiled module's output itself: a CUDA
graph overwrites its outputs when it replays at the next step.
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
    opt_g.zero_grad(set_to_none=True)
    with precision.autocast():
        sr = g(lr)
    loss = pixel_loss(sr.float(), hr, pixel)  # computed here, outside the compiled generator: not a graph's output
    precision.backward(accelerator, loss)
    if apply(loss):
        precision.step(opt_g)
        precision.update()
    return {"pixel": loss.detach()}


def gan_step(g, d, batch, opt_g, opt_d, accelerator, loss: GeneratorLoss, gan: GAN,
             precision: Precision = FP32, apply=_always) -> dict[str, torch.Tensor]:
    hr, lr = batch
    opt_d.zero_grad(set_to_none=True)
    opt_g.zero_grad(set_to_none=True)
    with precision.autocast():
        sr = g(lr)  # the one generator forward of this iteration, used by both updates

    def critic(x: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            return d(x).float()

    # Discriminator: the GAN kind runs its forwards, each with its own backward.
    d.requires_grad_(True)
    loss_d = gan.discriminator_loss(critic, hr, sr.detach(), lambda part: precision.backward(accelerator, part))
    stepped = apply(loss_d)
    if stepped:
        precision.step(opt_d)

    # Generator, with D frozen.
    d.requires_grad_(False)
    loss_g, values = loss(sr, hr, critic, precision.autocast)
    precision.backward(accelerator, loss_g)
    if stepped and apply(loss_g):  # a dropped D update drops the G update too: one step, kept or not
        precision.step(opt_g)
    if stepped:
        precision.update()
    # A term's value (and with one term, the total) can be a compiled loss network's output: copied, all in
    # one kernel, into a tensor of the step's own.
    out = {**values, "g": loss_g.detach(), "d": loss_d.detach()}
    return dict(zip(out, torch.stack(list(out.values())).unbind()))
