"""Measure blocks and whole networks on the target with the one timing harness.

``block_module(key)`` builds exactly the module the network runs for a :class:`BlockKey` (``make_block`` for blocks,
``PatchEmbed`` for the stem, ``Merge`` between stages, final LayerNorm + token mean + Linear for the head) with the
inputs it receives there. ``measure_block(s)`` and ``measure_arch(s)`` time them under a :class:`Fingerprint`'s
settings (device, threads, dtype, runtime, batch, image size) with one protocol, so table entries and whole networks
compare. Modules and inputs are in the target's dtype; the runtime (:mod:`hilonas.latency.runtime`) is eager PyTorch
or an onnxruntime session built from the same module.

- the process keeps freed memory (:func:`steady_allocator`). With glibc's defaults every activation above 128 KiB
  is a fresh ``mmap`` whose pages fault in on each call; that cost depends on the heap's history and on the other
  processes, made the same block take 0.7 or 2.2 ms from one measurement to the next, and hit blocks timed alone
  differently from the network. It was the largest error source of a summed table on the 2-core machine here.
- callables are timed in ``rounds`` passes over all of them, each pass a warm-up and ``repeats`` calls of the
  timing harness, re-measured while noisy (``max_spread``, ``max_attempts``), samples pooled over the passes.
  A shared machine has slow spells that last tens of seconds; passes minutes apart keep one spell from covering all
  of a callable's samples.
- the figure a table keeps is named by ``statistic``: 'min' (default; the fastest pooled sample) or 'median'.
  On a machine other processes share, the median moves with their load while the minimum, the run nothing
  disturbed, repeats closely (the timeit module's advice); on an idle machine the two differ by a few percent.
  Both are stored with every entry.
- a shape-preserving block (transformer / ConvFFN, most of a network's time) is timed as a chain of ``chain``
  distinct copies run in sequence and divided by ``chain``, as the blocks of a stage run: each block's input is
  the previous block's output and its weights are not the ones the previous call left in cache.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hilonas.config import ArchConfig, Stage
from hilonas.errors import HilonasError
from hilonas.latency.fingerprint import Fingerprint, torch_dtype
from hilonas.latency.keys import BlockKey
from hilonas.latency.runtime import runner, uses_fused
from hilonas.latency.timing import Rebuilt, Timing, round_robin, time_rounds

if TYPE_CHECKING:
    from hilonas.latency.table import LatencyTable

__all__ = ["Head", "BlockChain", "block_module", "build_arch_model", "measure_block", "measure_blocks",
           "measure_arch", "measure_archs", "network_passes", "figure_ms", "timing_settings", "steady_allocator",
           "table_settings", "measurement_settings", "network_callables", "MEASURE_DEFAULTS", "STATISTICS"]

MEASURE_DEFAULTS: dict[str, Any] = {"warmup": 5, "repeats": 12, "max_spread": 0.1, "max_attempts": 3, "rounds": 20,
                                    "chain": 3, "statistic": "min"}
STATISTICS = ("min", "median")
HARNESS_KEYS = ("warmup", "repeats", "max_spread", "max_attempts")
DEFAULT_GROUP = 8  # blocks a table's build measures together


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


def timing_settings(**overrides: Any) -> dict[str, Any]:
    """:data:`MEASURE_DEFAULTS` with ``overrides`` (None keeps the default), checked; HilonasError names a bad one."""
    unknown = set(overrides) - set(MEASURE_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown measurement setting {sorted(unknown)[0]!r}; known: {', '.join(MEASURE_DEFAULTS)}")
    s = {**MEASURE_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    for name in ("repeats", "max_attempts", "rounds", "chain"):
        if isinstance(s[name], bool) or not isinstance(s[name], int) or s[name] < 1:
            raise HilonasError(f"{name}={s[name]!r} must be an integer >= 1")
    if isinstance(s["warmup"], bool) or not isinstance(s["warmup"], int) or s["warmup"] < 0:
        raise HilonasError(f"warmup={s['warmup']!r} must be an integer >= 0")
    if not isinstance(s["max_spread"], (int, float)) or s["max_spread"] <= 0:
        raise HilonasError(f"max_spread={s['max_spread']!r} must be a positive number")
    if s["statistic"] not in STATISTICS:
        raise HilonasError(f"statistic={s['statistic']!r} is unknown: use one of {', '.join(STATISTICS)}")
    return s


def _settings(**overrides: Any) -> dict[str, Any]:
    """Measurement settings: :data:`MEASURE_DEFAULTS` plus ``group`` (blocks built and timed together by a table's
    build), with overrides."""
    group = overrides.pop("group", None)
    s = timing_settings(**overrides)
    s["group"] = DEFAULT_GROUP if group is None else group
    if isinstance(s["group"], bool) or not isinstance(s["group"], int) or s["group"] < 1:
        raise HilonasError(f"group={s['group']!r} must be an integer >= 1")
    return s


def table_settings(table: LatencyTable, overrides: dict[str, Any]) -> dict[str, Any]:
    """The table's own measurement settings (defaults where it has none), with ``overrides`` that are not None."""
    known = (*MEASURE_DEFAULTS, "group")
    base = {k: table.settings[k] for k in known if k in table.settings}
    if table.entries and "statistic" not in table.settings:
        base["statistic"] = "median"  # a table written before 'min' existed
    return _settings(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def measurement_settings(table: LatencyTable) -> dict[str, Any]:
    """The protocol a whole network is measured with to compare with ``table``: its settings (defaults where it has
    none) without the build-only ``group``; what ``measure_archs`` takes."""
    return {k: v for k, v in table_settings(table, {}).items() if k != "group"}


def figure_ms(timing: Timing, statistic: str = "min") -> float:
    """The figure of ``timing`` a table keeps: its fastest sample ('min') or its median."""
    return timing.min_ms if statistic == "min" else timing.median_ms


# ------------------------------------------------------------------------------------------------------- modules
def _stage_of(key: BlockKey) -> Stage:
    """A one-block stage that builds the block of ``key``; its mixer's registry row turns the key's split back into
    an alpha."""
    from hilonas import mixers

    alpha = mixers.alpha_for_split(key.mixer, key.heads, key.lofi, key.window) if key.heads else 0.0
    return Stage(1, key.dim, max(key.heads, 1), key.hidden / key.dim, key.mixer, alpha, max(key.window, 1))


def _make_one(key: BlockKey, fused: bool) -> nn.Module:
    from hilonas.layers import make_merge, make_stem
    from hilonas.models import make_block

    if key.kind == "stem":
        return make_stem(key.mixer or "patch", key.patch, key.in_chans, key.dim)
    if key.kind == "merge":
        return make_merge(key.mixer, key.in_chans, key.dim)
    if key.kind == "head":
        return Head(key.dim, key.hidden)
    if key.kind == "block":
        return make_block(_stage_of(key), key.hidden, key.qkv_bias, 0.0, fused)
    raise HilonasError(f"block kind {key.kind!r} of {key.id} is unknown: expected stem, block, merge or head")


def block_module(key: BlockKey, batch: int = 1, fused: bool = True, *, chain: int = 1,
                 device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[nn.Module, tuple[Any, ...]]:
    """The module the network runs for ``key`` and the inputs it gets there, in eval mode on ``device``.

    Args:
        key: the block.
        batch: images per forward.
        fused: attention through ``F.scaled_dot_product_attention`` (the network's default) or explicit.
        chain: for a 'block' key, a :class:`BlockChain` of that many copies (distinct weights); other kinds refuse > 1.
        device: where the module and inputs live.
        dtype: the parameters' and the float inputs' dtype (the target's).

    Returns:
        ``(module, inputs)``: ``module(*inputs)`` is what the network computes there. Stem: image
        ``(batch, in_chans, h, w)``; block and merge: tokens ``(batch, h*w, C)``, ``h``, ``w``; head: tokens.
    """
    if chain < 1:
        raise ValueError(f"chain must be >= 1, got {chain}")
    if chain > 1 and key.kind != "block":
        raise ValueError(f"only 'block' keys can be chained, not {key.kind!r} ({key.id})")
    from hilonas.models.hilonet import _init_weights

    torch.manual_seed(0)
    module = BlockChain([_make_one(key, fused) for _ in range(chain)]) if chain > 1 else _make_one(key, fused)
    module.apply(_init_weights)
    module = module.to(device=device, dtype=dtype).eval()
    g = torch.Generator().manual_seed(1)
    if key.kind == "stem":
        inputs: tuple[Any, ...] = (torch.randn(batch, key.in_chans, key.h, key.w, generator=g).to(device, dtype),)
    elif key.kind == "head":
        inputs = (torch.randn(batch, key.h * key.w, key.dim, generator=g).to(device, dtype),)
    else:
        channels = key.in_chans if key.kind == "merge" else key.dim
        inputs = (torch.randn(batch, key.h * key.w, channels, generator=g).to(device, dtype), key.h, key.w)
    return module, inputs


def build_arch_model(arch: ArchConfig, fp: Fingerprint, fused: bool = True) -> tuple[nn.Module, torch.Tensor]:
    """The network for ``arch`` at ``fp.resolution`` on ``fp``'s device and dtype with a ``fp.batch`` input, in eval
    mode."""
    import dataclasses

    from hilonas.models import HiLoNet

    if arch.img_size != fp.resolution:
        arch = dataclasses.replace(arch, img_size=fp.resolution).validate()
    dev, dtype = device_of(fp), torch_dtype(fp)
    torch.manual_seed(0)
    model = HiLoNet(arch, fused=fused and uses_fused(fp.backend)).to(device=dev, dtype=dtype).eval()
    x = torch.randn(fp.batch, arch.in_chans, arch.img_size, arch.img_size, generator=torch.Generator().manual_seed(1))
    return model, x.to(dev, dtype)


def device_of(fp: Fingerprint) -> str:
    """The torch device ``fp`` measures on; HilonasError when it is CUDA and no CUDA device is visible."""
    if fp.device_kind == "cuda":
        if not torch.cuda.is_available():
            raise HilonasError(f"fingerprint {fp.id} targets CUDA but no CUDA device is visible here: "
                               "measure on the machine the table belongs to")
        return "cuda"
    return "cpu"


# ------------------------------------------------------------------------------------------------------ measuring
_ALLOCATOR: str | None = None
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)


def steady_allocator() -> str:
    """Make this process keep freed memory for reuse (glibc), once; returns what the allocator does.

    With glibc's defaults every tensor above 128 KiB is a fresh ``mmap``, and freed heap tops are returned to the
    OS, so a forward pass page-faults on its activations: on a shared machine that makes the same block take
    0.7 ms or 2.2 ms depending on the heap's history and on other processes, and blocks timed alone fault
    differently from the network. Keeping memory (no mmap for allocations, no trimming: what jemalloc or tcmalloc
    do, and PyTorch's CPU tuning guide recommends) removes those faults from both, so a figure describes the
    steady state of a serving process. The process's resident memory then stays at its peak: measure in a process
    of its own (the CLI) or accept that. Elsewhere than glibc nothing is changed.
    """
    global _ALLOCATOR
    if _ALLOCATOR is not None:
        return _ALLOCATOR
    _ALLOCATOR = "system default"
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
            ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
            if ok:
                _ALLOCATOR = "glibc, freed memory kept (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)"
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass
    return _ALLOCATOR


def _harness(fp: Fingerprint, s: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of the timing harness for ``fp``'s target and the settings ``s``."""
    dev = device_of(fp)
    return {"rounds": s["rounds"], "threads": fp.threads if dev == "cpu" else None, "device": dev,
            **{k: s[k] for k in HARNESS_KEYS}}


def measure_blocks(keys: Sequence[BlockKey], fp: Fingerprint, *, fused: bool = True, **settings: Any) -> list[Timing]:
    """Timings (ms per block) of ``keys`` measured together on ``fp``'s target (see the module docstring).

    ``settings``: warmup, repeats, max_spread, max_attempts, rounds, chain (others of :data:`MEASURE_DEFAULTS` are
    accepted and ignored here). A chained block's samples are divided by the chain length.
    """
    s = timing_settings(**settings)
    dev = device_of(fp)
    steady_allocator()
    fns, chains = [], []
    for key in keys:
        n = s["chain"] if key.kind == "block" else 1
        module, inputs = block_module(key, batch=fp.batch, fused=fused and uses_fused(fp.backend), chain=n,
                                      device=dev, dtype=torch_dtype(fp))
        fns.append(runner(module, inputs, fp.backend, threads=fp.threads, device=dev))
        chains.append(n)
    timings = time_rounds(fns, **_harness(fp, s))
    for t, n in zip(timings, chains):
        if n > 1:
            t.median_ms /= n
            t.samples_ms = [v / n for v in t.samples_ms]
    return timings


def measure_block(key: BlockKey, fp: Fingerprint, *, fused: bool = True, **settings: Any) -> Timing:
    """Timing (ms per block) of one ``key`` on ``fp``'s target; see :func:`measure_blocks`."""
    return measure_blocks([key], fp, fused=fused, **settings)[0]


def network_callables(archs: Sequence[ArchConfig], fp: Fingerprint, fused: bool = True,
                      cache_bytes: int = 2 << 30) -> list[Rebuilt]:
    """One :class:`Rebuilt` per network: built when a pass reaches it, kept for the later passes while the kept
    networks' parameters fit ``cache_bytes``, rebuilt (same seed) in every pass otherwise."""
    kept_bytes = 0

    def build(arch: ArchConfig) -> tuple[Callable[[], Any], bool]:
        nonlocal kept_bytes
        model, x = build_arch_model(arch, fp, fused)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        keep = kept_bytes + size <= cache_bytes
        if keep:
            kept_bytes += size
        return runner(model, (x,), fp.backend, threads=fp.threads, device=device_of(fp)), keep

    return [Rebuilt(lambda a=arch: build(a)) for arch in archs]


def network_passes(archs: Sequence[ArchConfig], fp: Fingerprint, *, fused: bool = True, cache_bytes: int = 2 << 30,
                   **settings: Any) -> Iterator[list[Timing]]:
    """Whole networks measured pass by pass with the timing harness (:func:`~hilonas.latency.timing.round_robin`):
    yields, after each of the ``rounds`` passes, one Timing per network of that pass (pool them with
    :func:`~hilonas.latency.timing.pool_timings`). Lets a caller put other work between the passes (the table build
    measures the blocks' passes between the calibration networks' passes).

    Networks are kept between passes while their parameters fit ``cache_bytes``, rebuilt (same seed, full warm-up)
    otherwise.
    """
    s = timing_settings(**settings)
    steady_allocator()
    return round_robin(network_callables(archs, fp, fused, cache_bytes), **_harness(fp, s))


def measure_archs(archs: Sequence[ArchConfig], fp: Fingerprint, *, fused: bool = True,
                  on_pass: Callable[[int], None] | None = None, cache_bytes: int = 2 << 30,
                  **settings: Any) -> list[Timing]:
    """Whole-network Timings of ``archs`` on ``fp``'s target, batch, threads and resolution, with the blocks'
    protocol: ``rounds`` passes, each pass timing every network once (``time_callable``) before the next pass
    starts, so a network's passes lie minutes apart and a slow spell of the machine cannot cover all of them.
    ``on_pass(r)`` is called after pass ``r``. See :func:`network_passes` for ``cache_bytes``.
    """
    s = timing_settings(**settings)
    steady_allocator()
    return time_rounds(network_callables(archs, fp, fused, cache_bytes), on_pass=on_pass, **_harness(fp, s))


def measure_arch(arch: ArchConfig, fp: Fingerprint, *, fused: bool = True, **settings: Any) -> Timing:
    """Timing (ms) of the whole network for ``arch`` on ``fp``'s target; compare ``figure_ms(t, statistic)`` with
    a table's prediction (``min_ms`` for tables built with the default statistic)."""
    return measure_archs([arch], fp, fused=fused, **settings)[0]
