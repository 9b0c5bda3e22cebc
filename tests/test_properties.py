"""Property-based tests (hypothesis) for `fastsr.ops.imresize` and recipe loading.

imresize: output geometry and dtype for any size and scale, batching, constants, a bound on
overshoot derived from the kernel (and shown to be attained), and linearity.
Recipes: any override either loads or fails with a one-line `RecipeError` naming the key; valid
overrides land where they should and survive save/load; last override wins, overrides beat `base:`
files, and the most derived file of a `base:` chain wins key by key.

Example-based tests live in test_resize.py and test_config.py (MATLAB reference values, transpose
equivariance, integer-scale sizes, messages for known bad overrides); nothing here repeats them.
"""

import math
import tempfile
import typing
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.utils import LoggerType
from hypothesis import Phase, assume, example, given, settings
from hypothesis import strategies as st

from fastsr.config import KERNEL_KINDS, section_keys
from fastsr.errors import RecipeError
from fastsr.losses import VGG19_LAYERS
from fastsr.ops import imresize
from fastsr.ops.resample import MODES
from fastsr.recipe import Recipe, load_recipe, save_recipe

# ---------------------------------------------------------------------------------------------
# imresize: strategies and the overshoot bound

_sizes = st.integers(min_value=1, max_value=40)

# Scales as exact ratios, so the expected size is an exact ceil(p*H/q) rather than a restatement of
# the implementation's float formula. Each ratio's double is <= the ratio (or exact), so MATLAB's
# ceil(scale * H) in doubles gives the same size (with a double just above the ratio, e.g. 1.1,
# 1.1 * 10 is 11.000000000000002 and the documented rule gives 12).
_SCALES = [Fraction(1, 4), Fraction(1, 3), Fraction(1, 2), Fraction(2, 3), Fraction(3, 4),
           Fraction(3, 10), Fraction(7, 10), Fraction(11, 12), Fraction(9, 8), Fraction(3, 2), Fraction(5, 2),
           Fraction(9, 4), Fraction(2), Fraction(3), Fraction(4)]
assert all(Fraction(float(s)) <= s for s in _SCALES)

_FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@st.composite
def _resize_case(draw):
    """(h, w, kwargs, (scale_h, scale_w)): a random input size and a `scale=` or `size=` request."""
    h, w = draw(_sizes), draw(_sizes)
    if draw(st.booleans()):
        scale = float(draw(st.sampled_from(_SCALES)))
        return h, w, {"scale": scale}, (scale, scale)
    out_h, out_w = draw(_sizes), draw(_sizes)
    return h, w, {"size": (out_h, out_w)}, (out_h / h, out_w / w)


# Overshoot bound. One 1-D pass computes y = sum_i w_i x_i with sum_i w_i = 1; if N is the sum of the
# negative weights' magnitudes (P = 1 + N the positive ones), then for x in [lo, hi] (R = hi - lo)
# y <= hi + N*R and y >= lo - N*R. Two separable passes: the first widens the range to R(1 + 2*N1),
# so the result lies within N1*R + N2*R*(1 + 2*N1) = R*(N1 + N2 + 2*N1*N2) of [lo, hi] (with N1 = N2
# = N: N*(2 + 2N)). This is exactly the 2-D worst case: the 2-D weights are w_i * v_j, whose positive
# part sums to P1*P2 + N1*N2 = 1 + N1 + N2 + 2*N1*N2, reached by the 0/1 image that is 1 where
# w_i * v_j > 0 (test_overshoot_bound_is_attained shows it).
# N for the Keys cubic (a = -0.5): unwidened (enlarging, or antialias=False), the weights at phase
# t are exact samples of the kernel (they already sum to 1), and the two negative lobes give
# |c(1 + t)| + |c(2 - t)|, largest at t = 1/2: 2 * 0.0625 = 0.125.
_N_PLAIN = 0.125
# Widened (antialias and scale s < 1): weights s*c(s*d), renormalised. For s > 0.8 there are four
# taps; at phase 1/2, N(s) = -c(1.5s) / (c(0.5s) + c(1.5s)), largest at s = 0.92788: N = 0.134385
# (a scan of all phases and of s in (0, 1) finds nothing larger; rounded up here).
_N_WIDENED = 0.13439


