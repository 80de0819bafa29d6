"""Measure blocks and whole networks on the target with the one timing harness.

``block_module(key)`` builds exactly the module the network runs for a :class:`BlockKey` (``make_block`` for blocks,
``PatchEmbed`` for the stem, ``Merge`` between stages, final LayerNorm + token mean + Linear for the head) with the
inputs it receives there. ``measure_block`` and ``measure_arch`` time them under a :class:`Fingerprint`'s settings
(device, threads, batch, image size).

Why a block is timed as a chain: a plain sum of isolated-block medians underpredicts whole networks, because a
block timed alone runs on its own output-sized input with its weights hot in cache, and each timed call pays
the harness's per-call overhead once. In the network, blocks of a stage follow each other with *distinct* weights
and fresh activations. So a shape-preserving block (the transformer / ConvFFN blocks, which are most of the time)
is timed as a chain of ``chain`` copies with distinct weights, each feeding the next, divided by ``chain``: the
figure is what one block costs in the middle of a stage. Stem, merges and head change shapes and run once per
network, so they are timed alone.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hilonas.config import ArchConfig, Stage
from hilonas.errors import HilonasError
from hilonas.latency.fingerprint import Fingerprint
from hilonas.latency.keys import BlockKey
from hilonas.latency.timing import Timing, time_callable

__all__ = ["Head", "BlockChain", "block_module", "measure_block", "measure_arch", "DEFAULT_CHAIN", "timing_settings"]

DEFAULT_CHAIN = 3


class Head(nn.Module):
    """The network's tail: final LayerNorm, token average, classifier (``HiLoNet.norm`` + ``forward_head``)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x).mean(dim=1))


