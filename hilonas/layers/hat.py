"""FasterViT's hierarchical attention block (HAT) and the FasterViT pieces around it.

FasterViT: Fast Vision Transformers with Hierarchical Attention, Hatamizadeh et al., ICLR 2024, arXiv 2306.06189;
reference code NVlabs/FasterViT (``fastervit/models/faster_vit.py``: ``HAT``, ``TokenInitializer``,
``WindowAttention``, ``PosEmbMLPSwinv1D/2D``, ``ConvBlock``, ``Downsample``, ``PatchEmbed``). REFERENCE.md section 4.

- ``HATBlock``: the whole block of the ``hat`` mixer (it owns its norms, MLP and residuals). Carrier tokens (a
  depthwise 3x3 conv then average pooling of the map to ``ct_size`` x ``ct_size`` tokens per window) attend globally
  among themselves and pass an MLP; then every window attends over [its carrier tokens; its tokens].
- ``ConvBlock``: FasterViT's convolutional block (the ``conv`` row): 3x3 conv, BN, GELU, 3x3 conv, BN, residual.
- ``FasterViTStem`` and ``FasterViTMerge``: the stride-2 3x3 conv stem and the LayerNorm + 3x3 stride-2 downsampling.

Where hilonas' block differs from the reference (all documented in ``HATBlock``): carrier tokens are initialised from
each block's own input instead of being handed from block to block (a block is then a self-contained piece a latency
table can time; it costs one depthwise conv per block); so the MLP and output projection of the window phase skip the
carrier tokens, whose outputs the reference only hands on. With one block the window tokens' output is the reference's
exactly. Maps that the window does not tile are zero-padded right/bottom (padded tokens take part, as in HiLo) and the
output cropped; a map smaller than the window uses a window as large as the map there.

Position tables (the continuous position-bias MLPs of the reference) depend only on parameters and the map size: in
eval mode they are computed once and kept, as the reference's deploy mode does, so they are not per-image work in the
analytic FLOPs (``flops``) either. Inputs and outputs are tokens (B, H*W, C) with the map size alongside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HATBlock", "ConvBlock", "FasterViTStem", "FasterViTMerge", "CPB_HIDDEN"]

CPB_HIDDEN = 512  # width of the reference's position-table MLPs


def _check_tokens(name: str, x: torch.Tensor, H: int, W: int) -> None:
    if x.dim() != 3 or x.shape[1] != H * W:
        raise ValueError(f"{name}: expected x of shape (B, H*W={H * W}, C) for H={H}, W={W}, got {tuple(x.shape)}")


def _cpb_mlp(out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, CPB_HIDDEN, bias=True), nn.ReLU(), nn.Linear(CPB_HIDDEN, out, bias=False))


def _grid_coords(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(h*w, 2) absolute coordinates of a grid, centred and scaled as the reference's rank-2 position MLP does."""
    def axis(n: int) -> torch.Tensor:
        return (torch.arange(n, device=device, dtype=dtype) - n // 2) / max(n // 2, 1)

    ch, cw = torch.meshgrid(axis(h), axis(w), indexing="ij")
    return torch.stack([ch, cw], dim=-1).reshape(h * w, 2)


def _relative_bias(mlp: nn.Module, h: int, w: int, norm_h: int, norm_w: int, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    """(heads, h*w, h*w) continuous position bias (Swin-v2 log-spaced offsets, ``16 * sigmoid``) of an h x w grid;
    offsets are scaled by ``norm - 1`` (the reference's window size)."""
    dh = torch.arange(-(h - 1), h, device=device, dtype=dtype) / max(norm_h - 1, 1)
    dw = torch.arange(-(w - 1), w, device=device, dtype=dtype) / max(norm_w - 1, 1)
    table = torch.stack(torch.meshgrid(dh, dw, indexing="ij"), dim=-1) * 8  # 2h-1, 2w-1, 2
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    table = mlp(table).reshape(-1, mlp[-1].out_features)  # (2h-1)(2w-1), heads
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    index = (ys[:, None] - ys[None, :] + h - 1) * (2 * w - 1) + (xs[:, None] - xs[None, :] + w - 1)
    return 16 * torch.sigmoid(table[index].permute(2, 0, 1))


class _Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (the reference's ``Mlp``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Attention(nn.Module):
    """Multi-head attention with a continuous position bias among the last ``T`` keys (``cpb_mlp``); the first
    ``n_prefix`` keys (carrier tokens) get no bias. Queries can be the last ``T`` tokens only."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.cpb_mlp = _cpb_mlp(num_heads)

    def forward(self, seq: torch.Tensor, n_prefix: int, bias: torch.Tensor, fused: bool) -> torch.Tensor:
        """seq (B, S, C): keys and values over all S tokens, queries for the last S - n_prefix; bias (h, T, T)."""
        B, S, C = seq.shape
        h, d = self.num_heads, self.head_dim
        T = S - n_prefix
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(seq[:, n_prefix:], w[:C], None if b is None else b[:C]).view(B, T, h, d).transpose(1, 2)
        kv = F.linear(seq, w[C:], None if b is None else b[C:]).view(B, S, 2, h, d).permute(2, 0, 3, 1, 4)
        if n_prefix:
            bias = F.pad(bias, (n_prefix, 0))  # carrier-token keys: no position bias
        bias = bias.to(seq.dtype).unsqueeze(0)
        if fused:
            out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=bias, scale=self.scale)
        else:
            attn = (q @ kv[0].transpose(-2, -1)) * self.scale + bias
            out = attn.softmax(dim=-1) @ kv[1]
        return self.proj(out.transpose(1, 2).reshape(B, T, C))

    def flops(self, n_queries: int, n_keys: int) -> int:
        C = self.qkv.in_features
        return n_queries * C * C + n_keys * C * 2 * C + n_queries * n_keys * C * 2 + n_queries * C * C


class HATBlock(nn.Module):
    """FasterViT's hierarchical attention block: carrier tokens, global attention among them, window attention.

    For a map padded to multiples of the window (``wh`` x ``ww``, the window clipped to the map), with ``ct_size`` c:
    1. carrier tokens: ``ct_conv`` (depthwise 3x3, bias) on the map, then average pooling to a (c*nWh) x (c*nWw) grid
       with the reference's kernel and stride (stride = window // c, kernel = map - (grid - 1) * stride);
       ``hat_pos_embed`` added; ``ct += hat_attn(hat_norm1(ct))`` over all carrier tokens of the image (with a
       continuous position bias over the grid); ``ct += hat_mlp(hat_norm2(ct))``.
    2. window tokens get ``pos_embed``; each window attends over [its c*c carrier tokens; its tokens]
       (``x += attn(norm1(.))``, position bias among the window tokens only); ``x += mlp(norm2(x))``.
    ``ct_size == 0`` gives local windows only (the reference's ``hat=False`` stages). Unlike the reference, carrier
    tokens are made from each block's input and exist whenever ``ct_size > 0`` (the reference drops them when the
    map is a single window); see the module docstring.

    Submodule names follow the reference's ``HAT`` (``pos_embed.cpb_mlp``, ``norm1``, ``attn.qkv``, ``attn.proj``,
    ``norm2``, ``mlp.fc1/fc2``, ``hat_*``; the reference's ``attn.pos_emb_funct.cpb_mlp`` is ``attn.cpb_mlp`` here)
    and ``ct_conv`` is the reference's ``TokenInitializer.pos_embed``.

    Args:
        dim: channels C.
        num_heads: heads (dividing dim).
        hidden: MLP width (``mlp`` and ``hat_mlp``).
        window_size: attention window (>= 1).
        ct_size: carrier tokens per window side (0 .. window_size).
        qkv_bias: bias on the q/k/v projections.
        drop_path: stochastic depth of every residual branch.
        fused: attention through ``F.scaled_dot_product_attention`` (True) or explicit matmul + softmax.
    """

    keeps_tables = True  # position tables kept in eval mode (hilonas.models.flops runs it once before counting)

    def __init__(self, dim: int, num_heads: int, hidden: int | None = None, window_size: int = 7, ct_size: int = 2,
                 qkv_bias: bool = True, drop_path: float = 0.0, fused: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"HATBlock: dim {dim} must be divisible by num_heads {num_heads}")
        if window_size < 1 or not 0 <= ct_size <= window_size:
            raise ValueError(f"HATBlock: need window_size >= 1 and 0 <= ct_size <= window_size, got {window_size}, "
                             f"{ct_size}")
        hidden = hidden or 4 * dim
        self.dim, self.num_heads, self.hidden = dim, num_heads, hidden
        self.window_size, self.ct_size = window_size, ct_size
        self.fused = fused
        self.pos_embed = nn.Module()
        self.pos_embed.cpb_mlp = _cpb_mlp(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, hidden)
        if ct_size > 0:
            self.ct_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
            self.hat_pos_embed = nn.Module()
            self.hat_pos_embed.cpb_mlp = _cpb_mlp(dim)
            self.hat_norm1 = nn.LayerNorm(dim)
            self.hat_attn = _Attention(dim, num_heads, qkv_bias)
            self.hat_norm2 = nn.LayerNorm(dim)
            self.hat_mlp = _Mlp(dim, hidden)
        self.drop_path = drop_path
        self._tables: dict[tuple, tuple[torch.Tensor, ...]] = {}

    @classmethod
    def from_fields(cls, dim: int, heads: int, *, qkv_bias: bool, alpha: float, window: int, fused: bool,
                    hidden: int | None = None, drop_path: float = 0.0) -> HATBlock:
        return cls(dim, heads, hidden, window_size=window, ct_size=carrier_size(alpha, window), qkv_bias=qkv_bias,
                   drop_path=drop_path, fused=fused)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, hidden={self.hidden}, window_size={self.window_size}, "
                f"ct_size={self.ct_size}, fused={self.fused}")

    # -- geometry ------------------------------------------------------------------------------------------------
    def _geometry(self, H: int, W: int) -> dict[str, int]:
        H, W = int(H), int(W)  # a tracer may hand the sizes in as tensors
        wh, ww = min(self.window_size, H), min(self.window_size, W)
        Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
        g = dict(wh=wh, ww=ww, Hp=Hp, Wp=Wp, nh=Hp // wh, nw=Wp // ww, ch=0, cw=0)
        if self.ct_size:
            g["ch"], g["cw"] = min(self.ct_size, wh), min(self.ct_size, ww)
        return g

    # -- position tables: parameters and map size only; kept in eval mode -----------------------------------------
    def _position_tables(self, g: dict[str, int], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        key = (g["wh"], g["ww"], g["ch"], g["cw"], g["nh"], g["nw"], device, dtype)
        if not self.training and key in self._tables:
            return self._tables[key]
        wh, ww, ws = g["wh"], g["ww"], self.window_size
        tables: tuple[torch.Tensor, ...] = (
            self.pos_embed.cpb_mlp(_grid_coords(wh, ww, device, dtype)),
            _relative_bias(self.attn.cpb_mlp, wh, ww, ws, ws, device, dtype))
        if self.ct_size:
            gh, gw = g["ch"] * g["nh"], g["cw"] * g["nw"]
            tables += (self.hat_pos_embed.cpb_mlp(_grid_coords(gh, gw, device, dtype)),
                       _relative_bias(self.hat_attn.cpb_mlp, gh, gw, gh, gw, device, dtype))
        if not self.training and not torch.jit.is_tracing():
            self._tables[key] = tuple(t.detach() for t in tables)
        return tables

    def train(self, mode: bool = True) -> HATBlock:
        if mode:  # parameters may change from here on; eval -> eval keeps the tables
            self._tables = {}
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._tables = {}
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._tables = {}
        super()._load_from_state_dict(*args, **kwargs)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0.0:
            return x
        keep = 1.0 - self.drop_path
        return x * x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep).div_(keep)

    # -- forward -------------------------------------------------------------------------------------------------
    def carrier_tokens(self, m: torch.Tensor, g: dict[str, int]) -> torch.Tensor:
        """(B, C, Hp, Wp) padded map -> (B, gh*gw, C) carrier tokens in raster order (before their attention)."""
        gh, gw = g["ch"] * g["nh"], g["cw"] * g["nw"]
        sh, sw = g["wh"] // g["ch"], g["ww"] // g["cw"]
        kh, kw = g["Hp"] - (gh - 1) * sh, g["Wp"] - (gw - 1) * sw
        ct = F.avg_pool2d(self.ct_conv(m), (kh, kw), (sh, sw))
        return ct.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        _check_tokens("HATBlock", x, H, W)
        B, N, C = x.shape
        g = self._geometry(H, W)
        wh, ww, Hp, Wp, nh, nw = g["wh"], g["ww"], g["Hp"], g["Wp"], g["nh"], g["nw"]
        tables = self._position_tables(g, x.device, x.dtype)
        m = x.reshape(B, H, W, C)
        if (Hp, Wp) != (H, W):
            m = F.pad(m, (0, 0, 0, Wp - W, 0, Hp - H))
        windows = m.reshape(B, nh, wh, nw, ww, C).transpose(2, 3).reshape(B * nh * nw, wh * ww, C)
        windows = windows + tables[0]
        n_ct = 0
        if self.ct_size:
            ch, cw = g["ch"], g["cw"]
            ct = self.carrier_tokens(m.permute(0, 3, 1, 2), g) + tables[2]
            ct = ct + self._drop(self.hat_attn(self.hat_norm1(ct), 0, tables[3], self.fused))
            ct = ct + self._drop(self.hat_mlp(self.hat_norm2(ct)))
            ct = ct.reshape(B, nh, ch, nw, cw, C).transpose(2, 3).reshape(B * nh * nw, ch * cw, C)
            n_ct = ch * cw
            seq = torch.cat([ct, windows], dim=1)
        else:
            seq = windows
        windows = windows + self._drop(self.attn(self.norm1(seq), n_ct, tables[1], self.fused))
        windows = windows + self._drop(self.mlp(self.norm2(windows)))
        out = windows.reshape(B, nh, nw, wh, ww, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        if (Hp, Wp) != (H, W):
            out = out[:, :H, :W, :]
        return out.reshape(B, N, C)

    def flops(self, H: int, W: int) -> int:
        """Multiply-accumulates per image (position tables excluded: kept in eval mode, as deployed)."""
        g = self._geometry(H, W)
        C, hid = self.dim, self.hidden
        n_win, T = g["nh"] * g["nw"], g["wh"] * g["ww"]
        Np = g["Hp"] * g["Wp"]
        n_ct = g["ch"] * g["cw"]
        total = n_win * self.attn.flops(T, T + n_ct) + Np * C * hid * 2
        if self.ct_size:
            G = n_ct * n_win
            total += Np * C * 9 + self.hat_attn.flops(G, G) + G * C * hid * 2
        return total


def carrier_size(alpha: float, window: int) -> int:
    """Carrier tokens per window side for a stage's alpha: ``int(alpha * window + 0.5)`` (0 = local windows only)."""
    return int(alpha * window + 0.5)


class ConvBlock(nn.Module):
    """FasterViT's conv block: ``conv1`` 3x3 (C -> hidden) -> ``norm1`` BN -> GELU -> ``conv2`` 3x3 (hidden -> C) ->
    ``norm2`` BN, residual. FasterViT uses hidden = C (mlp_ratio 1)."""

    def __init__(self, dim: int, hidden: int | None = None, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = hidden or dim
        self.dim, self.hidden = dim, hidden
        self.conv1 = nn.Conv2d(dim, hidden, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(hidden, dim, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.drop_path = drop_path
        self.fused = True  # no attention: nothing to switch

    @classmethod
    def from_fields(cls, dim: int, heads: int, *, qkv_bias: bool, alpha: float, window: int, fused: bool,
                    hidden: int | None = None, drop_path: float = 0.0) -> ConvBlock:
        return cls(dim, hidden, drop_path)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        _check_tokens("ConvBlock", x, H, W)
        B, N, C = x.shape
        m = x.transpose(1, 2).reshape(B, C, H, W)
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(m)))))
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            y = y * y.new_empty(B, 1, 1, 1).bernoulli_(keep).div_(keep)
        return x + y.flatten(2).transpose(1, 2)

    def flops(self, H: int, W: int) -> int:
        return H * W * 9 * self.dim * self.hidden * 2


class FasterViTStem(nn.Module):
    """FasterViT's stem: log2(patch_size) stride-2 3x3 convs (no bias) each with BatchNorm (eps 1e-4) and ReLU, all
    ``embed_dim`` wide (FasterViT-0's in_dim = dim = 64). ``forward(img)`` returns ``(tokens, H, W)``."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 64) -> None:
        super().__init__()
        n = stride2_steps(patch_size)
        self.patch_size, self.in_chans, self.embed_dim = patch_size, in_chans, embed_dim
        layers: list[nn.Module] = []
        c = in_chans
        for _ in range(n):
            layers += [nn.Conv2d(c, embed_dim, 3, 2, 1, bias=False), nn.BatchNorm2d(embed_dim, eps=1e-4), nn.ReLU()]
            c = embed_dim
        self.conv_down = nn.Sequential(*layers)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        if img.dim() != 4 or img.shape[1] != self.in_chans:
            raise ValueError(f"FasterViTStem: expected an image batch (B, {self.in_chans}, H, W), got "
                             f"{tuple(img.shape)}")
        m = self.conv_down(img)
        return m.flatten(2).transpose(1, 2), m.shape[-2], m.shape[-1]

    def flops(self, H_img: int, W_img: int) -> int:
        total, h, w, c = 0, H_img, W_img, self.in_chans
        for _ in range(stride2_steps(self.patch_size)):
            h, w = -(-h // 2), -(-w // 2)
            total += h * w * 9 * c * self.embed_dim
            c = self.embed_dim
        return total


class FasterViTMerge(nn.Module):
    """FasterViT's downsampling: ``norm`` (LayerNorm over channels) then ``reduction`` 3x3 stride-2 conv (no bias).
    ``forward(x, H, W)`` returns ``(tokens, ceil(H/2), ceil(W/2))``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.norm = nn.LayerNorm(in_dim)
        self.reduction = nn.Conv2d(in_dim, out_dim, 3, 2, 1, bias=False)

    @staticmethod
    def output_size(H: int, W: int) -> tuple[int, int]:
        return -(-H // 2), -(-W // 2)

    def forward(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, int, int]:
        _check_tokens("FasterViTMerge", x, H, W)
        B, N, C = x.shape
        m = self.reduction(self.norm(x).transpose(1, 2).reshape(B, C, H, W))
        return m.flatten(2).transpose(1, 2), m.shape[-2], m.shape[-1]

    def flops(self, H: int, W: int) -> int:
        H2, W2 = self.output_size(H, W)
        return H2 * W2 * 9 * self.in_dim * self.out_dim


def stride2_steps(patch_size: int) -> int:
    """How many stride-2 convs a conv stem needs for ``patch_size`` (a power of two >= 2); ValueError otherwise."""
    if patch_size < 2 or patch_size & (patch_size - 1):
        raise ValueError(f"a conv stem needs a patch_size that is a power of two >= 2, got {patch_size}")
    return patch_size.bit_length() - 1