def _pass_n(scale: float, antialias: bool) -> float:
    return _N_WIDENED if antialias and scale < 1 else _N_PLAIN


def _overshoot_bound(scales, antialias) -> float:
    n1, n2 = (_pass_n(s, antialias) for s in scales)
    return n1 + n2 + 2 * n1 * n2


# ---------------------------------------------------------------------------------------------
# imresize: properties


@settings(max_examples=60, deadline=None)
@given(h=_sizes, w=_sizes, n=st.integers(1, 3), c=st.integers(1, 3), scale=st.sampled_from(_SCALES),
       dtype=st.sampled_from(_FLOAT_DTYPES), antialias=st.booleans())
def test_scale_gives_ceil_size_keeps_dtype_and_batches(h, w, n, c, scale, dtype, antialias):
    x = torch.rand(n, c, h, w, dtype=torch.float64).to(dtype)
    out = imresize(x, scale=float(scale), antialias=antialias)
    # Documented (and MATLAB's) rule: ceil(scale * H) x ceil(scale * W).
    expected = (math.ceil(scale * h), math.ceil(scale * w))
    assert out.shape == (n, c, *expected)
    assert out.dtype == dtype
    # Each image of a batch is resized on its own (no mixing across N or C).
    for i in range(n):
        single = imresize(x[i:i + 1], scale=float(scale), antialias=antialias)
        torch.testing.assert_close(out[i:i + 1], single)


@settings(max_examples=40, deadline=None)
@given(h=_sizes, w=_sizes, out_h=_sizes, out_w=_sizes, dtype=st.sampled_from(_FLOAT_DTYPES),
       lead=st.lists(st.integers(1, 3), max_size=2), antialias=st.booleans())
def test_explicit_size_is_exact_for_any_leading_dims(h, w, out_h, out_w, dtype, lead, antialias):
    x = torch.rand(*lead, h, w, dtype=torch.float64).to(dtype)
    out = imresize(x, size=(out_h, out_w), antialias=antialias)
    assert out.shape == (*lead, out_h, out_w) and out.dtype == dtype


@settings(max_examples=60, deadline=None)
@given(case=_resize_case(), value=st.floats(0, 1), dtype=st.sampled_from([torch.float32, torch.float64]),
       antialias=st.booleans())
def test_constant_image_stays_constant(case, value, dtype, antialias):
    # Every output pixel's weights sum to one, whatever the geometry, border reflection included.
    h, w, kwargs, _ = case
    x = torch.full((2, 1, h, w), value, dtype=dtype)
    out = imresize(x, antialias=antialias, **kwargs)
    # float32: the weights, rounded to float32, sum to 1 only within an ulp or so per tap, and the
    # widest kernels here (40 -> 1 pixels) have ~160 taps; 1.7e-6 is the worst seen over all sizes.
    atol = 1e-12 if dtype == torch.float64 else 4e-6
    torch.testing.assert_close(out, torch.full_like(out, value), rtol=0, atol=atol)


@settings(max_examples=60, deadline=None)
@given(case=_resize_case(), lo=st.floats(-2, 2), width=st.floats(1e-3, 4), binary=st.booleans(),
       antialias=st.booleans())
def test_output_stays_within_kernel_overshoot_bound(case, lo, width, binary, antialias):
    h, w, kwargs, scales = case
    hi = lo + width
    pattern = torch.rand(1, 2, h, w, dtype=torch.float64)
    if binary:  # sharp 0/1 edges are what overshoot most
        pattern = pattern.round()
    out = imresize(lo + width * pattern, antialias=antialias, **kwargs)
    k = _overshoot_bound(scales, antialias)
    slack = 1e-12 * (abs(lo) + abs(hi) + 1)
    assert out.max().item() <= hi + k * width + slack
    assert out.min().item() >= lo - k * width - slack


