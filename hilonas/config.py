"""ArchConfig: the one description of an architecture that every part of hilonas speaks.

A frozen dataclass of per-stage tuples (the shape timm uses for per-stage hyperparameters), so the same config always
gives the same model, the same latency block keys and the same exported file. No torch import here.

Per-stage fields (one entry per stage):
    depths       blocks in the stage (>= 1)
    embed_dims   channel width
    num_heads    attention heads (ignored where the mixer is 'none')
    mlp_ratios   ConvFFN hidden width = round(dim * ratio)
    mixers       a name of the mixer registry (:mod:`hilonas.mixers`): 'none' (ConvFFN-only blocks, LITv2
                 stages 0-1), 'hilo', 'msa', 'sra', 'window', 'hat' and 'conv' (FasterViT's blocks), 'cga'
                 (EfficientViT's block)
    alphas       in [0, 1]; what it means (HiLo: share of Lo-Fi heads) is the mixer's registry row
    window_sizes >= 1; what it means (HiLo window, SRA reduction ratio, ...) is the mixer's registry row

Global fields include ``stem`` (how the image becomes tokens: 'patch', LITv2's conv k = s = patch + LayerNorm;
'fastervit' and 'efficientvit', their stride-2 3x3 conv stems, for a patch_size that is a power of two) and ``merge``
(between stages: 'conv' / 'dtm', LITv2's; 'fastervit', LayerNorm + 3x3 stride-2 conv; 'efficientvit', its
subsampling block). ``stem`` is written to dicts and files only when it is not 'patch', so every config written
before it existed reads and writes unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hilonas import mixers as _mixers
from hilonas.errors import ConfigError
from hilonas.mixers import MIXERS, lofi_heads  # noqa: F401  (re-exported: the registry is the one mixer list)

MERGES = ("conv", "dtm", "fastervit", "efficientvit")
STEMS = ("patch", "fastervit", "efficientvit")
STAGE_FIELDS = ("depth", "dim", "heads", "mlp_ratio", "mixer", "alpha", "window")


def check_stage_mapping(i: int, st: Any) -> None:
    """Stage ``i`` of an architecture or a space is a mapping of known stage fields with depth and dim (values are
    checked by the caller). Raises ConfigError naming the stage and the field."""
    if not isinstance(st, dict):
        raise ConfigError(f"stages[{i}] must be a mapping with {', '.join(STAGE_FIELDS)}")
    bad = sorted(set(st) - set(STAGE_FIELDS), key=str)
    if bad:
        raise ConfigError(f"stages[{i}].{bad[0]} is not a stage field: allowed are {', '.join(STAGE_FIELDS)}")
    for key in ("depth", "dim"):
        if key not in st:
            raise ConfigError(f"stages[{i}].{key} is missing: every stage needs depth and dim")
_PER_STAGE = ("depths", "embed_dims", "num_heads", "mlp_ratios", "mixers", "alphas", "window_sizes")
GLOBAL_FIELDS = ("img_size", "patch_size", "in_chans", "num_classes", "merge", "qkv_bias", "drop_path_rate", "pad",
                 "stem")
# The largest value of each field hilonas builds: far beyond any real network, so a slip (an extra zero, a pasted
# seed) is one line naming the field instead of an out-of-memory crash or an integer overflow inside torch.
LIMITS: dict[str, float] = {"img_size": 8192, "patch_size": 1024, "in_chans": 1024, "num_classes": 1_000_000,
                            "depth": 1024, "dim": 65536, "heads": 4096, "mlp_ratio": 64, "window": 1024}
# Fields within their limits still combine into networks no machine holds (dim 65536 with full attention asks for
# 48 GiB of weights; a 8192 px image cut into 1 px patches, 2**26 tokens): refused by size, before torch allocates.
MAX_PARAMS = 2_000_000_000  # LITv2-B has 87 M; ViT-G 1.8 G
MAX_STAGE_VALUES = 2**31  # one image's widest activation in a stage (tokens x channels)
MAX_ATTENDED_TOKENS = 2**20  # tokens of a stage with attention (its cost grows with their square)


def _finite(value: Any) -> bool:
    """False only for a float that is inf or nan (YAML's .inf and .nan); other types are judged elsewhere."""
    return not isinstance(value, float) or math.isfinite(value)


def _over_limit(field: str, value: float) -> str | None:
    """``'<field>=<value> is larger than <limit>, ...'`` when ``value`` exceeds :data:`LIMITS`, else None."""
    if value > LIMITS[field]:
        return f"{field}={value} is larger than {LIMITS[field]:g}, the most hilonas builds: use a smaller value"
    return None


class Stage(NamedTuple):
    """One stage of an ArchConfig, as the user writes it in YAML."""

    depth: int
    dim: int
    heads: int
    mlp_ratio: float
    mixer: str
    alpha: float
    window: int


@dataclass(frozen=True)
class ArchConfig:
    """A LITv2-style architecture. Build it with :func:`hilonas.create_model`; check it with :meth:`validate`."""

    depths: tuple[int, ...]
    embed_dims: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    mixers: tuple[str, ...]
    alphas: tuple[float, ...]
    window_sizes: tuple[int, ...]
    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    merge: str = "conv"
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    pad: bool = True
    stem: str = "patch"

    def __post_init__(self) -> None:
        # Normalise sequences to tuples and numbers to their types so equal configs compare and hash equal.
        casts = dict(depths=int, embed_dims=int, num_heads=int, mlp_ratios=float, mixers=str, alphas=float,
                     window_sizes=int)
        for name, cast in casts.items():
            value = getattr(self, name)
            if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
                raise ConfigError(f"{name}={value!r} must be a list with one entry per stage")
            value = list(value)
            if cast is not str and not all(_finite(v) for v in value):
                raise ConfigError(f"{name}={value!r} must hold finite {cast.__name__} values, one per stage")
            try:
                object.__setattr__(self, name, tuple(cast(v) for v in value))
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(f"{name}={value!r} must hold {cast.__name__} values, one per stage") from None
        for name, cast in (("img_size", int), ("patch_size", int), ("in_chans", int), ("num_classes", int),
                           ("drop_path_rate", float)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) or \
                    (cast is int and value != int(value)):
                raise ConfigError(f"{name}={value!r} must be a finite {cast.__name__}")
            object.__setattr__(self, name, cast(value))
        for name in ("qkv_bias", "pad"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")

    # ----------------------------------------------------------------------------------------------------- views
    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def stages(self) -> Iterator[Stage]:
        for i in range(self.num_stages):
            yield self.stage(i)

    def stage(self, i: int) -> Stage:
        return Stage(self.depths[i], self.embed_dims[i], self.num_heads[i], self.mlp_ratios[i], self.mixers[i],
                     self.alphas[i], self.window_sizes[i])

    def stage_resolutions(self) -> list[tuple[int, int]]:
        """Token map (H, W) of every stage: patch embed pads up to the patch, each merge halves (rounding up)."""
        h = w = math.ceil(self.img_size / self.patch_size)
        sizes = []
        for i in range(self.num_stages):
            if i > 0:
                h, w = math.ceil(h / 2), math.ceil(w / 2)
            sizes.append((h, w))
        return sizes

    def hidden_dim(self, i: int) -> int:
        return int(round(self.embed_dims[i] * self.mlp_ratios[i]))

    # ------------------------------------------------------------------------------------------------ validation
    def _validate_stage_fields(self, i: int, where: str, s: Any) -> None:
        """Stage ``i``'s own fields in range (the mixer's geometry is checked by ``_validate_mixer``)."""
        if s.depth < 1:
            raise ConfigError(f"{where}.depth={s.depth} must be >= 1: remove the stage instead of giving it "
                              "depth 0")
        if s.dim < 1:
            raise ConfigError(f"{where}.dim={s.dim} must be >= 1")
        if s.mlp_ratio <= 0 or self.hidden_dim(i) < 1:
            raise ConfigError(f"{where}.mlp_ratio={s.mlp_ratio} must be > 0 (LITv2 uses 4)")
        if s.mixer not in MIXERS:
            raise ConfigError(f"{where}.mixer={s.mixer!r} is unknown: use one of {', '.join(MIXERS)}")
        if not 0.0 <= s.alpha <= 1.0:
            raise ConfigError(f"{where}.alpha={s.alpha} is outside [0, 1]: alpha is the share of Lo-Fi heads "
                              "(0 = all Hi-Fi, 1 = all Lo-Fi)")
        if s.window < 1:
            raise ConfigError(f"{where}.window={s.window} must be >= 1")
        for name in ("depth", "dim", "heads", "mlp_ratio", "window"):
            too_big = _over_limit(name, getattr(s, name))
            if too_big:
                raise ConfigError(f"{where}.{too_big}")

    def _validate_stage_size(self, i: int, where: str, s: Any, h: int, w: int) -> None:
        """A stage small enough to build: attention over at most MAX_ATTENDED_TOKENS tokens, at most
        MAX_STAGE_VALUES activations per image."""
        if MIXERS[s.mixer].attention and h * w > MAX_ATTENDED_TOKENS:
            raise ConfigError(f"{where} attends over {h}x{w} tokens, more than the {MAX_ATTENDED_TOKENS:,} "
                              f"hilonas builds (attention grows with their square): use a smaller img_size, a "
                              f"larger patch_size or mixer: none in this stage")
        values = h * w * max(s.dim, self.hidden_dim(i))
        if values > MAX_STAGE_VALUES:
            raise ConfigError(f"{where} holds {h}x{w} tokens of width {max(s.dim, self.hidden_dim(i))} "
                              f"({values:.3g} values per image, more than the {MAX_STAGE_VALUES:.3g} hilonas "
                              "builds): use a smaller img_size, a larger patch_size or a narrower stage")

    def validate(self) -> ArchConfig:
        """Raise :class:`ConfigError` naming stage, field, value and fix for the first impossible setting."""
        n = len(self.depths)
        if n == 0:
            raise ConfigError("stages: the architecture has no stage; give at least one stage")
        for name in _PER_STAGE:
            if len(getattr(self, name)) != n:
                raise ConfigError(f"{name} has {len(getattr(self, name))} entries but depths has {n}: "
                                  "give one entry per stage")
        if self.img_size < 1:
            raise ConfigError(f"img_size={self.img_size} must be a positive number of pixels")
        if self.patch_size < 1:
            raise ConfigError(f"patch_size={self.patch_size} must be >= 1 (LITv2 uses 4)")
        if self.in_chans < 1:
            raise ConfigError(f"in_chans={self.in_chans} must be >= 1 (3 for RGB)")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes={self.num_classes} must be >= 0 (0 gives features only)")
        for name in ("img_size", "patch_size", "in_chans", "num_classes"):
            too_big = _over_limit(name, getattr(self, name))
            if too_big:
                raise ConfigError(too_big)
        if self.merge not in MERGES:
            raise ConfigError(f"merge={self.merge!r} is unknown: use one of {', '.join(MERGES)}")
        if self.stem not in STEMS:
            raise ConfigError(f"stem={self.stem!r} is unknown: use one of {', '.join(STEMS)}")
        if self.stem != "patch":
            p = self.patch_size
            if p < 2 or p & (p - 1):
                raise ConfigError(f"patch_size={p} does not suit stem={self.stem!r}, a chain of stride-2 convs: use a "
                                  "power of two (4 or 16), or stem: patch")
            steps = p.bit_length() - 1
            if self.stem == "efficientvit" and self.embed_dims and self.embed_dims[0] % 2 ** (steps - 1):
                raise ConfigError(f"stages[0].dim={self.embed_dims[0]} must be divisible by {2 ** (steps - 1)} for "
                                  f"stem='efficientvit' with patch_size={p} (its widths halve toward the image)")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate={self.drop_path_rate} must be in [0, 1)")
        for i, ((h, w), s) in enumerate(zip(self.stage_resolutions(), self.stages())):
            where = f"stages[{i}]"
            self._validate_stage_fields(i, where, s)
            self._validate_mixer(where, s, h, w)
            self._validate_stage_size(i, where, s, h, w)
        params = self.approx_params()
        if params > MAX_PARAMS:
            raise ConfigError(f"the architecture has about {params / 1e9:.1f} G parameters, more than the "
                              f"{MAX_PARAMS / 1e9:g} G hilonas builds (LITv2-B has 87 M): use smaller dims, "
                              "mlp_ratio or depths")
        return self

    def approx_params(self) -> int:
        """The parameter count, roughly (linear and conv weights of the stem, merges, FFNs and attention's q/k/v/output
        projections: LITv2 within 1%, FasterViT and EfficientViT about 30% under), to refuse a network far too large
        to build before torch allocates it."""
        total = self.in_chans * self.patch_size ** 2 * self.embed_dims[0]
        for i, s in enumerate(self.stages()):
            if i:
                total += 4 * self.embed_dims[i - 1] * s.dim
            hidden = self.hidden_dim(i)
            block = 2 * s.dim * hidden + 9 * hidden + (4 * s.dim * s.dim if MIXERS[s.mixer].attention else 0)
            total += s.depth * block
        return total + self.embed_dims[-1] * self.num_classes

    def _validate_mixer(self, where: str, s: Stage, h: int, w: int) -> None:
        """The checks a stage's mixer row asks for: heads dividing the width, a window that tiles or fits the map."""
        spec = MIXERS[s.mixer]
        if not spec.attention:
            return
        if s.heads < 1:
            raise ConfigError(f"{where}.heads={s.heads} must be >= 1")
        if s.dim % s.heads:
            lower = s.dim - s.dim % s.heads
            hint = f"{lower} or {lower + s.heads}" if lower else f"{s.heads}"
            raise ConfigError(f"{where}.dim={s.dim} is not divisible by {where}.heads={s.heads}: "
                              f"use a width that is a multiple of the heads (e.g. {hint}) or other heads")
        if spec.tiles and s.window > 1 and not self.pad and (h % s.window or w % s.window):
            raise ConfigError(f"{where}.window={s.window} cannot tile the stage's {h}x{w} token map and pad is "
                              f"false: choose a window dividing {h} and {w}, or set pad: true")
        if spec.window_within_map and s.window > min(h, w):
            raise ConfigError(f"{where}.window={s.window} ({s.mixer} {spec.window}) is larger than the stage's "
                              f"{h}x{w} token map: use a window <= {min(h, w)}")

    # ----------------------------------------------------------------------------------------------- canonical
    def canonical(self) -> ArchConfig:
        """The same network with fields it ignores set to fixed values, so equal networks compare equal.

        Which fields a mixer ignores is its registry row's business (:func:`hilonas.mixers.canonical_fields`):
        'none' stages ignore heads/alpha/window (set to 1/0/1); 'msa' ignores alpha and window; 'sra' and 'window'
        ignore alpha; HiLo with window 1 is all Lo-Fi whatever alpha says (alpha set to 1).
        """
        heads, alphas, windows = list(self.num_heads), list(self.alphas), list(self.window_sizes)
        for i, mixer in enumerate(self.mixers):
            heads[i], alphas[i], windows[i] = _mixers.canonical_fields(mixer, heads[i], alphas[i], windows[i])
        return dataclasses.replace(self, num_heads=tuple(heads), alphas=tuple(alphas), window_sizes=tuple(windows))

    # ------------------------------------------------------------------------------------------ dict and YAML
    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-friendly dict: ``{'stages': [{depth, dim, ...}, ...], 'img_size': ..., ...}``."""
        out: dict[str, Any] = {"stages": [dict(s._asdict()) for s in self.stages()]}
        for name in GLOBAL_FIELDS:
            if name != "stem" or self.stem != "patch":  # the default stem is left out: older files stay unchanged
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ArchConfig:
        """Inverse of :meth:`to_dict`; also accepts ``{'arch': {...}}`` (an exported file). Validates."""
        if isinstance(data, dict) and "arch" in data and "stages" not in data:
            data = data["arch"]
        if not isinstance(data, dict):
            raise ConfigError(f"architecture must be a mapping with 'stages', got {type(data).__name__}: write it as "
                              "YAML fields, e.g. 'stages: [{depth: 2, dim: 64}]'")
        unknown = sorted(set(data) - {"stages", *GLOBAL_FIELDS}, key=str)
        if unknown:
            raise ConfigError(f"unknown architecture field {unknown[0]!r}: allowed are stages, "
                              f"{', '.join(GLOBAL_FIELDS)}")
        stages = data.get("stages")
        if not isinstance(stages, list) or not stages:
            raise ConfigError("stages: missing or empty: give a list of stages, each with "
                              f"{', '.join(STAGE_FIELDS)}")
        per_stage: dict[str, list] = {name: [] for name in _PER_STAGE}
        defaults = {"heads": 1, "mlp_ratio": 4.0, "mixer": "hilo", "alpha": 0.9, "window": 2}
        for i, st in enumerate(stages):
            check_stage_mapping(i, st)
            merged = {**defaults, **st}
            for name, key in zip(_PER_STAGE, STAGE_FIELDS):
                value = merged[key]
                integral = isinstance(value, int) and not isinstance(value, bool)
                if key in ("depth", "dim", "heads", "window") and not integral:
                    raise ConfigError(f"stages[{i}].{key}={value!r} must be an integer")
                if key in ("mlp_ratio", "alpha") and (isinstance(value, bool) or not isinstance(value, (int, float))
                                                      or not _finite(value)):
                    raise ConfigError(f"stages[{i}].{key}={value!r} must be a finite number")
                per_stage[name].append(value)
        kwargs = {k: v for k, v in data.items() if k != "stages"}
        return cls(**per_stage, **kwargs).validate()

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> ArchConfig:
        data = load_yaml(text, source)
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> ArchConfig:
        from hilonas.io import read_text

        return cls.from_yaml(read_text(path, "config file", error=ConfigError), source=str(path))

    def describe(self) -> str:
        """One compact line, e.g. ``[2x96 none | 2x192 none | 6x384 hilo h12 a0.9 w2 | 2x768 hilo h24 w1] @224``."""
        parts = []
        for s in self.stages():
            p = f"{s.depth}x{s.dim} {s.mixer}"
            spec = MIXERS[s.mixer]
            if spec.attention:
                p += f" h{s.heads}"
            if spec.uses_alpha(s.window):
                p += f" a{s.alpha:g}"
            if spec.attention and spec.window is not None:
                p += f" w{s.window}"
            if s.mlp_ratio != 4:
                p += f" r{s.mlp_ratio:g}"
            parts.append(p)
        extra = f" stem {self.stem}" if self.stem != "patch" else ""
        return "[" + " | ".join(parts) + f"] @{self.img_size}" + extra


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in ``text`` (plain data: safe_load); ConfigError naming ``source`` and the line when it is
    not valid YAML. The one YAML parser of configs and spaces."""
    import yaml

    try:
        return yaml.load(text, Loader=_unique_key_loader())  # a SafeLoader subclass: plain data only
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where} is not valid YAML: fix the syntax "
                          f"({getattr(err, 'problem', None) or err})") from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML nests too deeply to read: a config is a mapping of stages and "
                          "fields, a few levels deep") from None


