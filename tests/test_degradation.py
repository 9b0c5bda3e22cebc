"""The LR degradation: training crops must carry exactly the LR of the whole image at their place."""

import itertools

import numpy as np
import pytest
import torch

from fastsr.data import crop_pair, degrade, draw_crop, image_to_tensor, lr_crop, lr_for_eval, save_image
from fastsr.data.degradation import crop_to_scale
from fastsr.errors import ImageError
from fastsr.ops import quantize

RNG = np.random.default_rng(1)


def _image(h, w):
    """A smooth-plus-noise uint8 image: edges and texture everywhere, like a photograph."""
    y, x, c = np.mgrid[0:h, 0:w, 0:3]
    base = 127 + 100 * np.sin(x / 7.0 + c) * np.cos(y / 5.0 + c)
    return np.clip(base + RNG.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def test_degrade_shape_levels_and_errors():
    hr = torch.rand(2, 3, 32, 48)
    lr = degrade(hr, 4)
    assert lr.shape == (2, 3, 8, 12)
    torch.testing.assert_close(lr * 255, (lr * 255).round(), rtol=0, atol=1e-4)
    assert not torch.equal(degrade(hr, 4, quantize=False), lr)
    with pytest.raises(ValueError, match="multiple of scale"):
        degrade(torch.rand(1, 3, 30, 32), 4)
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(hr, 4, method="nearest")


def test_constant_image_stays_constant():
    lr = degrade(torch.full((1, 3, 24, 24), 0.4), 3, quantize=False)
    torch.testing.assert_close(lr, torch.full_like(lr, 0.4))


def test_kornia_is_not_matlab():
    hr = image_to_tensor(_image(64, 64))
    diff = (degrade(hr, 4, "kornia", quantize=False) - degrade(hr, 4, quantize=False)).abs()
    assert diff.mean() > 1e-3  # a visible difference, not rounding noise


def _border_and_random_anchors(h, w, crop, scale, n_random=6):
    ys, xs = [0, h - crop], [0, w - crop]
    corners = [(y, x) for y in ys for x in xs]
    edges = [(0, w // 2 // scale * scale), (h - crop, scale), (scale, 0), (h // 2 // scale * scale, w - crop)]
    random = [(int(RNG.integers(0, (h - crop) // scale + 1)) * scale,
               int(RNG.integers(0, (w - crop) // scale + 1)) * scale) for _ in range(n_random)]
    return corners + edges + random


@pytest.mark.parametrize("method", ["matlab", "kornia"])
@pytest.mark.parametrize("scale, h, w, crop", [(4, 101, 130, 32), (3, 75, 61, 24), (2, 50, 67, 16)])
def test_crop_lr_equals_whole_image_lr(method, scale, h, w, crop):
    full = crop_to_scale(image_to_tensor(_image(h, w)), scale)
    whole = degrade(full, scale, method, quantize=False)
    whole_q = degrade(full, scale, method)
    for top, left in _border_and_random_anchors(*full.shape[-2:], crop, scale):
        hr, lr = lr_crop(full, top, left, crop, crop, scale, method, quantize=False)
        torch.testing.assert_close(hr, full[..., top : top + crop, left : left + crop], rtol=0, atol=0)
        at = (..., slice(top // scale, (top + crop) // scale), slice(left // scale, (left + crop) // scale))
        torch.testing.assert_close(lr, whole[at], rtol=0, atol=1e-6)
        _, lr_q = lr_crop(full, top, left, crop, crop, scale, method)
        levels = ((lr_q - whole_q[at]) * 255).abs().round()
        assert levels.max() <= 1 and (levels > 0).float().mean() < 1e-3  # only rounding ties may differ


def test_bare_crop_lr_is_wrong_at_its_edges():
    """Why the margin exists: resizing the HR crop alone mirrors its own edge."""
    full = image_to_tensor(_image(96, 96))
    at = (..., slice(8, 16), slice(8, 16))
    naive = degrade(full[..., 32:64, 32:64], 4, quantize=False)
    assert (naive - degrade(full, 4, quantize=False)[at]).abs().max() > 1e-3


def _find(img_chw, crop):
    """Top-left of `crop` inside `img_chw` (the random images make it unique)."""
    c = crop.shape[-1]
    for top in range(img_chw.shape[-2] - c + 1):
        for left in range(img_chw.shape[-1] - c + 1):
            if torch.equal(img_chw[:, top : top + c, left : left + c], crop):
                return top, left
    raise AssertionError("crop not found in image")


def _pair(img, crop_size, seed, augment=True, channel_shuffle=False):
    rng = np.random.default_rng(seed)
    crop = draw_crop(rng, 0, img.shape[0], img.shape[1], 4, crop_size, augment, channel_shuffle)
    return crop_pair(img, crop, 4, crop_size)


def test_crop_pair_is_aligned_with_whole_image_lr():
    img = _image(70, 90)  # not multiples of 4: the pair must come from the top-left 68x88
    full = crop_to_scale(image_to_tensor(img), 4)[0]
    whole = degrade(full[None], 4)[0]
    seen = set()
    for seed in range(12):
        hr, lr = _pair(img, 20, seed, augment=False)
        assert hr.shape == (3, 20, 20) and lr.shape == (3, 5, 5) and hr.dtype == torch.float32
        top, left = _find(full, hr)
        assert top % 4 == 0 and left % 4 == 0
        seen.add((top, left))
        expected = whole[:, top // 4 : top // 4 + 5, left // 4 : left // 4 + 5]
        torch.testing.assert_close(lr, expected, rtol=0, atol=1e-6)
    assert len(seen) > 6


def test_crop_pair_reads_only_the_region_from_a_memory_map(tmp_path):
    img = _image(96, 120)
    np.save(tmp_path / "img.npy", img)
    mapped = np.load(tmp_path / "img.npy", mmap_mode="r")
    for seed in range(5):
        crop = draw_crop(np.random.default_rng(seed), 0, 96, 120, 4, 32, True, True)
        a, b = crop_pair(img, crop, 4, 32), crop_pair(mapped, crop, 4, 32)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _sym(t, hflip, vflip, transpose):
    t = t.flip(-1) if hflip else t
    t = t.flip(-2) if vflip else t
    return t.transpose(-1, -2) if transpose else t


def test_augment_applies_one_symmetry_to_both():
    img = _image(48, 48)
    used = set()
    for seed in range(80):
        plain_hr, plain_lr = _pair(img, 16, seed, augment=False)
        hr, lr = _pair(img, 16, seed, augment=True)
        matches = [flags for flags in itertools.product((0, 1), repeat=3)
                   if torch.equal(_sym(plain_hr, *flags), hr) and torch.equal(_sym(plain_lr, *flags), lr)]
        assert matches, "HR and LR were not transformed alike"
        used.add(matches[0])
        assert hr.is_contiguous() and lr.is_contiguous()
    assert len(used) == 8


def test_channel_shuffle_permutes_both_alike():
    img = _image(48, 48)
    orders = set()
    for seed in range(40):
        plain_hr, plain_lr = _pair(img, 16, seed)
        hr, lr = _pair(img, 16, seed, channel_shuffle=True)
        order = [next(c for c in range(3) if torch.equal(hr[k], plain_hr[c])) for k in range(3)]
        assert sorted(order) == [0, 1, 2] and torch.equal(lr, plain_lr[order])
        orders.add(tuple(order))
    assert len(orders) == 6


def test_lr_for_eval_degrades_or_loads(tmp_path):
    hr = image_to_tensor(_image(50, 43))
    cropped, lr = lr_for_eval(hr, 4)
    assert cropped.shape == (1, 3, 48, 40) and lr.shape == (1, 3, 12, 10)
    torch.testing.assert_close(lr, degrade(cropped, 4))
    stored = torch.rand(1, 3, 12, 10)
    save_image(tmp_path / "lr.png", stored)
    _, loaded = lr_for_eval(hr, 4, tmp_path / "lr.png")
    torch.testing.assert_close(loaded, quantize(stored))  # stored on 8-bit levels, halves up


def test_lr_for_eval_size_mismatch_is_one_line(tmp_path):
    save_image(tmp_path / "lr.png", torch.rand(3, 13, 10))
    with pytest.raises(ImageError) as e:
        lr_for_eval(image_to_tensor(_image(50, 43)), 4, tmp_path / "lr.png")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "lr.png") in msg and "13x10" in msg and "12x10" in msg
