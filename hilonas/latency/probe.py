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

**One probe is one moment of a shared machine.** These hosts have slow spells: a probe of 14 s once read 1.072
while the networks timed a minute before and after ran 6% faster than the table (13% off), and 2 of 9 validations
here were fooled that way. No statistic over one probe's passes can undo a spell that covers all of them, so a
probe is pooled with the probes *this host* (hostname and boot id, :func:`host_id`) recorded in the table in the
last :data:`POOL_MINUTES` minutes (at most :data:`POOL_EARLIER` of them): the level applied is the median of
their factors and this one's (``factor``; ``own_factor`` is this probe alone, ``pooled`` how many were pooled).
The median of three follows a lasting change at the second probe that sees it and ignores a lone spell; the first
probe on a host stands alone.
"""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.latency.calibration import block_group, calibration_networks
from hilonas.latency.fingerprint import Fingerprint
from hilonas.latency.keys import BlockKey
from hilonas.latency.table import LatencyTable

__all__ = ["SpeedProbe", "probe_networks", "probe_blocks", "probe_speed", "warn_factor", "warn_kernels", "speed_kwargs",
           "at_speed", "fit_block_factors", "space_groups", "probe_groups", "host_id", "pool_probe", "POOL_MINUTES",
           "POOL_EARLIER", "pass_bias", "DEFAULT_PROBE_NETWORKS", "DEFAULT_PROBE_BLOCKS", "DEFAULT_PROBE_BUDGET_S",
           "WARN_FACTOR"]

DEFAULT_PROBE_NETWORKS = 4
DEFAULT_PROBE_BLOCKS = 8  # stored blocks re-timed per calibration group, at most...
MAX_PROBE_BLOCKS = 32  # ...this many in all: a table of many spaces has many groups, and a pass over its blocks
#                        must stay a small part of the budget (64 blocks took a 20 s probe to 38 s)
DEFAULT_PROBE_BUDGET_S = 20.0  # seconds a probe may take on CPU
POOL_MINUTES = 20.0  # a probe is pooled with this host's probes of the last this many minutes...
POOL_EARLIER = 2  # ...at most this many of them (the newest): the median of 3 ignores one spell
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
        group_factors: per calibration group, its blocks' ratio at a stored figure of 1 ms (empty: blocks not
            probed); a block of ``ms`` gets ``group_factors[g] * ms ** size_exponent``.
        block_factor: the factor of a group no probe block belongs to (the median ratio of all probe blocks).
        size_exponent: how the ratio moves with a block's size, shared by all groups (0: not at all).
        residual: what the networks show beyond their blocks so corrected (1: nothing); None when the block
            correction is not used (it did not make the probe networks agree better; then ``factor`` applies).
        blocks: probe blocks timed.
        own_factor: this probe's factor alone (None: not pooled, ``factor`` is its own).
        pooled: how many probes of this host the applied level is the median of (1: this one alone).
        host: :func:`host_id` of the machine that took it (pools only with its own host's probes).
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
    size_exponent: float = 0.0
    own_factor: float | None = None
    pooled: int = 1
    host: str = ""

    def correction(self) -> dict[str, Any]:
        """What a predictor needs to predict for this machine today: :func:`speed_kwargs` of :meth:`to_dict`."""
        return speed_kwargs(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratios"] = [round(r, 5) for r in self.ratios]
        d["group_factors"] = {g: round(v, 5) for g, v in self.group_factors.items()}
        d.update(factor=round(self.factor, 5), spread=round(self.spread, 5), seconds=round(self.seconds, 2),
                 size_exponent=round(self.size_exponent, 5))
        for k in ("block_factor", "residual", "own_factor"):
            if d[k] is not None:
                d[k] = round(d[k], 5)
        return d

    def describe(self) -> str:
        how = "slower" if self.factor >= 1 else "faster"
        groups = ", ".join(f"{g} {v:.2f}" for g, v in sorted(self.group_factors.items()))
        by_group = f"; by kind: {groups}" if groups and self.residual is not None else ""
        pooled = (f", median of {self.pooled} probes of this host in the last {POOL_MINUTES:.0f} min, this one "
                  f"{self.own_factor:.3f}" if self.pooled > 1 and self.own_factor is not None else "")
        return (f"speed probe: this machine runs {abs(self.factor - 1):.1%} {how} than when the table was measured "
                f"(factor {self.factor:.3f}{pooled}, spread {self.spread:.3f}, {self.networks} networks, "
                f"{self.blocks} blocks, {self.seconds:.1f} s{by_group})")


def speed_kwargs(probe: Mapping[str, Any] | None) -> dict[str, Any]:
    """:class:`~hilonas.latency.predictor.LatencyPredictor` keyword arguments from a recorded probe
    (:meth:`SpeedProbe.to_dict`): the residual, the group factors and the size exponent, or for a probe without group
    factors (taken before they existed, or ``{"factor": f}``) its plain factor; None or {} gives no correction."""
    if not probe:
        return {}
    groups = probe.get("group_factors")
    if groups and probe.get("residual") is not None:
        default = probe.get("block_factor")
        return {"speed_factor": float(probe["residual"]),
                "group_factors": {str(g): float(v) for g, v in groups.items()},
                "default_group_factor": float(default) if default is not None else None,
                "size_exponent": float(probe.get("size_exponent") or 0.0)}
    return {"speed_factor": float(probe.get("factor", 1.0))}


def at_speed(predicted_ms: float, probe_factor: float, speed: float) -> float:
    """A prediction made at the probe's speed (``probe_factor``; 1.0 without a probe) moved to the speed the machine
    ran at while it was measured (``speed``: the calibration or probe networks timed in the same passes, over the
    table). What the drift-corrected figures of ``latency validate`` and ``export`` compare with: the error left is
    the table's own, not the machine's moves since the probe."""
    return predicted_ms / probe_factor * speed


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


def space_groups(space: Any, resolution: int) -> frozenset[str]:
    """The calibration groups of the blocks ``space`` (a SearchSpace) runs at ``resolution``: what a probe for it
    re-times (a table holding several spaces has groups this one never uses)."""
    return frozenset(block_group(k) for k in space.at_resolution(resolution).enumerate_blocks())


def probe_groups(arch: ArchConfig) -> frozenset[str]:
    """The calibration groups of the blocks one network runs (what a probe for its prediction re-times)."""
    from hilonas.latency.keys import arch_blocks

    return frozenset(block_group(k) for k in arch_blocks(arch))


def probe_blocks(table: LatencyTable, per_group: int = DEFAULT_PROBE_BLOCKS,
                 groups: Collection[str] | None = None) -> list[tuple[BlockKey, float]]:
    """Up to ``per_group`` stored blocks of every calibration group (fewer when the groups are many: at most
    :data:`MAX_PROBE_BLOCKS` in all, at least 2 per group), spanning the group's range of latencies, each with its
    stored figure (ms). With ``groups``, only blocks of those groups."""
    by_group: dict[str, list[tuple[BlockKey, float]]] = {}
    for kid in sorted(table.entries):
        key = table.key_of(kid)
        group = block_group(key)
        if groups is None or group in groups:
            by_group.setdefault(group, []).append((key, table.latency_ms(key)))
    per_group = min(per_group, max(2, MAX_PROBE_BLOCKS // max(1, len(by_group))))
    out: list[tuple[BlockKey, float]] = []
    for group in sorted(by_group):
        out += _spanning(sorted(by_group[group], key=lambda pair: (pair[1], pair[0].id)), per_group)
    return out


NETWORK_SHARE = 0.7  # of the probe's budget, for the networks (they set the level); the blocks get the rest


def _block_pass(blocks: list[BlockKey], table: LatencyTable, fp: Fingerprint) -> list[Any]:
    """One pass over ``blocks`` as the table's build times them (a group of blocks at a time, built afresh, one
    round), with one attempt per timing. Returns one Timing per block."""
    from hilonas.latency.measure import measure_blocks, measurement_settings, table_settings

    size = table_settings(table, {})["group"]
    settings = {**measurement_settings(table), "rounds": 1, "max_attempts": 1}
    return [t for i in range(0, len(blocks), size) for t in measure_blocks(blocks[i:i + size], fp, **settings)]


def _passes(blocks: list[BlockKey], nets: list[ArchConfig], table: LatencyTable, fp: Fingerprint,
            deadline: float) -> list[list[Any]]:
    """Passes over ``nets`` (as the table times its calibration networks, kept between passes) or over ``blocks``
    (as the build times them), as many as fit before ``deadline`` (``time.perf_counter``; at least _MIN_ROUNDS, at
    most the table's rounds): stop when one more pass, as long as the last one, would overrun. Returns, per block
    or network, its Timings."""
    from hilonas.latency.measure import measurement_settings, network_passes

    settings = measurement_settings(table)
    out: list[list[Any]] = [[] for _ in [*blocks, *nets]]
    passes = network_passes(nets, fp, **settings) if nets else None
    pass_started = time.perf_counter()
    try:
        for r in range(settings["rounds"]):
            timings = next(passes) if passes is not None else _block_pass(blocks, table, fp)
            for ts, t in zip(out, timings):
                ts.append(t)
            now = time.perf_counter()
            last, pass_started = now - pass_started, now
            if r + 1 >= _MIN_ROUNDS and now + last > deadline:
                break
    finally:
        if passes is not None:
            passes.close()  # frees the networks kept between passes
    return out


MAX_SIZE_EXPONENT = 0.15  # |exponent| above this is not believed (clipped): a few noisy blocks, not a trend
MIN_T = 2.0  # the size exponent is used only when it is this many standard errors from 0
MIN_NETWORK_MS = 2.0  # below this (the probe networks' median raw sum) the block correction is not used


def fit_block_factors(by_group: Mapping[str, list[tuple[float, float]]]) -> tuple[dict[str, float], float]:
    """Per-group factors at 1 ms and the shared size exponent from probe blocks ``{group: [(stored ms, ratio)]}``:
    least squares of ``log(ratio) = log(factor[g]) + exponent * log(ms)``. Small kernels do not move like large ones
    between hosts (on a slower host of this kind, blocks of 0.8 ms ran 1.35x slower and blocks of 2.4 ms 1.22x), so
    a group's one median mis-scales its small or its large blocks. With too few blocks to fit a slope (fewer than
    the groups + 2), a degenerate spread of sizes or a slope within noise (:data:`MIN_T`), the exponent is 0 and each
    group takes its median ratio."""
    import math

    import numpy as np

    groups = sorted(by_group)
    points = [(g, ms, r) for g in groups for ms, r in by_group[g] if ms > 0 and r > 0]
    medians = {g: statistics.median(r for _, r in by_group[g]) for g in groups if by_group[g]}
    if len(points) < len(groups) + 2:
        return medians, 0.0
    x = np.array([[1.0 if g == h else 0.0 for h in groups] + [math.log(ms)] for g, ms, _ in points])
    y = np.log([r for _, _, r in points])
    coef, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    if rank < x.shape[1] or not np.all(np.isfinite(coef)):
        return medians, 0.0
    # Believe the trend only when the blocks show it clearly (|t| of the exponent >= MIN_T): on tiny blocks the
    # ratios are mostly timing noise, and a slope fitted to noise mis-scales every block.
    dof = len(points) - x.shape[1]
    sigma2 = float(np.sum((x @ coef - y) ** 2)) / dof if dof > 0 else float("inf")
    stderr = math.sqrt(sigma2 * float(np.linalg.pinv(x.T @ x)[-1, -1]))
    if not stderr < abs(coef[-1]) / MIN_T:
        return medians, 0.0
    exponent = float(np.clip(coef[-1], -MAX_SIZE_EXPONENT, MAX_SIZE_EXPONENT))
    # each group's level re-fitted with the (clipped) shared exponent: the median of its ratios / ms ** exponent
    return ({g: statistics.median(r / ms ** exponent for h, ms, r in points if h == g) for g in medians},
            exponent)


def _residual(table: LatencyTable, nets: list[ArchConfig], ratios: tuple[float, ...], group_factors: dict[str, float],
              block_factor: float | None, exponent: float) -> float | None:
    """The residual of the block correction, or None when the correction is not used: when it does not make the
    probe networks agree better than their plain ratios do (the spread of ``ratio / corrected ratio`` is not
    smaller than the spread of the ratios). That is the probe checking its own correction on networks: timing noise
    of small blocks (a few microseconds each) gives factors that explain nothing, and those are not applied."""
    from hilonas.latency.predictor import LatencyPredictor

    if not group_factors:
        return None
    base = LatencyPredictor(table)
    if statistics.median(base.predict_raw(a) for a in nets) < MIN_NETWORK_MS:
        return None  # networks of a few tenths of a millisecond: their blocks' ratios are timing noise
    corrected = LatencyPredictor(table, group_factors=group_factors, default_group_factor=block_factor,
                                 size_exponent=exponent)
    left = [r * base.predict(a) / corrected.predict(a) for r, a in zip(ratios, nets)]
    if len(left) > 1 and max(left) - min(left) >= max(ratios) - min(ratios):
        return None
    return statistics.median(left)


def probe_speed(table: LatencyTable, fp: Fingerprint | None = None, *, networks: int = DEFAULT_PROBE_NETWORKS,
                blocks: int = DEFAULT_PROBE_BLOCKS, budget_s: float = DEFAULT_PROBE_BUDGET_S,
                record: bool = True, groups: Collection[str] | None = None, pool: bool = True) -> SpeedProbe | None:
    """Re-time the table's probe blocks and networks on this machine (see the module docstring); None when the
    table has no calibration networks to probe with. Measures on ``fp`` (default: the table's own fingerprint) with
    the table's protocol (warm-up, repeats, chain, statistic) and as many passes as fit ``budget_s``
    (:data:`NETWORK_SHARE` of it for the networks, the rest for the blocks); ``blocks=0`` probes networks only (one
    factor for everything). ``groups``: re-time only blocks of these calibration groups (:func:`space_groups` of
    the space, or the groups of the one network, the caller predicts); groups left out keep no factor of their own.

    With ``record`` the probe is appended to the table's probe history and saved (under the table's lock). With
    ``pool`` its level is pooled with this host's recent probes (:func:`pool_probe`).

    On a CUDA table the probe times networks only (one factor for everything): GPUs of one name share the chip, so
    the by-kind correction that CPU hosts need has nothing to correct, and at small batches a GPU block's time is
    mostly the host's kernel launches, whose re-timing is noise. On an H100 at batch 1 the block correction took a
    validation's Spearman from 0.99 (no probe, two seeds) to 0.92.
    """
    from hilonas.latency.measure import figure_ms
    from hilonas.latency.timing import pool_timings

    if budget_s <= 0:
        raise HilonasError(f"probe budget {budget_s} s must be > 0")
    nets = probe_networks(table, networks)
    if not nets:
        return None
    if table.fingerprint.device_kind == "cuda":
        blocks = 0  # networks only (see the docstring)
    keys = probe_blocks(table, blocks, groups) if blocks > 0 else []
    started = time.perf_counter()
    fp = fp or table.fingerprint
    # The networks first, exactly as the table timed its calibration networks (they set the level); then the
    # blocks as the build timed them, one attempt each (only their ratios to one another matter: the residual
    # re-anchors the level on the networks).
    share = NETWORK_SHARE if keys else 1.0
    net_t = _passes([], [a for a, _ in nets], table, fp, started + share * budget_s)
    block_t = _passes([k for k, _ in keys], [], table, fp, started + budget_s) if keys else []
    ratios = _network_ratios(table, nets, net_t)
    stat = table.statistic
    by_group: dict[str, list[tuple[float, float]]] = {}
    for ts, (key, ms) in zip(block_t, keys):
        by_group.setdefault(block_group(key), []).append((ms, figure_ms(pool_timings(ts), stat) / ms))
    group_factors, exponent = fit_block_factors(by_group)
    block_factor = statistics.median([r for v in by_group.values() for _, r in v]) if by_group else None
    residual = _residual(table, [a for a, _ in nets], ratios, group_factors, block_factor, exponent)
    probe = SpeedProbe(factor=statistics.median(ratios), spread=max(ratios) - min(ratios),
                       seconds=time.perf_counter() - started, networks=len(nets), rounds=len(net_t[0]),
                       taken_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), ratios=ratios, group_factors=group_factors,
                       block_factor=block_factor, residual=residual, blocks=len(keys), size_exponent=exponent,
                       host=host_id())
    if pool:
        probe = pool_probe(probe, table.probes)
    if record:
        table.add_probe(probe.to_dict())
        table.save()
    return probe


def host_id() -> str:
    """This machine in this boot: a hash of the hostname and the kernel's boot id (a new VM of the same image, or
    the same one rebooted, is another host: its speed is not known from earlier probes)."""
    import hashlib
    import socket
    from pathlib import Path

    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: the hostname alone
        boot = ""
    return hashlib.sha256(f"{socket.gethostname()}|{boot}".encode()).hexdigest()[:12]


def _taken_epoch(entry: Mapping[str, Any]) -> float | None:
    from datetime import datetime

    try:
        return datetime.strptime(str(entry.get("taken_at")), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, ValueError):
        return None


def pool_probe(probe: SpeedProbe, history: list[Mapping[str, Any]], *, minutes: float = POOL_MINUTES,
               earlier: int = POOL_EARLIER, now: float | None = None) -> SpeedProbe:
    """``probe`` with its level set to the median of its own factor and those of the newest ``earlier`` probes in
    ``history`` (a table's probe history) that ``probe``'s host took in the last ``minutes`` (see the module
    docstring). The by-kind shape of its correction is its own: only the level moves (``factor``, and the
    ``residual`` in proportion). Unchanged when no earlier probe qualifies."""
    now = time.time() if now is None else now
    own = probe.own_factor if probe.own_factor is not None else probe.factor
    found = []
    for entry in history:
        at = _taken_epoch(entry)
        value = entry.get("own_factor") if entry.get("own_factor") is not None else entry.get("factor")
        if (entry.get("host") == probe.host and probe.host and at is not None and 0 <= now - at <= minutes * 60
                and isinstance(value, (int, float)) and value > 0):
            found.append((at, float(value)))
    found = [v for _, v in sorted(found)[-earlier:]] if earlier > 0 else []
    if not found:
        return probe
    level = statistics.median([*found, own])
    scale = level / own
    return replace(probe, factor=level, own_factor=own, pooled=len(found) + 1,
                   residual=probe.residual * scale if probe.residual is not None else None)


PASS_BIAS = 0.04  # the fastest of 5 passes over the fastest of 20, same minute, quiet machine: 1.03-1.055 here
MEDIAN_GUARD = 0.5  # a probe of fewer than this share of the table's passes also compares medians (takes the lower)


def pass_bias(passes: int, table_passes: int) -> float:
    """How much slower the fastest sample of ``passes`` passes reads than that of ``table_passes`` by chance alone:
    :data:`PASS_BIAS` at 5 of 20, in proportion to the log of the ratio of passes (0 at as many passes)."""
    import math

    if passes >= table_passes or passes < 1:
        return 0.0
    return PASS_BIAS * math.log(table_passes / passes) / math.log(4)


def _network_ratios(table: LatencyTable, nets: list[tuple[ArchConfig, float]], timings: list[list[Any]]
                    ) -> tuple[float, ...]:
    """Per probe network, its figure now over its figure in the table, like for like. A table keeps the fastest
    sample of all its passes (statistic 'min'), and so does a probe: its fastest sample over the table's, less
    :func:`pass_bias` (the fastest of 5 passes reads 3-5.5% slower than the fastest of 20 of the same minute);
    bursts of other load barely move it (back-to-back probes read 1.03-1.16 where medians read 1.00-1.38).

    A probe that a slow spell cut to fewer than :data:`MEDIAN_GUARD` of the table's passes, where that bias is least
    certain, also has its median over the median the table stored, and takes the lower of the two (other load only
    ever slows a machine). Not above that: medians compare two hosts' spreads as well as their speeds, and on a host
    whose timings spread less than the table host's (median/fastest 1.05-1.12 against 1.08-1.16) the medians read
    3-7% fast; of 8 validations there, the fastest samples alone were the closer estimate in 5 and as close in 1
    (mean absolute bias 2.1% against 4.2%)."""
    from hilonas.latency.measure import figure_ms, measurement_settings
    from hilonas.latency.timing import pool_timings

    stat = table.statistic
    medians = dict(calibration_networks(table.calibration, "median_ms"))
    table_passes = measurement_settings(table)["rounds"]
    passes = len(timings[0]) if timings else table_passes
    bias = pass_bias(passes, table_passes)
    out = []
    for ts, (arch, ms) in zip(timings, nets):
        pooled = pool_timings(ts)
        ratio = figure_ms(pooled, stat) / ms
        if stat == "min":
            ratio /= 1 + bias
            if passes < MEDIAN_GUARD * table_passes and medians.get(arch):
                ratio = min(ratio, pooled.median_ms / medians[arch])
        out.append(ratio)
    return tuple(out)


def warn_factor(factor: float | None, table: LatencyTable) -> str | None:
    """One warning line when a probe's ``factor`` is far from 1 (printed to stderr and returned), else None."""
    if factor is None or abs(factor - 1) <= WARN_FACTOR:
        return None
    how = "slower" if factor > 1 else "faster"
    by = f"{abs(factor - 1):.0%}" if 0.5 < factor < 2 else f"{max(factor, 1 / factor):.1f}x"
    line = (f"warning: this machine runs {by} {how} than when {table.path} was measured "
            "(other processes loading it, or another host behind the same CPU name): latencies shown are scaled by "
            f"{factor:.2f}; for a table of this host build one on an idle machine: `hilonas latency build "
            "--space SPACE --tables DIR`")
    print(line, file=sys.stderr)
    return line


def warn_kernels(table: LatencyTable) -> str | None:
    """One stderr line (also returned) when ``table`` was measured on a CPU with other kernel-changing ISA flags
    than this one: the probe scales its level, but blocks speed up unevenly across instruction sets. Measured with
    the shipped AVX-512 table on an AVX2-only host of the same name: 80-100% of networks within +-10% (Spearman
    0.966-0.990), where a table built on that host in 4.6 minutes gave Spearman 0.996."""
    from hilonas.latency.fingerprint import kernel_flags_differ

    differ = kernel_flags_differ(table.details) if table.fingerprint.device_kind == "cpu" else None
    if not differ:
        return None
    line = (f"note: {table.path} was measured on a CPU with other vector instructions ({differ} here): the speed "
            "probe scales its level, but kinds of blocks speed up unevenly across instruction sets; for figures "
            f"within +-5%, build a table of this CPU (minutes): `{table.fingerprint.build_command()} --tables DIR` "
            "and pass --tables DIR")
    print(line, file=sys.stderr)
    return line