@settings(max_examples=60, deadline=None)
@given(case=_resize_case(), data=st.data(), antialias=st.booleans())
def test_worst_case_input_never_exceeds_overshoot_bound(case, data, antialias):
    # The adversarial 0/1 image for one output pixel is 1 exactly where that pixel's 2-D weight is
    # positive; its value there is then the largest any [0, 1] image can give. The weights are read
    # back with autograd, so this covers the border reflection and any tap merging too.
    h, w, kwargs, scales = case
    x = torch.rand(h, w, dtype=torch.float64, requires_grad=True)
    out = imresize(x, antialias=antialias, **kwargs)
    i = data.draw(st.integers(0, out.shape[0] - 1), label="row")
    j = data.draw(st.integers(0, out.shape[1] - 1), label="col")
    (weights,) = torch.autograd.grad(out[i, j], x)
    worst = imresize((weights > 0).double(), antialias=antialias, **kwargs)[i, j].item()
    assert worst == pytest.approx(weights.clamp(min=0).sum().item(), abs=1e-12)  # linear: sum of w+
    assert worst <= 1 + _overshoot_bound(scales, antialias) + 1e-12


@pytest.mark.parametrize(
    "shape, kwargs, n",
    [
        ((16, 16), {"scale": 0.5, "antialias": False}, _N_PLAIN),  # phase 1/2 at every output pixel
        ((14, 14), {"size": (13, 13), "antialias": True}, 0.134385),  # s = 13/14 ~ the worst widened s
    ],
)
def test_overshoot_bound_is_attained(shape, kwargs, n):
    # The bound above is not slack: for these geometries an interior pixel reaches 1 + N*(2 + 2N).
    x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    out = imresize(x, **kwargs)
    i, j = out.shape[0] // 2, out.shape[1] // 2
    (weights,) = torch.autograd.grad(out[i, j], x)
    peak = imresize((weights > 0).double(), **kwargs)[i, j].item()
    assert peak == pytest.approx(1 + n * (2 + 2 * n), abs=1e-5)
    assert peak <= 1 + _N_WIDENED * (2 + 2 * _N_WIDENED)


@settings(max_examples=50, deadline=None)
@given(case=_resize_case(), a=st.floats(-1e3, 1e3), b=st.floats(-1e3, 1e3), antialias=st.booleans())
def test_resize_is_linear(case, a, b, antialias):
    h, w, kwargs, _ = case
    x = torch.rand(2, h, w, dtype=torch.float64)
    y = torch.randn(2, h, w, dtype=torch.float64)
    lhs = imresize(a * x + b * y, antialias=antialias, **kwargs)
    rhs = a * imresize(x, antialias=antialias, **kwargs) + b * imresize(y, antialias=antialias, **kwargs)
    # |inputs| stay below ~5 (|a| + |b|), outputs below ~1.3x that; float64 rounding is far below.
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12 * (abs(a) + abs(b) + 1))


# ---------------------------------------------------------------------------------------------
# Recipes: strategies

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHIPPED = sorted(RECIPES.glob("*.yaml"))
BASE = RECIPES / "srgan_x4.yaml"  # itself a `base:` child, with both training phases on
_MISSING = object()


def get_key(recipe: Recipe, key: str):
    """The value at `key`, or _MISSING where the recipe's part has no such key (another architecture's)."""
    for part in key.split("."):
        recipe = getattr(recipe, part, _MISSING)
        if recipe is _MISSING:
            return _MISSING
    return recipe


# The keys of BASE's own parts (section_keys(Recipe) also lists every other registered part's keys).
KEYS = [k for k in section_keys(Recipe) if get_key(load_recipe(BASE), k) is not _MISSING]
SECTIONS = sorted({k.split(".")[0] for k in KEYS if "." in k})


