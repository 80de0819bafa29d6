"""The speed probe: how fast this machine runs today compared with when its latency table was measured.

A table is a starting point on any machine, not a promise: two hosts with the same fingerprint (the same CPU name)
can differ by 25% or more, and one host drifts by ~5% within minutes. Before any absolute latency is shown or
enforced, a few of the table's calibration networks (the probes: chosen to span the table's range of latencies) are
re-timed here with the table's own protocol and statistic, on a small budget. The median of their ratios
``now / at build`` is this run's **speed factor**: predictions are multiplied by it (rankings do not change).

The factor, the spread of the ratios, the seconds it cost and when it was taken are recorded in the table's bounded
probe history (the stored block timings and the base calibration are never rewritten) and by the caller (study
user attrs, export provenance).
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.latency.calibration import calibration_networks
from hilonas.latency.fingerprint import Fingerprint
from hilonas.latency.table import LatencyTable

__all__ = ["SpeedProbe", "probe_networks", "probe_speed", "warn_factor", "DEFAULT_PROBE_NETWORKS",
           "DEFAULT_PROBE_BUDGET_S", "WARN_FACTOR"]

DEFAULT_PROBE_NETWORKS = 4
DEFAULT_PROBE_BUDGET_S = 20.0  # seconds a probe may take on CPU
WARN_FACTOR = 0.15  # a factor further than this from 1 is printed as a warning
_MIN_ROUNDS = 3


@dataclass(frozen=True)
class SpeedProbe:
    """One probe: ``factor`` > 1 means this machine runs slower now than when the table was measured.

    Attributes:
        factor: median over the probe networks of (figure now / figure stored in the table).
        spread: max - min of those ratios (how much the networks disagree).
        seconds: what the probe cost.
        networks: probe networks timed.
        rounds: passes over them (each of the table's ``repeats`` calls).
        taken_at: local time, ISO 8601.
        ratios: the per-network ratios, in the order of :func:`probe_networks`.
    """

    factor: float
    spread: float
    seconds: float
    networks: int
    rounds: int
    taken_at: str
    ratios: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratios"] = [round(r, 5) for r in self.ratios]
        d.update(factor=round(self.factor, 5), spread=round(self.spread, 5), seconds=round(self.seconds, 2))
        return d

    def describe(self) -> str:
        how = "slower" if self.factor >= 1 else "faster"
        return (f"speed probe: this machine runs {abs(self.factor - 1):.1%} {how} than when the table was measured "
                f"(factor {self.factor:.3f}, spread {self.spread:.3f}, {self.networks} networks, {self.seconds:.1f} s)")


def probe_networks(table: LatencyTable, k: int = DEFAULT_PROBE_NETWORKS) -> list[tuple[ArchConfig, float]]:
    """``k`` of the table's calibration networks spanning its range of latencies (evenly spaced in rank, fastest
    and slowest included), each with the figure the table stored for it (ms)."""
    nets = sorted(calibration_networks(table.calibration), key=lambda pair: pair[1])
    if len(nets) <= k:
        return nets
    picks = sorted({round(i * (len(nets) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [len(nets) // 2]
    return [nets[i] for i in picks]


def probe_speed(table: LatencyTable, fp: Fingerprint | None = None, *, networks: int = DEFAULT_PROBE_NETWORKS,
                budget_s: float = DEFAULT_PROBE_BUDGET_S, record: bool = True) -> SpeedProbe | None:
    """Re-time the table's probe networks on this machine and return the speed factor; None when the table has no
    calibration networks to probe with. Measures on ``fp`` (default: the table's own fingerprint), with the table's
    protocol (warm-up, repeats, chain, statistic) and as many passes as fit ``budget_s``.

    With ``record`` the probe is appended to the table's probe history and saved (under the table's lock).
    """
    from hilonas.latency.build import measurement_settings
    from hilonas.latency.measure import figure_ms, network_passes
    from hilonas.latency.timing import pool_timings

    if budget_s <= 0:
        raise HilonasError(f"probe budget {budget_s} s must be > 0")
    probes = probe_networks(table, networks)
    if not probes:
        return None
    started = time.perf_counter()
    settings = measurement_settings(table)
    passes: list[list] = []
    # Passes over the probes, as many as the budget allows (at least _MIN_ROUNDS, at most the table's rounds): stop
    # when one more pass, as long as the last one, would overrun.
    pass_started = started
    for timings in network_passes([a for a, _ in probes], fp or table.fingerprint, **settings):
        passes.append(timings)
        now = time.perf_counter()
        last, pass_started = now - pass_started, now
        if len(passes) >= _MIN_ROUNDS and now - started + last > budget_s:
            break
    pooled = [pool_timings([p[i] for p in passes]) for i in range(len(probes))]
    stored = [ms for _, ms in probes]
    ratios = tuple(figure_ms(t, table.statistic) / ms for t, ms in zip(pooled, stored))
    rounds = len(passes)
    probe = SpeedProbe(factor=statistics.median(ratios), spread=max(ratios) - min(ratios),
                       seconds=time.perf_counter() - started, networks=len(probes), rounds=rounds,
                       taken_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), ratios=ratios)
    if record:
        table.add_probe(probe.to_dict())
        table.save()
    return probe


def warn_factor(factor: float | None, table: LatencyTable) -> str | None:
    """One warning line when a probe's ``factor`` is far from 1 (printed to stderr and returned), else None."""
    if factor is None or abs(factor - 1) <= WARN_FACTOR:
        return None
    how = "slower" if factor > 1 else "faster"
    line = (f"warning: this machine runs {abs(factor - 1):.0%} {how} than when {table.path} was measured "
            "(other processes loading it, or another host behind the same CPU name): latencies shown are scaled by "
            f"{factor:.2f}; for a table of this host run `hilonas latency build --recalibrate` on an idle "
            "machine")
    print(line, file=sys.stderr)
    return line
