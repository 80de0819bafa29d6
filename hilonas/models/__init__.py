"""The LITv2-style model family built from an ArchConfig, its named variants and its FLOPs."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hilonas.config import VARIANTS, ArchConfig, resolve_arch
from hilonas.models.hilonet import Block, ConvFFNBlock, HiLoNet, make_block

__all__ = ["HiLoNet", "Block", "ConvFFNBlock", "make_block", "create_model", "VARIANTS"]

_OVERRIDABLE = {"num_classes", "img_size", "in_chans", "drop_path_rate", "merge", "qkv_bias", "patch_size"}


def create_model(config: ArchConfig | str | Path | dict, *, fused: bool = True, pretrained: str | Path | None = None,
                 **overrides: Any) -> HiLoNet:
    """Build the network for a config, a variant name (``litv2_s``), a YAML path (an exported file too) or a dict.

    Args:
        config: what to build.
        fused: use ``F.scaled_dot_product_attention`` (True) or the explicit matmul/softmax path.
        pretrained: path of an official LITv2 checkpoint (.pth) to load (:mod:`hilonas.models.pretrained`).
        **overrides: global fields to change (num_classes, img_size, in_chans, drop_path_rate, merge, ...).
    """
    if pretrained is not None and pretrained is not False:
        from hilonas.models.pretrained import create_pretrained

        return create_pretrained(create_model, config, pretrained, fused=fused, **overrides)
    arch = resolve_arch(config)
    bad = sorted(set(overrides) - _OVERRIDABLE)
    if bad:
        raise TypeError(f"create_model got unknown argument {bad[0]!r}; overridable: {', '.join(sorted(_OVERRIDABLE))}")
    if overrides:
        arch = dataclasses.replace(arch, **overrides).validate()
    return HiLoNet(arch, fused=fused)
