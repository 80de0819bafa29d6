"""EfficientViT's cascaded group attention (CGA), its sandwich block, stem and downsampling.

EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention, Liu et al., CVPR 2023,
arXiv 2305.07027; reference code microsoft/Cream ``EfficientViT/classification/model/efficientvit.py``, shipped in timm
as ``timm.models.efficientvit_msra``. REFERENCE.md section 4.

- ``CascadedGroupAttention``: the channels split into ``heads`` groups; head i's input is its split plus head i-1's
  output; per head a 1x1 conv + BN to q, k (``key_dim`` each) and v (C / heads), a depthwise conv + BN on q, attention
  with a learned LeViT-style bias over |dy|, |dx| offsets; ReLU and a 1x1 conv + BN over the concatenated heads.
  It attends inside ``window`` x ``window`` windows (maps that do not tile are zero-padded right/bottom, a map smaller
  than the window uses a window as large as the map there, as the reference does for square maps).
- ``CGABlock``: the whole block of the ``cga`` mixer, EfficientViT's sandwich: depthwise conv, FFN, attention,
  depthwise conv, FFN, each residual, BatchNorm throughout (no LayerNorm).
- ``EfficientViTStem`` and ``EfficientViTMerge``: the stride-2 conv stem (widths C/8, C/4, C/2, C for patch 16) and the
  subsampling between stages (a DW + FFN pair, inverted-residual merging with squeeze-excite, a DW + FFN pair).

Submodule names follow the reference (``qkvs.i.conv/bn``, ``dws.i``, ``proj.1``, ``attention_biases``, ``pw1``,
``pw2``); the reference's ``ResidualDrop`` wrappers (``.m``) and ``LocalWindowAttention`` (``mixer.m.attn``) are
flattened (``dw0``, ``attn``). Differences: BatchNorm weights start at 1 (the reference starts the last BN of every
residual branch at 0); the attention bias table is always window x window (the reference shrinks it with the map).
Tokens in and out are (B, H*W, C) with the map size alongside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hilonas.layers.hat import stride2_steps

__all__ = ["CascadedGroupAttention", "CGABlock", "ConvNorm", "ConvMlp", "EfficientViTStem", "EfficientViTMerge",
           "KEY_DIM", "KERNEL"]

KEY_DIM = 16  # EfficientViT's q/k width per head, every variant
KERNEL = 5  # depthwise kernel on q (EfficientViT-M0's; M5 uses 7, 5, 3, 3 by head)


def _check_tokens(name: str, x: torch.Tensor, H: int, W: int) -> None:
    if x.dim() != 3 or x.shape[1] != H * W:
        raise ValueError(f"{name}: expected x of shape (B, H*W={H * W}, C) for H={H}, W={W}, got {tuple(x.shape)}")


def _to_map(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], H, W)


def _to_tokens(m: torch.Tensor) -> torch.Tensor:
    return m.flatten(2).transpose(1, 2)


class ConvNorm(nn.Module):
    """Conv2d (no bias) then BatchNorm2d: the reference's ``ConvNorm``."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1, pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    def flops(self, h_out: int, w_out: int) -> int:
        c = self.conv
        return h_out * w_out * c.out_channels * (c.in_channels // c.groups) * c.kernel_size[0] * c.kernel_size[1]


class ConvMlp(nn.Module):
    """``pw1`` (1x1 ConvNorm, C -> hidden), ReLU, ``pw2`` (1x1 ConvNorm, hidden -> C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.pw1 = ConvNorm(dim, hidden)
        self.act = nn.ReLU()
        self.pw2 = ConvNorm(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))

    def flops(self, h: int, w: int) -> int:
        return self.pw1.flops(h, w) + self.pw2.flops(h, w)


class CascadedGroupAttention(nn.Module):
    """Cascaded group attention in windows (the reference's ``LocalWindowAttention`` + ``CascadedGroupAttention``).

    Args:
        dim: channels C (divisible by num_heads).
        num_heads: heads = channel groups.
        window_size: attention window (>= 1).
        key_dim: q and k width per head.
        kernels: depthwise kernel on q, one per head (default ``KERNEL`` for all).
        fused: attention through ``F.scaled_dot_product_attention`` (True) or explicit matmul + softmax.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, key_dim: int = KEY_DIM,
                 kernels: tuple[int, ...] | None = None, fused: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"CascadedGroupAttention: dim {dim} must be divisible by num_heads {num_heads}")
        if window_size < 1:
            raise ValueError(f"CascadedGroupAttention: window_size must be >= 1, got {window_size}")
        kernels = tuple(kernels) if kernels is not None else (KERNEL,) * num_heads
        if len(kernels) < num_heads:
            raise ValueError(f"CascadedGroupAttention: {num_heads} heads need {num_heads} kernels, got {kernels}")
        self.dim, self.num_heads, self.window_size, self.fused = dim, num_heads, window_size, fused
        self.key_dim, self.val_dim = key_dim, dim // num_heads
        self.scale = key_dim ** -0.5
        self.kernels = kernels[:num_heads]
        self.qkvs = nn.ModuleList(ConvNorm(dim // num_heads, 2 * key_dim + self.val_dim) for _ in range(num_heads))
        self.dws = nn.ModuleList(ConvNorm(key_dim, key_dim, k, 1, k // 2, groups=key_dim) for k in self.kernels)
        self.proj = nn.Sequential(nn.ReLU(), ConvNorm(self.val_dim * num_heads, dim))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))

    @classmethod
    def from_fields(cls, dim: int, heads: int, *, qkv_bias: bool, alpha: float, window: int,
                    fused: bool) -> CascadedGroupAttention:
        return cls(dim, heads, window_size=window, fused=fused)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, key_dim={self.key_dim}, "
                f"kernels={self.kernels}, fused={self.fused}")

    def _window(self, H: int, W: int) -> tuple[int, int]:
        return min(self.window_size, H), min(self.window_size, W)

    def _bias(self, wh: int, ww: int) -> torch.Tensor:
        """(heads, T, T) bias of a wh x ww window: table entry |dy| * window + |dx|."""
        ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None, :]).abs() * self.window_size + (xs[:, None] - xs[None, :]).abs()
        return self.attention_biases[:, index.to(self.attention_biases.device)]

    def forward_map(self, m: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) windows -> (B, C, h, w): the reference's ``CascadedGroupAttention.forward``."""
        B, C, h, w = m.shape
        bias = self._bias(h, w).to(m.dtype)
        feats_in = m.chunk(self.num_heads, dim=1)
        feats_out = []
        feat = feats_in[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if i > 0:
                feat = feat + feats_in[i]
            q, k, v = qkv(feat).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            q = dw(q)
            q, k, v = q.flatten(2).transpose(1, 2), k.flatten(2).transpose(1, 2), v.flatten(2).transpose(1, 2)
            if self.fused:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[i], scale=self.scale)
            else:
                out = ((q * self.scale) @ k.transpose(1, 2) + bias[i]).softmax(dim=-1) @ v
            feat = out.transpose(1, 2).reshape(B, self.val_dim, h, w)
            feats_out.append(feat)
        return self.proj(torch.cat(feats_out, dim=1))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        _check_tokens("CascadedGroupAttention", x, H, W)
        B, N, C = x.shape
        wh, ww = self._window(H, W)
        Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
        m = x.reshape(B, H, W, C)
        if (Hp, Wp) != (H, W):
            m = F.pad(m, (0, 0, 0, Wp - W, 0, Hp - H))
        nh, nw = Hp // wh, Wp // ww
        windows = m.reshape(B, nh, wh, nw, ww, C).permute(0, 1, 3, 5, 2, 4).reshape(B * nh * nw, C, wh, ww)
        out = self.forward_map(windows)
        out = out.reshape(B, nh, nw, C, wh, ww).permute(0, 1, 4, 2, 5, 3).reshape(B, Hp, Wp, C)
        if (Hp, Wp) != (H, W):
            out = out[:, :H, :W, :]
        return out.reshape(B, N, C)

    def flops(self, H: int, W: int) -> int:
        wh, ww = self._window(H, W)
        Np = -(-H // wh) * wh * (-(-W // ww) * ww)
        T, kd, vd = wh * ww, self.key_dim, self.val_dim
        total = 0
        for k in self.kernels:
            total += Np * (self.dim // self.num_heads) * (2 * kd + vd) + Np * kd * k * k + Np * T * (kd + vd)
        return total + Np * vd * self.num_heads * self.dim


class CGABlock(nn.Module):
    """EfficientViT's block: ``dw0`` (depthwise 3x3 ConvNorm), ``ffn0`` (ConvMlp C -> hidden -> C), ``attn``
    (cascaded group attention), ``dw1``, ``ffn1``, each added to its input. EfficientViT uses hidden = 2C.

    Args:
        dim, num_heads, window_size, key_dim, kernels, fused: as :class:`CascadedGroupAttention`.
        hidden: FFN width (default 2 * dim).
        drop_path: stochastic depth of every residual branch.
    """

    def __init__(self, dim: int, num_heads: int, hidden: int | None = None, window_size: int = 7,
                 key_dim: int = KEY_DIM, kernels: tuple[int, ...] | None = None, drop_path: float = 0.0,
                 fused: bool = True) -> None:
        super().__init__()
        hidden = hidden or 2 * dim
        self.dim, self.hidden, self.drop_path = dim, hidden, drop_path
        self.dw0 = ConvNorm(dim, dim, 3, 1, 1, groups=dim)
        self.ffn0 = ConvMlp(dim, hidden)
        self.attn = CascadedGroupAttention(dim, num_heads, window_size, key_dim, kernels, fused)
        self.dw1 = ConvNorm(dim, dim, 3, 1, 1, groups=dim)
        self.ffn1 = ConvMlp(dim, hidden)

    @property
    def fused(self) -> bool:
        return self.attn.fused

    @fused.setter
    def fused(self, value: bool) -> None:
        self.attn.fused = value

    @classmethod
    def from_fields(cls, dim: int, heads: int, *, qkv_bias: bool, alpha: float, window: int, fused: bool,
                    hidden: int | None = None, drop_path: float = 0.0) -> CGABlock:
        return cls(dim, heads, hidden, window_size=window, drop_path=drop_path, fused=fused)

    def _residual(self, m: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            y = y * y.new_empty(y.shape[0], 1, 1, 1).bernoulli_(keep).div_(keep)
        return m + y

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        _check_tokens("CGABlock", x, H, W)
        m = _to_map(x, H, W)
        m = self._residual(m, self.dw0(m))
        m = self._residual(m, self.ffn0(m))
        a = self.attn(_to_tokens(m), H, W)
        m = self._residual(m, _to_map(a, H, W))
        m = self._residual(m, self.dw1(m))
        m = self._residual(m, self.ffn1(m))
        return _to_tokens(m)

    def flops(self, H: int, W: int) -> int:
        return (self.dw0.flops(H, W) + self.ffn0.flops(H, W) + self.attn.flops(H, W) + self.dw1.flops(H, W)
                + self.ffn1.flops(H, W))


class EfficientViTStem(nn.Module):
    """EfficientViT's stem: log2(patch_size) stride-2 3x3 ConvNorms with ReLU between them, widths doubling up to
    ``embed_dim`` (C/8, C/4, C/2, C for patch 16). ``forward(img)`` returns ``(tokens, H, W)``."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 64) -> None:
        super().__init__()
        n = stride2_steps(patch_size)
        if embed_dim % 2 ** (n - 1):
            raise ValueError(f"EfficientViTStem: embed_dim {embed_dim} must be divisible by {2 ** (n - 1)}")
        self.patch_size, self.in_chans, self.embed_dim = patch_size, in_chans, embed_dim
        widths = [embed_dim // 2 ** (n - 1 - i) for i in range(n)]
        self.convs = nn.ModuleList(ConvNorm(c_in, c_out, 3, 2, 1) for c_in, c_out in zip([in_chans, *widths], widths))
        self.act = nn.ReLU()

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        if img.dim() != 4 or img.shape[1] != self.in_chans:
            raise ValueError(f"EfficientViTStem: expected an image batch (B, {self.in_chans}, H, W), got "
                             f"{tuple(img.shape)}")
        m = img
        for i, conv in enumerate(self.convs):
            m = conv(m if i == 0 else self.act(m))
        return _to_tokens(m), m.shape[-2], m.shape[-1]

    def flops(self, H_img: int, W_img: int) -> int:
        total, h, w = 0, H_img, W_img
        for conv in self.convs:
            h, w = -(-h // 2), -(-w // 2)
            total += conv.flops(h, w)
        return total


class EfficientViTMerge(nn.Module):
    """EfficientViT's subsampling between stages: ``res1`` (DW ConvNorm + ConvMlp(2x), residual) at the input width,
    ``patchmerge`` (1x1 ConvNorm to 4x, ReLU, stride-2 depthwise 3x3 ConvNorm, ReLU, squeeze-excite, 1x1 ConvNorm to
    out_dim), ``res2`` (DW + ConvMlp, residual) at the output width. Returns ``(tokens, ceil(H/2), ceil(W/2))``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        hid = 4 * in_dim
        rd = max(8, int(hid * 0.25 + 4) // 8 * 8)  # squeeze width: hid / 4 rounded to a multiple of 8
        self.res1_dw, self.res1_ffn = ConvNorm(in_dim, in_dim, 3, 1, 1, groups=in_dim), ConvMlp(in_dim, 2 * in_dim)
        self.conv1 = ConvNorm(in_dim, hid)
        self.conv2 = ConvNorm(hid, hid, 3, 2, 1, groups=hid)
        self.se_fc1, self.se_fc2 = nn.Conv2d(hid, rd, 1), nn.Conv2d(rd, hid, 1)
        self.conv3 = ConvNorm(hid, out_dim)
        self.res2_dw, self.res2_ffn = ConvNorm(out_dim, out_dim, 3, 1, 1, groups=out_dim), ConvMlp(out_dim, 2 * out_dim)
        self.act = nn.ReLU()

    @staticmethod
    def output_size(H: int, W: int) -> tuple[int, int]:
        return -(-H // 2), -(-W // 2)

    def forward(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, int, int]:
        _check_tokens("EfficientViTMerge", x, H, W)
        m = _to_map(x, H, W)
        m = m + self.res1_dw(m)
        m = m + self.res1_ffn(m)
        m = self.act(self.conv2(self.act(self.conv1(m))))
        gate = self.se_fc2(self.act(self.se_fc1(m.mean((2, 3), keepdim=True))))
        m = self.conv3(m * gate.sigmoid())
        m = m + self.res2_dw(m)
        m = m + self.res2_ffn(m)
        return _to_tokens(m), m.shape[-2], m.shape[-1]

    def flops(self, H: int, W: int) -> int:
        H2, W2 = self.output_size(H, W)
        hid, rd = self.conv1.conv.out_channels, self.se_fc1.out_channels
        return (self.res1_dw.flops(H, W) + self.res1_ffn.flops(H, W) + self.conv1.flops(H, W) + self.conv2.flops(H2, W2)
                + 2 * hid * rd + self.conv3.flops(H2, W2) + self.res2_dw.flops(H2, W2) + self.res2_ffn.flops(H2, W2))
