"""Resizing and padding a batch whose samples each have their own size: the real-world degradation's
per-sample resize scale and mode (fastsr.data.realworld).

Samples of different sizes share one tensor, a *canvas*: sample i holds its image in the top-left
`heights[i] x widths[i]` corner, and what lies beyond it is never read as image. A resize is a linear
map along each axis, so it is one batched matrix product per axis, `A_i @ x_i @ B_i^T`, with each
sample's own matrices: every sample gets its own output size, interpolation mode and scale in one
computation, on any device. The matrices are those of `torch.nn.functional.interpolate` (no
antialiasing, `align_corners=False`, its border rules), which Real-ESRGAN's degradation calls, so a
sample resized here equals that sample resized alone by `interpolate` (to float rounding).
`pad_each` gives each sample a border of its own edge (reflected or replicated), so a filter or a JPEG
block at a sample's edge sees that sample's pixels, as `F.pad` gives a whole tensor.
"""

from __future__ import annotations

import torch

MODES = ("area", "bilinear", "bicubic")  # as F.interpolate names them
_CUBIC_A = -0.75  # the cubic convolution coefficient of torch's bicubic (and OpenCV's)


def resize_matrices(in_size: torch.Tensor, out_size: torch.Tensor, mode: torch.Tensor, ratio: torch.Tensor,
                    in_max: int, out_max: int) -> torch.Tensor:
    """(N, out_max, in_max) float32 matrices resizing one axis of each sample, as F.interpolate does.

    Sample i maps its first `in_size[i]` inputs to its first `out_size[i]` outputs with mode
    `MODES[mode[i]]`; `ratio[i]` is input pixels per output pixel as interpolate uses it for bilinear and
    bicubic (1 / scale_factor when it is given one, else in / out); area (adaptive average pooling)
    uses the sizes alone. Rows past `out_size[i]` and columns past `in_size[i]` are zero.
    """
    device = ratio.device
    n = in_size.shape[0]
    dst = torch.arange(out_max, device=device, dtype=torch.float32).expand(n, out_max)
    last = (in_size - 1).view(n, 1)
    matrix = torch.zeros(n, out_max, in_max, device=device, dtype=torch.float32)

    # bilinear and bicubic: taps around the source coordinate, clamped to the sample's edge (torch's border)
    src = (dst + 0.5) * ratio.view(n, 1) - 0.5
    # torch copies an axis whose size a bilinear resize keeps (whatever its scale_factor), and clamps a linear
    # source coordinate at 0, not a cubic one
    kept = (in_size == out_size).view(n, 1)
    linear_src = torch.where(kept, dst, src).clamp(min=0)
    i0 = linear_src.floor()
    frac = linear_src - i0
    i0 = i0.long().minimum(last)
    linear = (torch.stack([i0, (i0 + 1).minimum(last)], -1), torch.stack([1 - frac, frac], -1))
    c0 = src.floor()
    t = (src - c0).unsqueeze(-1)
    c0 = c0.long().unsqueeze(-1)
    cubic_index = (c0 + torch.arange(-1, 3, device=device)).clamp(min=0).minimum(last.unsqueeze(-1))
    cubic = (cubic_index, _cubic_weights(t))

    is_mode = [(mode == MODES.index(name)).view(n, 1, 1) for name in MODES]
    for (index, weight), chosen in zip((linear, cubic), is_mode[1:]):
        matrix += torch.zeros_like(matrix).scatter_add_(2, index, weight) * chosen

    # area: output j averages inputs [floor(j * in / out), ceil((j + 1) * in / out)), as adaptive pooling
    ins, outs = in_size.view(n, 1), out_size.view(n, 1)
    j = torch.arange(out_max, device=device).expand(n, out_max)
    start = torch.div(j * ins, outs, rounding_mode="floor")
    end = -torch.div(-(j + 1) * ins, outs, rounding_mode="floor")
    cols = torch.arange(in_max, device=device).view(1, 1, in_max)
    inside = (cols >= start.unsqueeze(-1)) & (cols < end.unsqueeze(-1))
    area = inside / (end - start).clamp(min=1).unsqueeze(-1)
    matrix += area * is_mode[0]

    rows_kept = dst < out_size.view(n, 1)
    return matrix * rows_kept.unsqueeze(-1)


