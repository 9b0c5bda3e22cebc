"""JPEG compression artifacts for a batch, on its own device: what saving each image with PIL
(``Image.save(buf, "JPEG", quality=q)``, libjpeg-turbo) and decoding it again gives.

Why this exists: a JPEG degradation made on the host (PIL per image) stalls a device-resident batch, and the
differentiable re-implementations approximate the codec: DiffJPEG rounds with a polynomial, and Kornia's
``jpeg_codec_differentiable`` (float DCT, sizes in multiples of 16 only) lands 0.9 to 1.8 levels from PIL's
file on average, a third of the pixels equal. Degraded training inputs need no gradient, so this module
follows libjpeg-turbo's integer arithmetic stage by stage, with the settings PIL uses:

* the input rounded to 8 bits (a codec reads uint8);
* JFIF RGB -> YCbCr in libjpeg's 16-bit fixed point (``jccolor.c``);
* 4:2:0: chroma averaged over 2x2 with libjpeg's alternating rounding bias 1, 2 (``jcsample.c``), the image
  first extended to whole 16x16 MCUs by repeating its last row and column, as libjpeg pads;
* the "islow" integer DCT (``jfdctint.c``), quantised by the IJG tables scaled to the quality (``jcparam.c``,
  baseline: 1..255), rounding halves away from zero (``jcdctmgr.c``);
* dequantised, the islow integer IDCT (``jidctint.c``) and its range limit;
* "fancy" (triangle) chroma upsampling, libjpeg's default and PIL's (``jdsample.c``);
* YCbCr -> RGB in fixed point (``jdcolor.c``).

Each sample has its own quality; there is no loop over samples. The integer DCTs run as matrix products of
exact integers in float64 (every value stays far below 2**53), so the device needs float64 (CUDA and the CPU
have it). The result is PIL's decoded file bit for bit in every case tried (natural and noise images,
sizes from 1x1 to 512x512 and 400x600, qualities 1..100; ``tests/test_jpeg.py``). Each emulated rounding
matters: a float DCT instead of islow leaves 71-93% of the values equal, bilinear chroma upsampling 95-98%,
an unbiased 2x2 average 70-98%, float colour conversion 97-99.9%, nearest-neighbour upsampling 69-85%
(MAE 0.5).
"""

from __future__ import annotations

import functools

import torch

from fastsr.ops.resample import pad_each

__all__ = ["jpeg", "quant_tables"]

# The example tables of the JPEG standard (ITU T.81, Annex K), which IJG libjpeg scales by the quality; row
# major, the row being the vertical frequency.
LUMINANCE_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
CHROMINANCE_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)  # fmt: skip

_MCU = 16  # 4:2:0: a minimum coded unit is 16x16 pixels, 2x2 luma blocks and one block of each chroma
_SCALE_BITS = 16  # libjpeg's colour conversion: fixed point with 16 fraction bits
_CONST_BITS = 13  # libjpeg's islow DCTs: constants with 13 fraction bits ...
_PASS1_BITS = 2  # ... and 2 more bits kept between the two passes


