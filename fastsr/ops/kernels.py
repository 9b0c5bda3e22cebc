"""Real-ESRGAN's blur kernels, made for a whole batch at once on the batch's device.

Why this exists: Real-ESRGAN's degradation blurs every training image with its own random kernel (a
Gaussian, a generalized Gaussian or a plateau, isotropic or rotated, of odd size 7..21; a circular sinc
low-pass; or the identity "pulse"). BasicSR makes each one in numpy, one sample at a time in a dataloader
worker, and ships it to the GPU beside the image. Here the kernels are formulas evaluated for N samples at once
from 1-D tensors of parameters, on the device the parameters live on, so a device-resident batch source can
draw the parameters and build the kernels without a Python loop over samples or a copy from the host.

The formulas are BasicSR 1.4.2's (``basicsr/data/degradations.py``), and so is the layout, so a kernel here is
the same array as BasicSR's for the same parameters:

* each kernel lives on its own ``size x size`` grid centred at 0 (``mesh_grid``: coordinates
  ``-(size-1)/2 .. (size-1)/2``), with **x the column (horizontal) coordinate and y the row**;
* it is normalised to sum 1 over that grid, then zero-padded equally on each side to ``pad_to x pad_to``,
  as BasicSR's dataset does with ``np.pad``;
* the covariance is ``Sigma = R diag(sigma_x^2, sigma_y^2) R^T`` with ``R`` the rotation by ``theta``
  (``sigma_matrix2``), and ``q = [x, y] Sigma^-1 [x, y]^T``.

Whether a kernel is isotropic is the caller's choice (it passes ``sigma_y = sigma_x`` and ``theta = 0``): the
functions here are pure formulas and draw nothing at random. Everything is computed in float32: over
thousands of random Real-ESRGAN draws the kernels differ from BasicSR's float64 ones for the same (float32)
parameters by at most 3e-7 (blur) and 1.1e-6 (sinc, whose negative lobes magnify the rounding when it is
normalised), far below what an 8-bit image can show, so float64 would buy nothing (tests/test_kernels.py
checks the formulas against float64 hand computations).
"""

from __future__ import annotations

import math

import torch

__all__ = ["FAMILIES", "blur_kernels", "pulse_kernels", "sinc_kernels"]

# The blur families, by the index that `blur_kernels`'s `family` holds.
FAMILIES = ("gaussian", "generalized", "plateau")
_GAUSSIAN, _GENERALIZED, _PLATEAU = range(len(FAMILIES))


def blur_kernels(
    family: torch.Tensor,
    size: torch.Tensor,
    sigma_x: torch.Tensor,
    sigma_y: torch.Tensor,
    theta: torch.Tensor,
    beta: torch.Tensor,
    pad_to: int = 21,
) -> torch.Tensor:
    """One blur kernel per sample, shaped (N, pad_to, pad_to), float32, on the inputs' device.

    Sample i is the kernel of family ``FAMILIES[family[i]]`` on a ``size[i] x size[i]`` grid, with
    ``q = [x, y] Sigma^-1 [x, y]^T`` for ``Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T``:

    * gaussian (0): ``exp(-q / 2)`` (BasicSR's ``bivariate_Gaussian``; ``beta`` is not read);
    * generalized (1): ``exp(-q^beta / 2)`` (``bivariate_generalized_Gaussian``; beta = 1 is the Gaussian);
    * plateau (2): ``1 / (q^beta + 1)`` (``bivariate_plateau``);

    normalised to sum 1 over its grid and zero-padded, centred, to ``pad_to x pad_to``. x is the column
    coordinate and y the row, as in BasicSR, so ``sigma_x`` is the horizontal spread at ``theta = 0``.

    All six inputs are 1-D of length N on one device: `family` and `size` integer, the rest floating (computed
    in float32). `size` must be odd with ``1 < size <= pad_to`` and `pad_to` odd; the values are not checked,
    because reading them back would make a GPU caller wait for the device at every batch.
    """
    device = _check_batch("blur_kernels", {"family": family, "size": size}, {
        "sigma_x": sigma_x, "sigma_y": sigma_y, "theta": theta, "beta": beta})
    x, y, inside = _grid("blur_kernels", size, pad_to, device)
    sigma_x, sigma_y, theta, beta = (t.to(torch.float32)[:, None, None] for t in (sigma_x, sigma_y, theta, beta))
    # q = p^T R D^-1 R^T p = |D^-1/2 R^T p|^2: rotate the point into the kernel's own axes and scale each axis.
    # This needs no 2x2 inverse per sample, whose float32 rounding grows with Sigma's condition number
    # ((3 / 0.2)^2 = 225 over Real-ESRGAN's sigma range).
    cos, sin = torch.cos(theta), torch.sin(theta)
    u = (cos * x + sin * y) / sigma_x
    v = (cos * y - sin * x) / sigma_y
    q = u * u + v * v
    family = family[:, None, None]
    # The Gaussian rows use q itself, not q ** 1, so that `beta` may hold anything there (even NaN).
    q_beta = torch.where(family == _GAUSSIAN, q, q.pow(beta))
    kernel = torch.where(family == _PLATEAU, 1.0 / (q_beta + 1.0), torch.exp(-0.5 * q_beta))
    return _normalise(kernel, inside)


