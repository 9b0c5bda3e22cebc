"""The exponential moving average of the generator (`train.ema`), updated without waiting for the device.

It is torch's `AveragedModel` with `get_ema_multi_avg_fn(decay)` over parameters and buffers: the same
foreach lerp on the same groups of tensors, so the same numbers, bit for bit. Two things differ, both
host work per step: torch's `update_parameters` reads its count of updates back from the device twice per
call (`n_averaged == 0`, `n_averaged > 0`) and copies it there once, each a host synchronisation that keeps
the host from queuing the next step while the device runs this one; and it walks and groups the tensors
in Python every call, host time that counts per step even for a small model. Here the count stays
on the host (`to_device` moves the average only), where the checkpoint reads and restores it, and the
tensor groups are built at the first update, once the models are laid out on their device.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class GeneratorEMA(AveragedModel):
    """The EMA of the generator's parameters and buffers at decay `decay`. `module` is the averaged copy (the
    generator that validation scores and the run exports when train.ema is on); `n_averaged` counts updates."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self._groups: tuple[int, list[tuple[list[torch.Tensor], list[torch.Tensor]]]] | None = None

    def to_device(self, device: torch.device) -> GeneratorEMA:
        """The average on `device`; the count stays on the host."""
        self.module.to(device)
        self._groups = None
        return self

    def _groups_for(self, model: nn.Module) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """(averaged, current) tensor lists, one pair per (device, dtype): what one foreach lerp takes."""
        if self._groups is None or self._groups[0] != id(model):
            groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
            for a, c in zip((*self.module.parameters(), *self.module.buffers()), (*model.parameters(), *model.buffers()),
                            strict=True):
                pair = groups.setdefault((a.device, a.dtype), ([], []))
                pair[0].append(a.detach())
                pair[1].append(c.detach())
            self._groups = (id(model), list(groups.values()))
        return self._groups[1]

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Move the average toward `model`'s current tensors (the first update copies them), queued on the
        device without a host synchronisation; `model` must have the averaged copy's tensors, in order."""
        groups = self._groups_for(model)
        for averaged, current in groups:
            if int(self.n_averaged) == 0:  # the first update copies the model, as torch's does
                torch._foreach_copy_(averaged, current)
            else:
                self.multi_avg_fn(averaged, current, self.n_averaged)
        self.n_averaged += 1
