"""SPAN, the Swift Parameter-free Attention Network (Wan et al., CVPR Workshops 2024, "Swift Parameter-free
Attention Network for Efficient Super-Resolution"; winner of the NTIRE 2024 efficient SR challenge)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastsr.config import positive
from fastsr.models.registry import GENERATORS
from fastsr.registry import PartConfig

# The last conv makes 3 * scale^2 channels for the pixel shuffle, so any integer factor works, and spandrel
# reads the factor back from that conv's size for each of these.
ALLOWED_SCALES = (2, 3, 4, 8)
# The reference's input normalisation. Neither value is in the weights, so a loader (spandrel) can only
# assume these; they are constants here, not recipe keys, so that every saved SPAN opens as it ran.
IMG_RANGE = 255.0
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K's mean RGB
BLOCKS = 6  # SPABs, fixed by the reference (its parameter names number them block_1 ... block_6)
GAIN = 2  # width of a Conv3XC's inner convs, as a multiple of its input / output channels


@dataclass
class SPANConfig(PartConfig):
    """The `span` generator's recipe keys: the two the reference lets vary that spandrel reads back."""

    channels: int = 48  # feature channels (the reference's feature_channels: 48 for SPAN, 28 its NTIRE entry)
    # subtract RGB_MEAN and scale by IMG_RANGE before the first conv, as the reference does; false drops
    # that (the weights then hold a `no_norm` buffer, which is how spandrel tells the two apart)
    norm: bool = True

    def check(self) -> None:
        """`channels` > 0."""
        positive(self, "channels")