def yaml_text(value) -> str:
    """`value` written as YAML flow text on one `key=` argument (what a careful user types)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"))
    return text.removesuffix("\n...\n").rstrip("\n")


def one_line_naming(err: RecipeError, key: str) -> str:
    message = str(err)
    assert "\n" not in message, f"multi-line message: {message!r}"
    assert key in message, f"message does not name {key!r}: {message!r}"
    return message


# Snippets YAML reads specially: tags, anchors, flow/block indicators, YAML 1.1 scalars (bools,
# sexagesimals, dates, hex/octal/binary with underscores), and broken forms of each.
_YAML_SPECIAL = [
    "~", "null", "None", "yes", "Off", ".nan", ".inf", "-.inf", "nan", "inf", "1e-4", "1.0e-4",
    "0x1F", "0o17", "017", "0b101", "1_000", "1:30", "190:20:30", "2024-01-31", "2021-02-30",
    "0x_", "0b_", "!!float x", "!!int", "!!bool maybe", "!!timestamp x", "!!binary aGk=",
    "!!set {a}", "!!str 5", "!!python/name:os.system", "&a [*a]", "*a", "{", "[", "]", "}", "'", '"',
    "? x", "- x", "-", "|", ">", "%TAG", "@", "`", "#", "a: b", "{a: 1}", "[1, [2]]", ":", ",",
    "\t", " ", "",
]
_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(_YAML_SPECIAL),
    st.tuples(st.sampled_from(_YAML_SPECIAL), st.text(max_size=4)).map("".join),
)
_scalars = st.one_of(
    st.integers(-3, 3),
    st.integers(),
    st.sampled_from([2**63, -(2**63), 10**309, -(10**400)]),  # beyond int64 / beyond any double
    st.floats(),  # nan and +-inf included
    st.booleans(),
    st.none(),
    _text,
)
_any_value = st.one_of(_scalars, st.lists(_scalars, max_size=4))

# Valid values for each key, from the recipe's own rules (config._check_values and the types).
# Cross-key rules are met for any combination of these on top of BASE: scale in {2, 4, 8} with
# hr_crop a multiple of 8 and >= 32 (finetune needs 32); crops_per_image in {1, 2, 4} with repeat and
# batch_size multiples of 4; steps_pretrain >= 1 (or epochs_pretrain's default) so nothing makes "nothing to train".
_positive_int = st.integers(min_value=1)
_non_negative_int = st.integers(min_value=0)
_positive_float = st.floats(min_value=0, exclude_min=True, allow_infinity=False)
_non_negative_float = st.floats(min_value=0, allow_infinity=False)
_plain_text = st.text(max_size=16)
_optional_text = st.none() | _plain_text.filter(lambda s: s.lower() not in ("null", "none"))  # those mean None

def _probabilities(n: int) -> st.SearchStrategy:
    """n non-negative probabilities summing to 1."""
    return st.lists(st.integers(0, 10), min_size=n, max_size=n).filter(any).map(lambda v: [x / sum(v) for x in v])


def _range(values: st.SearchStrategy) -> st.SearchStrategy:
    """[low, high] of two `values`, low <= high."""
    return st.lists(values, min_size=2, max_size=2).map(sorted)


def _spanning_one(below: st.SearchStrategy) -> st.SearchStrategy:
    """[low, high] with low (from `below`, in (0, 1]) <= 1 <= high."""
    return st.tuples(below, st.floats(1, 1e6)).map(list)


_VALID_BY_KEY = {
    "scale": st.sampled_from([2, 4, 8]),
    "model.res_blocks": _positive_int,
    "model.channels": _positive_int,
    "model.upsample_input": st.sampled_from(["none", "bicubic", "bilinear"]),  # a part's key: no hint on Recipe
    "model.batch_norm": st.booleans(),
    # Another name is another part with other keys (tests/test_registry.py): these properties keep BASE's.
    "model.name": st.just("srresnet"),
    "discriminator.name": st.just("srgan"),
    "discriminator.channels": _positive_int,
    "discriminator.batch_norm": st.booleans(),
    "plugins": st.sampled_from([[], ["json"], ["json", "math"]]),  # importable modules
    "loss.terms": st.none(),  # the reference script's list (explicit lists: tests/test_registry.py)
    "loss.terms_pretrain": st.none(),  # the pixel loss (explicit lists: tests/test_trainer.py)
    "data.hr_crop": st.integers(4, 64).map(lambda k: 8 * k),
    "data.repeat": st.integers(1, 100).map(lambda k: 4 * k),
    "data.crops_per_image": st.sampled_from([1, 2, 4]),
    "data.workers": _non_negative_int,
    "data.device_budget_gb": st.none() | _positive_float,
    "data.val_images": _non_negative_int,
    "data.stall_timeout_s": _non_negative_float,
    "data.val_sets": st.lists(st.sampled_from(["set5", "set14", "b100", "urban100", "manga109", "samples", "/v"]),
                              unique=True),
    "loss.w_vgg": _non_negative_float,
    "loss.w_adv": _non_negative_float,
    "loss.w_tv": _non_negative_float,
    "loss.vgg_layer": st.sampled_from(sorted(VGG19_LAYERS)),
    # BASE gives both phases in steps, which exclude epochs other than the default (tests/test_trainer.py)
    "train.steps_pretrain": st.none() | _positive_int,
    "train.steps_finetune": st.none() | _non_negative_int,
    "train.epochs_pretrain": st.none() | st.just(100),
    "train.epochs_finetune": st.none() | st.just(0),
    "train.batch_size": st.integers(1, 100).map(lambda k: 4 * k),
    "train.lr": _positive_float,
    "train.lr_finetune": st.none() | _positive_float,
    "train.betas": st.lists(st.floats(0, 1, exclude_max=True), min_size=2, max_size=2),
    "train.lr_milestones": st.lists(st.integers(1, 10**6), unique=True).map(sorted),
    "train.lr_milestones_finetune": st.none() | st.lists(st.integers(1, 10**6), unique=True).map(sorted),
    "train.lr_gamma": st.floats(0, 1, exclude_min=True),
    "train.ema": st.floats(0, 1, exclude_max=True),
    "train.log_every": _positive_int,
    "train.collective_timeout_s": _positive_float,
    "train.log_every_s": _non_negative_float,
    "train.val_every": _non_negative_int,
    "train.val_tile": st.just(0) | st.integers(33, 4096),
    "train.save_every": _non_negative_int,
    "train.keep_checkpoints": _positive_int,
    "train.max_skipped_steps": _non_negative_int,
    "train.log_with": st.lists(st.sampled_from([t.value for t in LoggerType if t is not LoggerType.ALL]), unique=True),
    "train.seed": st.integers(),
    "train.val_metrics": st.lists(st.sampled_from(["ssim", "lpips", "dists"]), unique=True).map(lambda m: ["psnr", *m]),
    "train.metric_weights": st.lists(st.sampled_from(["lpips=/w/alexnet.pth", "dists=vgg16.safetensors"]), unique=True),
    # The one degradation that admits data.realesrgan's keys, which other draws may set: the valid-value properties
    # load BASE with REALWORLD first (data.realesrgan with another degradation: tests/test_realworld.py).
    "data.degradation": st.just("realesrgan"),
    **{f"data.realesrgan.{k}": st.floats(0, 1) for k in (
        "sinc_prob", "sinc_prob2", "second_blur_prob", "final_sinc_prob", "gaussian_noise_prob",
        "gaussian_noise_prob2", "gray_noise_prob", "gray_noise_prob2")},
    **{f"data.realesrgan.kernel_prob{s}": _probabilities(6) for s in ("", "2")},
    **{f"data.realesrgan.resize_prob{s}": _probabilities(3) for s in ("", "2")},
    **{f"data.realesrgan.kernel_list{s}": st.permutations(KERNEL_KINDS).map(list) for s in ("", "2")},
    "data.realesrgan.resize_modes": st.lists(st.sampled_from(MODES), min_size=1, unique=True),
    "data.realesrgan.kernel_range": st.lists(st.integers(1, 10), min_size=2, max_size=2).map(
        lambda t: [2 * min(t) + 1, 2 * max(t) + 1]),
    **{f"data.realesrgan.{k}": _range(_positive_float) for k in ("blur_sigma", "blur_sigma2")},
    **{f"data.realesrgan.{k}": _range(_non_negative_float) for k in (
        "noise_range", "noise_range2", "poisson_scale_range", "poisson_scale_range2")},
    **{f"data.realesrgan.{k}": _spanning_one(st.floats(0, 1, exclude_min=True)) for k in (
        "betag_range", "betag_range2", "betap_range", "betap_range2", "resize_range", "resize_range2")},
    **{f"data.realesrgan.{k}": _range(st.integers(1, 100)) for k in ("jpeg_range", "jpeg_range2")},
}
REALWORLD = ["data.degradation=realesrgan"]  # first on every valid-value load: the keys above may set data.realesrgan

# What any successfully loaded recipe must satisfy (the rules `_check_values` states in its messages).
_RULES = {
    "model.channels": lambda v: all(c > 0 for c in (v if isinstance(v, list) else [v])),  # SRCNN's: a list
    **{k: (lambda v: v > 0) for k in ("model.res_blocks", "discriminator.channels",
                                      "data.hr_crop", "data.repeat",
                                      "data.crops_per_image", "train.batch_size", "train.log_every",
                                      "train.keep_checkpoints", "train.lr")},
    **{k: (lambda v: v is None or v >= 0) for k in ("train.epochs_pretrain", "train.epochs_finetune",
                                                    "train.steps_pretrain", "train.steps_finetune")},
    **{k: (lambda v: v >= 0) for k in ("train.val_every",
                                       "train.save_every", "train.max_skipped_steps", "data.workers",
                                       "data.val_images", "data.stall_timeout_s", "loss.w_vgg", "loss.w_adv",
                                       "loss.w_tv")},
    "train.lr_finetune": lambda v: v is None or v > 0,
    "train.val_tile": lambda v: v == 0 or v > 32,
    "data.device_budget_gb": lambda v: v is None or v > 0,
    "train.ema": lambda v: 0 <= v < 1,
    "train.betas": lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
    "train.lr_gamma": lambda v: 0 < v <= 1,
    "train.lr_milestones": lambda v: v == sorted(set(v)) and all(m > 0 for m in v),
    "loss.vgg_layer": lambda v: v in VGG19_LAYERS,
    "scale": lambda v: v in (2, 4, 8),
}


def _leaf_hint(key: str):
    cls = Recipe
    for part in key.split("."):
        cls = typing.get_type_hints(cls)[part]
    return cls


def _valid_values(key: str) -> st.SearchStrategy:
    """Key-specific rule if there is one, else any value of the field's type. Numbers usually have a
    range rule, so a new int or float key needs an entry in _VALID_BY_KEY (and _RULES)."""
    if key in _VALID_BY_KEY:
        return _VALID_BY_KEY[key]
    hint = _leaf_hint(key)
    if typing.get_origin(hint) is typing.Literal:
        return st.sampled_from(typing.get_args(hint))
    if hint is bool:
        return st.booleans()
    if hint is str:
        return _plain_text
    if hint == (str | None):
        return _optional_text
    raise AssertionError(f"no valid-value strategy for {key} ({hint}); add one to _VALID_BY_KEY")


@st.composite
def _valid_override(draw, keys=KEYS):
    """(key, value, text): a valid value and one way a user could type it after `key=`."""
    key = draw(st.sampled_from(keys))
    value = draw(_valid_values(key), label=key)
    texts = [yaml_text(value)]
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        texts.append(repr(value))  # `1e-05`, `None`: YAML reads these as strings, config converts
    return key, value, draw(st.sampled_from(texts))


def _nested(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *sections, leaf = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return out


# ---------------------------------------------------------------------------------------------
# Recipes: properties


@pytest.mark.parametrize("key", KEYS)
# One key per test item: report one bug per key, without the slow explain phase, so that a loader bug
# that every key shares costs seconds, not minutes.
@settings(max_examples=12, deadline=None, report_multiple_bugs=False,
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
@given(recipe=st.sampled_from(SHIPPED), value=_any_value, render=st.sampled_from([yaml_text, str]))
def test_any_override_loads_or_raises_one_line_recipe_error(key, recipe, value, render):
    # `str` renders what a shell user types (`True`, `None`, `nan`, `[1, 'a']`), yaml_text the YAML form.
    try:
        loaded = load_recipe(recipe, [f"{key}={render(value)}"])
    except RecipeError as err:
        one_line_naming(err, key)
        return
    # Whatever loads obeys the rules the loader enforces (NaN is neither positive nor >= 0).
    for rule_key, rule in _RULES.items():
        held = get_key(loaded, rule_key)
        assert held is _MISSING or rule(held), f"{key}={render(value)} loaded {rule_key}={held!r}"


_numbers = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e-300, -1e-300, 0.5, 1.0]),
    st.floats(),
)


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(sorted(_RULES)), value=_numbers, render=st.sampled_from([yaml_text, str]))
def test_accepted_numbers_obey_the_rules(key, value, render):
    # Focused on the keys with range rules, so that NaN, +-inf, -0.0 and 0 hit each of them often.
    try:
        loaded = load_recipe(BASE, [f"{key}={render(value)}"])
    except RecipeError as err:
        one_line_naming(err, key)
        return
    assert _RULES[key](get_key(loaded, key)), f"{key}={render(value)} was accepted as {get_key(loaded, key)!r}"


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["train.lr", "train.lr_finetune", "scale", "name", "data.val_source",
                            "model.res_blocks", "model.name", "loss.terms", "train.betas", "data.degradation",
                            "data.augment"]),
       text=_text)
def test_arbitrary_text_after_key_raises_only_recipe_error(key, text):
    try:
        load_recipe(BASE, [f"{key}={text}"])
    except RecipeError as err:
        one_line_naming(err, key)


@pytest.mark.parametrize("key", KEYS)
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_valid_override_is_held_and_round_trips(key, data):
    _, value, text = data.draw(_valid_override([key]), label="override")
    recipe = load_recipe(BASE, [*REALWORLD, f"{key}={text}"])
    assert get_key(recipe, key) == value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nested" / "resolved.yaml"
        save_recipe(recipe, path)
        assert load_recipe(path) == recipe


@settings(max_examples=100, deadline=None)
@given(key=st.sampled_from(KEYS), data=st.data())
def test_last_override_of_a_key_wins(key, data):
    values = data.draw(st.lists(_valid_values(key), min_size=2, max_size=4), label="values")
    recipe = load_recipe(BASE, [*REALWORLD, *(f"{key}={yaml_text(v)}" for v in values)])
    assert get_key(recipe, key) == values[-1]


@settings(max_examples=60, deadline=None)
@given(layers=st.lists(st.lists(_valid_override(), max_size=4), min_size=1, max_size=5),
       overrides=st.lists(_valid_override(), max_size=3))
@example(
    layers=[[("discriminator.channels", 1, "1")]],
    overrides=[("discriminator.name", "srgan", "srgan")],
)  # found by hypothesis: naming the default part (srgan) merges with a section that names none
def test_base_chain_most_derived_file_then_overrides_win(layers, overrides):
    # layers[0] names the shipped BASE (itself a child of srresnet_x4.yaml) as its base; each later
    # file names the one before. Every key ends with the value of the last place that set it.
    expected = {"data.degradation": "realesrgan"}  # REALWORLD, first of the overrides
    with tempfile.TemporaryDirectory() as tmp:
        for depth, layer in enumerate(layers):
            flat = {key: value for key, value, _ in layer}
            expected.update(flat)
            parent = str(BASE) if depth == 0 else f"layer{depth - 1}.yaml"
            text = yaml.safe_dump({"base": parent, **_nested(flat)}, sort_keys=False)
            (Path(tmp) / f"layer{depth}.yaml").write_text(text)
        expected.update({key: value for key, value, _ in overrides})
        recipe = load_recipe(Path(tmp) / f"layer{len(layers) - 1}.yaml",
                             [*REALWORLD, *(f"{k}={t}" for k, _, t in overrides)])
    untouched = load_recipe(BASE)
    for key in KEYS:
        assert get_key(recipe, key) == expected.get(key, get_key(untouched, key)), key


_identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(section=st.sampled_from(["", *SECTIONS]), name=_identifiers, value=st.integers() | _plain_text)
def test_unknown_key_is_named(section, name, value):
    key = f"{section}.{name}" if section else name
    assume(key not in KEYS and key not in SECTIONS)  # a real key or section: rare, and not unknown
    with pytest.raises(RecipeError) as err:
        load_recipe(BASE, [f"{key}={yaml_text(value)}"])
    message = one_line_naming(err.value, key)
    assert f"unknown key '{key}'" in message
