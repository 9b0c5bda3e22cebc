"""The training steps, plain functions of (models, batch, optimisers, loss, precision), one per phase.

`pretrain_step` trains the generator alone on its weighted loss terms (`loss.terms_pretrain`: by default the
pixel loss, SRResNet's MSE pre-training). `finetune_step` runs the generator once, updates the discriminator
with the GAN kind's objective on real and detached fake images, then the generator on its weighted terms
(`loss.terms`) with D frozen, so G's update leaves D's gradients alone. Forwards run under the precision's
autocast; losses are computed in fp32. `keep(loss)` is asked before each update whether to apply it (the
loss guard drops a non-finite step's update when train.nonfinite=skip).

Lean on a GPU: nothing here reads a value back to the host or copies one from it (tests/test_runtime.py
runs the steps on the meta device, where either would fail). Gradients are dropped at the start of a step
(`set_to_none`), so the last step's are not alive during this step's forward. The losses a step returns
(kept on the device until the log reads them) are copies, never a compiled module's output itself: a CUDA
graph overwrites its outputs when it replays at the next step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from fastsr.engine.runtime import Precision
from fastsr.losses import GAN, GeneratorLoss

Losses = dict[str, torch.Tensor]
FP32 = Precision("no")


def always(loss: torch.Tensor) -> bool:
    """The `keep` of a step run without a loss guard: every update is applied."""
    return True


def pretrain_step(g: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], opt_g, accelerator, loss: GeneratorLoss,
                  precision: Precision = FP32, keep: Callable[[torch.Tensor], bool] = always) -> Losses:
    """One update of the generator alone on `loss` (its terms use no discriminator)."""
    hr, lr = batch
    opt_g.zero_grad(set_to_none=True)
    with precision.autocast():
        sr = g(lr)
    loss_g, values = loss(sr, hr, None, precision)
    precision.backward(accelerator, loss_g)
    if keep(loss_g):
        precision.step(opt_g)
        precision.update()
    return _copied(values)


def finetune_step(g: nn.Module, d: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], opt_g, opt_d, accelerator,
                  loss: GeneratorLoss, gan: GAN, precision: Precision = FP32,
                  keep: Callable[[torch.Tensor], bool] = always) -> Losses:
    """One GAN iteration: the discriminator's update, then the generator's, from one generator forward."""
    hr, lr = batch
    opt_d.zero_grad(set_to_none=True)
    opt_g.zero_grad(set_to_none=True)
    with precision.autocast():
        sr = g(lr)
    fake = sr.detach()

    # Discriminator. Each forward that builds a graph gets its own backward before the next, because a
    # BatchNorm module run twice before one backward fails under DDP (FACTS). A relativistic kind compares
    # the real logits with the fakes' mean, taken from a forward without a graph.
    d.requires_grad_(True)
    with torch.no_grad():
        fake_reference = logits(d, precision, fake) if gan.relativistic else None
    real_logits = logits(d, precision, hr)
    loss_real = gan.d_real(real_logits, fake_reference)
    precision.backward(accelerator, loss_real)
    loss_fake = gan.d_fake(logits(d, precision, fake), real_logits.detach())
    precision.backward(accelerator, loss_fake)
    loss_d = loss_real + loss_fake
    kept = keep(loss_d)
    if kept:
        precision.step(opt_d)

    # Generator, with D frozen.
    d.requires_grad_(False)
    loss_g, values = loss(sr, hr, partial(logits, d, precision), precision)
    precision.backward(accelerator, loss_g)
    if kept and keep(loss_g):  # a dropped D update drops the G update too: one step, kept or not
        precision.step(opt_g)
    if kept:
        precision.update()
    return _copied({**values, "g": loss_g.detach(), "d": loss_d.detach()})


def logits(d: nn.Module, precision: Precision, x: torch.Tensor) -> torch.Tensor:
    """The discriminator's float logits for images `x`, its forward under the step's autocast."""
    with precision.autocast():
        return d(x).float()


def _copied(losses: Losses) -> Losses:
    """The step's losses copied, all in one kernel, into tensors of the step's own: a term's value (and with
    one term, the total) can be a compiled loss network's output, which a CUDA graph's replay overwrites."""
    return dict(zip(losses, torch.stack(list(losses.values())).unbind()))
