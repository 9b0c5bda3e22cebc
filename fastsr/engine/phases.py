"""The phases of a run, named as the reference script's knobs. `pretrain` (`train.steps_pretrain`): the
generator alone on `loss.terms_pretrain` (SRResNet's MSE pre-training; also how SRCNN trains). `finetune`
(`train.steps_finetune`): the GAN, the discriminator trained by the GAN kind, the generator by `loss.terms`.

A phase is what the loop needs to run it and nothing else: its length in optimiser steps (the same under
any number of processes), where it starts, its learning rate and schedule, the optimisers that rate applies
to, and the eager models whose buffers a refused step restores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fastsr.config import PHASES, TrainConfig


@dataclass(frozen=True)
class Phase:
    """One phase of a run as the loop runs it, placed in the run's steps and the loader's epochs
    (`plan_phases` makes them)."""

    name: str  # pretrain | finetune
    steps: int  # optimiser steps
    first_step: int  # the run's steps before it
    first_epoch: int  # the loader's epochs before it (a phase starts at an epoch's first batch)
    epochs: int  # the loader's epochs it reaches into (its last one perhaps not to the end)
    base_lr: float  # already scaled for the number of processes
    milestones: list[int]  # lr_schedule=multistep: steps into the phase where the rate is multiplied by lr_gamma
    optimisers: list[torch.optim.Optimizer]
    models: list[nn.Module]  # the eager modules a refused step restores the buffers of

    @property
    def end(self) -> int:
        """The run's step count when the phase is done."""
        return self.first_step + self.steps


def plan_phases(train: TrainConfig, epoch_steps: int, loader_batches: int, processes: int,
                optimisers: dict[str, list[torch.optim.Optimizer]], models: dict[str, list[nn.Module]]) -> list[Phase]:
    """The recipe's phases that have a length, in order (their index is the checkpoint's `phase`).
    `epoch_steps`: the steps of one process's epoch (what `train.epochs_*` count in); `loader_batches`: this
    process's batches per epoch of the loader; `optimisers` and `models`: each phase's, by name."""
    factor = {"none": 1.0, "linear": processes, "sqrt": math.sqrt(processes)}[train.lr_scaling]
    rates = {"pretrain": train.lr, "finetune": train.lr_finetune or train.lr}
    milestones = {"pretrain": train.lr_milestones,
                  "finetune": train.lr_milestones if train.lr_milestones_finetune is None
                  else train.lr_milestones_finetune}
    phases, first_step, first_epoch = [], 0, 0
    for name in PHASES:
        steps = train.phase_steps(name, epoch_steps)
        if not steps:
            continue
        epochs = -(-steps // loader_batches)
        phases.append(Phase(name, steps, first_step, first_epoch, epochs, rates[name] * factor, milestones[name],
                            optimisers[name], models[name]))
        first_step, first_epoch = first_step + steps, first_epoch + epochs
    return phases


def learning_rate(base: float, schedule: str, step_in_phase: int, phase_steps: int, milestones: list[int] = (),
                  gamma: float = 0.5) -> float:
    """The rate of the step `step_in_phase` (0-based) of a phase of `phase_steps` steps."""
    if schedule == "constant":
        return base
    if schedule == "multistep":
        return base * gamma ** sum(step_in_phase >= m for m in milestones)
    return base * 0.5 * (1 + math.cos(math.pi * step_in_phase / phase_steps))
