"""Layers of hilonas: token mixers (HiLo and baselines) and the blocks around them. Imports nothing else of hilonas."""

from hilonas.layers.attention import MIXER_CLASSES, MIXER_KINDS, MSA, SRA, HiLo, WindowAttention, build_mixer
from hilonas.layers.blocks import MERGE_KINDS, ConvFFN, DWConv, Merge, PatchEmbed

__all__ = [
    "HiLo", "MSA", "SRA", "WindowAttention", "build_mixer", "MIXER_CLASSES", "MIXER_KINDS",
    "ConvFFN", "DWConv", "PatchEmbed", "Merge", "MERGE_KINDS",
]
