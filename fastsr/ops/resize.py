"""MATLAB-exact bicubic ``imresize`` for torch tensors.

Why this exists: the SR protocol (DIV2K's official LR images, every published PSNR table) makes
LR images with MATLAB ``imresize(hr, 1/scale, 'bicubic')``. None of the usual libraries reproduce it:

* ``torch.nn.functional.interpolate(mode='bicubic', antialias=True)`` has MATLAB's kernel (Keys
  a = -0.5, widened by 1/scale when shrinking) but renormalises the weights at the borders instead of
  mirroring the image, so the outer few pixels differ; without ``antialias=True`` it uses a = -0.75.
* Kornia's ``resize(..., antialias=True)`` blurs with a Gaussian and then uses a = -0.75 (about
  0.35 dB off on the bicubic baseline).
* DALI's cubic resize clamps at the borders instead of mirroring.

This module follows MATLAB's ``contributions()`` literally (weights and indices computed in float64,
symmetric border handling, dimension with the smaller scale resized first), and matches real MATLAB
output to ~1e-12 in float64. It is differentiable and runs on any device: the weights are computed
once on the CPU, cached on the device, and applied as a short sum over kernel taps of gathered rows/columns, which
needs only a few output-sized temporaries even for 2K images. Traced (``torch.export``, the ONNX
export), the weights are computed inside the graph from the input's size, so an exported model takes
any size and gives the same numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from numbers import Integral, Real

import torch

__all__ = ["imresize", "kernel_margin", "shrink_kernel"]

_CUBIC_WIDTH = 4.0  # support of the Keys cubic kernel, in input pixels


def kernel_margin(scale: int) -> int:
    """HR pixels past each side of a region that its x1/`scale` antialiased shrink reads: half the
    cubic kernel's support (4 pixels), widened by `scale` when shrinking, so 2 * scale.

    Resizing a region with this much real context around it, then cutting the margin off, gives exactly
    the LR of the whole image at the region's place (DIV2K-style training pairs from crops); it is also
    how far an image must be mirror-padded to reproduce MATLAB's border handling."""
    return int(_CUBIC_WIDTH * scale) // 2


def shrink_kernel(scale: int) -> tuple[torch.Tensor, list[int]]:
    """The taps of imresize's x1/`scale` antialiased shrink for an integer `scale`, and where they read.

    For an integer factor every output pixel's contribution weights are the same (its centre sits at
    the same place in its block of `scale` input pixels), so away from the borders the shrink is a
    strided convolution: output j = sum_k weights[k] * input[scale * j + offsets[k]]. Returns the
    float64 weights of the taps MATLAB keeps, in imresize's order, and their offsets (the first
    negative; not always consecutive: at odd factors taps of weight 0 fall inside the kernel and are
    dropped), taken from the contribution code itself, for an output pixel in the middle of a long
    line whose taps reach no border. The taps reach at most `kernel_margin(scale)` input pixels past
    the output pixel's block on each side."""
    if isinstance(scale, bool) or not isinstance(scale, Integral) or scale < 1:
        raise ValueError(f"shrink_kernel: `scale` must be a positive integer, got {scale!r}.")
    out_len = 4 * int(_CUBIC_WIDTH) + 1  # its middle pixel is 2 * 4 * scale input pixels from each end
    weights, indices = _cached_contributions(scale * out_len, out_len, 1 / scale, True, torch.device("cpu"),
                                             torch.float64)
    middle = out_len // 2
    return weights[middle, :, 0].clone(), [int(i) - scale * middle for i in indices[middle]]


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys cubic convolution kernel with a = -0.5, written exactly as MATLAB's ``cubic``."""
    absx = x.abs()
    absx2 = absx**2
    absx3 = absx**3
    inner = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    outer = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return inner + outer


