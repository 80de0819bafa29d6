"""Layers of hilonas: token mixers (HiLo, baselines, FasterViT's HAT, EfficientViT's CGA) and the blocks, stems and
merges around them. Imports nothing else of hilonas."""

from torch import nn

from hilonas.layers.attention import MIXER_CLASSES, MSA, SRA, HiLo, WindowAttention, build_mixer
from hilonas.layers.blocks import MERGE_KINDS, ConvFFN, DWConv, Merge, PatchEmbed
from hilonas.layers.cga import CascadedGroupAttention, CGABlock, EfficientViTMerge, EfficientViTStem
from hilonas.layers.hat import ConvBlock, FasterViTMerge, FasterViTStem, HATBlock

# The whole-block mixers join the class map here (attention.py holds the attention layers' own entries): every
# import of hilonas.layers runs this before build_mixer can be called.
MIXER_CLASSES.update({"hat": HATBlock, "cga": CGABlock, "conv": ConvBlock})

STEM_CLASSES: dict[str, type[nn.Module]] = {"patch": PatchEmbed, "fastervit": FasterViTStem,
                                            "efficientvit": EfficientViTStem}
MERGE_CLASSES: dict[str, type[nn.Module]] = {"fastervit": FasterViTMerge, "efficientvit": EfficientViTMerge}


def make_stem(kind: str, patch_size: int, in_chans: int, embed_dim: int) -> nn.Module:
    """The stem of ``kind`` (a key of ``STEM_CLASSES``): ``forward(img)`` returns ``(tokens, H, W)``; has
    ``flops(H, W)``."""
    if kind not in STEM_CLASSES:
        raise ValueError(f"unknown stem {kind!r}; expected one of {', '.join(STEM_CLASSES)}")
    return STEM_CLASSES[kind](patch_size, in_chans, embed_dim)


def make_merge(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """The merge of ``kind`` ('conv', 'dtm' or a key of ``MERGE_CLASSES``): ``forward(x, H, W)`` returns
    ``(tokens, ceil(H/2), ceil(W/2))``, ``flops(H, W)``."""
    if kind in MERGE_CLASSES:
        return MERGE_CLASSES[kind](in_dim, out_dim)
    return Merge(in_dim, out_dim, kind)


__all__ = [
    "HiLo", "MSA", "SRA", "WindowAttention", "build_mixer", "MIXER_CLASSES",
    "HATBlock", "ConvBlock", "CGABlock", "CascadedGroupAttention",
    "ConvFFN", "DWConv", "PatchEmbed", "Merge", "MERGE_KINDS", "STEM_CLASSES", "MERGE_CLASSES", "make_stem",
    "make_merge", "FasterViTStem", "FasterViTMerge", "EfficientViTStem", "EfficientViTMerge",
]
