"""ONNX export of a generator, checked in onnxruntime against PyTorch before the file is written.

The graph takes ``lr`` (N, 3, H, W) RGB in [0, 1] and returns ``sr`` (N, 3, H*scale, W*scale), unclamped,
with the batch, height and width free: one file serves any image size. Both are float32, or float16
with ``fp16`` (the whole graph then computes in float16, so its caller passes float16 too).

One path throughout: ``torch.onnx.export(dynamo=True)``, the torch.export-based exporter. The older
TorchScript exporter records the example's sizes as constants wherever a model computes with its input's
size (the MATLAB-exact bicubic in SRCNN and the bicubic baseline builds its weights from it), and its
graph then silently gives the example's output size for any input; torch.export keeps such sizes
symbolic, and says where a model branches on one (``_narrowed_axes``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fastsr.errors import ExportError
from fastsr.util import write_atomic

DEFAULT_OPSET = 18  # the exporter's own opset: any other is reached by converting its graph
# The largest |ONNX - PyTorch float32| accepted on the check input; float16 keeps about 3 decimal digits.
TOLERANCE = {False: 1e-4, True: 2e-2}
INPUT, OUTPUT = "lr", "sr"
# The traced example: a batch of 2 and unequal sides, because torch.export fixes a size of 1 and may tie
# equal sizes together. The check input differs from it in every axis, so sizes traced into constants show.
_TRACE_SHAPE = (2, 3, 24, 20)
CHECK_SHAPE = (1, 3, 19, 13)


@dataclass(frozen=True)
class Exported:
    """What `export_onnx` wrote and how its onnxruntime check came out."""

    opset: int
    dtype: str  # of the input, the output and the graph's arithmetic: "float32" or "float16"
    seconds: float  # the export itself, without the check
    max_abs_diff: float  # onnxruntime against the PyTorch float32 model on a CHECK_SHAPE input
    tolerance: float


def _onnxruntime():
    """onnxruntime, after checking that the exporter's packages (onnx, onnxscript) are there too; else one
    line saying how to get them."""
    try:
        import onnx  # noqa: F401 - the exporter imports these itself, deep inside; fail here, before any work
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(f"ONNX export needs the onnx, onnxscript and onnxruntime packages ({err.name} is "
                          f'missing): pip install "fastsr[onnx]"') from None
    return onnxruntime


def _summary(err: BaseException) -> str:
    """The exporter's error in one line: its first line (which step failed) and the root cause's."""
    def first_line(e: BaseException) -> str:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # it colours the step number
        return text.splitlines()[0] if text else type(e).__name__

    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    return first_line(err) if root is err else f"{first_line(err)} {type(root).__name__}: {first_line(root)}"


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter warns and logs tracebacks of fallbacks it recovers from; what matters is reported here."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def export_onnx(model: nn.Module, path: Path, *, opset: int | None = None, fp16: bool = False,
                tolerance: float | None = None, source: str = "model") -> Exported:
    """Export ``model`` (a generator with a ``scale``) to ``path``, after checking that onnxruntime's
    output on a random [0, 1] input is within ``tolerance`` of the model's own in float32. ``opset`` and
    ``tolerance`` default to DEFAULT_OPSET and TOLERANCE[fp16].

    Nothing is written unless the check passes; the file is written atomically, so an earlier file at
    ``path`` stays whole until the new one replaces it. Errors (``ExportError``) are one line naming
    ``source``.
    """
    ort = _onnxruntime()
    path = Path(path)
    opset = DEFAULT_OPSET if opset is None else opset
    tolerance = TOLERANCE[fp16] if tolerance is None else tolerance
    dtype = torch.float16 if fp16 else torch.float32
    reference = copy.deepcopy(model).cpu().float().eval()
    traced = copy.deepcopy(reference).to(dtype) if fp16 else reference
    example = torch.rand(_TRACE_SHAPE, generator=torch.Generator().manual_seed(0)).to(dtype)
    axes = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}

    start = time.perf_counter()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(traced, (example,), input_names=[INPUT], output_names=[OUTPUT],
                                        dynamic_shapes=(axes,), opset_version=opset, dynamo=True, verbose=False)
    except Exception as err:  # the exporter raises many kinds, each saying which of its steps failed
        raise ExportError(f"{source}: the ONNX exporter failed ({_summary(err)}); rerun with --debug for the "
                          "whole traceback") from err
    narrowed = _narrowed_axes(program.exported_program)
    if narrowed:
        raise ExportError(f"{source}: the exported graph would hold only for {narrowed} (the model branches on "
                          "its input's size there); nothing was written")
    proto = program.model_proto
    got = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if got != opset:  # the exporter keeps its own opset where it cannot convert, and only warns
        raise ExportError(f"{source}: the exporter could not convert its graph to opset {opset}; "
                          f"use --opset {DEFAULT_OPSET}, its own")
    _name_output_axes(proto, model.scale)
    data = proto.SerializeToString()
    seconds = time.perf_counter() - start

    lr = torch.rand(CHECK_SHAPE, generator=torch.Generator().manual_seed(1)).to(dtype)
    ours = _run(ort, data, lr)
    with torch.no_grad():
        theirs = reference(lr.float())  # the same pixels, in float32
    size = "x".join(map(str, CHECK_SHAPE))
    if ours.shape != theirs.shape:
        raise ExportError(f"{source}: on a {size} input the exported graph gives {tuple(ours.shape)}, the model "
                          f"{tuple(theirs.shape)}; nothing was written")
    diff = (ours.float() - theirs).abs().max().item()
    if not diff <= tolerance:  # also refuses NaN
        raise ExportError(f"{source}: the exported graph differs from the model by up to {diff:.3g} on a {size} "
                          f"input (tolerance {tolerance:g}); nothing was written")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return Exported(opset, str(dtype).removeprefix("torch."), seconds, diff, tolerance)


def _narrowed_axes(program: torch.export.ExportedProgram) -> str:
    """The free axes that tracing narrowed, as "width >= 17": torch.export records a branch on a size as
    a range for it, silently, and the ONNX graph then computes that branch at every size."""
    name = program.graph_signature.user_inputs[0]
    shape = next(node.meta["val"].shape for node in program.graph.nodes if node.name == name)
    ranges = {str(symbol): r for symbol, r in program.range_constraints.items()}
    narrowed = []
    for axis, label in ((0, "batch"), (2, "height"), (3, "width")):
        r = ranges.get(str(shape[axis]))
        if r is None:  # a number: fixed to the example's size (torch.export refuses that itself)
            narrowed.append(f"{label} {shape[axis]}")
            continue
        bounded = not math.isinf(float(r.upper))  # torch's own infinity says is_finite
        if r.lower > 1 or bounded:
            narrowed.append(f"{label} in [{r.lower}, {r.upper}]" if bounded else f"{label} >= {r.lower}")
    return ", ".join(narrowed)


def _name_output_axes(proto, scale: int) -> None:
    """Call the output's axes what they are (the exporter spells the sizes as its symbolic arithmetic)."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for axis, name in ((0, "batch"), (2, f"height*{scale}"), (3, f"width*{scale}")):
        dims[axis].dim_param = name


def _run(ort, data: bytes, lr: torch.Tensor) -> torch.Tensor:
    """The graph's output on ``lr``, in onnxruntime on the CPU."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (sr,) = session.run([OUTPUT], {INPUT: lr.numpy()})
    return torch.from_numpy(sr)
