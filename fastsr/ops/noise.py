"""Sensor noise for the real-world degradation, drawn in batch with each sample's own level: Real-ESRGAN's
Gaussian and Poisson noise (BasicSR 1.4.2 `generate_gaussian_noise_pt`, `generate_poisson_noise_pt`),
without their Python loop over samples.

Both return the noise to add (the caller adds and clamps) for a batch that is all colour or all gray noise
(the caller groups its samples); gray noise is one field for all three channels. Poisson noise is drawn at
`vals` photon levels per unit, where `vals` is the number of distinct 8-bit levels in the sample rounded up to
a power of two (so an image of few levels gets coarse noise, as BasicSR); the count is a histogram per
sample over its own pixels (`heights`, `widths` on a canvas of mixed sizes).
"""

from __future__ import annotations

import torch

# torchvision's rgb_to_grayscale weights, which BasicSR's gray Poisson noise uses
_GRAY = (0.2989, 0.587, 0.114)


def gaussian_noise(img: torch.Tensor, sigma: torch.Tensor, gray: bool,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise N(0, (sigma/255)^2) for each sample of `img` (N, C, H, W), `sigma` (N,) in 8-bit levels; `gray`:
    one field for every channel."""
    n, c, h, w = img.shape
    noise = torch.randn(n, 1 if gray else c, h, w, generator=generator, device=img.device)
    return noise.expand(n, c, h, w) * (sigma.view(n, 1, 1, 1) / 255.0)


def poisson_noise(img: torch.Tensor, scale: torch.Tensor, gray: bool, heights: torch.Tensor,
                  widths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Poisson (shot) noise times `scale` (N,) for each sample of the canvas `img` (N, 3, H, W), each sample's
    own pixels its top-left heights[i] x widths[i]; `gray`: the noise of the sample's luma, the same in every
    channel."""
    if gray:
        r, g, b = img.unbind(1)
        img = (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)
    levels = torch.clamp((img * 255.0).round(), 0, 255) / 255.0  # BasicSR counts levels of the rounded image
    vals = _photon_levels(levels, heights, widths)
    noise = torch.poisson(levels * vals, generator=generator) / vals - levels
    return noise.expand(-1, 3, -1, -1) * scale.view(-1, 1, 1, 1)


def _photon_levels(levels: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """(N, 1, 1, 1): 2^ceil(log2(distinct 8-bit levels among the sample's own pixels))."""
    n, _, h, w = levels.shape
    inside = ((torch.arange(h, device=levels.device).view(1, 1, h, 1) < heights.view(n, 1, 1, 1))
              & (torch.arange(w, device=levels.device).view(1, 1, 1, w) < widths.view(n, 1, 1, 1)))
    bins = torch.where(inside, (levels * 255).round().long(), 256)  # bin 256 collects the canvas outside
    present = torch.zeros(n, 257, device=levels.device).scatter_(1, bins.reshape(n, -1), 1.0)[:, :256]
    return torch.exp2(torch.ceil(torch.log2(present.sum(1)))).view(n, 1, 1, 1)
