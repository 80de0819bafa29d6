"""Token mixers: HiLo attention and the baselines it is compared with.

- ``HiLo``: LITv2's HiLo attention (Pan et al., "Fast Vision Transformers with HiLo Attention", NeurIPS 2022,
  arXiv 2205.13213; reference code ``ziplab/LITv2``, ``classification/hilo.py`` and the detection copy).
- ``MSA``: plain multi-head self-attention (ViT).
- ``SRA``: spatial-reduction attention (PVT, Wang et al., ICCV 2021).
- ``WindowAttention``: Swin's W-MSA without shift (Liu et al., ICCV 2021).

Every mixer has the same surface: ``from_fields(dim, heads, *, qkv_bias, alpha, window, fused)`` builds it from a
stage's fields (what ``alpha`` and ``window`` mean is the mixer's row in :mod:`hilonas.mixers`);
``forward(x, H, W)`` with ``x`` of shape (B, H*W, C) returning (B, H*W, C);
a switchable ``fused`` attribute (True: ``torch.nn.functional.scaled_dot_product_attention``; False: explicit
matmul + softmax, the readable path the fused one is checked against); and ``flops(H, W)``, the multiply-accumulates
of one image in the reference convention (linear layers, convolutions and the two attention products; softmax,
pooling, normalisation and biases are not counted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HiLo", "MSA", "SRA", "WindowAttention", "build_mixer", "MIXER_CLASSES", "MIXER_KINDS"]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, fused: bool,
            bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over the last two dims; SDPA when ``fused``."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    attn = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        attn = attn + bias
    return attn.softmax(dim=-1) @ v


def _check_tokens(name: str, x: torch.Tensor, H: int, W: int) -> None:
    if x.dim() != 3 or x.shape[1] != H * W:
        raise ValueError(f"{name}: expected x of shape (B, H*W={H * W}, C) for H={H}, W={W}, got {tuple(x.shape)}")


def _check_heads(name: str, dim: int, num_heads: int) -> int:
    if num_heads < 1 or dim % num_heads:
        raise ValueError(f"{name}: dim {dim} must be divisible by num_heads {num_heads}; choose heads dividing dim")
    return dim // num_heads


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class HiLo(nn.Module):
    """HiLo attention (LITv2): Hi-Fi heads attend inside ws x ws windows, Lo-Fi heads attend to ws-pooled keys.

    ``l_heads = int(num_heads * alpha)`` heads (truncated) go to Lo-Fi, the rest to Hi-Fi; ``window_size == 1``
    makes every head Lo-Fi with no pooling (plain MSA with separate q and kv projections). Hi-Fi output comes first
    in the channel concatenation. Both branches share the scale ``qk_scale or head_dim ** -0.5``.

    When H or W is not a multiple of ``window_size`` the map is zero-padded right/bottom, padded tokens take part
    in windows and in the pooled averages, and the output is cropped (the reference detection copy's behaviour;
    identical to the classification copy when the map tiles).

    Submodule names match the reference so LITv2 checkpoints load 1:1: ``h_qkv``, ``h_proj`` (when h_heads > 0),
    ``l_q``, ``l_kv``, ``l_proj`` (when l_heads > 0) and ``sr`` (AvgPool2d, when l_heads > 0 and window_size > 1).

    Args:
        dim: channels C (divisible by num_heads).
        num_heads: total heads.
        qkv_bias: bias on h_qkv, l_q, l_kv (the output projections always have one).
        qk_scale: overrides head_dim ** -0.5.
        window_size: Hi-Fi window and Lo-Fi pooling size (>= 1).
        alpha: share of heads for Lo-Fi, in [0, 1].
        fused: use scaled_dot_product_attention and the copy-lean layout (True) or the explicit path (False).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float | None = None,
                 window_size: int = 2, alpha: float = 0.5, fused: bool = True) -> None:
        super().__init__()
        self.head_dim = _check_heads("HiLo", dim, num_heads)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"HiLo: alpha must be in [0, 1], got {alpha}")
        if window_size < 1:
            raise ValueError(f"HiLo: window_size must be >= 1, got {window_size}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.alpha = alpha
        self.fused = fused
        self.scale = qk_scale or self.head_dim ** -0.5
        # window_size 1 overrides alpha: every head is Lo-Fi (reference behaviour).
        self.l_heads = num_heads if window_size == 1 else int(num_heads * alpha)
        self.h_heads = num_heads - self.l_heads
        self.l_dim = self.l_heads * self.head_dim
        self.h_dim = self.h_heads * self.head_dim

        if self.l_heads > 0:
            if window_size > 1:
                self.sr = nn.AvgPool2d(kernel_size=window_size, stride=window_size)
            self.l_q = nn.Linear(dim, self.l_dim, bias=qkv_bias)
            self.l_kv = nn.Linear(dim, 2 * self.l_dim, bias=qkv_bias)
            self.l_proj = nn.Linear(self.l_dim, self.l_dim)
        if self.h_heads > 0:
            self.h_qkv = nn.Linear(dim, 3 * self.h_dim, bias=qkv_bias)
            self.h_proj = nn.Linear(self.h_dim, self.h_dim)

    @classmethod
    def from_fields(cls, dim: int, heads: int, *, qkv_bias: bool, alpha: float, window: int, fused: bool) -> HiLo:
        return cls(dim, heads, qkv_bias=qkv_bias, window_size=window, alpha=alpha, fused=fused)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, h_heads={self.h_heads}, l_heads={self.l_heads}, "
                f"window_size={self.window_size}, alpha={self.alpha}, fused={self.fused}")

    def _padded(self, H: int, W: int) -> tuple[int, int]:
        ws = self.window_size
        return _round_up(H, ws), _round_up(W, ws)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        _check_tokens("HiLo", x, H, W)
        if self.fused:
            return self._forward_fused(x, H, W)
        return self._forward_explicit(x, H, W)

    # -- explicit path: the reference's layout, step by step -----------------------------------------------------

    def _forward_explicit(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        Hp, Wp = self._padded(H, W)
        x = x.reshape(B, H, W, C)
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        outs = []
        if self.h_heads > 0:
            outs.append(self._hifi_explicit(x))
        if self.l_heads > 0:
            outs.append(self._lofi_explicit(x))
        out = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        if (Hp, Wp) != (H, W):
            out = out[:, :H, :W, :]
        return out.reshape(B, N, C)

    def _hifi_explicit(self, x: torch.Tensor) -> torch.Tensor:
        B, Hp, Wp, C = x.shape
        ws, h, d = self.window_size, self.h_heads, self.head_dim
        hg, wg = Hp // ws, Wp // ws
        windows = x.reshape(B, hg, ws, wg, ws, C).transpose(2, 3)  # B, hg, wg, ws, ws, C
        qkv = self.h_qkv(windows).reshape(B, hg * wg, ws * ws, 3, h, d).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]  # B, nW, h, ws*ws, d
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(2, 3).reshape(B, hg, wg, ws, ws, self.h_dim)
        out = out.transpose(2, 3).reshape(B, Hp, Wp, self.h_dim)
        return self.h_proj(out)

    def _lofi_explicit(self, x: torch.Tensor) -> torch.Tensor:
        B, Hp, Wp, C = x.shape
        h, d = self.l_heads, self.head_dim
        q = self.l_q(x).reshape(B, Hp * Wp, h, d).permute(0, 2, 1, 3)
        if self.window_size > 1:
            pooled = self.sr(x.permute(0, 3, 1, 2)).reshape(B, C, -1).permute(0, 2, 1)
            kv = self.l_kv(pooled)
        else:
            kv = self.l_kv(x.reshape(B, Hp * Wp, C))
        kv = kv.reshape(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, Hp, Wp, self.l_dim)
        return self.l_proj(out)

    # -- fused path: SDPA, projections before the window partition, one strided copy into the output ------------

    def _forward_fused(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        ws = self.window_size
        Hp, Wp = self._padded(H, W)
        padded = (Hp, Wp) != (H, W)
        xs = x.view(B, H, W, C) if x.is_contiguous() else x.reshape(B, H, W, C)
        xp = F.pad(xs, (0, 0, 0, Wp - W, 0, Hp - H)) if padded else xs

        if self.h_heads == 0:
            return self._lofi_fused(x, xp)  # queries were computed for real tokens only: nothing to crop

        hifi = self._hifi_fused(xp)  # B, hg, wg, ws, ws, h_dim: window layout, projected
        hg, wg = Hp // ws, Wp // ws
        if self.l_heads == 0 and not padded:
            # Undo the window partition in one copy.
            return hifi.transpose(2, 3).reshape(B, N, C)

        out = x.new_empty(B, Hp, Wp, C)
        # Un-partition, concatenate and (with padding) crop in strided copies, no intermediate tensors.
        out.view(B, hg, ws, wg, ws, C)[..., :self.h_dim].copy_(hifi.transpose(2, 3))
        if self.l_heads > 0:
            lofi = self._lofi_fused(x, xp)  # B, N, l_dim
            out[:, :H, :W, self.h_dim:].copy_(lofi.view(B, H, W, self.l_dim))
        if padded:
            out = out[:, :H, :W, :]
            return out.reshape(B, N, C)
        return out.view(B, N, C)

    def _hifi_fused(self, xp: torch.Tensor) -> torch.Tensor:
        B, Hp, Wp, C = xp.shape
        ws, h, d = self.window_size, self.h_heads, self.head_dim
        hg, wg = Hp // ws, Wp // ws
        # The projection is per token, so it commutes with the partition: projecting first moves 3*h_dim channels
        # (not C) through the one partition copy. q, k, v are laid out (B*nW, ws*ws, h, d) and handed to SDPA as
        # head-transposed views; SDPA's output follows q's layout, so merging the heads afterwards is a view.
        qkv = F.linear(xp, self.h_qkv.weight, self.h_qkv.bias)
        qkv = qkv.view(B, hg, ws, wg, ws, 3, h, d).permute(5, 0, 1, 3, 2, 4, 6, 7)
        qkv = qkv.reshape(3, B * hg * wg, ws * ws, h, d)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(0))
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, hg, wg, ws, ws, self.h_dim)
        return F.linear(out, self.h_proj.weight, self.h_proj.bias)

    def _lofi_fused(self, x: torch.Tensor, xp: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        ws, h, d = self.window_size, self.l_heads, self.head_dim
        # Queries only for real tokens: padded queries would only produce rows that are cropped anyway.
        q = F.linear(x, self.l_q.weight, self.l_q.bias).view(B, N, h, d).transpose(1, 2)
        if ws > 1:
            # Channels-last average pool of the (padded) input: a strided view, no NCHW copy.
            pooled = F.avg_pool2d(xp.permute(0, 3, 1, 2), ws, ws).permute(0, 2, 3, 1)
            src = pooled.reshape(B, -1, C)
        else:
            src = x
        kv = F.linear(src, self.l_kv.weight, self.l_kv.bias)
        kv = kv.view(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], scale=self.scale)
        out = out.transpose(1, 2).reshape(B, N, self.l_dim)
        return F.linear(out, self.l_proj.weight, self.l_proj.bias)

    def flops(self, H: int, W: int) -> int:
        """Multiply-accumulates for one (H, W) map, the reference's formula on the padded map."""
        ws, C = self.window_size, self.dim
        Hp, Wp = self._padded(H, W)
        Np = Hp * Wp
        n_win = (Hp // ws) * (Wp // ws)
        total = 0
        if self.h_heads > 0:
            hd = self.h_dim
            total += Np * C * 3 * hd + n_win * ws ** 4 * 2 * hd + Np * hd * hd
        if self.l_heads > 0:
            ld, kv_len = self.l_dim, n_win
            total += Np * C * ld + kv_len * C * 2 * ld + Np * ld * kv_len * 2 + Np * ld * ld
        return total


class MSA(nn.Module):
    """Multi-head self-attention over all tokens (ViT): ``qkv`` Linear, attention, ``proj`` Linear."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qk_scale: float | None = None,
                 fused: bool = True) -> None:
        super().__init__()
        self.head_dim = _check_heads("MSA", dim, num_heads)
        self.dim = dim
        self.num_heads = num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    @classmethod
    def from_fields(cls, dim: int, heads: int, *, qkv_bias: bool, alpha: float, window: int, fused: bool) -> MSA:
        return cls(dim, heads, qkv_bias=qkv_bias, fused=fused)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        _check_tokens("MSA", x, H, W)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = _attend(qkv[0], qkv[1], qkv[2], self.scale, self.fused)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def flops(self, H: int, W: int) -> int:
        N, C = H * W, self.dim
        return N * C * 3 * C + N * N * C * 2 + N * C * C


class SRA(nn.Module):
    """Spatial-reduction attention (PVT): keys and values from a ``sr_ratio``-strided conv + LayerNorm of the map.

    Submodules ``q``, ``kv``, ``proj`` and, when sr_ratio > 1, ``sr`` (Conv2d k = s = sr_ratio) and ``norm``.
    The reduction conv floors like PVT's (the remainder rows/columns of a map that does not tile are dropped); a map
    smaller than sr_ratio in a dimension is zero-padded up to sr_ratio there so at least one key exists.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qk_scale: float | None = None,
                 sr_ratio: int = 1, fused: bool = True) -> None:
        super().__init__()
        self.head_dim = _check_heads("SRA", dim, num_heads)
        if sr_ratio < 1:
            raise ValueError(f"SRA: sr_ratio must be >= 1, got {sr_ratio}")
        self.dim = dim
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.scale = qk_scale or self.head_dim ** -0.5
        self.fused = fused
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    @classmethod
    def from_fields(cls, dim: int, heads: int, *, qkv_bias: bool, alpha: float, window: int, fused: bool) -> SRA:
        return cls(dim, heads, qkv_bias=qkv_bias, sr_ratio=window, fused=fused)

    def _kv_grid(self, H: int, W: int) -> tuple[int, int]:
        s = self.sr_ratio
        return max(H, s) // s, max(W, s) // s

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        _check_tokens("SRA", x, H, W)
        B, N, C = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.q(x).reshape(B, N, h, d).transpose(1, 2)
        if self.sr_ratio > 1:
            s = self.sr_ratio
            x_ = x.transpose(1, 2).reshape(B, C, H, W)
            if s > H or s > W:
                x_ = F.pad(x_, (0, max(s - W, 0), 0, max(s - H, 0)))
            x_ = self.norm(self.sr(x_).flatten(2).transpose(1, 2))
        else:
            x_ = x
        kv = self.kv(x_).reshape(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        out = _attend(q, kv[0], kv[1], self.scale, self.fused)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def flops(self, H: int, W: int) -> int:
        N, C, s = H * W, self.dim, self.sr_ratio
        hk, wk = self._kv_grid(H, W)
        kv_len = hk * wk
        total = N * C * C  # q
        if s > 1:
            total += kv_len * C * C * s * s  # reduction conv
        total += kv_len * C * 2 * C  # kv
        total += N * kv_len * C * 2  # q k^T and attn v
        total += N * C * C  # proj
        return total


def _relative_position_index(wh: int, ww: int, M: int) -> torch.Tensor:
    """(wh*ww, wh*ww) indices into a ((2M-1)^2, heads) relative-position table, for a wh x ww window (wh, ww <= M)."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)  # 2, T
    rel = coords[:, :, None] - coords[:, None, :] + (M - 1)  # 2, T, T in [0, 2M-2]
    return rel[0] * (2 * M - 1) + rel[1]


class WindowAttention(nn.Module):
    """Swin's window attention (W-MSA) without shift.

    Tokens attend inside non-overlapping M x M windows (M = window_size). A map that does not tile is zero-padded
    right/bottom (padded tokens are keys like any other, as in Swin's dense-prediction code) and the output cropped.
    A map smaller than M in a dimension uses a window as large as the map there (Swin's rule), so tiny maps are
    not swamped with padding. ``rel_pos_bias`` adds Swin's learned ((2M-1)^2, heads) table, indexed through the
    buffer ``relative_position_index``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, qk_scale: float | None = None,
                 window_size: int = 7, rel_pos_bias: bool = False, fused: bool = True) -> None:
        super().__init__()
        self.head_dim = _check_heads("WindowAttention", dim, num_heads)
        if window_size < 1:
            raise ValueError(f"WindowAttention: window_size must be >= 1, got {window_size}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = qk_scale or self.head_dim ** -0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_bias = rel_pos_bias
        if rel_pos_bias:
            M = window_size
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * M - 1) ** 2, num_heads))
            nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index", _relative_position_index(M, M, M), persistent=True)

    @classmethod
    def from_fields(cls, dim: int, heads: int, *, qkv_bias: bool, alpha: float, window: int,
                    fused: bool) -> WindowAttention:
        return cls(dim, heads, qkv_bias=qkv_bias, window_size=window, fused=fused)

    def _window(self, H: int, W: int) -> tuple[int, int]:
        return min(self.window_size, H), min(self.window_size, W)

    def _bias(self, wh: int, ww: int) -> torch.Tensor:
        if (wh, ww) == (self.window_size, self.window_size):
            index = self.relative_position_index
        else:
            index = _relative_position_index(wh, ww, self.window_size).to(self.relative_position_index.device)
        T = wh * ww
        return self.relative_position_bias_table[index.reshape(-1)].reshape(T, T, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        _check_tokens("WindowAttention", x, H, W)
        B, N, C = x.shape
        wh, ww = self._window(H, W)
        Hp, Wp = _round_up(H, wh), _round_up(W, ww)
        hg, wg = Hp // wh, Wp // ww
        T, h, d = wh * ww, self.num_heads, self.head_dim
        x = x.reshape(B, H, W, C)
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        windows = x.reshape(B, hg, wh, wg, ww, C).transpose(2, 3).reshape(B * hg * wg, T, C)
        qkv = self.qkv(windows).reshape(-1, T, 3, h, d).permute(2, 0, 3, 1, 4)
        bias = self._bias(wh, ww).to(x.dtype) if self.rel_pos_bias else None
        out = _attend(qkv[0], qkv[1], qkv[2], self.scale, self.fused, bias)
        out = self.proj(out.transpose(1, 2).reshape(B, hg, wg, wh, ww, C))
        out = out.transpose(2, 3).reshape(B, Hp, Wp, C)
        if (Hp, Wp) != (H, W):
            out = out[:, :H, :W, :]
        return out.reshape(B, N, C)

    def flops(self, H: int, W: int) -> int:
        wh, ww = self._window(H, W)
        Np = _round_up(H, wh) * _round_up(W, ww)
        T, C = wh * ww, self.dim
        return Np * C * 3 * C + Np * T * C * 2 + Np * C * C


# The layer class of every mixer of the registry (hilonas.mixers) that attends; 'none' has no class (ConvFFN only).
MIXER_CLASSES: dict[str, type[nn.Module]] = {"hilo": HiLo, "msa": MSA, "sra": SRA, "window": WindowAttention}
MIXER_KINDS = tuple(MIXER_CLASSES)  # kept for callers of the old name; the class map is the source


def build_mixer(kind: str, dim: int, num_heads: int, *, qkv_bias: bool = True, alpha: float = 0.9,
                window_size: int = 2, fused: bool = True) -> nn.Module:
    """Build a token mixer by name through its class's ``from_fields``.

    Args:
        kind: a key of ``MIXER_CLASSES`` ('hilo', 'msa', 'sra', 'window', and any registered later).
        dim, num_heads: channels and heads.
        qkv_bias: bias on the q/k/v projections.
        alpha: the stage's alpha (HiLo's Lo-Fi head share; ignored by mixers without one).
        window_size: the stage's window: HiLo's window, SRA's reduction ratio, WindowAttention's window; ignored
            by MSA.
        fused: start on the SDPA path.
    """
    cls = MIXER_CLASSES.get(kind)
    if cls is None:
        raise ValueError(f"unknown mixer kind {kind!r}; expected one of {', '.join(MIXER_CLASSES)}")
    return cls.from_fields(dim, num_heads, qkv_bias=qkv_bias, alpha=alpha, window=window_size, fused=fused)