def quant_tables(quality: torch.Tensor) -> torch.Tensor:
    """The luminance and chrominance tables libjpeg writes for each quality in 1..100, shaped (N, 2, 8, 8)
    (int64, on ``quality``'s device): ``jpeg_set_quality(cinfo, q, force_baseline=TRUE)``, as PIL calls it.

    The IJG scaling: a percentage ``5000 / q`` (integer division) below 50, else ``200 - 2 q``; each entry
    ``(base * percentage + 50) // 100`` clamped to 1..255 (baseline JPEG stores 8-bit entries)."""
    q = quality.to(torch.int64)
    percent = torch.where(q < 50, 5000 // q, 200 - 2 * q)
    base = torch.tensor([LUMINANCE_TABLE, CHROMINANCE_TABLE], dtype=torch.int64, device=q.device)
    tables = (base * percent[:, None, None] + 50) // 100
    return tables.clamp(1, 255).reshape(-1, 2, 8, 8)


def jpeg(img: torch.Tensor, quality: torch.Tensor, heights: torch.Tensor | None = None,
         widths: torch.Tensor | None = None) -> torch.Tensor:
    """Compress each image of ``img`` as a JPEG file at its own quality and decode it again.

    Args:
        img: (N, 3, H, W) RGB, float in [0, 1], on any device with float64 (CUDA, CPU); any H, W >= 1.
        quality: (N,) integer values in 1..100 (any dtype), one per image, on any device.
        heights, widths: (N,) each image's own size when the batch is a canvas of mixed sizes (image i in the
            top-left heights[i] x widths[i]; fastsr.ops.resample); default H and W. Each image is then coded as
            a file of its own size would be (its partial blocks filled from its own edge, its chroma's edges
            its own); what lies outside it in the result is not an image.

    Returns:
        (N, 3, H, W) float32 on ``img``'s device, on the 256 levels k/255 of the decoded 8-bit file: what PIL's
        ``Image.save(buf, "JPEG", quality=q)`` followed by ``Image.open(buf)`` gives (4:2:0, IJG tables,
        libjpeg-turbo's integer DCTs and default decoder), pixel for pixel. No gradient flows.

    Raises:
        ValueError: for an image that is not (N, 3, H, W) floats, or a quality that is not N integers in
            1..100, naming the value.
    """
    _check_image(img)
    n, _, height, width = img.shape
    quality = _check_quality(quality, n).to(img.device)
    heights = torch.full((n,), height, device=img.device) if heights is None else heights.to(img.device)
    widths = torch.full((n,), width, device=img.device) if widths is None else widths.to(img.device)
    chroma_heights, chroma_widths = (heights + 1) // 2, (widths + 1) // 2  # the subsampled planes' own sizes
    tables = quant_tables(quality)  # (N, 2, 8, 8): luminance, chrominance
    with torch.no_grad():
        canvas = (_round_up(height, _MCU), _round_up(width, _MCU))
        rgb = pad_each(_to_levels(img), heights, widths, 0, "replicate", size=canvas)
        y, chroma = _rgb_to_ycbcr(rgb)
        chroma = _downsample(chroma)
        # libjpeg subsamples the rows the image has (made even) and repeats the last subsampled row after them
        full_widths = torch.full_like(widths, chroma.shape[-1])
        chroma = pad_each(chroma, chroma_heights, full_widths, 0, "replicate", size=chroma.shape[-2:])
        y = _decode_plane(_encode_plane(y, tables[:, 0]), tables[:, 0])[..., :height, :width]
        chroma = _decode_plane(_encode_plane(chroma, tables[:, 1]), tables[:, 1])
        # the decoder's upsampling repeats each image's own last chroma row and column past its edge
        chroma = pad_each(chroma, chroma_heights, chroma_widths, 0, "replicate", size=chroma.shape[-2:])
        chroma = _upsample(chroma, chroma_widths)[..., :height, :width]
        return _ycbcr_to_rgb(y, chroma).to(torch.float32) / 255.0


# -- checks ------------------------------------------------------------------------------------------------


def _check_image(img: torch.Tensor) -> None:
    if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] != 3 or not img.is_floating_point():
        described = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"jpeg: expected float RGB images shaped (N, 3, H, W), got {described}.")
    if img.shape[-2] == 0 or img.shape[-1] == 0:
        raise ValueError(f"jpeg: expected images of at least 1x1 pixels, got {tuple(img.shape)}.")


def _check_quality(quality: torch.Tensor, n: int) -> torch.Tensor:
    """``quality`` as int64 on the host after checking it: N integer values in 1..100."""
    if not isinstance(quality, torch.Tensor) or quality.shape != (n,):
        described = tuple(quality.shape) if isinstance(quality, torch.Tensor) else repr(quality)
        raise ValueError(f"jpeg: `quality` must be a tensor of {n} qualities (one per image), got {described}.")
    if quality.is_complex() or quality.dtype == torch.bool:
        raise ValueError(f"jpeg: `quality` must hold integers in 1..100, got dtype {quality.dtype}.")
    values = quality.detach().to("cpu", torch.float64)  # one read of N numbers
    bad = (values != values.round()) | (values < 1) | (values > 100) | values.isnan()
    if bad.any():
        value = quality.detach().cpu()[bad.nonzero()[0, 0]].item()
        raise ValueError(f"jpeg: each quality must be an integer in 1..100, got {value!r}.")
    return values.to(torch.int64)


# -- the encoder's stages ----------------------------------------------------------------------------------


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _to_levels(img: torch.Tensor) -> torch.Tensor:
    """The uint8 levels a codec reads, as int32: halves rounded up, as ``fastsr.ops.quantize``."""
    return torch.floor(img.detach().float().clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.int32)


def _fix(x: float) -> int:
    """libjpeg's FIX(): ``x`` in fixed point with 16 fraction bits."""
    return int(x * (1 << _SCALE_BITS) + 0.5)


def _rgb_to_ycbcr(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """JFIF YCbCr of int RGB levels as libjpeg's ``rgb_ycc_convert``: Y (N, 1, H, W) and CbCr (N, 2, H, W).
    Y rounds halves up; Cb and Cr add 0.5 - 2**-16 so that 255 cannot round to 256."""
    r, g, b = rgb.unbind(dim=1)
    half, center = 1 << (_SCALE_BITS - 1), 128 << _SCALE_BITS
    y = _fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + half
    cb = -_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + center + half - 1
    cr = _fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + center + half - 1
    return (y >> _SCALE_BITS).unsqueeze(1), torch.stack([cb, cr], dim=1) >> _SCALE_BITS


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """2x2 averages as libjpeg's ``h2v2_downsample``: the sum of four plus a bias of 1 at even output
    columns and 2 at odd ones (so that halves round neither always up nor always down), over 4."""
    total = x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]
    bias = 1 + torch.arange(total.shape[-1], device=x.device, dtype=x.dtype) % 2
    return (total + bias) >> 2


