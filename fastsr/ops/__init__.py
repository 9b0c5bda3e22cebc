"""Image operations: those that must match MATLAB exactly for SR data and evaluation (exported here), and the
real-world degradation's batched primitives, each in its module (resample, kernels, noise, jpeg, sharpen)."""

from fastsr.ops.color import rgb_to_gray, rgb_to_y
from fastsr.ops.levels import quantize
from fastsr.ops.resize import imresize, kernel_margin, shrink_kernel

__all__ = ["imresize", "kernel_margin", "quantize", "rgb_to_gray", "rgb_to_y", "shrink_kernel"]
