"""Registration of hilonas models with timm: ``timm.create_model('litv2_s')`` and
``timm.create_model('hilonas_arch', config='exported.yaml')``.

Nothing is downloaded: ``pretrained=True`` is refused (load weights from a file with ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

from typing import Any

from timm.models import register_model

from hilonas.errors import HilonasError
from hilonas.models import HiLoNet, create_model


def _build(config: Any, pretrained: bool, kwargs: dict[str, Any]) -> HiLoNet:
    if pretrained:
        raise HilonasError("pretrained=True: hilonas downloads nothing; build with pretrained=False and load a "
                           "state dict from a file (torch.load(path, weights_only=True))")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return create_model(config, **kwargs)


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
def hilonas_arch(pretrained: bool = False, config: Any = None, **kwargs: Any) -> HiLoNet:
    """Any hilonas architecture: ``config`` is an ArchConfig, a dict, a variant name or a YAML path (exports too)."""
    if config is None:
        raise HilonasError("hilonas_arch needs config=PATH (an exported YAML), a dict or an ArchConfig")
    return _build(config, pretrained, kwargs)
