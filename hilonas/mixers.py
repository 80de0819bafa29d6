"""The mixer registry: one row of facts per kind of token mixer. No torch import here.

Everything that depends on what a mixer is derives from its row: ``ArchConfig`` validation, canonical form and
``describe()``, latency block keys (and their text ids), the stage a table measures for a key, the attention bench's
candidates and the CLI's help text. The layer class that computes a mixer is the one other place that knows it:
``hilonas.layers.MIXER_CLASSES`` maps the same name to a class with ``from_fields(...)`` and ``flops(H, W)``.

Adding a mixer = one layer class (in ``hilonas/layers``, registered in ``MIXER_CLASSES``) + one row here + its
reference test. The contract test (``tests/layers/test_mixer_contract.py``) runs over every row. A row with
``block=True`` names a class that is the whole block (its own norms, FFN and residuals, as FasterViT's and
EfficientViT's blocks are); the network then builds that class in place of the pre-norm block.

Fields a mixer ignores are normalised by :func:`canonical_fields`, so two configs that build the same network
compare equal and produce the same block keys.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MixerSpec", "MIXERS", "get", "canonical_fields", "split_of", "alpha_for_split", "lofi_heads",
           "describe_mixers", "attention_mixers", "block_mixers", "carrier_size"]


def lofi_heads(heads: int, alpha: float, window: int) -> int:
    """Lo-Fi head count of HiLo, exactly as the reference: ``int(heads * alpha)``, all heads when window == 1."""
    return heads if window == 1 else int(heads * alpha)


def carrier_size(heads: int, alpha: float, window: int) -> int:
    """HAT's carrier tokens per window side: ``int(alpha * window + 0.5)`` (0 = local windows only); the layer's own
    ``hilonas.layers.hat.carrier_size`` is the same formula."""
    return int(alpha * window + 0.5)


def _hat_alpha_for(heads: int, carriers: int, window: int) -> float:
    """An alpha for which ``carrier_size(heads, alpha, window) == carriers``."""
    return carriers / window


def _hilo_alpha_for(heads: int, lofi: int, window: int) -> float:
    """An alpha for which ``lofi_heads(heads, alpha, window) == lofi`` (a midpoint: float rounding cannot move it)."""
    if window == 1 or lofi >= heads:
        return 1.0
    return (lofi + 0.5) / heads


@dataclass(frozen=True)
class MixerSpec:
    """The facts of one kind of token mixer.

    Attributes:
        name: the value of a stage's ``mixer`` field, and the mixer's name in block keys and tables.
        description: one line for help texts.
        attention: False for a block without a token mixer (ConvFFN only): heads, alpha and window are ignored.
        alpha: what the stage's ``alpha`` means for this mixer, or None when it is ignored.
        window: what the stage's ``window`` means for this mixer, or None when it is ignored.
        tiles: the window partitions the token map: a window > 1 that does not divide the map needs ``pad: true``.
        window_within_map: the window may not exceed the smaller side of the stage's token map.
        default_window: the window used when none is given (the attention bench's paper settings).
        split: the part of ``alpha`` that changes the computation, as an integer ``split(heads, alpha, window)``
            kept in the block key's ``lofi`` field (HiLo: the Lo-Fi head count); None when alpha is not in the key.
        alpha_for_split: the inverse of ``split``: an alpha that gives that split (used to build a keyed block).
        alpha_at_window_1: the alpha that ``window == 1`` implies (HiLo: 1.0, every head Lo-Fi), or None.
        block: the layer class is the whole block (its own norms, FFN and residuals); its ``from_fields`` also takes
            ``hidden`` (the stage's FFN width) and ``drop_path``. False: the class is a mixer inside hilonas'
            pre-norm block (norm1, mixer, norm2, ConvFFN).
    """

    name: str
    description: str
    attention: bool = True
    alpha: str | None = None
    window: str | None = None
    tiles: bool = False
    window_within_map: bool = False
    default_window: int = 1
    split: Callable[[int, float, int], int] | None = None
    alpha_for_split: Callable[[int, int, int], float] | None = None
    alpha_at_window_1: float | None = None
    block: bool = False

    def uses_alpha(self, window: int) -> bool:
        """Whether ``alpha`` changes this mixer's network at this ``window``."""
        return self.attention and self.alpha is not None and not (self.alpha_at_window_1 is not None and window == 1)


# The registry, in the order help texts and benches list mixers. A row's name is its key.
MIXERS: dict[str, MixerSpec] = {spec.name: spec for spec in (
    MixerSpec("none", "no token mixer: ConvFFN-only blocks (LITv2's first two stages)", attention=False),
    MixerSpec("hilo", "HiLo attention (LITv2): Hi-Fi heads in windows, Lo-Fi heads on pooled keys",
              alpha="share of Lo-Fi heads (int(heads * alpha) heads)", window="Hi-Fi window and Lo-Fi pooling size",
              tiles=True, default_window=2, split=lofi_heads, alpha_for_split=_hilo_alpha_for, alpha_at_window_1=1.0),
    MixerSpec("msa", "multi-head self-attention over all tokens (ViT)"),
    MixerSpec("sra", "spatial-reduction attention (PVT): keys and values from a strided conv",
              window="spatial reduction ratio", window_within_map=True, default_window=2),
    MixerSpec("window", "local window attention (Swin W-MSA without shift)", window="window size", tiles=True,
              default_window=7),
    MixerSpec("hat", "FasterViT's hierarchical attention block: carrier tokens attend globally, then windows attend "
              "over [their carrier tokens; their tokens]; plain MLP", alpha="carrier tokens per window side as a "
              "share of the window (int(alpha * window + 0.5); 0 = windows only)", window="attention window",
              tiles=True, default_window=7, split=carrier_size, alpha_for_split=_hat_alpha_for, block=True),
    MixerSpec("cga", "EfficientViT's block: depthwise conv, FFN, cascaded group attention in windows, depthwise "
              "conv, FFN (BatchNorm, ReLU FFN of width dim * mlp_ratio)", window="attention window", tiles=True,
              default_window=7, block=True),
    MixerSpec("conv", "FasterViT's conv block: 3x3 conv, BN, GELU, 3x3 conv, BN, residual (no attention; width "
              "dim * mlp_ratio inside)", attention=False, block=True),
)}


def get(name: str) -> MixerSpec:
    """The row of ``name``; KeyError (with the known names) when there is none."""
    try:
        return MIXERS[name]
    except KeyError:
        raise KeyError(f"unknown mixer {name!r}; known: {', '.join(MIXERS)}") from None


def block_mixers() -> list[str]:
    """Names of the rows whose layer class is the whole block, in registry order."""
    return [name for name, spec in MIXERS.items() if spec.block]


def attention_mixers() -> list[str]:
    """Names of the mixers that attend inside hilonas' pre-norm block, in registry order: the layers the attention
    bench compares one for one (the whole-block rows, which carry their own FFN, are :func:`block_mixers`)."""
    return [name for name, spec in MIXERS.items() if spec.attention and not spec.block]


def canonical_fields(mixer: str, heads: int, alpha: float, window: int) -> tuple[int, float, int]:
    """``(heads, alpha, window)`` with the values ``mixer`` ignores set to fixed ones (1, 0.0, 1; HiLo with window 1
    gets alpha 1.0), so equal networks compare equal."""
    spec = get(mixer)
    if not spec.attention:
        return 1, 0.0, 1
    if spec.window is None:
        window = 1
    if spec.alpha is None:
        alpha = 0.0
    elif spec.alpha_at_window_1 is not None and window == 1:
        alpha = spec.alpha_at_window_1
    return heads, alpha, window


def split_of(mixer: str, heads: int, alpha: float, window: int) -> int:
    """The block key's ``lofi`` field for these values: ``spec.split(...)``, 0 when the mixer has no split."""
    spec = get(mixer)
    return spec.split(heads, alpha, window) if spec.split is not None else 0


def alpha_for_split(mixer: str, heads: int, split: int, window: int) -> float:
    """An alpha that reproduces ``split`` (0.0 when the mixer has no split)."""
    spec = get(mixer)
    return spec.alpha_for_split(heads, split, window) if spec.alpha_for_split is not None else 0.0


def describe_mixers() -> str:
    """One line per mixer (``name: description; window = ...; alpha = ...``) for help texts."""
    lines = []
    for spec in MIXERS.values():
        extra = [f"window = {spec.window}"] if spec.window else []
        extra += [f"alpha = {spec.alpha}"] if spec.alpha else []
        lines.append(f"{spec.name}: {spec.description}" + (f" ({'; '.join(extra)})" if extra else ""))
    return "\n".join(lines)