@functools.cache
def _unique_key_loader() -> type:
    """yaml.SafeLoader refusing a key written twice in one mapping: PyYAML keeps the last one silently, so a
    duplicated ``img_size:`` or ``dim:`` would change the network without a word. Keys merged in with ``<<:``
    may still be overridden, as YAML intends."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} appears twice in one mapping: keep one", key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


# The named LITv2 variants (REFERENCE.md section 2), as data only.
def _litv2(dim: int, depths: tuple[int, ...], heads: tuple[int, ...], drop_path: float) -> ArchConfig:
    return ArchConfig(depths=depths, embed_dims=(dim, 2 * dim, 4 * dim, 8 * dim), num_heads=heads,
                      mlp_ratios=(4.0,) * 4, mixers=("none", "none", "hilo", "hilo"), alphas=(0.9,) * 4,
                      window_sizes=(2, 2, 2, 1), drop_path_rate=drop_path)


def _fastervit(dim: int, depths: tuple[int, ...], heads: tuple[int, ...], drop_path: float) -> ArchConfig:
    """FasterViT (REFERENCE.md section 4): conv stem, conv blocks in stages 0-1, HAT (window 7, 2 x 2 carrier tokens
    per window) in stage 2, local windows in stage 3 (its map is one window), LayerNorm + 3x3 stride-2 downsampling."""
    return ArchConfig(depths=depths, embed_dims=(dim, 2 * dim, 4 * dim, 8 * dim), num_heads=(1, 1, *heads[2:]),
                      mlp_ratios=(1.0, 1.0, 4.0, 4.0), mixers=("conv", "conv", "hat", "hat"),
                      alphas=(0.0, 0.0, 2 / 7, 0.0), window_sizes=(1, 1, 7, 7), stem="fastervit", merge="fastervit",
                      drop_path_rate=drop_path)


def _efficientvit(dims: tuple[int, ...], depths: tuple[int, ...], heads: tuple[int, ...]) -> ArchConfig:
    """EfficientViT-MSRA (REFERENCE.md section 4): 4-conv stem to 1/16, sandwich blocks with cascaded group attention
    in 7 x 7 windows (key_dim 16, FFN 2x), its subsampling blocks between stages."""
    return ArchConfig(depths=depths, embed_dims=dims, num_heads=heads, mlp_ratios=(2.0,) * 3, mixers=("cga",) * 3,
                      alphas=(0.0,) * 3, window_sizes=(7,) * 3, patch_size=16, stem="efficientvit",
                      merge="efficientvit")


VARIANTS: dict[str, ArchConfig] = {
    "litv2_s": _litv2(96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2),
    "litv2_m": _litv2(96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3),
    "litv2_b": _litv2(128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5),
    # The other seed systems, as data in the same family (their published macro architectures).
    "fastervit_0": _fastervit(64, (2, 3, 6, 5), (2, 4, 8, 16), 0.2),
    "efficientvit_m0": _efficientvit((64, 128, 192), (1, 2, 3), (4, 4, 4)),
    "efficientvit_m5": _efficientvit((192, 288, 384), (1, 3, 4), (3, 3, 4)),
}


def resolve_arch(config_or_name: ArchConfig | str | Path | dict) -> ArchConfig:
    """An ArchConfig from a config, a variant name (``litv2_s``), a YAML path, or a dict. The one config loader."""
    if isinstance(config_or_name, ArchConfig):
        return config_or_name.validate()
    if isinstance(config_or_name, dict):
        return ArchConfig.from_dict(config_or_name)
    text = str(config_or_name)
    if text in VARIANTS:
        return VARIANTS[text]
    path = Path(text)
    if path.suffix in (".yaml", ".yml", ".json") or os.path.lexists(path):  # lexists: never raises
        return ArchConfig.load(path)
    raise ConfigError(f"{text!r} is neither a known variant ({', '.join(VARIANTS)}) nor a config file: "
                      "give a variant name or the path of a YAML config")
