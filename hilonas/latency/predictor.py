"""Predict a network's latency from a LatencyTable: the sum of its blocks, corrected by the table's calibration.

``predict_raw(arch)`` is the plain sum over the blocks the network runs (each block's stored figure times how often
it runs). ``predict(arch)`` applies the table's :class:`~hilonas.latency.calibration.Calibration` (the formula lives
there): ``intercept_ms + scale * sum_g(group_scale[g] * raw_g)`` over the block groups of :func:`block_group`. A table
without calibration predicts the raw sum.

Lookups are precomputed per :class:`BlockKey` and the block lists cached per ArchConfig, so a prediction costs
microseconds and imports no torch. A block missing from the table raises :class:`MissingBlockError` naming it
(never counted as zero), unless the predictor was made with ``measure_missing=True``, which measures the block on
this machine, adds it to the table and saves it.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.latency.calibration import Calibration, block_group
from hilonas.latency.keys import BlockKey, arch_blocks
from hilonas.latency.table import LatencyTable

if TYPE_CHECKING:
    from hilonas.latency.timing import Timing

__all__ = ["LatencyPredictor", "MissingBlockError", "block_group"]

_IDENTITY = Calibration("none")  # scale 1, intercept 0: the plain sum

_CACHE_LIMIT = 100_000


class MissingBlockError(HilonasError):
    """A block of the architecture has no entry in the latency table."""

    def __init__(self, key: BlockKey, table: LatencyTable | None = None) -> None:
        self.key = key
        where = f" {table.path}" if table is not None else ""
        super().__init__(f"block {key.id} is missing from latency table{where}: run `hilonas latency build` for this "
                         "space and target, or predict with measure_missing=True")


class LatencyPredictor:
    """Latency of an ArchConfig (ms) from a :class:`LatencyTable`.

    Args:
        table: the table (its calibration is read once, here, into :attr:`calibration`; make a new predictor after
            re-calibrating).
        measure_missing: measure a missing block on this machine (with the table's settings), add it to the table and
            save, instead of raising :class:`MissingBlockError`. Needs torch and the table's hardware.
        speed_factor: this run's speed factor (:mod:`hilonas.latency.probe`): :meth:`predict` is the table's
            prediction times it (1.0: the machine as it was when the table was measured).
        group_factors: this run's factor per calibration group (a speed probe's group factors): each block's stored
            figure ``ms`` is scaled by its group's factor times ``ms ** size_exponent`` before the calibration; a
            group without one takes ``default_group_factor`` (1 when None), and so does the calibration's
            intercept (what a network costs beyond its blocks). :meth:`predict_base` ignores them too.
            The usual way to pass these is ``**speed_kwargs(probe)`` (:func:`hilonas.latency.probe.speed_kwargs`).
    """

    def __init__(self, table: LatencyTable, *, measure_missing: bool = False, speed_factor: float = 1.0,
                 group_factors: Mapping[str, float] | None = None,
                 default_group_factor: float | None = None, size_exponent: float = 0.0) -> None:
        factors = {**(group_factors or {}), "default_group_factor": default_group_factor or 1.0,
                   "speed_factor": speed_factor}
        bad = {g: v for g, v in factors.items() if not (isinstance(v, (int, float)) and 0 < v < float("inf"))}
        if not (isinstance(size_exponent, (int, float)) and abs(size_exponent) < 1):
            bad["size_exponent"] = size_exponent
        if bad:
            raise HilonasError(f"speed correction {bad} must be positive finite numbers")
        self.table = table
        self.measure_missing = measure_missing
        self.speed_factor = float(speed_factor)
        self.group_factors = dict(group_factors or {})
        self._default_group = float(default_group_factor or 1.0)
        self.size_exponent = float(size_exponent)
        self.calibration: Calibration | None = Calibration.from_dict(table.calibration) if table.calibration else None
        self._cal = self.calibration or _IDENTITY
        self._raw: dict[BlockKey, float] = {}  # per key: stored median (ms)
        self._weighted: dict[BlockKey, float] = {}  # per key: median * group scale (the table's calibration)
        self._today: dict[BlockKey, float] = {}  # per key: weighted * this run's group factor
        for kid in table.entries:
            self._remember(table.key_of(kid))
        self._archs: dict[ArchConfig, tuple[float, float, float]] = {}

    def _remember(self, key: BlockKey) -> None:
        ms = self.table.latency_ms(key)
        group = block_group(key)
        self._raw[key] = ms
        self._weighted[key] = ms * self._cal.factor(group)
        size = ms ** self.size_exponent if self.size_exponent and ms > 0 else 1.0
        self._today[key] = self._weighted[key] * self.group_factors.get(group, self._default_group) * size

    def _blocks(self, arch: ArchConfig) -> Counter[BlockKey]:
        return arch_blocks(arch)

    def _sums(self, arch: ArchConfig) -> tuple[float, float, float]:
        """(raw, weighted, weighted with today's group factors) sums over the blocks of ``arch``."""
        cached = self._archs.get(arch)
        if cached is not None:
            return cached
        raw = weighted = today = 0.0
        for key, n in self._blocks(arch).items():
            ms = self._raw.get(key)
            if ms is None:
                self._fill(key)
                ms = self._raw[key]
            raw += n * ms
            weighted += n * self._weighted[key]
            today += n * self._today[key]
        if len(self._archs) >= _CACHE_LIMIT:
            self._archs.clear()
        self._archs[arch] = (raw, weighted, today)
        return raw, weighted, today

    def _fill(self, key: BlockKey) -> None:
        if key.id in self.table.entries:  # added to the table after this predictor was made
            self._remember(key)
            return
        if not self.measure_missing:
            raise MissingBlockError(key, self.table)
        from hilonas.latency.measure import MEASURE_DEFAULTS, measure_block

        kw = {k: v for k, v in self.table.settings.items() if k in MEASURE_DEFAULTS}
        timing = measure_block(key, self.table.fingerprint, **kw)
        chain = kw.get("chain", MEASURE_DEFAULTS["chain"]) if key.kind == "block" else 1
        timing, today = self.at_table_speed(key, timing, chain)
        extra = {"measured_speed": round(today, 5)} if today != 1.0 else {}
        self.table.add(key, timing, chain=chain, source="measure_missing", **extra)
        self.table.save()
        self._remember(key)

    def at_table_speed(self, key: BlockKey, timing: Timing, chain: int) -> tuple[Timing, float]:
        """``timing`` of ``key`` (``chain`` copies) measured at this run's speed, put on the table's scale: divided
        by the factor :meth:`predict` applies to the block (group factor, size term, speed factor), so today's
        prediction of it is what was measured, not its square. Returns it with that factor."""
        today = self.group_factors.get(block_group(key), self._default_group) * self.speed_factor
        if self.size_exponent and timing.median_ms > 0:
            today *= (timing.median_ms / chain / today) ** self.size_exponent
        return timing.divided_by(today), today

    def predict_raw(self, arch: ArchConfig) -> float:
        """Plain sum of the blocks' medians (ms), no calibration."""
        return self._sums(arch)[0]

    def predict(self, arch: ArchConfig) -> float:
        """Calibrated latency (ms) of ``arch`` on the table's hardware as it runs today: blocks scaled by this run's
        group factors, then the calibration, then times this run's speed factor."""
        return self._cal.finish(self._sums(arch)[2], self._default_group) * self.speed_factor

    def predict_base(self, arch: ArchConfig) -> float:
        """Calibrated latency (ms) as the table was measured (no speed factor, no group factors)."""
        return self._cal.finish(self._sums(arch)[1])

    def breakdown(self, arch: ArchConfig) -> dict[str, float]:
        """Raw milliseconds by calibration group (stem, block:<mixer>, merge, head)."""
        out: dict[str, float] = {}
        for key, n in self._blocks(arch).items():
            if key not in self._raw:
                self._fill(key)
            g = block_group(key)
            out[g] = out.get(g, 0.0) + n * self._raw[key]
        return out

    def missing(self, arch: ArchConfig) -> list[BlockKey]:
        """The blocks of ``arch`` the table lacks."""
        return self.table.missing(self._blocks(arch))