def _contributions(
    in_len: int, out_len: int, scale: float, antialias: bool, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-pixel weights and 0-based input indices along one dimension (MATLAB's algorithm).

    Returns ``(weights, indices)`` on ``device``, shaped ``(out_len, taps, 1)`` in ``dtype`` (computed in
    float64, rows summing to 1) and ``(out_len, taps)``; the indices already include the symmetric border
    reflection. Eager calls are cached per device and dtype, because a training set resizes the same few
    shapes over and over, and a copy from the host at every call would wait for the device each time. A
    traced call (``torch.export``, the ONNX export, ``torch.compile``) may see symbolic sizes: it computes
    the same weights inside the graph, on ``device``, from the input's size, so one exported graph takes any
    size and a compiled one holds no host tensors (which CUDA graphs refuse).
    """
    if torch.compiler.is_compiling():
        weights, indices = _weights_and_indices(in_len, out_len, scale, antialias, traced=True, device=device)
        return weights.to(dtype).unsqueeze(-1), indices
    return _cached_contributions(in_len, out_len, scale, antialias, device, dtype)


def _weights_and_indices(
    in_len: int, out_len: int, scale: float, antialias: bool, traced: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    widen = antialias and scale < 1  # shrinking: stretch the kernel to low-pass filter as well
    width = _CUBIC_WIDTH / scale if widen else _CUBIC_WIDTH
    x = torch.arange(1, out_len + 1, dtype=torch.float64, device=device)
    u = x / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate of each output pixel centre
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + torch.arange(taps, dtype=torch.float64, device=device)
    distance = u[:, None] - indices
    weights = scale * _cubic(scale * distance) if widen else _cubic(distance)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # Symmetric padding: positions 1..n, then n..1 (the edge pixel repeated), periodically.
    mirror = torch.cat([torch.arange(in_len, device=device), torch.arange(in_len - 1, -1, -1, device=device)])
    # the period as a tensor: the ONNX exporter cannot take a symbolic size as remainder's Python divisor
    indices = mirror[torch.remainder(indices.long() - 1, torch.tensor(2, device=device) * in_len)]
    if not traced:  # MATLAB drops the taps whose weight is 0 for every output pixel
        used = weights.ne(0).any(dim=0)
        return weights[:, used].contiguous(), indices[:, used].contiguous()
    # A graph cannot choose its shapes by the weights' values, so it keeps every tap that could be used:
    # a zero weight adds an exact 0 and leaves the sum unchanged. Unwidened (width 4), the first tap lies
    # at distance u - left >= 2 and the last beyond -2, where the cubic is 0, so those two go, as
    # MATLAB's rule drops them (tests/test_resize.py: the traced taps give the eager result bit for bit).
    return (weights, indices) if widen else (weights[:, 1:-1], indices[:, 1:-1])


@functools.lru_cache(maxsize=128)
def _cached_contributions(
    in_len: int, out_len: int, scale: float, antialias: bool, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    # Computed on the host (the taps kept depend on the weights' values), copied to the device once. Never
    # as inference tensors, whatever the first caller ran under (validation runs in inference mode): the
    # training forward that reuses them saves them for its backward.
    with torch.inference_mode(False):
        weights, indices = _weights_and_indices(in_len, out_len, scale, antialias, traced=False,
                                                device=torch.device("cpu"))
        return weights.to(device=device, dtype=dtype).unsqueeze(-1), indices.to(device)


def _resize_rows(x: torch.Tensor, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """Resize ``x`` along dim -2 as a weighted sum of gathered rows, one ``addcmul`` per kernel tap."""
    weights, indices = _contributions(x.shape[-2], out_len, scale, antialias, x.device, x.dtype)
    out = weights[:, 0] * x.index_select(-2, indices[:, 0])
    for p in range(1, indices.shape[1]):
        out.addcmul_(weights[:, p], x.index_select(-2, indices[:, p]))
    return out


def _resize_cols(x: torch.Tensor, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """Resize along dim -1 by resizing rows of the transpose: gathering whole contiguous rows is
    3-5x faster on CPU than ``index_select`` on the last dimension."""
    return _resize_rows(x.transpose(-1, -2).contiguous(), out_len, scale, antialias).transpose(-1, -2)


def _is_positive_int(v: object) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool) and v > 0


def _output_geometry(
    in_size: tuple[int, int], scale: float | None, size: Sequence[int] | None
) -> tuple[tuple[int, int], tuple[float, float]]:
    """Validate ``scale``/``size`` and return the output size and per-dimension scale, as MATLAB."""
    if (scale is None) == (size is None):
        raise ValueError("imresize: pass exactly one of `scale` (a positive number) or `size` ((h, w)).")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, Real) or not (0 < scale < math.inf):
            raise ValueError(f"imresize: `scale` must be a finite positive number, got {scale!r}.")
        scale = float(scale)
        return (math.ceil(scale * in_size[0]), math.ceil(scale * in_size[1])), (scale, scale)
    if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(f"imresize: `size` must be a pair (h, w) of positive ints, got {size!r}.")
    if not all(_is_positive_int(v) for v in size):
        raise ValueError(f"imresize: `size` must contain positive ints, got {tuple(size)!r}.")
    out_size = (int(size[0]), int(size[1]))
    return out_size, (out_size[0] / in_size[0], out_size[1] / in_size[1])


def imresize(
    x: torch.Tensor,
    scale: float | None = None,
    size: Sequence[int] | None = None,
    antialias: bool = True,
) -> torch.Tensor:
    """Resize the last two dimensions of ``x`` exactly like MATLAB ``imresize(x, ..., 'bicubic')``.

    Args:
        x: floating-point tensor shaped ``(..., H, W)`` (typically NCHW), on any device. Values are
            not clamped or rounded (MATLAB does neither for double input).
        scale: one factor for both dimensions; the output is ``ceil(scale * H) x ceil(scale * W)``
            and the kernel uses ``scale`` itself (as MATLAB ``imresize(x, scale)``).
        size: ``(h, w)`` output size; the per-dimension scale is then ``h/H`` and ``w/W`` (as MATLAB
            ``imresize(x, [h w])``). Exactly one of ``scale`` and ``size`` must be given.
        antialias: when shrinking, widen the kernel by ``1/scale`` (MATLAB's default, and how DIV2K's
            LR images were made). Has no effect when enlarging.

    Returns:
        Tensor shaped ``(..., h, w)`` with ``x``'s dtype and device; autograd flows back to ``x``.

    Raises:
        ValueError: for a non-tensor or non-float input, fewer than 2 dims, an empty image, or bad
            ``scale``/``size`` arguments.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"imresize: expected a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise ValueError(f"imresize: expected a floating-point tensor, got dtype {x.dtype}; convert first.")
    if x.dim() < 2:
        raise ValueError(f"imresize: expected a tensor shaped (..., H, W), got shape {tuple(x.shape)}.")
    in_size = (x.shape[-2], x.shape[-1])
    if min(in_size) == 0:
        raise ValueError(f"imresize: cannot resize an empty image of shape {tuple(x.shape)}.")
    out_size, scales = _output_geometry(in_size, scale, size)
    # MATLAB resizes along the dimension with the smaller scale first (rows first on a tie); the
    # result is the same either way up to rounding, but this order does less work when shrinking.
    if scales[0] <= scales[1]:
        x = _resize_rows(x, out_size[0], scales[0], antialias)
        x = _resize_cols(x, out_size[1], scales[1], antialias)
    else:
        x = _resize_cols(x, out_size[1], scales[1], antialias)
        x = _resize_rows(x, out_size[0], scales[0], antialias)
    return x.contiguous()
