"""Loss terms: the registry, the config every term shares, and the one place a phase's generator loss
is summed.

A term is a module registered in `LOSS_TERMS` with a typed config deriving from `TermConfig` (its `weight`
and `label`, then its own keys), built as `cls(config, **shared)`. It is called as `term(sr, hr, critic)`
and returns an unweighted scalar; `critic(x)` gives the discriminator's float logits for images `x` (only
the adversarial term uses it). Class attributes: `fp32` (True: computed in fp32 on `sr.float()`; False: it
runs a network, under the step's autocast, on `sr` as the generator made it) and `shared` (the
loss-section keys it is built with, such as `vgg_weights`). `GeneratorLoss` applies each weight exactly
once, here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fastsr.config import Invalid
from fastsr.ops.sharpen import unsharp_mask
from fastsr.registry import PartConfig, Registry

LOSS_TERMS = Registry("loss term", requires={"fp32": bool}, outside=("weight", "label", "target"))


@dataclass
class TermConfig(PartConfig):
    """The recipe keys every loss term has (`weight`, `label`, `target`); each term's config derives from it."""

    weight: float = 1.0  # multiplies the term once, in GeneratorLoss
    label: str | None = None  # the name the term is logged under (default: its name); two terms of a kind need one
    # What the term compares the generator's output with: the HR, or its unsharp mask (fastsr.ops.sharpen), as
    # Real-ESRGAN's pixel and perceptual terms do (its l1_gt_usm, percep_gt_usm); the discriminator always
    # judges the HR itself as real (Real-ESRGAN's gan_gt_usm: false)
    target: Literal["hr", "usm"] = "hr"

    def check(self) -> None:
        """`weight` >= 0 (NaN refused)."""
        if not self.weight >= 0:
            raise Invalid("weight", f"must not be negative (got {self.weight})")

    @property
    def log_name(self) -> str:
        """The name the term's value is logged under: `label`, else the term's registered name."""
        return self.label or self.name


class GeneratorLoss(nn.Module):
    """sum(weight * term(sr, target, critic)) over `terms`, a list of (log name, weight, module) or (log name,
    weight, module, target), the target `hr` (the default) or `usm` (the HR unsharp-masked, made once a step);
    returns the total and each term's unweighted value by its log name (detached)."""

    def __init__(self, terms: list[tuple]):
        super().__init__()
        self.names = [term[0] for term in terms]
        self.weights = [term[1] for term in terms]
        self.terms = nn.ModuleList(term[2] for term in terms)
        self.targets = [term[3] if len(term) > 3 else "hr" for term in terms]
        # The networks' terms are evaluated first, then the fp32 ones: a fixed order of the graph's branches,
        # and so of the float sums of their gradients. The total is summed in the list's order.
        self._order = sorted(range(len(terms)), key=lambda i: self.terms[i].fp32)

    def prepare(self, prepare: Callable[[nn.Module], nn.Module]) -> GeneratorLoss:
        """A copy sharing the terms' networks, each term with a network passed through `prepare` (the
        runtime's layout and compile), as the models' training copies are."""
        prepared = [(n, w, prepare(t) if next(t.parameters(), None) is not None else t, target)
                    for n, w, t, target in zip(self.names, self.weights, self.terms, self.targets)]
        return GeneratorLoss(prepared)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, critic, precision=None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the weighted total, each term's value by its log name). `critic` is None in the pretrain phase;
        `precision` (the step's `Precision`) gives the autocast the networks' terms run under."""
        autocast = precision.autocast if precision is not None else nullcontext
        sr32 = sr.float()
        targets = {"hr": hr}
        if "usm" in self.targets:
            targets["usm"] = unsharp_mask(hr)
        values = {}
        for i in self._order:
            name, term, target = self.names[i], self.terms[i], targets[self.targets[i]]
            if term.fp32:
                values[name] = term(sr32, target, critic)
            else:
                with autocast():
                    values[name] = term(sr, target, critic).float()
        total = None
        for name, weight in zip(self.names, self.weights):
            weighted = values[name] if weight == 1 else weight * values[name]  # x1: no extra node in the graph
            total = weighted if total is None else total + weighted
        return total, {name: value.detach() for name, value in values.items()}
