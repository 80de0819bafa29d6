"""The speed probe: how fast this machine runs today compared with when its latency table was measured.

A table is a starting point on any machine, not a promise: two hosts with the same fingerprint (the same CPU name)
can differ by 25% or more, and one host drifts by ~5% within minutes. Nor do all kinds of work move together: on
the 2-core machines here, a slower host ran the stem and patch merges (memory-bound convolutions) 1.4-1.6x slower
and the transformer blocks 1.2-1.45x slower, so one factor over-predicts a large network and under-predicts a small
one, whose share of stem and merges is larger. Before any absolute latency is shown or enforced, the probe re-times,
with the table's own protocol and statistic, on a small budget:

- a few stored blocks of every calibration group (stem, merge, head, each mixer's blocks; :func:`probe_blocks`):
  the median ratio ``now / at build`` of a group is its **group factor**;
- a few of the table's calibration networks spanning its range (:func:`probe_networks`): the median ratio is the
  headline **speed factor**; the median over them of ``ratio * base / regrouped`` (``base`` the table's prediction,
  ``regrouped`` the prediction with the group factors applied) is the **residual**, what whole networks show beyond
  their blocks.

A prediction for this machine today is ``residual * calibration(sum_g group_factor[g] * raw_g)``
(:class:`~hilonas.latency.predictor.LatencyPredictor` with :meth:`SpeedProbe.correction`); rankings barely move.
The probe (factors, spread, seconds, when) is recorded in the table's bounded probe history (the stored block
timings and the base calibration are never rewritten) and by the caller (study user attrs, export provenance).
"""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.latency.calibration import block_group, calibration_networks
from hilonas.latency.fingerprint import Fingerprint
from hilonas.latency.keys import BlockKey
from hilonas.latency.table import LatencyTable

__all__ = ["SpeedProbe", "probe_networks", "probe_blocks", "probe_speed", "warn_factor", "speed_kwargs",
           "DEFAULT_PROBE_NETWORKS", "DEFAULT_PROBE_BLOCKS", "DEFAULT_PROBE_BUDGET_S", "WARN_FACTOR"]

DEFAULT_PROBE_NETWORKS = 4
DEFAULT_PROBE_BLOCKS = 4  # stored blocks re-timed per calibration group
DEFAULT_PROBE_BUDGET_S = 20.0  # seconds a probe may take on CPU
WARN_FACTOR = 0.15  # a factor further than this from 1 is printed as a warning
_MIN_ROUNDS = 3


