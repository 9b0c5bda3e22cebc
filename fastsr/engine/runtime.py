"""The speed switches (`runtime.*` in a recipe), resolved for the device the run is on.

- compile: `torch.compile` of the training copies of G, D and the VGG loss, before Accelerate
  wraps them (compiling the bare module avoids DDP graph breaks). Evaluation and checkpoints use the
  eager module, which shares the parameters: full-size images of varying shapes never recompile, and
  saved weights have no `_orig_mod.` prefix.
- mixed_precision: `torch.autocast` around the forwards of a step (losses are computed in fp32);
  fp16 also scales the losses (`GradScaler`); bf16 needs no scaler. The steps take a `Precision`
  whatever the mode, so switching it changes no API.
- channels_last: the models' weights and the batches in NHWC layout (cuDNN's and oneDNN's
  preferred layout for convolutions).
`auto` picks per device from measurements (benchmarks/RESULTS.md, `benchmarks/train_throughput.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastsr.config import RuntimeConfig

_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast for the forwards of a step, and the loss scaling fp16 needs (a no-op otherwise)."""

    def __init__(self, mode: str = "no", device_type: str = "cpu"):
        if mode not in _DTYPES:
            raise ValueError(f"mixed precision {mode!r}: use one of {', '.join(_DTYPES)}")
        self.mode, self.device_type, self.dtype = mode, device_type, _DTYPES[mode]
        self.scaler = torch.amp.GradScaler(device_type, enabled=mode == "fp16")

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def backward(self, accelerator, loss: torch.Tensor) -> None:
        accelerator.backward(self.scaler.scale(loss))

    def step(self, optimizer) -> None:
        """optimizer.step(), skipped by the fp16 scaler when the gradients overflowed."""
        self.scaler.step(optimizer)

    def update(self) -> None:
        """Once per iteration, after every optimizer stepped (adapts the fp16 loss scale)."""
        self.scaler.update()


@dataclass(frozen=True)
class Runtime:
    compile: str  # off | default | max-autotune
    mixed_precision: str  # no | bf16 | fp16
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def for_training(self, module: nn.Module) -> nn.Module:
        """Lay `module` out in place; return the copy to train with (compiled, or `module` itself)."""
        module.to(memory_format=self.memory_format)
        if self.compile == "off":
            return module
        return torch.compile(module, mode=None if self.compile == "default" else self.compile)

    def batch(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.contiguous(memory_format=self.memory_format) for t in tensors)

    def describe(self) -> str:
        return (f"compile {self.compile}, mixed precision {self.mixed_precision}, "
                f"channels_last {'on' if self.channels_last else 'off'}")


def resolve_runtime(config: RuntimeConfig, cuda: bool) -> Runtime:
    """The switches for a CUDA device (`cuda`) or the CPU, `auto` replaced by what measured fastest."""
    compile_mode = config.compile if config.compile != "auto" else ("default" if cuda else "off")
    if config.mixed_precision != "auto":
        precision = config.mixed_precision
    else:
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    # auto: on; 1.6x on this CPU's GAN step (oneDNN), and the layout cuDNN's tensor-core kernels use
    channels_last = config.channels_last != "off"
    return Runtime(compile_mode, precision, channels_last)


def allow_tf32() -> None:
    """fp32 matmuls and convolutions on TF32 tensor cores (10-bit mantissa products, fp32 sums):
    what the fp32 parts of a mixed-precision step can afford, several times faster on A100/H100."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
