"""The phases of a run. Phase A ("pretrain", `train.epochs_pretrain`): the generator alone on the pixel
loss (SRResNet's MSE pre-training; also how SRCNN trains). Phase B ("finetune", `train.epochs_finetune`):
the GAN, the discriminator trained by the GAN kind, the generator by the recipe's weighted loss terms.

A phase is what the loop needs to run it and nothing else: its epochs, its learning rate, the optimisers
that rate applies to, the models whose state a refused step restores, and its step function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fastsr.engine import steps
from fastsr.engine.setup import Run

Losses = dict[str, torch.Tensor]


@dataclass
class Phase:
    name: str
    epochs: int
    base_lr: float  # already scaled for the number of processes
    milestones: list[int]  # lr_schedule=multistep: steps into the phase where the rate is multiplied by lr_gamma
    optimisers: list[torch.optim.Optimizer]
    models: list[nn.Module]  # the eager modules a refused step restores the buffers of
    step: Callable[[tuple[torch.Tensor, torch.Tensor], Callable], Losses]  # (batch, apply) -> losses


def learning_rate(base: float, schedule: str, step_in_phase: int, phase_steps: int, milestones: list[int] = (),
                  gamma: float = 0.5) -> float:
    """The rate of the step `step_in_phase` (0-based) of a phase of `phase_steps` steps."""
    if schedule == "constant":
        return base
    if schedule == "multistep":
        return base * gamma ** sum(step_in_phase >= m for m in milestones)
    return base * 0.5 * (1 + math.cos(math.pi * step_in_phase / phase_steps))


def build_phases(run: Run) -> list[Phase]:
    """The recipe's phases that have epochs, in order (their index is the checkpoint's `phase`)."""
    t, parts, acc = run.recipe.train, run.parts, run.accelerator
    n = acc.num_processes
    factor = {"none": 1.0, "linear": n, "sqrt": math.sqrt(n)}[t.lr_scaling]
    phases = []
    if t.epochs_pretrain:
        pixel = run.recipe.loss.pixel
        phases.append(Phase(
            "pretrain", t.epochs_pretrain, t.lr * factor, t.lr_milestones, [parts.opt_g], [parts.generator],
            _each_step(run, lambda batch, apply: steps.pretrain_step(run.g_train, batch, parts.opt_g, acc, pixel,
                                                                     run.precision, apply))))
    if t.epochs_finetune:
        phases.append(Phase(
            "finetune", t.epochs_finetune, (t.lr_finetune or t.lr) * factor,
            t.lr_milestones if t.lr_milestones_finetune is None else t.lr_milestones_finetune, [parts.opt_g, parts.opt_d],
            [parts.generator, parts.discriminator],
            _each_step(run, lambda batch, apply: steps.gan_step(run.g_train, run.d_train, batch, parts.opt_g,
                                                                parts.opt_d, acc, run.loss_train, run.gan,
                                                                run.precision, apply))))
    return phases


def _each_step(run: Run, step: Callable) -> Callable:
    """`step` with the runtime's start of a step before it (a new iteration of the CUDA graphs)."""
    def begun(batch, apply) -> Losses:
        run.runtime.begin_step()
        return step(batch, apply)
    return begun
