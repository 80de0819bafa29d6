"""Token mixers: HiLo attention and the baselines it is compared with.

- ``HiLo``: LITv2's HiLo attention (Pan et al., "Fast Vision Transformers with HiLo Attention", NeurIPS 2022,
  arXiv 2205.13213; reference code ``ziplab/LITv2``, ``classification/hilo.py`` and the detection copy).
- ``MSA``: plain multi-head self-attention (ViT).
- ``SRA``: spatial-reduction attention (PVT, Wang et al., ICCV 2021).
- ``WindowAttention``: Swin's W-MSA without shift (Liu et al., ICCV 2021).

Every mixer has the same surface: ``from_fields(dim, heads, *, qkv_bias, alpha, window, fused)`` builds it from a
stage's fields (what ``alpha`` and ``window`` mean is the mixer's row in :mod:`hilonas.mixers`);
``forward(x, H, W)`` with ``x`` of shape (B, H*W, C) returning (B, H*W, C);
a switchable ``fused`` attribute (True: the fast path, ``torch.nn.functional.scaled_dot_product_attention`` or, for
bfloat16/float16 on CPU over short key sequences, batched matmuls; False: explicit matmul + softmax, the readable
path the fused one is checked against); and ``flops(H, W)``, the multiply-accumulates
of one image in the reference convention (linear layers, convolutions and the two attention products; softmax,
pooling, normalisation and biases are not counted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HiLo", "MSA", "SRA", "WindowAttention", "build_mixer", "MIXER_CLASSES"]


# Reduced-precision dtypes whose CPU attention over short key sequences (at most _SHORT_KEYS keys) runs faster as
# plain batched matmuls than through SDPA: measured on Zen 4 (AVX512-BF16), 1 thread, bfloat16: HiLo's Lo-Fi
# attention (196 queries, 49 keys) 34 vs 51 ms, SRA's 34 vs 57 ms, 7x7 windows 59 vs 69 ms; MSA over 196 keys
# 160 vs 146 ms, so long sequences stay on SDPA.
_REDUCED = (torch.bfloat16, torch.float16)
_SHORT_KEYS = 64


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, fused: bool,
            bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over the last two dims.

    ``fused``: SDPA, except for bfloat16/float16 on CPU with at most ``_SHORT_KEYS`` keys, where PyTorch's CPU SDPA
    kernel costs up to 1.6x the batched matmuls, so the matmul form is the fast one there. PyTorch's CPU softmax of
    a reduced-precision tensor computes in fp32 and rounds its result to the input dtype (probabilities in [0, 1]
    lose no range), so no explicit up-cast is needed.
    """
    if fused and not (q.device.type == "cpu" and q.dtype in _REDUCED and k.shape[-2] <= _SHORT_KEYS):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    if fused and q.shape[-2] > k.shape[-2]:
        # More queries than keys (HiLo's Lo-Fi, SRA): scores laid out keys x queries, so the softmax reduces over a
        # strided dim and vectorises along the many contiguous queries (12% faster for 196 queries on 49 keys); the
        # probabilities enter the second product as a transposed operand, without a copy.
        attn = k @ q.contiguous().transpose(-2, -1)
        if scale != 1.0:
            attn = attn * scale
        if bias is not None:
            attn = attn + bias.transpose(-2, -1)
        return attn.softmax(dim=-2).transpose(-2, -1) @ v
    attn = q @ k.transpose(-2, -1)
    if scale != 1.0:
        attn = attn * scale
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


def _project(x: torch.Tensor, layer: nn.Linear, dest: torch.Tensor | None = None) -> torch.Tensor:
    """``layer(x)``; with ``dest`` (a column block of a larger output, no autograd) the GEMM writes into it."""
    if dest is None:
        return F.linear(x, layer.weight, layer.bias)
    n = dest.shape[-1]
    if layer.bias is None:
        torch.mm(x.reshape(-1, x.shape[-1]), layer.weight.t(), out=dest.view(-1, n))
    else:
        torch.addmm(layer.bias, x.reshape(-1, x.shape[-1]), layer.weight.t(), out=dest.view(-1, n))
    return dest