class _MergedConv(nn.Module):
    """The single 3x3 conv a Conv3XC folds into. Its kernel and bias are buffers, not parameters: derived
    from the branches, never trained, so the optimiser, DDP's gradients and the parameter count skip them,
    while the state dict still holds them as ``eval_conv.weight`` / ``eval_conv.bias``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(c_out, c_in, 3, 3))
        self.register_buffer("bias", torch.zeros(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=1)


def _refresh_before_saving(module: Conv3XC, prefix: str, keep_vars: bool) -> None:
    module.refresh()


def _refresh_after_loading(module: Conv3XC, incompatible_keys) -> None:
    module.refresh()


class Conv3XC(nn.Module):
    """A 3x3 conv trained over-parameterised (structural re-parameterisation): a 1x1 shortcut (``sk``) plus
    a 1x1 -> 3x3 -> 1x1 chain ``GAIN`` times wider (``conv``). Every branch is linear, so together they equal
    one 3x3 conv (``eval_conv``), which is all that inference runs.

    Training mode runs the branches. The input is zero-padded before the chain's first 1x1 conv, so that
    conv's bias reaches the border pixels as the merged conv's bias does: the two modes agree everywhere,
    borders included (the algebra is in ``merged``). Eval mode runs ``eval_conv``, refreshed from the branches
    whenever the module enters eval mode, when its state dict is read (so saved weights are consistent
    whatever mode the model was in) and after a state dict is loaded (the branches are what counts, as in the
    reference, whose eval forward re-merges every call). Weights changed in place while in eval mode need
    ``refresh()`` (or ``.eval()`` again) before the next forward.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.sk = nn.Conv2d(c_in, c_out, 1)
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_in * GAIN, 1),
            nn.Conv2d(c_in * GAIN, c_out * GAIN, 3),  # no padding: the input is padded before conv.0
            nn.Conv2d(c_out * GAIN, c_out, 1),
        )
        self.eval_conv = _MergedConv(c_in, c_out)
        self.refresh()
        # Plain functions, not bound methods, so a deepcopy (the exporter's, the EMA's) keeps working hooks.
        self.register_state_dict_pre_hook(_refresh_before_saving)
        self.register_load_state_dict_post_hook(_refresh_after_loading)

    @torch.no_grad()
    def merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 3x3 kernel and bias equal to the branches, in float32 (float64 for a float64 module).

        With A = conv.0 (1x1, weight W1, bias b1), B = conv.1 (3x3, W2, b2), C = conv.2 (1x1, W3, b3) and
        the shortcut S (1x1, Ws, bs), on the zero-padded input p:
        C(B(A(p))) + S(x) = W3 (W2 * (W1 p + b1) + b2) + b3 + Ws x + bs, and since a 1x1 conv is a matrix
        product per pixel, W3 W2 W1 is one 3x3 kernel K[o, i] = sum_{b, a} W3[o, b] W2[b, a] W1[a, i], with
        Ws added at its centre tap, and the bias is W3 (sum_taps(W2) b1 + b2) + b3 + bs.
        """
        dtype = torch.promote_types(self.sk.weight.dtype, torch.float32)  # half and bfloat16 merge in float32
        w1, w2, w3 = (conv.weight.to(dtype) for conv in self.conv)
        b1, b2, b3 = (conv.bias.to(dtype) for conv in self.conv)
        kernel = torch.einsum("ob,bauv,ai->oiuv", w3[:, :, 0, 0], w2, w1[:, :, 0, 0])
        kernel[:, :, 1, 1] += self.sk.weight.to(dtype)[:, :, 0, 0]
        bias = w3[:, :, 0, 0] @ (w2.sum((2, 3)) @ b1 + b2) + b3 + self.sk.bias.to(dtype)
        return kernel, bias

    @torch.no_grad()
    def refresh(self) -> None:
        """Write the merge of the current branches into ``eval_conv`` (in place: the EMA and DDP hold these
        tensors)."""
        kernel, bias = self.merged()
        self.eval_conv.weight.copy_(kernel)
        self.eval_conv.bias.copy_(bias)

    def train(self, mode: bool = True) -> Conv3XC:
        super().train(mode)
        if not mode:
            self.refresh()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.conv(F.pad(x, (1, 1, 1, 1))) + self.sk(x)
        return self.eval_conv(x)


class SPAB(nn.Module):
    """Swift parameter-free attention block: three Conv3XCs with SiLU between them; the last one's output H
    both feeds the residual (H + x) and, through the origin-symmetric sigmoid(H) - 0.5, weighs it. The
    attention map comes from the features themselves, so it costs no parameters. Returns the block's output
    and its first conv's activated output, SiLU(c1_r(x)) (the last block's is one of the features SPAN
    concatenates). Activated because the reference's SiLU works in place on the tensor it then returns: its
    weights were trained with that feature, and spandrel runs the same code."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1_r = Conv3XC(channels, channels)
        self.c2_r = Conv3XC(channels, channels)
        self.c3_r = Conv3XC(channels, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out1 = F.silu(self.c1_r(x))
        out3 = self.c3_r(F.silu(self.c2_r(out1)))
        return (out3 + x) * (torch.sigmoid(out3) - 0.5), out1


@GENERATORS.register("span", SPANConfig)
class SPAN(nn.Module):
    """SPAN: LR image in [0, 1] (N, 3, h, w) -> SR image (N, 3, h*scale, w*scale).

    The input is normalised (minus RGB_MEAN, times IMG_RANGE; skipped with ``norm: false``), a Conv3XC
    (``conv_1``) lifts it to ``channels``, six SPABs follow, then a Conv3XC (``conv_2``) on the last block's
    output; conv_1's features, conv_2's output, the first block's output and the last block's activated
    first-conv output are concatenated, fused by a 1x1 conv and upsampled by a 3x3 conv to ``3 * scale**2``
    channels and a pixel shuffle. The output is not scaled back by IMG_RANGE (the reference trains the net to return [0, 1]
    directly), and it is linear: callers clamp when they make an image.

    Training runs each Conv3XC's branches, eval mode its merged 3x3 conv (see ``Conv3XC``), so inference
    and an ONNX export are plain 3x3 convs. Parameter names are the reference's (``conv_1``, ``block_1`` ...
    ``block_6`` with ``c1_r`` ... ``c3_r``, ``conv_cat``, ``conv_2``, ``upsampler.0``; each Conv3XC's ``sk``,
    ``conv.0-2`` and ``eval_conv``), so a reference state dict fits key for key and weights saved by fastsr
    open in spandrel as SPAN with their scale and channels (and ``norm`` from ``no_norm``).
    PyTorch's default initialisation, as the reference. 1,840,488 trained parameters at the defaults and x4
    (the branches; the merged convs the state dict also holds, 396,240 numbers, are buffers): 426,288 in the
    deployed network, merged convs, conv_cat and upsampler; 3.48 GFLOP at a 64 x 64 input in eval mode.

    Args:
        config: the architecture's keys (``SPANConfig``, each documented there).
        scale: integer upscaling factor, one of ``scales``.
    """

    label = "SPAN"  # how tables name it
    scales = ALLOWED_SCALES
    trainable = True
    spandrel = "SPAN"  # the architecture id spandrel gives these weights (fastsr.model_files)

    @staticmethod
    def keys_from_spandrel(hyperparameters: dict) -> dict | None:
        """This generator's recipe keys for a network spandrel opened as SPAN (its `hyperparameters`), or None for
        a variant it does not build (convs without bias, another input range or mean)."""
        h = hyperparameters
        if not h["bias"] or h["img_range"] != 255.0 or tuple(h["rgb_mean"]) != (0.4488, 0.4371, 0.404):
            return None
        return {"channels": h["feature_channels"], "norm": bool(h["norm"])}

    def __init__(self, config: SPANConfig, scale: int) -> None:
        super().__init__()
        if scale not in self.scales:
            raise ValueError(f"SPAN scale must be one of {self.scales}, got {scale!r}")
        self.scale = scale
        self.norm = config.norm
        channels = config.channels
        if self.norm:  # not saved: a constant, as in the reference
            self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        else:  # saved: the marker spandrel detects the variant by
            self.register_buffer("no_norm", torch.zeros(1))
        self.conv_1 = Conv3XC(3, channels)
        for i in range(1, BLOCKS + 1):
            self.add_module(f"block_{i}", SPAB(channels))
        self.conv_cat = nn.Conv2d(4 * channels, channels, 1)
        self.conv_2 = Conv3XC(channels, channels)
        self.upsampler = nn.Sequential(nn.Conv2d(channels, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """LR (N, 3, h, w) in [0, 1] -> SR (N, 3, h*scale, w*scale), unclamped."""
        x = (lr - self.mean) * IMG_RANGE if self.norm else lr
        features = self.conv_1(x)
        block_1, _ = self.block_1(features)
        out = block_1
        for i in range(2, BLOCKS + 1):
            out, last_first = getattr(self, f"block_{i}")(out)
        fused = self.conv_cat(torch.cat([features, self.conv_2(out), block_1, last_first], 1))
        return self.upsampler(fused)