def _to_blocks(plane: torch.Tensor) -> torch.Tensor:
    """(N, C, 8 h, 8 w) -> (N, C, h, w, 8, 8) blocks."""
    n, c, height, width = plane.shape
    return plane.reshape(n, c, height // 8, 8, width // 8, 8).transpose(3, 4)


def _from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w, 8, 8) blocks -> (N, C, 8 h, 8 w)."""
    n, c, h, w = blocks.shape[:4]
    return blocks.transpose(3, 4).reshape(n, c, 8 * h, 8 * w)


def _descale(x: torch.Tensor, bits: int) -> torch.Tensor:
    """libjpeg's DESCALE: ``x / 2**bits`` rounded, halves up (exact for the integers float64 holds here)."""
    return torch.floor((x + (1 << (bits - 1))) / (1 << bits))


def _encode_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Quantised DCT coefficients (N, C, h, w, 8, 8), int64, of an int plane (N, C, 8 h, 8 w) of samples
    0..255, by libjpeg's islow forward DCT and ``quantize``. ``table``: (N, 8, 8), one per image."""
    forward, _ = _dct_matrices(plane.device)
    x = _to_blocks(plane).to(torch.float64) - 128.0  # level shift
    x = _descale(x @ forward.T, _CONST_BITS - _PASS1_BITS)  # pass 1: rows
    coef = _descale(forward @ x, _CONST_BITS + _PASS1_BITS).to(torch.int64)  # pass 2: columns, 8x the DCT
    divisor = 8 * table[:, None, None, None]  # the islow DCT is scaled up by 8
    return coef.sign() * ((coef.abs() + divisor // 2) // divisor)  # round to nearest, halves away from 0


# -- the decoder's stages ----------------------------------------------------------------------------------


def _decode_plane(coef: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Samples (N, C, 8 h, 8 w), int32 in 0..255, of quantised coefficients (N, C, h, w, 8, 8): dequantised
    and inverted by libjpeg's islow IDCT (``jpeg_idct_islow``), then range-limited as libjpeg does."""
    _, inverse = _dct_matrices(coef.device)
    x = (coef * table[:, None, None, None]).to(torch.float64)
    x = _descale(inverse @ x, _CONST_BITS - _PASS1_BITS)  # pass 1: columns
    x = _descale(x @ inverse.T, _CONST_BITS + _PASS1_BITS + 3).to(torch.int64)  # pass 2: rows
    return _from_blocks(_range_limit(x + 128))


def _range_limit(x: torch.Tensor) -> torch.Tensor:
    """libjpeg's post-IDCT range limit (``IDCT_range_limit``, indexed by ``x & RANGE_MASK``): the 10 low
    bits of ``x``, read as a value in -384..639, clamped to 0..255. A clamp for every value a real image
    gives; a wild overshoot of a coarse quality wraps as libjpeg's does."""
    wrapped = ((x + 384) & 1023) - 384
    return wrapped.clamp(0, 255).to(torch.int32)


def _upsample(chroma: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Chroma (N, 2, h, w) -> (N, 2, 2 h, 2 w) as libjpeg's default decoder (``jdsample.c``). Each output
    sample is 9/16 of the nearest input, 3/16 of each of the two next nearest and 1/16 of the diagonal one
    (``h2v2_fancy_upsample``), the edges repeated; the biases 8 and 7 alternate by column. An image whose
    chroma (`widths`, per image) is two samples wide or less is only repeated (``h2v2_upsample``), as libjpeg
    does for it."""
    nearer = 3 * chroma
    rows = torch.stack([nearer + _neighbour(chroma, -2, -1), nearer + _neighbour(chroma, -2, 1)], dim=-2)
    rows = rows.flatten(-3, -2)  # (N, 2, 2 h, w): 3/4 of the nearest row and 1/4 of the one above, below
    nearer = 3 * rows
    cols = torch.stack([(nearer + _neighbour(rows, -1, -1) + 8) >> 4, (nearer + _neighbour(rows, -1, 1) + 7) >> 4],
                       dim=-1)
    fancy = cols.flatten(-2, -1)
    narrow = widths <= 2
    if not narrow.any():
        return fancy
    repeated = chroma.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return torch.where(narrow.view(-1, 1, 1, 1), repeated, fancy)


def _neighbour(x: torch.Tensor, dim: int, offset: int) -> torch.Tensor:
    """``x`` shifted by ``offset`` along ``dim``, the edge repeated: each sample's neighbour."""
    n = x.shape[dim]
    return x.index_select(dim, (torch.arange(n, device=x.device) + offset).clamp(0, n - 1))


def _ycbcr_to_rgb(y: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """RGB levels (N, 3, H, W), int32 in 0..255, of Y (N, 1, H, W) and CbCr (N, 2, H, W) as libjpeg's
    ``ycc_rgb_convert``: each term rounded on its own in 16-bit fixed point, then clamped."""
    cb, cr = (chroma - 128).unbind(dim=1)
    half = 1 << (_SCALE_BITS - 1)
    red = (_fix(1.402) * cr + half) >> _SCALE_BITS
    blue = (_fix(1.772) * cb + half) >> _SCALE_BITS
    green = (-_fix(0.34414) * cb - _fix(0.71414) * cr + half) >> _SCALE_BITS
    return (y + torch.stack([red, green, blue], dim=1)).clamp(0, 255)


# -- libjpeg's integer DCTs as matrices --------------------------------------------------------------------

# islow's rotations: FIX(c) with 13 fraction bits (jfdctint.c, jidctint.c)
_F0_298, _F0_390, _F0_541, _F0_765 = 2446, 3196, 4433, 6270
_F0_899, _F1_175, _F1_501, _F1_847 = 7373, 9633, 12299, 15137
_F1_961, _F2_053, _F2_562, _F3_072 = 16069, 16819, 20995, 25172


def _forward_butterfly(d: list[int]) -> list[int]:
    """One 1-D pass of ``jpeg_fdct_islow`` (Loeffler-Ligtenberg-Moschytz) before its final descale: the
    outputs 0 and 4, which libjpeg shifts exactly, are scaled by 2**13 to descale like the others."""
    tmp0, tmp7 = d[0] + d[7], d[0] - d[7]
    tmp1, tmp6 = d[1] + d[6], d[1] - d[6]
    tmp2, tmp5 = d[2] + d[5], d[2] - d[5]
    tmp3, tmp4 = d[3] + d[4], d[3] - d[4]
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    out = [0] * 8
    out[0] = (tmp10 + tmp11) << _CONST_BITS
    out[4] = (tmp10 - tmp11) << _CONST_BITS
    z1 = (tmp12 + tmp13) * _F0_541
    out[2] = z1 + tmp13 * _F0_765
    out[6] = z1 - tmp12 * _F1_847
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * _F1_175
    tmp4, tmp5, tmp6, tmp7 = tmp4 * _F0_298, tmp5 * _F2_053, tmp6 * _F3_072, tmp7 * _F1_501
    z1, z2 = z1 * -_F0_899, z2 * -_F2_562
    z3, z4 = z3 * -_F1_961 + z5, z4 * -_F0_390 + z5
    out[7], out[5] = tmp4 + z1 + z3, tmp5 + z2 + z4
    out[3], out[1] = tmp6 + z2 + z3, tmp7 + z1 + z4
    return out


def _inverse_butterfly(c: list[int]) -> list[int]:
    """One 1-D pass of ``jpeg_idct_islow`` before its final descale (its all-zero shortcuts give the same)."""
    z1 = (c[2] + c[6]) * _F0_541
    tmp2, tmp3 = z1 - c[6] * _F1_847, z1 + c[2] * _F0_765
    tmp0, tmp1 = (c[0] + c[4]) << _CONST_BITS, (c[0] - c[4]) << _CONST_BITS
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    t0, t1, t2, t3 = c[7], c[5], c[3], c[1]
    z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
    z5 = (z3 + z4) * _F1_175
    t0, t1, t2, t3 = t0 * _F0_298, t1 * _F2_053, t2 * _F3_072, t3 * _F1_501
    z1, z2 = z1 * -_F0_899, z2 * -_F2_562
    z3, z4 = z3 * -_F1_961 + z5, z4 * -_F0_390 + z5
    t0, t1, t2, t3 = t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4
    return [tmp10 + t3, tmp11 + t2, tmp12 + t1, tmp13 + t0, tmp13 - t0, tmp12 - t1, tmp11 - t2, tmp10 - t3]


@functools.cache
def _dct_matrices(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The butterflies as integer 8x8 matrices in float64 on ``device`` (forward, inverse): each is linear
    up to its descale, so a pass is a matrix product and one rounding, exactly as libjpeg computes it."""
    unit = [[int(i == j) for i in range(8)] for j in range(8)]
    with torch.inference_mode(False):
        return tuple(torch.tensor([butterfly(e) for e in unit], dtype=torch.float64).T.contiguous().to(device)
                     for butterfly in (_forward_butterfly, _inverse_butterfly))
