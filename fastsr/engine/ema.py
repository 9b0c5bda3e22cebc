"""The exponential moving average of the generator (`train.ema`), updated without waiting for the device.

It is torch's `AveragedModel` with `get_ema_multi_avg_fn(decay)` over parameters and buffers: the same
foreach lerp on the same groups of tensors, so the same numbers. One thing differs: torch's
`update_parameters` reads its count of updates back from the device twice per call (`n_averaged == 0`,
`n_averaged > 0`) and copies it there once, each a host synchronisation that keeps the host from queuing
the next step while the device runs this one. Here the count stays on the host (`to_device` moves the
average only), where the checkpoint reads and restores it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class GeneratorEMA(AveragedModel):
    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def to_device(self, device: torch.device) -> GeneratorEMA:
        """The average on `device`; the count stays on the host."""
        self.module.to(device)
        return self

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if int(self.n_averaged) == 0:  # the first update copies the model, as torch's does
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)
        else:
            groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
            for a, c in zip(averaged, current, strict=True):  # the lerp runs on lists of one device and dtype
                pair = groups.setdefault((a.device, a.dtype), ([], []))
                pair[0].append(a)
                pair[1].append(c)
            for group_averaged, group_current in groups.values():
                self.multi_avg_fn(group_averaged, group_current, self.n_averaged)
        self.n_averaged += 1
