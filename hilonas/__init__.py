"""hilonas: hardware-aware architecture search for vision transformers built on HiLo attention (LITv2).

``import hilonas`` stays light (no torch), so the ``hilonas`` command starts instantly. The timm registration of
``litv2_s``/``litv2_m``/``litv2_b``/``hilonas_arch`` happens as soon as timm is imported, before or after hilonas.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any

__version__ = "0.1.0"
__all__ = ["ArchConfig", "SearchSpace", "create_model", "__version__"]


def _register_timm() -> None:
    import hilonas.models.timm_registry  # noqa: F401  (registers on import)


class _TimmHook(importlib.abc.MetaPathFinder):
    """Registers hilonas models right after ``import timm`` finishes, so the order of imports does not matter."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_register(module: Any) -> None:
            exec_module(module)
            # hilonas' own model code never imports timm, so hilonas.models can always be imported here.
            _register_timm()

        loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


if "timm" in sys.modules:
    _register_timm()
elif not any(isinstance(f, _TimmHook) for f in sys.meta_path):
    sys.meta_path.insert(0, _TimmHook())


def __getattr__(name: str) -> Any:
    if name == "ArchConfig":
        from hilonas.config import ArchConfig

        return ArchConfig
    if name == "SearchSpace":
        from hilonas.spaces import SearchSpace

        return SearchSpace
    if name == "create_model":
        from hilonas.models import create_model

        return create_model
    raise AttributeError(f"module 'hilonas' has no attribute {name!r}")