def _cubic_weights(t: torch.Tensor) -> torch.Tensor:
    """The four cubic-convolution weights (taps -1, 0, 1, 2) at fraction `t` of the way from tap 0 to tap 1."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return torch.cat([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)


def resize_each(x: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor, out_heights: torch.Tensor,
                out_widths: torch.Tensor, mode: torch.Tensor, ratio_h: torch.Tensor, ratio_w: torch.Tensor
                ) -> torch.Tensor:
    """Resize each sample of the canvas `x` (N, C, H, W) from its (heights, widths) to (out_heights,
    out_widths) with its own mode and ratios (see `resize_matrices`); returns a canvas as large as the
    largest output."""
    out_h, out_w = int(out_heights.max()), int(out_widths.max())
    rows = resize_matrices(heights, out_heights, mode, ratio_h, x.shape[-2], out_h)
    cols = resize_matrices(widths, out_widths, mode, ratio_w, x.shape[-1], out_w)
    n, c, h, w = x.shape
    # two batched products over the samples, the channels side by side: (H, C*W) rows, then (Ho*C, W) columns
    x = x.float().transpose(1, 2).reshape(n, h, c * w)
    x = torch.bmm(rows, x).view(n, out_h * c, w)
    x = torch.bmm(x, cols.transpose(1, 2))
    return x.view(n, out_h, c, out_w).transpose(1, 2).contiguous()


def pad_each(x: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor, pad: int, mode: str = "reflect",
             size: tuple[int, int] | None = None) -> torch.Tensor:
    """Each sample's image (its top-left heights[i] x widths[i]) with `pad` pixels of border before it and as
    many after, in a canvas of (H + 2 pad, W + 2 pad), or `size` when given.

    `reflect` mirrors about the edge pixel (F.pad's `reflect`); `replicate` repeats it (a JPEG encoder's fill
    of a partial block). A border wider than the image mirrors and then repeats the far edge, where F.pad
    would refuse.
    """
    n = x.shape[0]
    h, w = size if size is not None else (x.shape[-2] + 2 * pad, x.shape[-1] + 2 * pad)
    rows = _source_index(h, pad, heights, mode).view(n, 1, h, 1).expand(n, x.shape[1], h, x.shape[-1])
    x = torch.gather(x, 2, rows)
    cols = _source_index(w, pad, widths, mode).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    return torch.gather(x, 3, cols)


def _source_index(length: int, pad: int, sizes: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, length): the index in sample i's image that output position p (p - pad in image coordinates) reads."""
    pos = torch.arange(length, device=sizes.device).view(1, length) - pad
    last = (sizes - 1).view(-1, 1)
    if mode == "reflect":
        pos = pos.abs()
        pos = torch.where(pos > last, 2 * last - pos, pos)
    elif mode != "replicate":
        raise ValueError(f"pad_each: unknown mode {mode!r}; use reflect or replicate")
    return pos.clamp(min=0).minimum(last)


def filter_each(x: torch.Tensor, kernels: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Correlate each sample of the canvas `x` (N, C, H, W) with its own kernel (N, k, k), k odd, every channel
    alike, the sample's border reflected (Real-ESRGAN's `filter2D`: reflect padding, one kernel per sample).
    One grouped convolution for the whole batch."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    padded = pad_each(x.float(), heights, widths, k // 2)
    weight = kernels.float().repeat_interleave(c, dim=0).unsqueeze(1)  # (N * C, 1, k, k)
    out = torch.nn.functional.conv2d(padded.reshape(1, n * c, *padded.shape[-2:]), weight, groups=n * c)
    return out.view(n, c, h, w)