def _windows_by_bmm(t: torch.Tensor) -> bool:
    """Whether HiLo's fused Hi-Fi attention runs as two batched matmuls over all windows and heads (CPU) rather than
    SDPA (CUDA, whose kernels batch small windows well)."""
    return t.device.type == "cpu"


def _same_params(a: tuple, b: tuple) -> bool:
    """Whether two ``HiLo._query_weights`` cache keys name the same parameters in the same state."""
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(
        x[0] is y[0] and x[1:] == y[1:] for x, y in zip(a[1], b[1]))


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
        fused: the fast path (True): one GEMM for both branches' queries (scale folded into their weights), Hi-Fi
            attention as batched matmuls over all windows on CPU (SDPA on CUDA), Lo-Fi attention through SDPA (the
            matmul form for bfloat16/float16 on CPU), output projections written into their column blocks of the
            output; or the explicit path (False), the reference's layout step by step. Both give the same result up
            to rounding, with the same parameters.
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

    # -- fused path: one query GEMM, attention products batched over windows, projections into the output -----

    def _query_weights(self, joint: bool) -> tuple[tuple[torch.Tensor, torch.Tensor | None], ...]:
        """(weight, bias) of the query projections with the attention scale folded into the q rows.

        ``joint``: one pair for ``[h_qkv ; l_q]`` (both branches in one GEMM); otherwise one pair per existing branch,
        Hi-Fi first. Folding the scale into the weights spares a pass over the scores (for head_dim a power of 4 the
        scale is a power of 2 and the fold is exact in any dtype). Without autograd the result is cached against the
        parameters' identity, version, storage and dtype, so a training step, ``load_state_dict`` or ``.to()``
        rebuilds it and a batch-1 call does not pay for it.
        """
        params = [p for name in ("h_qkv", "l_q") if hasattr(self, name)
                  for p in (getattr(self, name).weight, getattr(self, name).bias) if p is not None]
        # No cache while autograd records (the fold must be differentiated), while compiling, or for inference-tensor
        # parameters (they keep no version counter).
        tracked = (torch.is_grad_enabled() and any(p.requires_grad for p in params)) or any(
            p.is_inference() for p in params) or torch.compiler.is_compiling()
        key = (joint, [] if tracked else [(p, p._version, p.data_ptr(), p.dtype, p.device) for p in params])
        cached = self.__dict__.get("_query_cache")
        if not tracked and cached is not None and _same_params(cached[0], key):
            return cached[1]
        pairs: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        s, hd = self.scale, self.h_dim
        if self.h_heads > 0:
            w, b = self.h_qkv.weight, self.h_qkv.bias
            pairs.append((torch.cat([w[:hd] * s, w[hd:]]), None if b is None else torch.cat([b[:hd] * s, b[hd:]])))
        if self.l_heads > 0:
            w, b = self.l_q.weight, self.l_q.bias
            pairs.append((w * s, None if b is None else b * s))
        if joint:
            (wh, bh), (wl, bl) = pairs
            pairs = [(torch.cat([wh, wl]), None if bh is None else torch.cat([bh, bl]))]
        result = tuple(pairs)
        if not tracked:
            self.__dict__["_query_cache"] = (key, result)
        return result

    def __getstate__(self) -> dict:
        # The query-weight cache is derived state: copies and pickles rebuild it.
        state = self.__dict__.copy()
        state.pop("_query_cache", None)
        return state

    def _forward_fused(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        Hp, Wp = self._padded(H, W)
        padded = (Hp, Wp) != (H, W)
        xs = x.view(B, H, W, C) if x.is_contiguous() else x.reshape(B, H, W, C)
        xp = F.pad(xs, (0, 0, 0, Wp - W, 0, Hp - H)) if padded else xs
        hd = self.h_dim
        # Both branches' queries come from the same tokens when the map tiles: one GEMM [h_qkv ; l_q] reads x once
        # and runs at a larger, more efficient shape. On a padded map Lo-Fi queries are computed for real tokens only.
        joint = self.h_heads > 0 and self.l_heads > 0 and not padded and (
            (self.h_qkv.bias is None) == (self.l_q.bias is None))
        weights = self._query_weights(joint)
        if joint:
            y = F.linear(xp, *weights[0])
            hifi_qkv, lofi_q = y[..., :3 * hd], y[..., 3 * hd:]
        else:
            hifi_qkv = F.linear(xp, *weights[0]) if self.h_heads > 0 else None
            lofi_q = F.linear(xs, *weights[-1]) if self.l_heads > 0 else None
        if joint and not (torch.is_grad_enabled() and (x.requires_grad or weights[0][0].requires_grad)) and (
                x.dtype == self.l_proj.weight.dtype and not torch.is_autocast_enabled(x.device.type)):
            # Without autograd (or autocast) both output projections write their column block of the output.
            out = x.new_empty(B, N, C)
            self._hifi_fused(hifi_qkv, out[..., :hd])
            self._lofi_fused(lofi_q, xp, out[..., hd:])
            return out
        outs = []
        if hifi_qkv is not None:
            hifi = self._hifi_fused(hifi_qkv)  # B, Hp, Wp, h_dim
            outs.append(hifi[:, :H, :W] if padded else hifi)
        if lofi_q is not None:
            outs.append(self._lofi_fused(lofi_q, xp))  # B, H, W, l_dim
        out = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        return out.reshape(B, N, C)

    def _hifi_fused(self, qkv: torch.Tensor, dest: torch.Tensor | None = None) -> torch.Tensor:
        """Window attention of the Hi-Fi heads from the scaled ``qkv`` (B, Hp, Wp, 3*h_dim, maybe a column view),
        projected by h_proj, in token order (B, Hp, Wp, h_dim); written into ``dest`` (no autograd) when given."""
        B, Hp, Wp, _ = qkv.shape
        ws, h, d = self.window_size, self.h_heads, self.head_dim
        hg, wg, T = Hp // ws, Wp // ws, ws * ws
        # The projection is per token, so it commutes with the partition: projecting first moves 3*h_dim channels
        # (not C) through the one partition copy.
        qkv = qkv.view(B, hg, ws, wg, ws, 3, h, d)
        if _windows_by_bmm(qkv):
            # On CPU SDPA pays per (window, head) for what is a 4-token problem: batched matmuls over all windows
            # and heads at once run it in a fraction of the time (the softmax runs in fp32 for reduced precision).
            q, k, v = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, B * hg * wg * h, T, d).unbind(0)
            out = torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1), v)
            out = out.view(B, hg, wg, h, ws, ws, d).permute(0, 1, 4, 2, 5, 3, 6)
        else:
            q, k, v = (t.transpose(1, 2) for t in
                       qkv.permute(5, 0, 1, 3, 2, 4, 6, 7).reshape(3, B * hg * wg, T, h, d).unbind(0))
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # output follows q's layout (B*nW, T, h, d)
            out = out.transpose(1, 2).reshape(B, hg, wg, ws, ws, h, d).transpose(2, 3)
        return _project(out.reshape(B, Hp, Wp, self.h_dim), self.h_proj, dest=dest)

    def _lofi_fused(self, q: torch.Tensor, xp: torch.Tensor, dest: torch.Tensor | None = None) -> torch.Tensor:
        """Lo-Fi attention of the scaled queries ``q`` (B, H, W, l_dim, maybe a column view) on keys and values of
        the pooled (padded) input ``xp``, projected by l_proj: (B, H, W, l_dim); written into ``dest`` (no autograd)
        when given."""
        B, H, W, _ = q.shape
        C = xp.shape[-1]
        ws, h, d = self.window_size, self.l_heads, self.head_dim
        if ws > 1:
            # Channels-last average pool of the (padded) input: a strided view, no NCHW copy.
            src = F.avg_pool2d(xp.permute(0, 3, 1, 2), ws, ws).permute(0, 2, 3, 1).reshape(B, -1, C)
        else:
            src = xp.reshape(B, -1, C)
        k, v = F.linear(src, self.l_kv.weight, self.l_kv.bias).view(B, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        q = q.reshape(B, H * W, h, d).transpose(1, 2)
        attn = _attend(q, k, v, 1.0, fused=True).transpose(1, 2).reshape(B, H, W, self.l_dim)
        return _project(attn, self.l_proj, dest=dest)

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
