"""The speed switches (`runtime.*` in a recipe), resolved for the device the run is on.

- compile: `torch.compile` of the training copies of G, D and the VGG loss, before Accelerate
  wraps them (compiling the bare module avoids DDP graph breaks). Evaluation and checkpoints use the
  eager module, which shares the parameters: full-size images of varying shapes never recompile, and
  saved weights have no `_orig_mod.` prefix. `reduce-overhead` (and `max-autotune`) also capture each
  compiled forward and backward in a CUDA graph, replayed with one launch (on a GPU; on a CPU they only
  compile): each step then begins with `start_step`, and a step keeps none of a graph's outputs past its
  end (steps.py). What CUDA graphs need of a run is in the README (*Speed switches*).
- mixed_precision: `torch.autocast` around the forwards of a step (losses are computed in fp32);
  fp16 also scales the losses (`GradScaler`); bf16 needs no scaler. The steps take a `Precision`
  whatever the mode, so switching it changes no API.
- channels_last: the models' weights and the batches in NHWC layout (cuDNN's and oneDNN's
  preferred layout for convolutions).
`auto` picks per device from measurements (benchmarks/RESULTS.md, `benchmarks/train_throughput.py`).
On a GPU the run also allows TF32 (`allow_tf32`) and cuDNN's autotuning (`autotune_convolutions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn

from fastsr.config import RuntimeConfig

# torch.compile's modes that capture CUDA graphs (torch._inductor.list_mode_options: `triton.cudagraphs`)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast for the forwards of a step, and the loss scaling fp16 needs (a no-op otherwise)."""

    def __init__(self, mode: str = "no", device_type: str = "cpu"):
        if mode not in _DTYPES:
            raise ValueError(f"mixed precision {mode!r}: use one of {', '.join(_DTYPES)}")
        self.mode, self.device_type, self.dtype = mode, device_type, _DTYPES[mode]
        self.scaler = torch.amp.GradScaler(device_type, enabled=mode == "fp16")

    def autocast(self):
        """The context to run a step's forwards in: autocast to the mode's dtype, disabled for `no`."""
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def backward(self, accelerator, loss: torch.Tensor) -> None:
        """Backpropagate `loss` through Accelerate, scaled first under fp16; follow it with `step`."""
        accelerator.backward(self.scaler.scale(loss))

    def step(self, optimizer) -> None:
        """optimizer.step(), skipped by the fp16 scaler when the gradients overflowed."""
        if self.scaler.is_enabled() and isinstance(optimizer, AcceleratedOptimizer):
            # The scaler hands its scale and overflow flag to an optimizer that takes them (fused Adam, on
            # a GPU), which then skips on the device; Accelerate's wrapper hides that ability, and the scaler
            # would read the flag back instead (a host sync per step). The wrapper's own step only gates
            # gradient accumulation, which fastsr does not use.
            optimizer = optimizer.optimizer
        self.scaler.step(optimizer)

    def update(self) -> None:
        """Once per iteration, after every optimizer stepped (adapts the fp16 loss scale)."""
        self.scaler.update()


@dataclass(frozen=True)
class Runtime:
    """The speed switches resolved for the run's device (`resolve_runtime`): no `auto` left."""

    compile: str  # off | default | reduce-overhead | max-autotune
    mixed_precision: str  # no | bf16 | fp16
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of the models and batches: channels_last (NHWC) or contiguous (NCHW)."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def for_training(self, module: nn.Module) -> nn.Module:
        """Lay `module` out in place; return the copy to train with (compiled, or `module` itself)."""
        module.to(memory_format=self.memory_format)
        if self.compile == "off":
            return module
        return torch.compile(module, mode=None if self.compile == "default" else self.compile)

    @property
    def cuda_graphs(self) -> bool:
        """Whether the compiled copies capture CUDA graphs (on a GPU)."""
        return self.compile in CUDA_GRAPH_MODES

    def start_step(self, *batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Begin a training step: the batch in the models' layout. With CUDA graphs, torch is also told that a
        new iteration begins, so each graph's replay may reuse the memory of its outputs of the step before
        (which that step dropped)."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return tuple(t.contiguous(memory_format=self.memory_format) for t in batch)

    def describe(self) -> str:
        """The switches as one human-readable phrase, for the console and the log."""
        return (f"compile {self.compile}, mixed precision {self.mixed_precision}, "
                f"channels_last {'on' if self.channels_last else 'off'}")


def resolve_runtime(config: RuntimeConfig, cuda: bool) -> Runtime:
    """The switches for a CUDA device (`cuda`) or the CPU, `auto` replaced by what measured fastest."""
    compile_mode = config.compile if config.compile != "auto" else ("default" if cuda else "off")
    if config.mixed_precision != "auto":
        precision = config.mixed_precision
    else:
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    # auto: on; it speeds up the GAN step on a CPU (oneDNN), and it is the layout cuDNN's tensor-core kernels use
    channels_last = config.channels_last != "off"
    return Runtime(compile_mode, precision, channels_last)


def allow_tf32() -> None:
    """fp32 matmuls and convolutions on TF32 tensor cores (10-bit mantissa products, fp32 sums):
    what the fp32 work of a mixed-precision step can afford, several times faster on A100/H100."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def autotune_convolutions() -> None:
    """cuDNN times its algorithms for each new convolution shape and keeps the fastest: training's shapes
    are fixed (one crop size, full batches only), so it pays once per shape. Evaluation's whole images
    of varying sizes turn it off while they run (`fastsr.evaluate`)."""
    torch.backends.cudnn.benchmark = True
