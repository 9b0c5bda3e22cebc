"""SwinIR, the Swin Transformer generator for classical super-resolution (Liang et al., ICCV Workshops 2021,
"SwinIR: Image Restoration Using Swin Transformer"): its classical (pixelshuffle) and lightweight
(pixelshuffledirect) networks, with the parameter names of the authors' models/network_swinir.py."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastsr.config import Invalid, positive
from fastsr.models.registry import GENERATORS
from fastsr.registry import PartConfig

# Powers of two upsample in x2 steps and 3 in one x3 step (pixelshuffle), or in one step of any factor
# (pixelshuffledirect); spandrel reads each of these back from the upsampler's sizes.
ALLOWED_SCALES = (2, 3, 4, 8)
# The reference's DIV2K RGB mean, subtracted from the input and added back to the output (img_range 1).
RGB_MEAN = (0.4488, 0.4371, 0.4040)
UPSAMPLE_FEATURES = 64  # the pixelshuffle upsampler's channels (the reference's fixed num_feat)
MASKED = -100.0  # what the reference adds to the logits of token pairs a shifted window must not join


@dataclass
class SwinIRConfig(PartConfig):
    """The `swinir` generator's recipe keys. The defaults are the paper's classical SR model (SwinIR-M,
    trained on 48x48 LR patches); its lightweight model is embed_dim 60, depths and num_heads [6, 6, 6, 6],
    upsampler pixelshuffledirect, img_size 64."""

    embed_dim: int = 180  # token channels throughout the transformer body
    depths: list[int] = field(default_factory=lambda: [6] * 6)  # Swin blocks in each residual group (RSTB)
    num_heads: list[int] = field(default_factory=lambda: [6] * 6)  # attention heads in each group's blocks
    # Side of the square attention windows. spandrel takes a window of 7 for its JPEG models' input range
    # (0..255) and so misreads fastsr weights with that window: prefer another.
    window_size: int = 8
    mlp_ratio: float = 2.0  # hidden channels of each block's MLP, as a multiple of embed_dim
    # `pixelshuffle` (classical SR): conv to 64 channels, then conv + pixel shuffle steps, then a conv to RGB;
    # `pixelshuffledirect` (lightweight): one conv to 3 * scale^2 channels and a pixel shuffle
    upsampler: Literal["pixelshuffle", "pixelshuffledirect"] = "pixelshuffle"
    # The training patch side (LR pixels) the reference builds its stored shifted-window masks for: they are
    # saved with the weights for its code and spandrel (which read img_size from them); fastsr computes the
    # masks for each input's own size.
    img_size: int = 48
    # Stochastic depth while training: each block's residual branches are dropped per sample with a
    # probability rising linearly from 0 to this over the blocks (the reference's drop_path_rate default,
    # which its training code keeps)
    drop_path: float = 0.1

    def check(self) -> None:
        """`embed_dim`, `window_size`, `mlp_ratio` > 0; `depths` and `num_heads` of one length, each entry > 0,
        each head count dividing embed_dim; `img_size` a multiple of the window, larger than it (the
        reference shifts no window otherwise); `drop_path` in [0, 1)."""
        positive(self, "embed_dim", "mlp_ratio")
        if self.window_size < 2:
            raise Invalid("window_size", f"must be 2 or more, so that windows can shift (got {self.window_size})")
        if not self.depths or any(d < 1 for d in self.depths):
            raise Invalid("depths", f"must list one or more groups of 1 or more blocks (got {self.depths})")
        if len(self.num_heads) != len(self.depths):
            raise Invalid("num_heads", f"needs one head count per group of depths ({len(self.depths)}), "
                                       f"got {self.num_heads}")
        if any(h < 1 or self.embed_dim % h for h in self.num_heads):
            raise Invalid("num_heads", f"must each divide embed_dim {self.embed_dim} (got {self.num_heads})")
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise Invalid("mlp_ratio", f"gives an MLP of no channels at embed_dim {self.embed_dim}")
        if self.img_size % self.window_size or self.img_size <= self.window_size:
            raise Invalid("img_size", f"must be a multiple of window_size {self.window_size} and larger than it "
                                      f"(got {self.img_size})")
        if not 0 <= self.drop_path < 1:
            raise Invalid("drop_path", f"must be in [0, 1) (got {self.drop_path})")


# --- the shifted-window geometry, computed with tensor ops on symbolic sizes so that exports keep them free ---


def relative_position_index(window: int, device: torch.device | None = None) -> torch.Tensor:
    """(window^2, window^2) int64: for tokens i, j of a window, the row of the (2*window-1)^2 relative
    position bias table that holds the bias of i attending to j (their offset in rows and columns)."""
    r = torch.arange(window, device=device)
    rows = r.repeat_interleave(window)  # each token's row and column in the window, row-major
    cols = r.repeat(window)
    dr = rows[:, None] - rows[None, :] + window - 1  # offsets, shifted to 0 .. 2*window-2
    dc = cols[:, None] - cols[None, :] + window - 1
    return dr * (2 * window - 1) + dc


def shifted_window_mask(height, width, window: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """(windows, window^2, window^2) float, 0 where two tokens of a window may attend to each other and
    MASKED where they may not, for a (height, width) feature map (multiples of `window`) rolled up and left
    by `shift`, windows in row-major order.

    After the roll, the last window row (column) joins the `shift` rows (columns) that wrapped round from
    the top (left) with ones from the bottom that were never beside them; tokens attend only within their own
    region. The regions are the reference's three bands per axis, [0, size-window), [size-window, size-shift),
    [size-shift, size), built here by comparisons against an arange so that the sizes may stay symbolic."""
    def band(size):
        i = torch.arange(size, device=device)
        return (i >= size - window).long() + (i >= size - shift).long()

    region = band(height)[:, None] * 3 + band(width)[None, :]
    region = region.view(height // window, window, width // window, window).transpose(1, 2)
    region = region.reshape(-1, window * window)
    apart = region[:, :, None] != region[:, None, :]
    return torch.zeros(apart.shape, device=device).masked_fill(apart, MASKED)


def _windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, windows, window^2, C), windows in row-major order, tokens row-major in each."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, -1, window * window, c)


def _merge(x: torch.Tensor, window: int, h, w) -> torch.Tensor:
    """The inverse of `_windows`: (B, windows, window^2, C) -> (B, H, W, C)."""
    b, c = x.shape[0], x.shape[-1]
    x = x.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def _reflect_index(size, padded, device: torch.device) -> torch.Tensor:
    """Indices of `padded` (>= size) samples extending `size` ones by mirror reflection about the last
    sample (F.pad's `reflect`, which the reference pads with), repeated as often as needed, so that sides
    shorter than the padding work too (a side of 1 repeats its sample)."""
    last = torch.arange(size, device=device)[-1:]  # size - 1, as a tensor: no Python branch on the size
    period = (2 * last).clamp(min=1)
    i = torch.arange(padded, device=device) % period
    return torch.minimum(i, 2 * last - i)


# --- the network ---


class _Mlp(nn.Module):
    """Linear, GELU, linear (the reference's Mlp, dropout 0)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _WindowAttention(nn.Module):
    """Multi-head self-attention within each window, with a learned bias per head for each relative
    position of the two tokens. The reference keeps `relative_position_index` as a buffer in its state dict
    (spandrel finds SwinIR by it); here `_save_to_state_dict` / `_load_from_state_dict` write and check it
    but it is no buffer: an EMA that averages buffers (train.ema) rounds an integer buffer through float
    arithmetic (at decay 0.9999 some indices come back one less), and the index is a function of the window
    alone."""

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window, self.heads = window, heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, windows, N, C) -> (B, windows, N, C); `index`: `relative_position_index`; `mask`: None, or
        `shifted_window_mask` (windows, N, N)."""
        b, nw, n, c = x.shape
        heads = self.heads
        bias = self.relative_position_bias_table[index.view(-1)].view(n, n, heads).permute(2, 0, 1)
        qkv = self.qkv(x).view(b, nw, n, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)  # 3, B, nW, heads, N, d
        if mask is None:  # one bias for every window: windows join the batch
            q, k, v = qkv.reshape(3, b * nw, heads, n, c // heads).unbind(0)
            bias = bias.unsqueeze(0)
        else:  # the mask differs per window: windows x heads in one axis, the bias shared by the batch
            q, k, v = qkv.reshape(3, b, nw * heads, n, c // heads).unbind(0)
            bias = (bias.unsqueeze(0) + mask.to(bias.dtype).unsqueeze(1)).reshape(1, -1, n, n)
        # softmax(q k^T / sqrt(d) + bias) v, as the reference computes it, in one fused call where the device has
        # one (torch's FlopCounterMode counts the fused CPU kernel as 0: count under SDPBackend.MATH)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.reshape(b, nw, heads, n, c // heads).transpose(2, 3).reshape(b, nw, n, c)
        return self.proj(out)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        table = self.relative_position_bias_table
        destination[prefix + "relative_position_index"] = relative_position_index(self.window, table.device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        _take_derived(state_dict, prefix + "relative_position_index", relative_position_index(self.window),
                      strict, missing_keys, error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _take_derived(state_dict, key: str, expected: torch.Tensor, strict: bool, missing_keys: list,
                  error_msgs: list) -> None:
    """Take out of a state dict being loaded an entry fastsr derives rather than stores (an index, a mask),
    reporting it missing, or wrong when it differs from what this model derives."""
    if key not in state_dict:
        if strict:
            missing_keys.append(key)
        return
    got = state_dict.pop(key)
    if tuple(got.shape) != tuple(expected.shape) or not torch.equal(got.detach().cpu().to(expected.dtype), expected):
        error_msgs.append(f"{key}: the saved tensor {tuple(got.shape)} is not the one this configuration "
                          f"derives {tuple(expected.shape)}")


class _DropPath(nn.Module):
    """Stochastic depth: while training, zero a residual branch for a random `p` of the samples and scale
    the others by 1 / (1 - p); the identity otherwise."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class _SwinBlock(nn.Module):
    """LayerNorm, (shifted-)window attention, residual; LayerNorm, MLP, residual. Odd blocks of a group
    roll the map by half a window first, so that windows straddle the previous block's boundaries.

    A shifted block of the reference stores `attn_mask` for img_size x img_size in its state dict, which its
    own code uses at that size and spandrel reads img_size from; it is written into state dicts here and
    checked on loading, while the forward takes the mask for its input's size from the network."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float,
                 img_size: int):
        super().__init__()
        self.window, self.shift, self.img_size = window, shift, img_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, window, heads)
        self.drop_path = _DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C), H and W multiples of the window -> the same shape."""
        h, w = x.shape[1], x.shape[2]
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = _merge(self.attn(_windows(y, self.window), index, mask if self.shift else None), self.window, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _stored_mask(self) -> torch.Tensor:
        return shifted_window_mask(self.img_size, self.img_size, self.window, self.shift)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.shift:
            device = self.norm1.weight.device
            destination[prefix + "attn_mask"] = self._stored_mask().to(device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if self.shift:
            _take_derived(state_dict, prefix + "attn_mask", self._stored_mask(), strict, missing_keys, error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class _Blocks(nn.Module):
    """A group's Swin blocks, under the reference's name for them (`residual_group.blocks`)."""

    def __init__(self, blocks: list[_SwinBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class _RSTB(nn.Module):
    """Residual Swin Transformer Block: a group of Swin blocks, a 3x3 conv, and the group's input added."""

    def __init__(self, blocks: list[_SwinBlock], dim: int):
        super().__init__()
        self.residual_group = _Blocks(blocks)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C) -> the same shape."""
        y = x
        for block in self.residual_group.blocks:
            y = block(y, index, mask)
        return x + self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class _PatchEmbed(nn.Module):
    """The LayerNorm on the tokens of the first conv's features (the reference's patch_embed, patch 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)


@GENERATORS.register("swinir", SwinIRConfig)
class SwinIR(nn.Module):
    """SwinIR: LR image in [0, 1] (N, 3, h, w) -> SR image (N, 3, h*scale, w*scale).

    Shallow features (a 3x3 conv to embed_dim), deep features (a LayerNorm on the tokens, then
    len(depths) residual Swin Transformer blocks, a LayerNorm and a 3x3 conv, plus the shallow features),
    then the upsampler (``upsampler``). The input, less the DIV2K mean, is padded by reflection to multiples
    of the window; the output, plus the mean, is cropped back to the input's size times the scale, unclamped.
    Attention runs within windows of window_size^2 tokens, every second block of a group on windows shifted
    by half a window, with the mask that keeps apart the tokens the shift brought together computed for the
    padded input's own size.

    Parameter names are those of the reference code (models/network_swinir.py), and its state dicts'
    derived entries (``relative_position_index``, each shifted block's ``attn_mask`` for img_size) are
    written and checked, so its released weights load (for resi_connection 1conv) and fastsr's open in
    spandrel as "SwinIR". The reference's initialisation: truncated normal (std 0.02) linear weights and
    bias tables, zero biases, unit LayerNorms, PyTorch's default for the convs.
    11,900,199 parameters at the defaults and x4 (SwinIR-M); 929,628 for the lightweight model at x4 (the
    paper's 897K leaves out the relative position bias tables, 1,350 parameters a block). On a 64x64 LR input
    at x4, 107.1 and 8.7 GFLOP (FlopCounterMode, attention included).

    Args:
        config: the architecture's keys (``SwinIRConfig``, each documented there).
        scale: integer upscaling factor, one of ``scales``.
    """

    label = "SwinIR"  # how tables name it
    scales = ALLOWED_SCALES
    trainable = True
    spandrel = "SwinIR"  # the architecture id spandrel gives these weights (fastsr.model_files)

    @staticmethod
    def keys_from_spandrel(hyperparameters: dict) -> dict | None:
        """This generator's recipe keys for a network spandrel opened as SwinIR (its `hyperparameters`), or None
        for a variant it does not build (the real-world nearest+conv upsampler, 3conv residuals, absolute
        position embedding, ...). Weights do not record the drop-path rate: the reference's 0.1."""
        h = hyperparameters
        built = {"patch_size": 1, "qkv_bias": True, "qk_scale": None, "ape": False, "patch_norm": True,
                 "resi_connection": "1conv", "img_range": 1.0, "start_unshuffle": 1}
        if any(h.get(k, v) != v for k, v in built.items()) or h["upsampler"] not in ("pixelshuffle",
                                                                                     "pixelshuffledirect"):
            return None
        return {"embed_dim": h["embed_dim"], "depths": list(h["depths"]), "num_heads": list(h["num_heads"]),
                "window_size": h["window_size"], "mlp_ratio": float(h["mlp_ratio"]), "upsampler": h["upsampler"],
                "img_size": h["img_size"], "drop_path": h["drop_path_rate"]}

    def __init__(self, config: SwinIRConfig, scale: int) -> None:
        super().__init__()
        if scale not in self.scales:
            raise ValueError(f"SwinIR scale must be one of {self.scales}, got {scale!r}")
        self.scale = scale
        self.window = config.window_size
        self.shift = config.window_size // 2
        self.upsampler_kind = config.upsampler
        dim = config.embed_dim
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)

        self.conv_first = nn.Conv2d(3, dim, 3, padding=1)
        self.patch_embed = _PatchEmbed(dim)
        rates = torch.linspace(0, config.drop_path, sum(config.depths)).tolist()
        layers = []
        for depth, heads in zip(config.depths, config.num_heads):
            blocks = [_SwinBlock(dim, heads, self.window, 0 if i % 2 == 0 else self.shift, config.mlp_ratio,
                                 rates.pop(0), config.img_size) for i in range(depth)]
            layers.append(_RSTB(blocks, dim))
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, padding=1)

        if config.upsampler == "pixelshuffle":
            feat = UPSAMPLE_FEATURES
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, feat, 3, padding=1), nn.LeakyReLU(inplace=True))
            steps = [3] if scale == 3 else [2] * int(math.log2(scale))
            up: list[nn.Module] = []
            for factor in steps:
                up += [nn.Conv2d(feat, factor * factor * feat, 3, padding=1), nn.PixelShuffle(factor)]
            self.upsample = nn.Sequential(*up)
            self.conv_last = nn.Conv2d(feat, 3, 3, padding=1)
        else:
            self.upsample = nn.Sequential(nn.Conv2d(dim, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, _WindowAttention):
            nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """LR (N, 3, h, w) in [0, 1] -> SR (N, 3, h*scale, w*scale), unclamped."""
        h, w = lr.shape[2], lr.shape[3]
        ws = self.window
        hp, wp = (h + ws - 1) // ws * ws, (w + ws - 1) // ws * ws
        x = lr - self.mean
        x = x.index_select(2, _reflect_index(h, hp, x.device)).index_select(3, _reflect_index(w, wp, x.device))

        x = self.conv_first(x)
        y = self.patch_embed.norm(x.permute(0, 2, 3, 1))  # (N, H, W, C) tokens
        index = relative_position_index(ws, x.device)
        mask = shifted_window_mask(hp, wp, ws, self.shift, x.device)
        for layer in self.layers:
            y = layer(y, index, mask)
        x = self.conv_after_body(self.norm(y).permute(0, 3, 1, 2)) + x

        if self.upsampler_kind == "pixelshuffle":
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        else:
            x = self.upsample(x)
        return x[:, :, :h * self.scale, :w * self.scale] + self.mean
