"""The generator's exponential moving average (`train.ema`), updated every step without host work.

The average itself is a `torch.optim.swa_utils.AveragedModel` (setup.py builds it; checkpoints save its
module and `n_averaged`). Its `update_parameters` reads the step counter `n_averaged`, a buffer on the
device, back to the host twice per call (`n_averaged == 0`, `n_averaged > 0`: a device synchronisation
per step on a GPU) and walks and groups the parameters in Python every time (~90 us per call on the
development CPU even for a 6-tensor model; this does it in ~25). `EmaUpdate` does the same arithmetic on the same tensors:
the copy on the first update, then the AveragedModel's own `multi_avg_fn` on each (device, dtype) group,
then `n_averaged += 1` on the device; the counter is mirrored on the host and the tensor lists are built
once. The average and the checkpoints are bit for bit those of `update_parameters`.
"""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class EmaUpdate:
    """`ema.update_parameters(model)` as a call without arguments. Build it once the models are laid out
    and on their device (after `prepare_for_training`): it holds their parameter and buffer tensors."""

    def __init__(self, ema: AveragedModel, model: nn.Module):
        if not ema.use_buffers or ema.multi_avg_fn is None:
            raise ValueError("EmaUpdate needs an AveragedModel with use_buffers=True and a multi_avg_fn")
        self.ema = ema
        self.groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for averaged, current in zip(chain(ema.module.parameters(), ema.module.buffers()),
                                     chain(model.parameters(), model.buffers()), strict=True):
            if averaged.device != current.device:
                raise ValueError(f"EmaUpdate: the average is on {averaged.device}, the model on {current.device}")
            averages, currents = self.groups.setdefault((averaged.device, averaged.dtype), ([], []))
            averages.append(averaged.detach())
            currents.append(current.detach())
        self.count = int(ema.n_averaged)  # the one read-back; from here on the host keeps count

    @torch.no_grad()
    def __call__(self) -> None:
        for averages, currents in self.groups.values():
            if self.count == 0:
                torch._foreach_copy_(averages, currents)
            else:
                self.ema.multi_avg_fn(averages, currents, self.ema.n_averaged)
        self.ema.n_averaged += 1
        self.count += 1