@dataclass(frozen=True)
class SpeedProbe:
    """One probe: a factor > 1 means this machine runs slower now than when the table was measured.

    Attributes:
        factor: median over the probe networks of (figure now / figure stored in the table): the headline figure.
        spread: max - min of those ratios (how much the networks disagree).
        seconds: what the probe cost.
        networks: probe networks timed.
        rounds: interleaved passes over the probe blocks and networks.
        taken_at: local time, ISO 8601.
        ratios: the per-network ratios, in the order of :func:`probe_networks`.
        group_factors: per calibration group, the median ratio of its probe blocks (empty: blocks not probed).
        block_factor: the median ratio over all probe blocks (the factor of a group no probe block belongs to).
        residual: what the networks show beyond their regrouped blocks (1: nothing).
        blocks: probe blocks timed.
    """

    factor: float
    spread: float
    seconds: float
    networks: int
    rounds: int
    taken_at: str
    ratios: tuple[float, ...]
    group_factors: Mapping[str, float] = field(default_factory=dict)
    block_factor: float | None = None
    residual: float | None = None
    blocks: int = 0

    def correction(self) -> dict[str, Any]:
        """What a predictor needs to predict for this machine today: :func:`speed_kwargs` of :meth:`to_dict`."""
        return speed_kwargs(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratios"] = [round(r, 5) for r in self.ratios]
        d["group_factors"] = {g: round(v, 5) for g, v in self.group_factors.items()}
        d.update(factor=round(self.factor, 5), spread=round(self.spread, 5), seconds=round(self.seconds, 2))
        for k in ("block_factor", "residual"):
            if d[k] is not None:
                d[k] = round(d[k], 5)
        return d

    def describe(self) -> str:
        how = "slower" if self.factor >= 1 else "faster"
        groups = ", ".join(f"{g} {v:.2f}" for g, v in sorted(self.group_factors.items()))
        by_group = f"; by kind: {groups}" if groups else ""
        return (f"speed probe: this machine runs {abs(self.factor - 1):.1%} {how} than when the table was measured "
                f"(factor {self.factor:.3f}, spread {self.spread:.3f}, {self.networks} networks, {self.blocks} "
                f"blocks, {self.seconds:.1f} s{by_group})")


def speed_kwargs(probe: Mapping[str, Any] | None) -> dict[str, Any]:
    """:class:`~hilonas.latency.predictor.LatencyPredictor` keyword arguments from a recorded probe
    (:meth:`SpeedProbe.to_dict`): the residual and the group factors, or for a probe without group factors (taken
    before they existed, or ``{"factor": f}``) its plain factor; None or {} gives no correction."""
    if not probe:
        return {}
    groups = probe.get("group_factors")
    if groups and probe.get("residual") is not None:
        default = probe.get("block_factor")
        return {"speed_factor": float(probe["residual"]),
                "group_factors": {str(g): float(v) for g, v in groups.items()},
                "default_group_factor": float(default) if default is not None else None}
    return {"speed_factor": float(probe.get("factor", 1.0))}


def _spanning(items: list[Any], k: int) -> list[Any]:
    """``k`` of ``items`` (sorted) evenly spaced in rank, first and last included; all of them when ``k`` >= len."""
    if len(items) <= k:
        return list(items)
    picks = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [len(items) // 2]
    return [items[i] for i in picks]


def probe_networks(table: LatencyTable, k: int = DEFAULT_PROBE_NETWORKS) -> list[tuple[ArchConfig, float]]:
    """``k`` of the table's calibration networks spanning its range of latencies (evenly spaced in rank, fastest
    and slowest included), each with the figure the table stored for it (ms)."""
    return _spanning(sorted(calibration_networks(table.calibration), key=lambda pair: pair[1]), k)


def probe_blocks(table: LatencyTable, per_group: int = DEFAULT_PROBE_BLOCKS) -> list[tuple[BlockKey, float]]:
    """Up to ``per_group`` stored blocks of every calibration group, spanning the group's range of latencies, each
    with its stored figure (ms)."""
    by_group: dict[str, list[tuple[BlockKey, float]]] = {}
    for kid in sorted(table.entries):
        key = table.key_of(kid)
        by_group.setdefault(block_group(key), []).append((key, table.latency_ms(key)))
    out: list[tuple[BlockKey, float]] = []
    for group in sorted(by_group):
        out += _spanning(sorted(by_group[group], key=lambda pair: (pair[1], pair[0].id)), per_group)
    return out


NETWORK_SHARE = 0.7  # of the probe's budget, for the networks (they set the level); the blocks get the rest


def _passes(blocks: list[BlockKey], nets: list[ArchConfig], table: LatencyTable, fp: Fingerprint,
            deadline: float, **overrides: Any) -> list[list[Any]]:
    """Round-robin passes over ``blocks`` and ``nets`` (each built once) with the table's protocol, as many as fit
    before ``deadline`` (``time.perf_counter``; at least _MIN_ROUNDS, at most the table's rounds): stop when one
    more pass, as long as the last one, would overrun. Returns, per block then per network, its Timings."""
    from hilonas.latency.build import measurement_settings
    from hilonas.latency.measure import mixed_passes

    out: list[list[Any]] = [[] for _ in [*blocks, *nets]]
    passes = mixed_passes(blocks, nets, fp, **{**measurement_settings(table), **overrides})
    pass_started = time.perf_counter()
    try:
        for r, timings in enumerate(passes):
            for ts, t in zip(out, timings):
                ts.append(t)
            now = time.perf_counter()
            last, pass_started = now - pass_started, now
            if r + 1 >= _MIN_ROUNDS and now + last > deadline:
                break
    finally:
        passes.close()  # frees the modules kept between passes
    return out


def probe_speed(table: LatencyTable, fp: Fingerprint | None = None, *, networks: int = DEFAULT_PROBE_NETWORKS,
                blocks: int = DEFAULT_PROBE_BLOCKS, budget_s: float = DEFAULT_PROBE_BUDGET_S,
                record: bool = True) -> SpeedProbe | None:
    """Re-time the table's probe blocks and networks on this machine (see the module docstring); None when the
    table has no calibration networks to probe with. Measures on ``fp`` (default: the table's own fingerprint) with
    the table's protocol (warm-up, repeats, chain, statistic) and as many passes as fit ``budget_s``
    (:data:`NETWORK_SHARE` of it for the networks, the rest for the blocks); ``blocks=0`` probes networks only (one
    factor for everything).

    With ``record`` the probe is appended to the table's probe history and saved (under the table's lock).
    """
    from hilonas.latency.measure import figure_ms
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.timing import pool_timings

    if budget_s <= 0:
        raise HilonasError(f"probe budget {budget_s} s must be > 0")
    nets = probe_networks(table, networks)
    if not nets:
        return None
    keys = probe_blocks(table, blocks) if blocks > 0 else []
    started = time.perf_counter()
    fp = fp or table.fingerprint
    # The networks first, exactly as the table timed its calibration networks (they set the level); then the
    # blocks, one attempt per timing (their figures are pooled over passes anyway, and only their ratios to one
    # another matter: the residual re-anchors the level on the networks).
    share = NETWORK_SHARE if keys else 1.0
    net_t = _passes([], [a for a, _ in nets], table, fp, started + share * budget_s)
    block_t = _passes([k for k, _ in keys], [], table, fp, started + budget_s, max_attempts=1) if keys else []
    stat = table.statistic
    ratios = tuple(figure_ms(pool_timings(ts), stat) / ms for ts, (_, ms) in zip(net_t, nets))
    by_group: dict[str, list[float]] = {}
    for ts, (key, ms) in zip(block_t, keys):
        by_group.setdefault(block_group(key), []).append(figure_ms(pool_timings(ts), stat) / ms)
    group_factors = {g: statistics.median(v) for g, v in by_group.items()}
    block_factor = statistics.median([r for v in by_group.values() for r in v]) if by_group else None
    residual = None
    if group_factors:
        base = LatencyPredictor(table)
        regrouped = LatencyPredictor(table, group_factors=group_factors, default_group_factor=block_factor)
        residual = statistics.median(r * base.predict(a) / regrouped.predict(a) for r, (a, _) in zip(ratios, nets))
    probe = SpeedProbe(factor=statistics.median(ratios), spread=max(ratios) - min(ratios),
                       seconds=time.perf_counter() - started, networks=len(nets), rounds=len(net_t[0]),
                       taken_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), ratios=ratios, group_factors=group_factors,
                       block_factor=block_factor, residual=residual, blocks=len(keys))
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
