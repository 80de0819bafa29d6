"""The LITv2-style network built from an ArchConfig.

Fast Vision Transformers with HiLo Attention (LITv2), Pan, Cai, Zhuang, NeurIPS 2022, arXiv 2205.13213.

Layout and state-dict names follow the reference classification model (REFERENCE.md section 2): ``patch_embed``
(Conv k=s=patch + LayerNorm); ``layers.i.blocks.j`` with ConvFFN-only blocks (``norm2``, ``mlp``) where the stage has no
attention and attention blocks (``norm1``, ``attn``, ``norm2``, ``mlp``) elsewhere; ``layers.i.downsample`` merging to
the next stage's width (a strided 2x2 conv + BatchNorm + GELU, the at-init equivalent of the deformable token merging,
or the deformable merging itself with ``merge: dtm``); ``norm`` then token average then ``head``.

The same skeleton carries the other seed systems: ``stem`` and ``merge`` pick FasterViT's or EfficientViT's conv stem
and downsampling (:func:`hilonas.layers.make_stem` / ``make_merge``), and a mixer whose registry row is a whole block
(``hat``, ``cga``, ``conv``) is built in place of the pre-norm block (:func:`make_block`).
"""
from __future__ import annotations

import torch
from torch import nn

from hilonas.config import ArchConfig, Stage
from hilonas.layers import MIXER_CLASSES, ConvFFN, build_mixer, make_merge, make_stem
from hilonas.mixers import MIXERS


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p`` while training.

    Written here rather than imported from timm: hilonas registers its models when timm is imported, so the model
    code must not import timm itself.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _drop_path(p: float) -> nn.Module:
    return DropPath(p) if p > 0 else nn.Identity()


class ConvFFNBlock(nn.Module):
    """x + drop_path(mlp(norm2(x))): the attention-free block of LITv2's early stages."""

    def __init__(self, dim: int, hidden: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ConvFFN(dim, hidden)
        self.drop_path = _drop_path(drop_path)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))

    def flops(self, H: int, W: int) -> int:
        return self.mlp.flops(H, W)


class Block(nn.Module):
    """Pre-norm transformer block with a token mixer (any attending mixer of the registry) and a ConvFFN."""

    def __init__(self, dim: int, heads: int, hidden: int, mixer: str, alpha: float, window: int, qkv_bias: bool,
                 drop_path: float = 0.0, fused: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = build_mixer(mixer, dim, heads, qkv_bias=qkv_bias, alpha=alpha, window_size=window, fused=fused)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ConvFFN(dim, hidden)
        self.drop_path = _drop_path(drop_path)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))

    def flops(self, H: int, W: int) -> int:
        return self.attn.flops(H, W) + self.mlp.flops(H, W)


def make_block(stage: Stage, hidden: int, qkv_bias: bool, drop_path: float = 0.0, fused: bool = True) -> nn.Module:
    """One block of a stage: the single place that maps a stage's fields to a module."""
    spec = MIXERS[stage.mixer]
    if spec.block:  # the layer class is the whole block (FasterViT's, EfficientViT's)
        return MIXER_CLASSES[stage.mixer].from_fields(stage.dim, stage.heads, qkv_bias=qkv_bias, alpha=stage.alpha,
                                                      window=stage.window, fused=fused, hidden=hidden,
                                                      drop_path=drop_path)
    if not spec.attention:
        return ConvFFNBlock(stage.dim, hidden, drop_path)
    return Block(stage.dim, stage.heads, hidden, stage.mixer, stage.alpha, stage.window, qkv_bias, drop_path, fused)


class BasicLayer(nn.Module):
    """One stage: its blocks, then (except for the last stage) the merge to the next stage's width."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, int, int]:
        for blk in self.blocks:
            x = blk(x, H, W)
        if self.downsample is not None:
            x, H, W = self.downsample(x, H, W)
        return x, H, W


class HiLoNet(nn.Module):
    """A LITv2-style vision transformer for one :class:`ArchConfig`, with timm's model surface."""

    def __init__(self, arch: ArchConfig, fused: bool = True) -> None:
        super().__init__()
        arch.validate()
        self.arch = arch
        self.num_classes = arch.num_classes
        self.num_features = arch.embed_dims[-1]
        self.patch_embed = make_stem(arch.stem, arch.patch_size, arch.in_chans, arch.embed_dims[0])
        total = sum(arch.depths)
        rates = (torch.linspace(0, arch.drop_path_rate, total, device="cpu").tolist() if total > 1
                 else [arch.drop_path_rate] * total)
        layers, k = [], 0
        for i, stage in enumerate(arch.stages()):
            blocks = [make_block(stage, arch.hidden_dim(i), arch.qkv_bias, rates[k + j], fused)
                      for j in range(stage.depth)]
            k += stage.depth
            down = make_merge(arch.merge, stage.dim, arch.embed_dims[i + 1]) if i + 1 < arch.num_stages else None
            layers.append(BasicLayer(blocks, down))
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, arch.num_classes) if arch.num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    @property
    def fused(self) -> bool:
        return all(m.fused for m in self._mixers())

    def _mixers(self) -> list[nn.Module]:
        """What switches between fused and explicit: each pre-norm block's mixer and each whole block (FasterViT's,
        EfficientViT's); ConvFFN-only blocks have nothing to switch."""
        out = []
        for layer in self.layers:
            for blk in layer.blocks:
                if isinstance(blk, Block):
                    out.append(blk.attn)
                elif not isinstance(blk, ConvFFNBlock):
                    out.append(blk)
        return out

    def set_fused(self, fused: bool) -> HiLoNet:
        """Switch every attention layer between the fused (SDPA) and the explicit path."""
        for m in self._mixers():
            m.fused = fused
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, C, H, W) -> normalised tokens (B, N, C) of the last stage."""
        x, H, W = self.patch_embed(x)
        for layer in self.layers:
            x, H, W = layer(x, H, W)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool={global_pool!r}: only 'avg' (token average) is supported")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            _init_weights(self.head)

    def flops(self) -> int:
        """Multiply-accumulates by the reference's analytic formulas (the fvcore count is in hilonas.models.flops)."""
        arch = self.arch
        sizes = arch.stage_resolutions()
        total = self.patch_embed.flops(arch.img_size, arch.img_size)
        for layer, (h, w) in zip(self.layers, sizes):
            total += sum(b.flops(h, w) for b in layer.blocks)
            if layer.downsample is not None:
                total += layer.downsample.flops(h, w)
        return total + self.num_features * max(arch.num_classes, 0)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
