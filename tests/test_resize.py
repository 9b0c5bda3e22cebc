"""fastsr.ops.imresize must reproduce MATLAB imresize(..., 'bicubic') exactly.

The reference outputs in tests/data/matlab_imresize.json were produced by real MATLAB; every other
expectation here is derived from a property (linearity, symmetry, partition of unity) or from torch.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsr.ops import imresize, resize

CASES = json.loads((Path(__file__).parent / "data" / "matlab_imresize.json").read_text())["cases"]


def _case_tensors(case, dtype=torch.float64):
    x = torch.tensor(case["input"], dtype=dtype)
    ref = torch.tensor(case["matlab_output"], dtype=torch.float64)
    return x, ref


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_matlab_float64(case):
    x, ref = _case_tensors(case)
    out = imresize(x, size=tuple(case["output_size"]), antialias=case["antialiasing"])
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_matches_matlab_float32(case):
    # Normalise to [0, 1] (the range images live in; resizing is linear) so 1e-5 is in image units.
    x, ref = _case_tensors(case)
    peak = x.abs().max()
    out = imresize((x / peak).float(), size=tuple(case["output_size"]), antialias=case["antialiasing"])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref / peak, rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale, divisor", [(1 / 4, 4), (1 / 3, 3)])
@pytest.mark.parametrize("hw", [(7, 13), (15, 9), (101, 37), (1, 5)])
def test_scale_output_size_is_ceil(scale, divisor, hw):
    out = imresize(torch.rand(1, 1, *hw), scale=scale)
    assert out.shape[-2:] == tuple(-(-n // divisor) for n in hw)


def test_batched_equals_per_image():
    x = torch.rand(3, 2, 13, 17, dtype=torch.float64)
    out = imresize(x, scale=1 / 3)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            torch.testing.assert_close(out[n, c], imresize(x[n, c], scale=1 / 3), rtol=0, atol=1e-14)


@pytest.mark.parametrize("kwargs", [{"scale": 0.5}, {"size": (9, 4)}, {"scale": 0.5, "antialias": False}])
def test_gradient_flows(kwargs):
    x = torch.rand(2, 1, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imresize(t, **kwargs), (x,))


@pytest.mark.parametrize("kwargs", [{"scale": 1 / 4}, {"scale": 2.5}, {"size": (5, 19)}, {"size": (3, 2)}])
def test_constant_image_stays_constant(kwargs):
    x = torch.full((1, 3, 11, 8), 0.37, dtype=torch.float64)
    out = imresize(x, **kwargs)
    torch.testing.assert_close(out, torch.full_like(out, 0.37), rtol=0, atol=1e-14)


def test_torch_antialias_agrees_in_interior_but_not_at_borders():
    # torch's antialiased bicubic has MATLAB's kernel but renormalises at borders instead of
    # mirroring. At x4 the kernel reaches 8 HR = 2 LR pixels, so outputs 2+ pixels in are unaffected.
    x = torch.rand(2, 3, 64, 48, dtype=torch.float64)
    ours = imresize(x, scale=1 / 4)
    theirs = F.interpolate(x, scale_factor=1 / 4, mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], theirs[..., 2:-2, 2:-2], rtol=0, atol=1e-12)
    border = (ours - theirs).abs()
    border[..., 2:-2, 2:-2] = 0
    assert border.amax(dim=(-2, -1)).min() > 1e-3


def test_weights_cached_during_inference_serve_a_training_forward_later():
    """Validation (inference mode) may resize a shape first that a training forward resizes later, whose
    backward saves the cached weights and indices: they must not be inference tensors."""
    resize._cached_contributions.cache_clear()
    with torch.inference_mode():
        imresize(torch.rand(1, 3, 9, 7), scale=4)
    x = torch.rand(1, 3, 9, 7, requires_grad=True)
    imresize(x, scale=4).sum().backward()
    assert x.grad is not None
    weights, indices = resize._cached_contributions(9, 36, 4.0, True, x.device, x.dtype)
    assert weights.dtype == torch.float32 and weights.shape[:2] == indices.shape  # cast once, as the device wants


def test_keeps_dtype_and_is_contiguous():
    x = torch.rand(1, 3, 10, 14, dtype=torch.float32)
    out = imresize(x, size=(20, 7))
    assert out.dtype == torch.float32 and out.is_contiguous() and out.shape == (1, 3, 20, 7)


@pytest.mark.parametrize(
    "x, kwargs, message",
    [
        (torch.rand(1, 1, 8, 8), {}, "exactly one of"),
        (torch.rand(1, 1, 8, 8), {"scale": 0.5, "size": (4, 4)}, "exactly one of"),
        (torch.rand(1, 1, 8, 8), {"scale": 0}, "positive"),
        (torch.rand(1, 1, 8, 8), {"scale": -2.0}, "positive"),
        (torch.rand(1, 1, 8, 8), {"size": (0, 4)}, "positive ints"),
        (torch.rand(1, 1, 8, 8), {"size": (4,)}, "pair"),
        (torch.rand(1, 1, 8, 8), {"size": (4.5, 4)}, "positive ints"),
        (torch.zeros(1, 1, 8, 8, dtype=torch.uint8), {"scale": 0.5}, "floating-point"),
        (torch.rand(8), {"scale": 0.5}, r"\(\.\.\., H, W\)"),
        (torch.rand(1, 0, 8), {"scale": 0.5}, "empty"),
    ],
)
def test_bad_arguments_raise_value_error(x, kwargs, message):
    with pytest.raises(ValueError, match=message):
        imresize(x, **kwargs)


_sizes = st.integers(min_value=1, max_value=40)


@settings(max_examples=40, deadline=None)
@given(h=_sizes, w=_sizes, out_h=_sizes, out_w=_sizes, antialias=st.booleans())
def test_resize_is_transpose_equivariant_and_preserves_constants(h, w, out_h, out_w, antialias):
    # Rows and columns go through different code paths (and either may be resized first); swapping
    # the image's axes must swap the result's, and weights must sum to one for every size pair.
    x = torch.rand(2, h, w, dtype=torch.float64)
    out = imresize(x, size=(out_h, out_w), antialias=antialias)
    out_t = imresize(x.transpose(-1, -2), size=(out_w, out_h), antialias=antialias)
    torch.testing.assert_close(out_t.transpose(-1, -2), out, rtol=0, atol=1e-12)
    ones = imresize(torch.ones(h, w, dtype=torch.float64), size=(out_h, out_w), antialias=antialias)
    torch.testing.assert_close(ones, torch.ones(out_h, out_w, dtype=torch.float64), rtol=0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(h=_sizes, w=_sizes, scale=st.sampled_from([1 / 4, 1 / 3, 1 / 2, 2.0, 3.0, 4.0]))
def test_scale_sizes_follow_matlab_ceil(h, w, scale):
    out = imresize(torch.rand(h, w), scale=scale)
    assert out.shape == (math.ceil(scale * h), math.ceil(scale * w))


# ---------------------------------------------------------------------------------------------
# Traced (torch.export, the ONNX export): the weights are computed in the graph from the input's size


@pytest.mark.parametrize("scale", [2, 3, 4, 8, 2.5, 1, 1 / 4])
def test_the_traced_taps_give_the_eager_result_bit_for_bit(scale, monkeypatch):
    """The graph keeps taps that MATLAB's rule drops (their weights are 0) and drops the first and last of an
    unwidened kernel; at every size that must add up to the eager, pruned sum exactly."""
    images = {n: torch.rand(1, 2, n, 3, dtype=torch.float64) for n in range(1, 60)}
    eager = {n: imresize(x, scale=scale) for n, x in images.items()}
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    for n, x in images.items():
        assert torch.equal(imresize(x, scale=scale), eager[n]), n


class _Resize(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return imresize(x, scale=self.scale)


@pytest.mark.parametrize("scale", [3, 4])  # enlarging, as the models do
def test_exported_with_free_sizes_it_equals_eager_at_other_sizes(scale):
    axes = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    program = torch.export.export(_Resize(scale), (torch.rand(2, 3, 24, 20),), dynamic_shapes=(axes,))
    for shape in [(1, 3, 1, 1), (3, 3, 7, 13), (1, 3, 40, 9)]:
        x = torch.rand(shape)
        assert torch.equal(program.module()(x), imresize(x, scale=scale)), shape
