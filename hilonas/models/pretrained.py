"""Official LITv2 checkpoints into hilonas models: ``hilonas.create_model('litv2_s', pretrained=PATH)``.

The published classification checkpoints (ziplab/LITv2, ``classification/``) are ``torch.save`` files holding either
a state dict or a training checkpoint ``{'model': state_dict, ...}``. They are read with
``torch.load(weights_only=True)``, so a file can hold tensors and plain containers only: a checkpoint that also
pickles its training config object is refused with the one-line fix (re-save its ``'model'`` entry alone).

Key layout: hilonas keeps the reference's names (REFERENCE.md sections 1-2: ``patch_embed``, ``layers.i.blocks.j``
with ``norm1``/``attn.{h_qkv,h_proj,l_q,l_kv,l_proj}``/``norm2``/``mlp.{fc1,dwconv.dwconv,fc2}``, ``norm``,
``head``), except in the deformable token merging between stages, where the reference's deformable convolution
module ``dconv`` (weight and bias) holds its offset convolution as ``dconv.conv_offset`` and the BatchNorm is
``norm_layer``. :data:`REFERENCE_RENAMES` maps them to :class:`hilonas.layers.Merge`'s ``conv``, ``offset_conv``
and ``norm``. Both offset layouts are one (dy, dx) pair per kernel tap in tap order, so the offset weights copy as
they are. A checkpoint with offsets builds the network with ``merge='dtm'`` unless the caller asks for another merge
(then the offsets are reported as unexpected: a plain strided conv equals DTM only at zero offsets).

What does not fit is reported, not hidden: keys the model has and the checkpoint lacks (missing), keys the
checkpoint has and the model lacks (unexpected), and tensors whose shapes differ (mismatched; a classifier for
another number of classes is left at its initialisation, as timm does). The report is kept on the model as
``model.pretrained_report`` and a warning names what did not load.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hilonas.errors import HilonasError

__all__ = ["REFERENCE_RENAMES", "LoadReport", "read_checkpoint", "map_reference_keys", "load_pretrained",
           "create_pretrained"]

# (pattern, replacement) applied in order to every key of a reference checkpoint.
REFERENCE_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^(layers\.\d+\.downsample\.)dconv\.conv_offset\.", r"\1offset_conv."),
    (r"^(layers\.\d+\.downsample\.)dconv\.", r"\1conv."),
    (r"^(layers\.\d+\.downsample\.)norm_layer\.", r"\1norm."),
)
_PREFIXES = ("module.",)  # a checkpoint saved from a DistributedDataParallel wrapper
_HEAD = ("head.weight", "head.bias")


@dataclass
class LoadReport:
    """What a checkpoint gave the model: ``loaded`` tensors, and what did not fit."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        parts = [f"{self.loaded} tensors loaded from {self.source}"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing (kept at initialisation: {', '.join(self.missing[:4])}"
                         f"{', ...' if len(self.missing) > 4 else ''})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected (ignored: {', '.join(self.unexpected[:4])}"
                         f"{', ...' if len(self.unexpected) > 4 else ''})")
        if self.mismatched:
            k, got, want = self.mismatched[0]
            parts.append(f"{len(self.mismatched)} with other shapes (kept at initialisation: {k} is {list(got)} in "
                         f"the checkpoint, {list(want)} in the model{', ...' if len(self.mismatched) > 1 else ''})")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": self.loaded, "missing": list(self.missing),
                "unexpected": list(self.unexpected),
                "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched]}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state dict in ``path`` (``torch.load(weights_only=True)``, on the CPU), unwrapped from ``{'model': ...}``
    (or ``{'state_dict': ...}``) and from a ``module.`` prefix.

    Raises:
        HilonasError: naming the path and the fix for a missing or unreadable file, a file holding Python objects
            beyond tensors, or one without a state dict.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise HilonasError(f"pretrained={str(path)!r} {what}: give the path of a LITv2 checkpoint file (.pth)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise HilonasError(f"pretrained={str(path)!r} cannot be read as a PyTorch checkpoint (not a file saved "
                               "with torch.save): give the LITv2 .pth file") from None
        raise HilonasError(f"pretrained={str(path)!r} holds Python objects beyond tensors (a pickled "
                           f"{found.group(1)}), which hilonas does not unpickle: re-save its weights alone, e.g. "
                           "torch.save(torch.load(p, weights_only=False)['model'], 'weights.pth') in an environment "
                           "you trust") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise HilonasError(f"pretrained={str(path)!r} cannot be read as a PyTorch checkpoint ({first}): give a "
                           ".pth file saved with torch.save") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HilonasError(f"pretrained={str(path)!r} holds no state dict (a mapping of names to tensors, or "
                           "{'model': state_dict}): give a LITv2 classification checkpoint")
    out = {}
    for key, value in obj.items():
        key = str(key)
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def map_reference_keys(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` with the reference's names turned into hilonas' (:data:`REFERENCE_RENAMES`); names hilonas
    already uses pass unchanged."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in REFERENCE_RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def has_offsets(state_dict: dict[str, Any]) -> bool:
    """Whether a (mapped) state dict carries deformable-merging offset convolutions."""
    return any(".downsample.offset_conv." in k for k in state_dict)


def load_pretrained(model: Any, source: str | Path | dict[str, Any], *, strict: bool = False) -> LoadReport:
    """Copy a LITv2 checkpoint (a path, or a state dict in either layout) into ``model``; return what fitted.

    Tensors whose shapes differ are left at their initialisation and reported (the classifier of a model built for
    another number of classes, typically). With ``strict`` anything missing, unexpected or mismatched other than
    the classifier raises HilonasError naming it.
    """
    import torch

    name = str(source) if not isinstance(source, dict) else "<state dict>"
    sd = map_reference_keys(read_checkpoint(source) if not isinstance(source, dict) else source)
    own = model.state_dict()
    report = LoadReport(name)
    fits = {}
    for key, value in sd.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            fits[key] = value
    report.missing = sorted(k for k in own if k not in sd)
    report.unexpected.sort()
    if strict:
        bad = report.missing + report.unexpected + [k for k, _, _ in report.mismatched if k not in _HEAD]
        if bad:
            raise HilonasError(f"pretrained={name!r} does not fit the model: {report.describe()}; build the variant "
                               "the checkpoint was trained as (litv2_s, litv2_m, litv2_b) or load with strict=False")
    with torch.no_grad():
        model.load_state_dict(fits, strict=False)
    report.loaded = len(fits)
    return report


def create_pretrained(build: Callable[..., Any], config: Any, path: str | Path, *, fused: bool = True,
                      **overrides: Any) -> Any:
    """``build(config, fused=..., **overrides)`` (:func:`hilonas.create_model`, which passes itself, so this module
    imports nothing of hilonas.models) with the checkpoint at ``path`` loaded (see the module docstring).

    ``merge`` defaults to 'dtm' when the checkpoint carries offsets. The :class:`LoadReport` is set as
    ``model.pretrained_report``; a warning names what did not load.
    """
    if isinstance(path, bool):
        raise HilonasError("pretrained=True: hilonas downloads nothing; give pretrained=PATH, the path of a LITv2 "
                           "checkpoint file (.pth) you downloaded")
    sd = map_reference_keys(read_checkpoint(path))
    if "merge" not in overrides and has_offsets(sd):
        overrides["merge"] = "dtm"
    model = build(config, fused=fused, **overrides)
    report = load_pretrained(model, sd)
    report.source = str(path)
    model.pretrained_report = report
    if not report.complete:
        warnings.warn(f"pretrained weights: {report.describe()}", stacklevel=2)
    return model
