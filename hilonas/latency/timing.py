"""The one timing harness of hilonas.

Every latency figure in the project (block tables, whole networks, benches) comes from here:

- ``time_once(fn, device)``: one timed call in milliseconds; the building block that interleaved benches use.
- ``time_callable(fn, ...)``: warm-up, ``repeats`` timed calls, median and spread, re-measured when noisy.
- ``time_module(module, example_input, ...)``: the same for ``module(*inputs)`` in eval mode.
- ``num_threads(n)``: a context manager that pins torch's intra-op thread count and restores it.
- ``median_of`` / ``spread_of``: the statistics every caller reports.
- ``round_robin(fns, rounds)``: several callables in round-robin passes of ``time_callable``, one pass at a time (a
  generator, for callers that put other work between passes); ``time_rounds(fns, rounds)`` runs all the passes and
  pools each callable's samples. Blocks, whole networks and the benches all go through ``round_robin``.
- ``Rebuilt(build)``: a callable made afresh for a pass (a model too large to keep), for ``round_robin``.

All calls run under ``torch.inference_mode()``. On CPU a call is timed with ``time.perf_counter``; on CUDA with
a pair of ``torch.cuda.Event`` s around the call followed by a synchronize, so queued kernels are counted.

Spread is ``(p90 - p10) / median`` of the samples (linear-interpolated percentiles): a robust relative width that
ignores a single outlier on either side, unlike max/min or the standard deviation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Union

import torch

__all__ = ["Timing", "num_threads", "time_once", "time_callable", "time_module", "median_of", "spread_of",
           "round_robin", "time_rounds", "pool_timings", "Rebuilt"]

# Indirection so tests can substitute a deterministic clock.
_clock: Callable[[], float] = time.perf_counter


@dataclass
class Timing:
    """Result of one measurement.

    Attributes:
        median_ms: median of the kept samples, in milliseconds.
        spread: ``(p90 - p10) / median`` of the kept samples (0 for a single sample).
        runs: number of timed calls in the kept attempt.
        samples_ms: the kept attempt's samples, in call order.
        device: the device the calls were timed on, e.g. ``"cpu"`` or ``"cuda:0"``.
        threads: torch's intra-op thread count during the measurement.
        noisy: True when even the best attempt's spread exceeded ``max_spread``.
        attempts: how many attempts (of ``runs`` samples each) were made.
    """

    median_ms: float
    spread: float
    runs: int
    samples_ms: list[float] = field(repr=False)
    device: str
    threads: int
    noisy: bool
    attempts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def divided_by(self, factor: float) -> Timing:
        """This timing with every figure divided by ``factor`` (put on another machine's scale); itself for 1."""
        if factor == 1.0:
            return self
        return replace(self, median_ms=self.median_ms / factor, samples_ms=[ms / factor for ms in self.samples_ms])

    @property
    def min_ms(self) -> float:
        """The fastest kept sample: the least disturbed figure when other processes share the machine."""
        return min(self.samples_ms) if self.samples_ms else self.median_ms


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 1], of an ascending non-empty sequence."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def median_of(samples: Sequence[float]) -> float:
    """Median of a non-empty sequence of samples."""
    if not samples:
        raise ValueError("median_of needs at least one sample")
    return _percentile(sorted(samples), 0.5)


def spread_of(samples: Sequence[float]) -> float:
    """``(p90 - p10) / median`` of ``samples``; 0.0 for fewer than two samples, inf for a zero median."""
    if len(samples) < 2:
        return 0.0
    s = sorted(samples)
    med = _percentile(s, 0.5)
    width = _percentile(s, 0.9) - _percentile(s, 0.1)
    if med <= 0:
        return 0.0 if width == 0 else float("inf")
    return width / med


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Pin ``torch.set_num_threads(threads)`` inside the block and restore the previous count after.

    ``None`` leaves the count alone. Yields the count in effect.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if threads is not None:
            torch.set_num_threads(previous)


def _normalise_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {str(device)!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r} requested but torch.cuda.is_available() is False")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def time_once(fn: Callable[[], Any], device: str | torch.device = "cpu") -> float:
    """Time one call of ``fn()`` in milliseconds.

    The caller chooses the context (inference mode, thread count); ``time_callable`` and the benches set it.
    On CUDA the call is bracketed by events on the current stream and synchronized, so the figure covers the
    kernels the call queued, not only the Python time to queue them.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        with torch.cuda.device(dev):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
    t0 = _clock()
    fn()
    return (_clock() - t0) * 1e3


def _synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_callable(
    fn: Callable[[], Any],
    *,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    max_spread: float = 0.1,
    max_attempts: int = 3,
) -> Timing:
    """Median latency of ``fn()`` in milliseconds.

    Runs ``warmup`` untimed calls, then up to ``max_attempts`` attempts of ``repeats`` timed calls each, all under
    ``torch.inference_mode()`` and, when ``threads`` is given, with that many intra-op threads (restored after).
    An attempt whose spread is at most ``max_spread`` ends the measurement; otherwise the attempt with the lowest
    spread is kept and ``noisy`` tells whether it still exceeds ``max_spread``.

    Args:
        fn: a callable with no arguments; its result is ignored.
        warmup: untimed calls before the first attempt.
        repeats: timed calls per attempt (>= 1).
        threads: intra-op threads to use, or None to keep the current setting.
        device: ``"cpu"`` or ``"cuda[:N]"``; decides the clock (perf_counter or CUDA events).
        max_spread: the ``(p90 - p10) / median`` above which an attempt counts as noisy.
        max_attempts: attempts at most (>= 1).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    dev = _normalise_device(device)
    best: list[float] | None = None
    best_spread = float("inf")
    attempts = 0
    with num_threads(threads) as used_threads, torch.inference_mode():
        for _ in range(warmup):
            fn()
        _synchronize(dev)
        while attempts < max_attempts:
            attempts += 1
            samples = [time_once(fn, dev) for _ in range(repeats)]
            spread = spread_of(samples)
            if best is None or spread < best_spread:
                best, best_spread = samples, spread
            if spread <= max_spread:
                break
    return Timing(
        median_ms=median_of(best),
        spread=best_spread,
        runs=len(best),
        samples_ms=list(best),
        device=str(dev),
        threads=used_threads,
        noisy=best_spread > max_spread,
        attempts=attempts,
    )


