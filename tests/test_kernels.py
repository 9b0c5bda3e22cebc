"""fastsr.ops.kernels must make Real-ESRGAN's blur kernels (BasicSR 1.4.2's formulas and layout), one per sample.

Every expectation is computed here by hand, in numpy float64, from the formulas (the covariance built from the
sigmas and the angle, the Bessel function from scipy), or is a property (sums, support, moments, symmetry,
batch = samples alone); BasicSR itself is not needed. The layout is BasicSR's: on a size x size grid centred at
0, array element [i, j] is at x = j - (size-1)/2 (the column) and y = i - (size-1)/2 (the row).

Tolerances: the kernels are computed in float32 and their values are at most 1, so float32 rounding leaves
errors of a few 1e-7; 1e-6 is used for the Gaussian family. The sinc kernel gets 3e-6: torch's Bessel J1 is
itself off by up to 5e-7 near 5 (in float32 and float64 alike), and the kernel has negative lobes (the sum
of its absolute values reaches about 4.6 with a cutoff near pi), so normalising it in float32 magnifies the
rounding; the worst seen over 5000 random Real-ESRGAN draws was 1.1e-6.
"""

import math

import numpy as np
import pytest
import scipy.special
import torch

from fastsr.ops.kernels import FAMILIES, blur_kernels, pulse_kernels, sinc_kernels

GAUSSIAN, GENERALIZED, PLATEAU = (FAMILIES.index(name) for name in ("gaussian", "generalized", "plateau"))
ATOL = 1e-6  # Gaussian-family values (see the module docstring)
SINC_ATOL = 3e-6


def blur(family, size, sigma_x, sigma_y, theta, beta=1.0, pad_to=21, device="cpu"):
    """`blur_kernels` for one sample or a batch given as Python numbers or lists."""
    def vec(v, dtype):
        return torch.tensor(np.atleast_1d(v), dtype=dtype, device=device)
    return blur_kernels(vec(family, torch.int64), vec(size, torch.int64), vec(sigma_x, torch.float32),
                        vec(sigma_y, torch.float32), vec(theta, torch.float32), vec(beta, torch.float32), pad_to)


def sinc(cutoff, size, pad_to=21, device="cpu"):
    return sinc_kernels(torch.tensor(np.atleast_1d(cutoff), dtype=torch.float32, device=device),
                        torch.tensor(np.atleast_1d(size), dtype=torch.int64, device=device), pad_to)


def grid(size):
    """x (column) and y (row) of each element of a size x size kernel, float64."""
    axis = np.arange(size) - (size - 1) / 2
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x, y


def covariance(sigma_x, sigma_y, theta):
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T


def quadratic_form(size, sigma_x, sigma_y, theta):
    """q = [x, y] Sigma^-1 [x, y]^T at every element, float64."""
    x, y = grid(size)
    inv = np.linalg.inv(covariance(sigma_x, sigma_y, theta))
    return inv[0, 0] * x * x + (inv[0, 1] + inv[1, 0]) * x * y + inv[1, 1] * y * y


def pad(kernel, pad_to):
    p = (pad_to - kernel.shape[0]) // 2
    return np.pad(kernel, p)


def by_hand(family, size, sigma_x, sigma_y, theta, beta=1.0, pad_to=21):
    q = quadratic_form(size, sigma_x, sigma_y, theta)
    if family == GAUSSIAN:
        k = np.exp(-q / 2)
    elif family == GENERALIZED:
        k = np.exp(-0.5 * q**beta)
    else:
        k = 1 / (q**beta + 1)
    return pad(k / k.sum(), pad_to)