class BlockChain(nn.Module):
    """``n`` copies of a shape-preserving block (distinct weights) run in sequence, as blocks of a stage run."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, H, W)
        return x


def _alpha_for(key: BlockKey) -> float:
    """An alpha that gives ``key.lofi`` Lo-Fi heads with ``int(heads * alpha)`` (exact, no float rounding down)."""
    if key.mixer != "hilo" or key.window == 1 or key.heads == 0:
        return 1.0 if key.mixer == "hilo" else 0.0
    alpha = min(1.0, (key.lofi + 0.5) / key.heads)
    assert int(key.heads * alpha) == key.lofi
    return alpha


def _stage_of(key: BlockKey) -> Stage:
    ratio = key.hidden / key.dim
    return Stage(1, key.dim, max(key.heads, 1), ratio, key.mixer, _alpha_for(key), max(key.window, 1))


def _make_one(key: BlockKey, fused: bool) -> nn.Module:
    from hilonas.layers import Merge, PatchEmbed
    from hilonas.models import make_block

    if key.kind == "stem":
        return PatchEmbed(key.patch, key.in_chans, key.dim)
    if key.kind == "merge":
        return Merge(key.in_chans, key.dim, key.mixer)
    if key.kind == "head":
        return Head(key.dim, key.hidden)
    if key.kind == "block":
        return make_block(_stage_of(key), key.hidden, key.qkv_bias, 0.0, fused)
    raise HilonasError(f"block kind {key.kind!r} of {key.id} is unknown: expected stem, block, merge or head")


def block_module(key: BlockKey, batch: int = 1, fused: bool = True, chain: int = 1,
                 device: str | torch.device = "cpu") -> tuple[nn.Module, tuple[Any, ...]]:
    """The module the network runs for ``key`` and the inputs it gets there, in eval mode on ``device``.

    Args:
        key: the block.
        batch: images per forward.
        fused: attention through ``F.scaled_dot_product_attention`` (the network's default) or explicit.
        chain: for a 'block' key, a :class:`BlockChain` of that many copies (distinct weights); other kinds refuse > 1.
        device: where the module and inputs live.

    Returns:
        ``(module, inputs)``: ``module(*inputs)`` is what the network computes there. Stem: image
        ``(batch, in_chans, h, w)``; block / merge: tokens ``(batch, h*w, C)``, ``h``, ``w``; head: tokens.
    """
    if chain < 1:
        raise ValueError(f"chain must be >= 1, got {chain}")
    if chain > 1 and key.kind != "block":
        raise ValueError(f"only 'block' keys can be chained, not {key.kind!r} ({key.id})")
    torch.manual_seed(0)
    if chain > 1:
        module: nn.Module = BlockChain([_make_one(key, fused) for _ in range(chain)])
    else:
        module = _make_one(key, fused)
    from hilonas.models.hilonet import _init_weights

    module.apply(_init_weights)
    module = module.to(device).eval()
    g = torch.Generator().manual_seed(1)
    if key.kind == "stem":
        inputs: tuple[Any, ...] = (torch.randn(batch, key.in_chans, key.h, key.w, generator=g).to(device),)
    elif key.kind == "merge":
        inputs = (torch.randn(batch, key.h * key.w, key.in_chans, generator=g).to(device), key.h, key.w)
    elif key.kind == "head":
        inputs = (torch.randn(batch, key.h * key.w, key.dim, generator=g).to(device),)
    else:
        inputs = (torch.randn(batch, key.h * key.w, key.dim, generator=g).to(device), key.h, key.w)
    return module, inputs


def timing_settings(**overrides: Any) -> dict[str, Any]:
    """The default timing settings of table entries, with overrides (warmup, repeats, max_spread, max_attempts)."""
    settings = {"warmup": 5, "repeats": 30, "max_spread": 0.1, "max_attempts": 3}
    unknown = set(overrides) - set(settings)
    if unknown:
        raise TypeError(f"unknown timing setting {sorted(unknown)[0]!r}; known: {', '.join(settings)}")
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def _device_of(fp: Fingerprint) -> str:
    if fp.device_kind == "cuda":
        if not torch.cuda.is_available():
            raise HilonasError(f"fingerprint {fp.id} targets CUDA but no CUDA device is visible here: "
                               "measure on the machine the table belongs to")
        return "cuda"
    return "cpu"


def measure_block(key: BlockKey, fp: Fingerprint, *, chain: int | None = None, fused: bool = True,
                  **timing_kw: Any) -> Timing:
    """Median latency of one ``key`` block on ``fp``'s target (ms per block).

    A 'block' key is timed as a chain of ``chain`` copies (default :data:`DEFAULT_CHAIN`) and the figures divided by
    the chain length; other kinds alone. ``timing_kw`` go to :func:`time_callable` (warmup, repeats, max_spread,
    max_attempts).
    """
    dev = _device_of(fp)
    n = (DEFAULT_CHAIN if chain is None else chain) if key.kind == "block" else 1
    module, inputs = block_module(key, batch=fp.batch, fused=fused, chain=n, device=dev)
    t = time_callable(lambda: module(*inputs), threads=fp.threads if dev == "cpu" else None, device=dev,
                      **timing_settings(**timing_kw))
    if n > 1:
        t.median_ms /= n
        t.samples_ms = [s / n for s in t.samples_ms]
    return t


def build_arch_model(arch: ArchConfig, fp: Fingerprint, fused: bool = True) -> tuple[nn.Module, torch.Tensor]:
    """The network for ``arch`` at ``fp.resolution`` on ``fp``'s device, with a ``fp.batch`` input, eval mode."""
    import dataclasses

    from hilonas.models import HiLoNet

    if arch.img_size != fp.resolution:
        arch = dataclasses.replace(arch, img_size=fp.resolution).validate()
    dev = _device_of(fp)
    torch.manual_seed(0)
    model = HiLoNet(arch, fused=fused).to(dev).eval()
    x = torch.randn(fp.batch, arch.in_chans, arch.img_size, arch.img_size, generator=torch.Generator().manual_seed(1))
    return model, x.to(dev)


def measure_arch(arch: ArchConfig, fp: Fingerprint, *, fused: bool = True, **timing_kw: Any) -> Timing:
    """Median latency of the whole network for ``arch`` (ms) on ``fp``'s target, batch, threads and resolution."""
    model, x = build_arch_model(arch, fp, fused)
    dev = _device_of(fp)
    return time_callable(lambda: model(x), threads=fp.threads if dev == "cpu" else None, device=dev,
                         **timing_settings(**timing_kw))