def sinc_kernels(cutoff: torch.Tensor, size: torch.Tensor, pad_to: int = 21) -> torch.Tensor:
    """One circular low-pass (2-D sinc) kernel per sample, shaped (N, pad_to, pad_to), float32, on the inputs'
    device: BasicSR's ``circular_lowpass_kernel``.

    At radius r from the centre the kernel is ``cutoff * J1(cutoff * r) / (2 pi r)``, the inverse Fourier
    transform of a disc of radius `cutoff` (radians per pixel, pi the highest), and at the centre its limit
    ``cutoff^2 / (4 pi)``; it is normalised to sum 1 over its ``size x size`` grid (it has negative lobes, so
    it sums to 1 without being a distribution) and zero-padded, centred, to ``pad_to x pad_to``.

    `cutoff` (floating) and `size` (integer) are 1-D of length N on one device; `size` odd with
    ``1 < size <= pad_to``, `pad_to` odd, not checked (as in `blur_kernels`).
    """
    device = _check_batch("sinc_kernels", {"size": size}, {"cutoff": cutoff})
    x, y, inside = _grid("sinc_kernels", size, pad_to, device)
    cutoff = cutoff.to(torch.float32)[:, None, None]
    r = torch.sqrt(x * x + y * y)
    centre = r == 0
    # J1(c r) / r is 0 / 0 at the centre: divide by 1 there and put the limit in its place afterwards.
    safe_r = torch.where(centre, torch.ones_like(r), r)
    ring = cutoff * torch.special.bessel_j1(cutoff * safe_r) / (2 * math.pi * safe_r)
    kernel = torch.where(centre, cutoff * cutoff / (4 * math.pi), ring)
    return _normalise(kernel, inside)


def pulse_kernels(n: int, pad_to: int = 21, device: torch.device | str | None = None) -> torch.Tensor:
    """`n` identity kernels shaped (n, pad_to, pad_to), float32: a 1 at the centre, 0 elsewhere.

    Real-ESRGAN uses the pulse where it draws no sinc filter, so that every sample of a batch goes through the
    same convolution whether or not it is blurred; convolving with it leaves an image unchanged."""
    _check_pad_to("pulse_kernels", pad_to)
    kernel = torch.zeros(n, pad_to, pad_to, dtype=torch.float32, device=device)
    kernel[:, pad_to // 2, pad_to // 2] = 1.0
    return kernel


def _grid(
    name: str, size: torch.Tensor, pad_to: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The padded grid's coordinates and, per sample, which of its cells lie inside that sample's kernel.

    Returns x (1, 1, pad_to), the column coordinate, y (1, pad_to, 1), the row, both running
    -(pad_to-1)/2 .. (pad_to-1)/2, and `inside` (N, pad_to, pad_to). Both sizes are odd, so padding a
    size x size grid by (pad_to - size) / 2 on each side puts its cells at exactly these integer coordinates:
    evaluating every kernel on the padded grid and zeroing it outside |x|, |y| <= (size-1)/2 is the same as
    BasicSR's evaluate-then-np.pad, with one shape for the whole batch."""
    _check_pad_to(name, pad_to)
    half = pad_to // 2
    axis = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
    x, y = axis[None, None, :], axis[None, :, None]
    radius = (size.to(torch.float32)[:, None, None] - 1) / 2
    inside = (x.abs() <= radius) & (y.abs() <= radius)
    return x, y, inside


def _normalise(kernel: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Zero `kernel` outside each sample's grid and scale it to sum 1 over the rest."""
    kernel = torch.where(inside, kernel, torch.zeros_like(kernel))
    return kernel / kernel.sum(dim=(1, 2), keepdim=True)


def _check_pad_to(name: str, pad_to: int) -> None:
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 3 or pad_to % 2 == 0:
        raise ValueError(f"{name}: `pad_to` must be an odd integer of at least 3, got {pad_to!r}.")


def _check_batch(
    name: str, integers: dict[str, torch.Tensor], floats: dict[str, torch.Tensor]
) -> torch.device:
    """The batch's device, after checking what can be checked without reading values back: every
    input 1-D, of one length, on one device, of the right kind of dtype."""
    tensors = {**integers, **floats}
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 1:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: `{key}` must be a 1-D tensor, got {shape}.")
    for key, t in integers.items():
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name}: `{key}` must be an integer tensor, got {t.dtype}.")
    for key, t in floats.items():
        if not t.is_floating_point():
            raise ValueError(f"{name}: `{key}` must be a floating tensor, got {t.dtype}.")
    lengths = {key: len(t) for key, t in tensors.items()}
    devices = {key: t.device for key, t in tensors.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{name}: the inputs must have one length, got {lengths}.")
    if len(set(devices.values())) > 1:
        raise ValueError(f"{name}: the inputs must be on one device, got {({k: str(d) for k, d in devices.items()})}.")
    return next(iter(devices.values()))
