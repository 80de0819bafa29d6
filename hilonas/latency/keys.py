"""Block keys: the distinct pieces of work a network runs, as canonical hashable keys.

A latency table stores whole blocks (fused kernels and memory traffic do not add up op by op), so a network is the
multiset of its blocks: the stem (patch embed), every transformer/ConvFFN block (identical blocks repeated by depth are
one key counted n times), the merges between stages and the head. Batch, dtype and threads belong to the table's
hardware fingerprint, not to the key. No torch import here: the predictor must stay microsecond-cheap.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from hilonas import mixers
from hilonas.config import ArchConfig, Stage

KINDS = ("stem", "block", "merge", "head")


@dataclass(frozen=True, order=True)
class BlockKey:
    """One measurable block. Fields a kind does not use are 0 / '' so equal blocks get equal keys.

    stem:  in_chans=in_chans, dim=embed dim, patch=patch size, h/w = image size, mixer=stem kind ('' for the
           default patch stem, so its keys are unchanged)
    block: dim, hidden (ConvFFN width), mixer, h/w = token map, and what the mixer's registry row keys
           (:mod:`hilonas.mixers`): heads and qkv_bias for attention, lofi = the row's ``split`` of alpha (HiLo:
           Lo-Fi heads), window when the row uses it
    merge: in_chans=input dim, dim=output dim, mixer=merge type, h/w = input token map
    head:  dim, hidden=num_classes, h/w = token map
    """

    kind: str
    dim: int
    h: int
    w: int
    in_chans: int = 0
    heads: int = 0
    hidden: int = 0
    mixer: str = ""
    lofi: int = 0
    window: int = 0
    patch: int = 0
    qkv_bias: bool = False

    @property
    def id(self) -> str:
        """Stable, readable text id (the key used in table files)."""
        k = self.kind
        if k == "stem":
            kind = f"{self.mixer}:" if self.mixer else ""
            return f"stem:{kind}c{self.in_chans}:d{self.dim}:p{self.patch}:{self.h}x{self.w}"
        if k == "merge":
            return f"merge:{self.mixer}:c{self.in_chans}:d{self.dim}:{self.h}x{self.w}"
        if k == "head":
            return f"head:d{self.dim}:n{self.hidden}:{self.h}x{self.w}"
        parts = [f"block:{self.mixer}", f"d{self.dim}", f"f{self.hidden}"]
        spec = mixers.MIXERS.get(self.mixer)  # a mixer this hilonas does not know: every field, so ids stay distinct
        attention = spec is None or spec.attention
        if attention:
            parts += [f"h{self.heads}"]
        if attention and (spec is None or spec.split is not None):
            parts += [f"lo{self.lofi}"]
        if attention and (spec is None or spec.window is not None):
            parts += [f"w{self.window}"]
        if attention:
            parts += ["b1" if self.qkv_bias else "b0"]
        return ":".join(parts) + f":{self.h}x{self.w}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockKey:
        return cls(**data)


def stem_key(arch: ArchConfig, dim: int) -> BlockKey:
    return BlockKey("stem", dim, arch.img_size, arch.img_size, in_chans=arch.in_chans, patch=arch.patch_size,
                    mixer="" if arch.stem == "patch" else arch.stem)


def block_key(stage: Stage, hidden: int, h: int, w: int, qkv_bias: bool) -> BlockKey:
    """Key of one block of a stage on an h x w token map: the fields its mixer's registry row says matter."""
    spec = mixers.get(stage.mixer)
    if not spec.attention:
        return BlockKey("block", stage.dim, h, w, hidden=hidden, mixer=stage.mixer)
    # Only what changes the computation enters the key (HiLo: alphas giving the same head split are one block).
    lofi = mixers.split_of(stage.mixer, stage.heads, stage.alpha, stage.window)
    window = stage.window if spec.window is not None else 0
    return BlockKey("block", stage.dim, h, w, heads=stage.heads, hidden=hidden, mixer=stage.mixer, lofi=lofi,
                    window=window, qkv_bias=qkv_bias)


def merge_key(in_dim: int, out_dim: int, merge: str, h: int, w: int) -> BlockKey:
    """Key of the merge from a stage of width in_dim on an h x w map to the next stage's width."""
    return BlockKey("merge", out_dim, h, w, in_chans=in_dim, mixer=merge)


def head_key(dim: int, num_classes: int, h: int, w: int) -> BlockKey:
    return BlockKey("head", dim, h, w, hidden=num_classes)


def arch_blocks(arch: ArchConfig) -> Counter[BlockKey]:
    """The blocks ``arch`` runs, each with how many times it runs (a Counter keeps insertion order)."""
    sizes = arch.stage_resolutions()
    blocks: Counter[BlockKey] = Counter()
    blocks[stem_key(arch, arch.embed_dims[0])] += 1
    for i, (h, w) in enumerate(sizes):
        if i > 0:
            blocks[merge_key(arch.embed_dims[i - 1], arch.embed_dims[i], arch.merge, *sizes[i - 1])] += 1
        blocks[block_key(arch.stage(i), arch.hidden_dim(i), h, w, arch.qkv_bias)] += arch.depths[i]
    blocks[head_key(arch.embed_dims[-1], arch.num_classes, *sizes[-1])] += 1
    return blocks