def sinc_by_hand(cutoff, size, pad_to=21):
    x, y = grid(size)
    r = np.hypot(x, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        k = cutoff * scipy.special.j1(cutoff * r) / (2 * np.pi * r)
    k[r == 0] = cutoff**2 / (4 * np.pi)
    return pad(k / k.sum(), pad_to)


def as_numpy(t):
    return t.double().cpu().numpy()


# A mixed batch: each family, sizes from the smallest to the largest, isotropic and rotated, several betas.
CASES = [
    (GAUSSIAN, 3, 0.7, 0.7, 0.0, 1.0),
    (GAUSSIAN, 21, 3.0, 1.2, 0.4, 1.0),
    (GAUSSIAN, 7, 0.2, 2.5, -2.0, 1.0),
    (GENERALIZED, 9, 1.5, 1.5, 0.0, 0.5),
    (GENERALIZED, 15, 2.6, 0.9, 1.1, 2.0),
    (GENERALIZED, 21, 1.0, 3.0, -0.7, 4.0),
    (PLATEAU, 5, 1.1, 1.1, 0.0, 1.0),
    (PLATEAU, 13, 2.0, 0.6, 2.9, 1.5),
    (PLATEAU, 19, 0.8, 2.2, -1.3, 2.0),
]
SINC_CASES = [(c, s) for s in (3, 7, 13, 21) for c in (math.pi / 5, math.pi / 3, math.pi / 2, 2.5, math.pi)]


def test_the_families_in_order():
    assert FAMILIES == ("gaussian", "generalized", "plateau")


@pytest.mark.parametrize("pad_to", [21, 25])
def test_every_kernel_sums_to_1_and_is_zero_outside_its_size(pad_to):
    columns = list(zip(*CASES))
    kernels = blur(*columns, pad_to=pad_to)
    sincs = sinc(*zip(*SINC_CASES), pad_to=pad_to)
    blurs = [(k, size, True) for k, size in zip(kernels, columns[1])]
    for kernel, size, positive in [*blurs, *((k, s, False) for k, (_, s) in zip(sincs, SINC_CASES))]:
        assert kernel.shape == (pad_to, pad_to) and kernel.dtype == torch.float32
        assert abs(kernel.double().sum().item() - 1) < 1e-6
        lo = (pad_to - size) // 2
        inside = torch.zeros(pad_to, pad_to, dtype=torch.bool)
        inside[lo:lo + size, lo:lo + size] = True
        assert torch.all(kernel[~inside] == 0)
        if positive:  # the blur families are distributions (a narrow one underflows to 0 inside, too)
            assert torch.all(kernel >= 0)


def test_a_small_gaussian_written_out():
    # size 3, sigma 1: the centre is exp(0), the 4 edges exp(-1/2), the 4 corners exp(-1)
    z = 1 + 4 * math.exp(-0.5) + 4 * math.exp(-1)
    expected = np.array([[math.exp(-1), math.exp(-0.5), math.exp(-1)],
                         [math.exp(-0.5), 1, math.exp(-0.5)],
                         [math.exp(-1), math.exp(-0.5), math.exp(-1)]]) / z
    kernel = as_numpy(blur(GAUSSIAN, 3, 1.0, 1.0, 0.0, pad_to=3)[0])
    np.testing.assert_allclose(kernel, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", CASES, ids=[f"{FAMILIES[c[0]]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_values_equal_the_formula(case):
    kernel = as_numpy(blur(*case)[0])
    expected = by_hand(*case)
    np.testing.assert_allclose(kernel, expected, rtol=0, atol=ATOL)
    # and a few points spelled out: the centre, a point off both axes, a corner of the support
    family, size, sigma_x, sigma_y, theta, beta = case
    q = quadratic_form(size, sigma_x, sigma_y, theta)
    shape = {GAUSSIAN: lambda q: np.exp(-q / 2), GENERALIZED: lambda q: np.exp(-0.5 * q**beta),
             PLATEAU: lambda q: 1 / (q**beta + 1)}[family]
    z = shape(q).sum()
    c, h = 10, (size - 1) // 2
    for di, dj in [(0, 0), (1, -1), (-h, h), (h, h // 2)]:
        inv = np.linalg.inv(covariance(sigma_x, sigma_y, theta))
        point = np.array([dj, di], dtype=np.float64)  # x is the column offset, y the row offset
        assert kernel[c + di, c + dj] == pytest.approx(shape(point @ inv @ point) / z, abs=ATOL)


def test_sigma_x_is_the_horizontal_spread():
    kernel = blur(GAUSSIAN, 21, 3.0, 1.0, 0.0)[0]
    assert kernel[10, 13] > 10 * kernel[13, 10]  # 3 columns off the centre vs 3 rows off
    # at 45 degrees the long axis runs from the top-left to the bottom-right: y grows downwards, so the
    # direction (x, y) = (1, 1) is down and to the right
    kernel = blur(GAUSSIAN, 21, 3.0, 1.0, math.pi / 4)[0]
    assert kernel[13, 13] > 10 * kernel[7, 13]


def test_second_moments_equal_the_covariance():
    """sum k * [x, y] [x, y]^T is Sigma for a Gaussian on a grid large enough to hold it.

    With the smallest sigma 1.5, the sampled Gaussian's moments differ from the continuous one's by terms of
    order exp(-2 pi^2 * 1.5^2) ~ 1e-19 (Poisson summation), and at 20 pixels from the centre the tail beyond is
    below 1e-9; so what is left is float32 rounding, measured at 1.1e-7 pixels^2 (on variances up to 9), and
    1e-5 pixels^2 is asked: far below any real error (a transposed or mis-rotated Sigma is off by ~1)."""
    sigma_x, sigma_y, theta = 3.0, 1.5, 0.6
    kernel = as_numpy(blur(GAUSSIAN, 41, sigma_x, sigma_y, theta, pad_to=41)[0])
    x, y = grid(41)
    moments = np.array([[(kernel * x * x).sum(), (kernel * x * y).sum()],
                        [(kernel * y * x).sum(), (kernel * y * y).sum()]])
    np.testing.assert_allclose(moments, covariance(sigma_x, sigma_y, theta), rtol=0, atol=1e-5)
    # the first moments are 0: the kernel is centred
    assert abs((kernel * x).sum()) < 1e-6 and abs((kernel * y).sum()) < 1e-6


@pytest.mark.parametrize("family", [GAUSSIAN, GENERALIZED, PLATEAU])
def test_a_quarter_turn_swaps_the_axes(family):
    sigma_x, sigma_y, beta = 2.7, 0.8, 1.5
    for theta in (0.0, 0.9, -2.2):
        turned = blur(family, 17, sigma_x, sigma_y, theta + math.pi / 2, beta)[0]
        swapped = blur(family, 17, sigma_y, sigma_x, theta, beta)[0]
        torch.testing.assert_close(turned, swapped, rtol=0, atol=ATOL)
    # from theta 0, a quarter turn transposes the array (x and y exchanged)
    torch.testing.assert_close(blur(family, 17, sigma_x, sigma_y, math.pi / 2, beta)[0],
                               blur(family, 17, sigma_x, sigma_y, 0.0, beta)[0].T, rtol=0, atol=ATOL)


def test_generalized_with_beta_1_is_the_gaussian():
    for size, sigma_x, sigma_y, theta in [(7, 1.0, 1.0, 0.0), (21, 2.9, 0.4, 1.2), (13, 0.3, 1.7, -0.5)]:
        torch.testing.assert_close(blur(GENERALIZED, size, sigma_x, sigma_y, theta, 1.0),
                                   blur(GAUSSIAN, size, sigma_x, sigma_y, theta, 1.0), rtol=0, atol=1e-7)


def test_the_gaussian_does_not_read_beta():
    for beta in (0.5, 3.0, float("nan")):
        assert torch.equal(blur(GAUSSIAN, 9, 1.3, 0.7, 0.4, beta), blur(GAUSSIAN, 9, 1.3, 0.7, 0.4, 1.0))


@pytest.mark.parametrize("cutoff,size", SINC_CASES, ids=[f"{c:.3f}-{s}" for c, s in SINC_CASES])
def test_sinc_equals_the_closed_form(cutoff, size):
    kernel = as_numpy(sinc(cutoff, size)[0])
    np.testing.assert_allclose(kernel, sinc_by_hand(cutoff, size), rtol=0, atol=SINC_ATOL)


def test_sinc_centre_and_first_ring_written_out():
    # size 3, cutoff pi: the centre is pi^2 / (4 pi) = pi / 4, the edges pi J1(pi) / (2 pi) = J1(pi) / 2, the
    # corners J1(pi sqrt 2) / (2 sqrt 2)
    centre, edge, corner = math.pi / 4, scipy.special.j1(math.pi) / 2, scipy.special.j1(math.pi * math.sqrt(2)) / (
        2 * math.sqrt(2))
    z = centre + 4 * edge + 4 * corner
    kernel = as_numpy(sinc(math.pi, 3, pad_to=3)[0])
    assert kernel[1, 1] == pytest.approx(centre / z, abs=SINC_ATOL)
    assert kernel[0, 1] == pytest.approx(edge / z, abs=SINC_ATOL)
    assert kernel[2, 2] == pytest.approx(corner / z, abs=SINC_ATOL)


def test_a_mixed_batch_equals_each_sample_alone():
    columns = list(zip(*CASES))
    batch = blur(*columns)
    assert batch.shape == (len(CASES), 21, 21)
    for kernel, case in zip(batch, CASES):
        # not bitwise: vectorised exp/pow may round an element differently by where it falls in the buffer
        torch.testing.assert_close(kernel, blur(*case)[0], rtol=0, atol=1e-7)
    sincs = sinc(*zip(*SINC_CASES))
    for kernel, case in zip(sincs, SINC_CASES):
        torch.testing.assert_close(kernel, sinc(*case)[0], rtol=0, atol=1e-7)


def test_pulse_kernels_are_the_identity():
    pulse = pulse_kernels(4)
    assert pulse.shape == (4, 21, 21) and pulse.dtype == torch.float32 and pulse.device.type == "cpu"
    expected = torch.zeros(21, 21)
    expected[10, 10] = 1
    assert all(torch.equal(k, expected) for k in pulse)
    image = torch.rand(1, 1, 30, 30)
    out = torch.nn.functional.conv2d(torch.nn.functional.pad(image, (10,) * 4), pulse_kernels(1, 21)[:, None])
    assert torch.equal(out, image)
    assert pulse_kernels(2, 7).shape == (2, 7, 7)


def test_the_inputs_device_and_float32_out():
    # float64 parameters are taken and computed in float32, as float32 ones are
    args = [torch.tensor([1, 2]), torch.tensor([5, 9]), *(torch.tensor([1.2, 0.8], dtype=torch.float64),) * 2,
            torch.tensor([0.3, 0.0], dtype=torch.float64), torch.tensor([1.5, 2.0], dtype=torch.float64)]
    out = blur_kernels(*args)
    assert out.device.type == "cpu" and out.dtype == torch.float32
    torch.testing.assert_close(out, blur_kernels(*args[:2], *(a.float() for a in args[2:])), rtol=0, atol=1e-7)
    assert sinc_kernels(torch.tensor([2.0]), torch.tensor([7])).dtype == torch.float32
    assert len(blur_kernels(*(a[:0] for a in args))) == 0  # an empty batch is fine


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_same_kernels_stay_on_the_device():
    columns = list(zip(*CASES))
    on_gpu = blur(*columns, device="cuda")
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu.cpu(), blur(*columns), rtol=0, atol=ATOL)
    sincs = sinc(*zip(*SINC_CASES), device="cuda")
    assert sincs.device.type == "cuda"
    torch.testing.assert_close(sincs.cpu(), sinc(*zip(*SINC_CASES)), rtol=0, atol=SINC_ATOL)
    assert pulse_kernels(2, device="cuda").device.type == "cuda"


def test_bad_inputs_are_refused():
    one = torch.tensor([1.0])
    size = torch.tensor([7])
    with pytest.raises(ValueError, match="pad_to"):
        sinc_kernels(one, size, pad_to=20)
    with pytest.raises(ValueError, match="pad_to"):
        pulse_kernels(1, pad_to=4)
    with pytest.raises(ValueError, match="1-D"):
        sinc_kernels(one[None], size[None])
    with pytest.raises(ValueError, match="integer"):
        blur_kernels(one, size, one, one, one, one)  # family as a float
    with pytest.raises(ValueError, match="floating"):
        sinc_kernels(size, size)
    with pytest.raises(ValueError, match="one length"):
        blur_kernels(size, size, one, one, one, torch.ones(2))
