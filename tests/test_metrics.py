"""fastsr.metrics against the SR protocol written out by hand in NumPy.

The references below re-implement the protocol independently (uint8 conversion, shave, MATLAB
rgb2ycbcr Y, PSNR formula, SSIM with a 'valid' 11x11 Gaussian window) without torch or torchmetrics.
"""

import numpy as np
import pytest
import torch
from skimage import data as skdata

from fastsr.metrics import psnr, ssim
from fastsr.ops import imresize, quantize, rgb_to_y


# ---------------------------------------------------------------- NumPy reference of the protocol
def _np_protocol_image(x: torch.Tensor, crop: int, y_channel: bool) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] -> (N, C, h, w) float64 on the 0..255 scale, as BasicSR does."""
    img = np.clip(x.double().numpy(), 0.0, 1.0)
    img = np.floor(img * 255.0 + 0.5).astype(np.uint8).astype(np.float64)  # saved as an 8-bit image
    if crop:
        img = img[..., crop:-crop, crop:-crop]
    if y_channel:
        img = (65.481 * img[:, 0] + 128.553 * img[:, 1] + 24.966 * img[:, 2]) / 255.0 + 16.0
        img = img[:, None]
    return img


def _np_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10.0 * np.log10(255.0**2 / np.mean((a - b) ** 2))


def _np_ssim_2d(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. SSIM of two 2-D images in [0, 255]: 11x11 Gaussian (sigma 1.5), 'valid' windows."""
    offsets = np.arange(-5, 6, dtype=np.float64)
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    window /= window.sum()

    def filt(img):
        patches = np.lib.stride_tricks.sliding_window_view(img, (11, 11))
        return np.einsum("ijkl,kl->ij", patches, window)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def _np_ssim(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Per image: mean over channels of the 2-D SSIM."""
    channels = range(a.shape[1])
    return [float(np.mean([_np_ssim_2d(a[n, c], b[n, c]) for c in channels])) for n in range(a.shape[0])]


# ---------------------------------------------------------------- fixtures
def _noisy_pair(seed: int, shape=(2, 3, 32, 40), noise=0.05):
    """HR on exact uint8 levels and a float 'model output' that also leaves [0, 1] in places."""
    g = torch.Generator().manual_seed(seed)
    hr = torch.randint(0, 256, shape, generator=g).double() / 255.0
    sr = hr + noise * torch.randn(shape, generator=g, dtype=torch.float64)
    return sr, hr


def _astronaut_pair(size=160):
    """A natural photo and its x2 bicubic down-up reconstruction (a realistic 'SR' output)."""
    hr = torch.from_numpy(skdata.astronaut()[:size, 100 : 100 + size]).permute(2, 0, 1)[None].double() / 255.0
    sr = imresize(imresize(hr, scale=1 / 2), scale=2)
    return sr, hr


# ---------------------------------------------------------------- rgb_to_y
@pytest.mark.parametrize(
    "rgb, expected_255",
    [
        ((1.0, 1.0, 1.0), 235.0),
        ((0.0, 0.0, 0.0), 16.0),
        ((1.0, 0.0, 0.0), 16.0 + 65.481),
        ((0.0, 1.0, 0.0), 16.0 + 128.553),
        ((0.0, 0.0, 1.0), 16.0 + 24.966),
        ((0.5, 0.25, 0.75), 16.0 + 65.481 * 0.5 + 128.553 * 0.25 + 24.966 * 0.75),
    ],
)
def test_rgb_to_y_is_matlab_studio_range(rgb, expected_255):
    x = torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1).expand(2, 3, 2, 3)
    y = rgb_to_y(x)
    assert y.shape == (2, 1, 2, 3)
    torch.testing.assert_close(y, torch.full_like(y, expected_255 / 255.0), rtol=0, atol=1e-12)


def test_rgb_to_y_rejects_non_rgb():
    with pytest.raises(ValueError, match="N, 3, H, W"):
        rgb_to_y(torch.rand(1, 1, 4, 4))


# ---------------------------------------------------------------- quantize
def test_quantize_rounds_to_uint8_levels_and_clamps():
    x = torch.tensor([-0.2, 0.0, 0.4 / 255, 0.6 / 255, 100.4 / 255, 1.0, 1.7], dtype=torch.float64)
    expected = torch.tensor([0, 0, 0, 1, 100, 255, 255], dtype=torch.float64) / 255
    torch.testing.assert_close(quantize(x), expected, rtol=0, atol=0)
    # Halves round up, like MATLAB's im2uint8 (torch.round would give 2 and 4 here).
    halves = torch.tensor([2.5, 3.5, 4.5], dtype=torch.float64) / 255
    torch.testing.assert_close(quantize(halves) * 255, torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64))


# ---------------------------------------------------------------- PSNR
@pytest.mark.parametrize("crop", [0, 4])
@pytest.mark.parametrize("y_channel", [True, False])
def test_psnr_matches_numpy_protocol(crop, y_channel):
    sr, hr = _noisy_pair(seed=1)
    a, b = _np_protocol_image(sr, crop, y_channel), _np_protocol_image(hr, crop, y_channel)
    expected = torch.tensor([_np_psnr(a[n], b[n]) for n in range(len(a))], dtype=torch.float64)
    got = psnr(sr, hr, crop_border=crop, y_channel=y_channel)
    assert got.shape == (2,) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_psnr_ignores_errors_in_the_shaved_border():
    hr = torch.randint(0, 256, (1, 3, 20, 24), generator=torch.Generator().manual_seed(2)).double() / 255
    sr = hr.clone()
    crop = 3
    sr[..., :crop, :] = 1 - sr[..., :crop, :]
    sr[..., :, -crop:] = 0.0
    assert psnr(sr, hr, crop_border=crop, y_channel=False).isinf().all()
    assert psnr(sr, hr, crop_border=crop).isinf().all()
    assert psnr(sr, hr, crop_border=crop - 1).isfinite().all()
    # One interior pixel of one channel off by k levels: MSE = k^2 / (3 * h * w) over the shaved image.
    k = 10
    sr[0, 1, 8, 9] = hr[0, 1, 8, 9] + k / 255 if hr[0, 1, 8, 9] < 0.5 else hr[0, 1, 8, 9] - k / 255
    h, w = 20 - 2 * crop, 24 - 2 * crop
    expected = 10 * np.log10(255.0**2 * 3 * h * w / k**2)
    got = psnr(sr, hr, crop_border=crop, y_channel=False).item()
    assert got == pytest.approx(expected, abs=1e-10)


def test_psnr_quantizes_both_inputs():
    hr = torch.randint(0, 256, (1, 3, 16, 16), generator=torch.Generator().manual_seed(3)).double() / 255
    # Less than half a level away (or beyond [0, 1], where it clamps): identical once saved as uint8.
    assert psnr(hr + 0.4 / 255, hr, crop_border=0).isinf().all()
    assert psnr(torch.full_like(hr, 1.3), torch.ones_like(hr), crop_border=0).isinf().all()
    # Rounding hr too: an hr off its levels by 0.4 still matches its rounded sr.
    assert psnr(hr, hr - 0.4 / 255, crop_border=0).isinf().all()
    assert psnr(hr + 0.6 / 255, hr, crop_border=0).isfinite().all()


def test_psnr_rgb_differs_from_y():
    sr, hr = _astronaut_pair()
    y, rgb = psnr(sr, hr, crop_border=2), psnr(sr, hr, crop_border=2, y_channel=False)
    assert (y - rgb).abs().min() > 0.1


def test_psnr_float32_inputs_give_float64_results_matching_float64_inputs():
    sr, hr = _noisy_pair(seed=4)
    torch.testing.assert_close(psnr(sr.float(), hr.float(), 2), psnr(sr, hr, 2), rtol=0, atol=1e-10)


# ---------------------------------------------------------------- SSIM
@pytest.mark.parametrize("pair", ["random", "astronaut"])
@pytest.mark.parametrize("y_channel", [True, False])
def test_ssim_matches_numpy_valid_window(pair, y_channel):
    sr, hr = _noisy_pair(seed=5) if pair == "random" else _astronaut_pair()
    crop = 4
    expected = _np_ssim(_np_protocol_image(sr, crop, y_channel), _np_protocol_image(hr, crop, y_channel))
    got = ssim(sr, hr, crop_border=crop, y_channel=y_channel)
    assert got.shape == (sr.shape[0],) and got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10)


def test_ssim_of_identical_images_is_one():
    _, hr = _astronaut_pair(size=64)
    torch.testing.assert_close(ssim(hr, hr, crop_border=4), torch.ones(1, dtype=torch.float64))


def test_ssim_rgb_differs_from_y():
    sr, hr = _astronaut_pair()
    assert (ssim(sr, hr, 2) - ssim(sr, hr, 2, y_channel=False)).abs().min() > 1e-4


def test_ssim_needs_a_valid_window():
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), crop_border=3)


# ---------------------------------------------------------------- both metrics
@pytest.mark.parametrize("metric", [psnr, ssim])
def test_metrics_are_per_image(metric):
    sr_a, hr_a = _noisy_pair(seed=6, shape=(1, 3, 32, 32), noise=0.02)
    sr_b, hr_b = _noisy_pair(seed=7, shape=(1, 3, 32, 32), noise=0.2)
    batch = metric(torch.cat([sr_a, sr_b]), torch.cat([hr_a, hr_b]), crop_border=2)
    alone = torch.cat([metric(sr_a, hr_a, crop_border=2), metric(sr_b, hr_b, crop_border=2)])
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-12)
    assert batch[0] > batch[1]


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_shape_mismatch_names_both_shapes(metric):
    with pytest.raises(ValueError, match=r"\(1, 3, 32, 32\).*\(1, 3, 32, 30\)"):
        metric(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 30), crop_border=2)


@pytest.mark.parametrize("crop", [-1, 16, 1.5])
def test_bad_crop_border_raises(crop):
    with pytest.raises(ValueError, match="crop_border"):
        psnr(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), crop_border=crop)


# ---------------------------------------------------------------- the MATLAB Y convention (--y matlab)
def _np_matlab_y(x: torch.Tensor, crop: int) -> np.ndarray:
    """MATLAB's rgb2ycbcr on a uint8 image, Y row: computed on the 0..255 levels, then stored as uint8 (rounded,
    halves away from zero), as the published MATLAB scripts score it."""
    img = np.floor(np.clip(x.double().numpy(), 0.0, 1.0) * 255.0 + 0.5)
    if crop:
        img = img[..., crop:-crop, crop:-crop]
    y = 16.0 + (65.481 * img[:, 0] + 128.553 * img[:, 1] + 24.966 * img[:, 2]) / 255.0
    return np.floor(y + 0.5)[:, None]


@pytest.mark.parametrize("crop", [0, 3])
def test_matlab_y_rounds_luma_to_levels(crop):
    sr, hr = _noisy_pair(seed=7)
    a, b = _np_matlab_y(sr, crop), _np_matlab_y(hr, crop)
    expected = torch.tensor([_np_psnr(a[n], b[n]) for n in range(len(a))], dtype=torch.float64)
    got = psnr(sr, hr, crop_border=crop, y="matlab")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    expected_ssim = torch.tensor(_np_ssim(a, b), dtype=torch.float64)
    torch.testing.assert_close(ssim(sr, hr, crop_border=crop, y="matlab"), expected_ssim, rtol=0, atol=1e-9)
    # the rounding moves the score (by hundredths on real images), which is why the convention is an option
    assert (got - psnr(sr, hr, crop_border=crop)).abs().min() > 1e-4


def test_matlab_y_scores_a_gray_file_on_its_own_levels():
    """A 1-channel HR (stacked to RGB when read) against a colour-tinted SR: MATLAB's scripts score the gray levels
    themselves, not their studio-range Y, and the SR as the gray file it would be saved as (0.299 R + 0.587 G +
    0.114 B, rounded)."""
    g = torch.Generator().manual_seed(8)
    levels = torch.randint(0, 256, (1, 1, 24, 20), generator=g).double()
    hr = levels.repeat(1, 3, 1, 1) / 255
    sr = (hr + torch.randn(1, 3, 24, 20, generator=g, dtype=torch.float64) * 0.03).clamp(0, 1)
    rgb = np.floor(sr.numpy() * 255 + 0.5)
    sr_gray = np.floor(0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2] + 0.5)
    expected = _np_psnr(sr_gray[0, 2:-2, 2:-2], levels.numpy()[0, 0, 2:-2, 2:-2])
    assert psnr(sr, hr, crop_border=2, y="matlab", gray=True).item() == pytest.approx(expected, abs=1e-10)
    # on the studio-range Y, a difference of one level counts 219/255 of one: about 1.3 dB more
    studio = psnr(sr, hr, crop_border=2, y="matlab").item()
    assert studio - expected == pytest.approx(20 * np.log10(255 / 219), abs=0.3)
    # the default convention stacks the gray file to RGB: `gray` changes nothing there
    assert psnr(sr, hr, 2, gray=True).item() == psnr(sr, hr, 2).item()


def test_an_unknown_y_convention_is_refused():
    sr, hr = _noisy_pair(seed=9)
    with pytest.raises(ValueError, match="y must be one of basicsr, matlab"):
        psnr(sr, hr, 2, y="octave")