def time_module(module: torch.nn.Module, example_input: Any, **kwargs: Any) -> Timing:
    """Time ``module(*inputs)`` in eval mode with ``time_callable`` (keyword arguments pass through).

    ``example_input`` is one tensor or a tuple/list of positional inputs. When ``device`` is not given it is the
    device of the first tensor input (CPU when there is none). The module's train/eval mode is restored after.
    """
    inputs = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if "device" not in kwargs:
        first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
        kwargs["device"] = first.device if first is not None else "cpu"
    was_training = module.training
    module.eval()
    try:
        return time_callable(lambda: module(*inputs), **kwargs)
    finally:
        module.train(was_training)


def pool_timings(timings: Sequence[Timing]) -> Timing:
    """One Timing from several measurements of the same callable: samples pooled (median, spread and runs over the
    pool), attempts summed, ``noisy`` only when every one was."""
    if not timings:
        raise ValueError("pool_timings needs at least one Timing")
    pooled = [s for t in timings for s in t.samples_ms]
    return Timing(median_ms=median_of(pooled), spread=spread_of(pooled), runs=len(pooled), samples_ms=pooled,
                  device=timings[0].device, threads=timings[0].threads, noisy=all(t.noisy for t in timings),
                  attempts=sum(t.attempts for t in timings))


@dataclass(frozen=True)
class Rebuilt:
    """A callable that :func:`round_robin` obtains from ``build()`` when a pass reaches it.

    ``build()`` returns ``(fn, keep)``: ``keep`` True reuses ``fn`` in the later passes (built once), False builds it
    again in every pass and drops it after its timing (what does not fit in memory alongside the others). A callable
    built afresh is timed with the full warm-up, like every callable on the first pass.
    """

    build: Callable[[], tuple[Callable[[], Any], bool]]


Timed = Union[Callable[[], Any], Rebuilt]


def round_robin(fns: Sequence[Timed], *, rounds: int = 3, rewarm: int = 1, rotate: bool = False,
                **kwargs: Any) -> Iterator[list[Timing]]:
    """Time several callables in ``rounds`` round-robin passes of :func:`time_callable`; yield each pass's Timings.

    Other processes slow a measurement in bursts. Measuring ``fns[0], fns[1], ...`` once per pass, ``rounds`` times,
    spreads each callable's samples over the whole run, so a burst hits every callable alike and each callable gets
    its share of the quiet moments. ``kwargs`` go to :func:`time_callable` for every timing; a callable's first
    timing gets the full ``warmup``, the later ones ``min(rewarm, warmup)`` calls (the other callables ran in
    between). A :class:`Rebuilt` entry is built when a pass reaches it; a fresh build gets the full warm-up again.

    Args:
        fns: callables with no arguments (or :class:`Rebuilt`).
        rounds: passes (>= 1).
        rewarm: warm-up calls of a callable already timed in an earlier pass.
        rotate: start pass ``r`` at callable ``r % len(fns)`` so no callable always runs first; each yielded list is
            in ``fns`` order all the same.

    Yields:
        after each pass, one :class:`Timing` per callable, in ``fns`` order. The caller may do other work before
        asking for the next pass (the table build measures blocks between the calibration networks' passes).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    warmup = kwargs.pop("warmup", 5)
    kept: list[Callable[[], Any] | None] = [None if isinstance(f, Rebuilt) else f for f in fns]
    n = len(fns)
    for r in range(rounds):
        timings: list[Timing | None] = [None] * n
        start = r % n if rotate and n else 0
        for i in [*range(start, n), *range(start)]:
            fn, fresh = kept[i], r == 0
            if fn is None:
                fn, keep = fns[i].build()
                fresh = True
                if keep:
                    kept[i] = fn
            timings[i] = time_callable(fn, warmup=warmup if fresh else min(rewarm, warmup), **kwargs)
            del fn
        yield timings


def time_rounds(fns: Sequence[Timed], *, rounds: int = 3, on_pass: Callable[[int], None] | None = None,
                **kwargs: Any) -> list[Timing]:
    """Time several callables in ``rounds`` round-robin passes (:func:`round_robin`), pooling each one's samples.

    ``on_pass(r)`` is called after pass ``r`` (0-based), e.g. to move a progress bar; other keyword arguments go to
    :func:`round_robin` (rewarm, rotate) and :func:`time_callable`. Each returned Timing pools the passes' samples
    (see :func:`pool_timings`), in ``fns`` order.
    """
    passes: list[list[Timing]] = [[] for _ in fns]
    for r, timings in enumerate(round_robin(fns, rounds=rounds, **kwargs)):
        for ts, t in zip(passes, timings):
            ts.append(t)
        if on_pass is not None:
            on_pass(r)
    return [pool_timings(ts) for ts in passes]
