"""Registration of hilonas models with timm: ``timm.create_model('litv2_s')``,
``timm.create_model('hilonas_fastervit_0')`` (FasterViT-0 and EfficientViT-M0 / M5 rebuilt in hilonas' family get a
``hilonas_`` prefix, so timm's own ``efficientvit_m0`` and fastervit's ``faster_vit_0_224`` are left alone) and
``timm.create_model('hilonas_arch', config='exported.yaml')``.

Nothing is downloaded: ``pretrained=True`` loads only a local file named by ``pretrained_cfg_overlay=dict(file=PATH)``
(an official LITv2 checkpoint, :mod:`hilonas.models.pretrained`) and is refused without one.
"""
from __future__ import annotations

from typing import Any

from timm.models import register_model

from hilonas.errors import HilonasError
from hilonas.models import HiLoNet, create_model


def _build(config: Any, pretrained: bool, kwargs: dict[str, Any]) -> HiLoNet:
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not overlay.get("file"):
        raise HilonasError("pretrained=True: hilonas downloads nothing; pass the checkpoint file with "
                           "pretrained_cfg_overlay=dict(file=PATH), or use hilonas.create_model(name, pretrained=PATH)")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return create_model(config, pretrained=overlay["file"] if pretrained else None, **kwargs)


@register_model
def litv2_s(pretrained: bool = False, **kwargs: Any) -> HiLoNet:
    """LITv2-S: C=96, depths 2-2-6-2, heads 3-6-12-24, alpha 0.9, windows [-, -, 2, 1]."""
    return _build("litv2_s", pretrained, kwargs)


@register_model
def litv2_m(pretrained: bool = False, **kwargs: Any) -> HiLoNet:
    """LITv2-M: C=96, depths 2-2-18-2, heads 3-6-12-24."""
    return _build("litv2_m", pretrained, kwargs)


@register_model
def litv2_b(pretrained: bool = False, **kwargs: Any) -> HiLoNet:
    """LITv2-B: C=128, depths 2-2-18-2, heads 4-8-16-32."""
    return _build("litv2_b", pretrained, kwargs)


@register_model
def hilonas_fastervit_0(pretrained: bool = False, **kwargs: Any) -> HiLoNet:
    """FasterViT-0 in hilonas' family: dims 64-128-256-512, depths 2-3-6-5, conv blocks, then HAT (window 7)."""
    return _build("fastervit_0", pretrained, kwargs)


@register_model
def hilonas_efficientvit_m0(pretrained: bool = False, **kwargs: Any) -> HiLoNet:
    """EfficientViT-M0 in hilonas' family: dims 64-128-192, depths 1-2-3, 4 heads of cascaded group attention."""
    return _build("efficientvit_m0", pretrained, kwargs)


@register_model
def hilonas_efficientvit_m5(pretrained: bool = False, **kwargs: Any) -> HiLoNet:
    """EfficientViT-M5 in hilonas' family: dims 192-288-384, depths 1-3-4, heads 3-3-4."""
    return _build("efficientvit_m5", pretrained, kwargs)


# The timm name of every named variant of hilonas.config.VARIANTS.
TIMM_NAMES = {"litv2_s": "litv2_s", "litv2_m": "litv2_m", "litv2_b": "litv2_b",
              "fastervit_0": "hilonas_fastervit_0", "efficientvit_m0": "hilonas_efficientvit_m0",
              "efficientvit_m5": "hilonas_efficientvit_m5"}


@register_model
def hilonas_arch(pretrained: bool = False, config: Any = None, **kwargs: Any) -> HiLoNet:
    """Any hilonas architecture: ``config`` is an ArchConfig, a dict, a variant name or a YAML path (exports too)."""
    if config is None:
        raise HilonasError("hilonas_arch needs config=PATH (an exported YAML), a dict or an ArchConfig")
    return _build(config, pretrained, kwargs)
