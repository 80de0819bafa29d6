"""The whole-network calibration of a latency table: fitted on a few measured networks, applied to every prediction.

A sum of block latencies misses what only a whole network shows (what runs between blocks, caches shared across
blocks). A :class:`Calibration` corrects it with one formula::

    predicted_ms = intercept_ms + scale * sum_g(group_scale[g] * raw_g)

where ``raw_g`` is the plain sum over the blocks of group ``g`` (:func:`block_group`: 'stem', 'merge', 'head',
'block:<mixer>'); a group missing from ``group_scale`` has scale 1. :func:`fit_calibration` chooses and fits it.

On disk (the table's ``calibration`` object) it is :meth:`Calibration.to_dict`: method, scale, intercept_ms,
group_scale, loo_mape and the provenance (fitted_on, seed, statistic, fitted_at, networks). No torch import here;
numpy only while fitting.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from hilonas.errors import HilonasError
from hilonas.latency.keys import BlockKey

__all__ = ["Calibration", "fit_calibration", "block_group", "METHODS"]

METHODS = ("scale", "affine", "group_affine")  # candidates, simplest first


def block_group(key: BlockKey) -> str:
    """The calibration group of a block: 'stem', 'merge', 'head' or 'block:<mixer>'."""
    return f"block:{key.mixer}" if key.kind == "block" else key.kind


def _number(data: Mapping[str, Any], name: str, default: float) -> float:
    v = data.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise HilonasError(f"calibration.{name}={v!r} is not a number: repair the table file or refit it with "
                           "`hilonas latency build --recalibrate`")
    return float(v)


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration (see the module docstring for the formula). Frozen; its dicts are private copies.

    Attributes:
        method: 'scale', 'affine' or 'group_affine' (or whatever a hand-written table names).
        scale, intercept_ms, group_scale: the formula's coefficients.
        loo_mape: each candidate's leave-one-out mean absolute relative error when fitted.
        fitted_on, seed, statistic, fitted_at, networks: provenance, written by the table build (None when unknown).
        extra: any other field of the table's calibration object, kept so that a round trip loses nothing.
    """

    method: str
    scale: float = 1.0
    intercept_ms: float = 0.0
    group_scale: Mapping[str, float] = field(default_factory=dict)
    loo_mape: Mapping[str, float] | None = None
    fitted_on: int | None = None
    seed: int | None = None
    statistic: str | None = None
    fitted_at: str | None = None
    networks: tuple[dict[str, Any], ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_scale", dict(self.group_scale))
        if self.loo_mape is not None:
            object.__setattr__(self, "loo_mape", dict(self.loo_mape))
        if self.networks is not None:
            object.__setattr__(self, "networks", tuple(self.networks))
        object.__setattr__(self, "extra", dict(self.extra))

    # ---------------------------------------------------------------------------------------------- the formula
    def factor(self, group: str) -> float:
        """The scale of one block group (1 when the calibration has none for it)."""
        return self.group_scale.get(group, 1.0)

    def finish(self, weighted_ms: float, intercept_factor: float = 1.0) -> float:
        """``intercept_ms * intercept_factor + scale * weighted_ms``, where ``weighted_ms = sum_g(factor(g) * raw_g)``
        (``intercept_factor``: how much slower than at build the per-network overhead runs, 1 as measured)."""
        return self.intercept_ms * intercept_factor + self.scale * weighted_ms

    def apply(self, raw_by_group: Mapping[str, float]) -> float:
        """The calibrated latency (ms) of a network whose raw block sums by group are ``raw_by_group``."""
        return float(self.finish(sum(self.factor(g) * v for g, v in raw_by_group.items())))

    # ---------------------------------------------------------------------------------------------------- disk
    def to_dict(self) -> dict[str, Any]:
        """The table's ``calibration`` object: the fields that are set, in field order, then ``extra``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, dict):
                v = dict(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Read a table's ``calibration`` object; missing coefficients take the identity (scale 1, intercept 0).

        Raises:
            HilonasError: a coefficient is not a finite number or ``group_scale`` is not an object of numbers.
        """
        if not isinstance(data, Mapping):
            raise HilonasError(f"calibration {data!r} is not an object: repair the table file")
        gs = data.get("group_scale") or {}
        if not isinstance(gs, Mapping):
            raise HilonasError(f"calibration.group_scale={gs!r} is not an object: repair the table file")
        known = {f.name for f in fields(cls)} - {"extra"}
        networks = data.get("networks")
        return cls(method=str(data.get("method", "manual")), scale=_number(data, "scale", 1.0),
                   intercept_ms=_number(data, "intercept_ms", 0.0),
                   group_scale={str(g): _number(gs, g, 1.0) for g in gs},
                   loo_mape=data.get("loo_mape"), fitted_on=data.get("fitted_on"), seed=data.get("seed"),
                   statistic=data.get("statistic"), fitted_at=data.get("fitted_at"),
                   networks=tuple(networks) if networks is not None else None,
                   extra={k: v for k, v in data.items() if k not in known})


# ----------------------------------------------------------------------------------------------------- fitting
def _groups_of(raw: Mapping[str, float]) -> dict[str, float]:
    """Fold raw group sums into the fitted groups: each 'block:<mixer>' alone, stem + merge + head as 'other'."""
    out: dict[str, float] = {}
    for g, v in raw.items():
        name = g if g.startswith("block:") else "other"
        out[name] = out.get(name, 0.0) + v
    return out


def _wls(rows: list[list[float]], measured: list[float]) -> list[float] | None:
    """Least squares on relative error: minimise sum(((rows_i . c) / m_i - 1)^2). None when singular."""
    import numpy as np

    a = np.asarray(rows, dtype=float) / np.asarray(measured, dtype=float)[:, None]
    y = np.ones(len(measured))
    coef, _, rank, _ = np.linalg.lstsq(a, y, rcond=None)
    if rank < a.shape[1] or not np.all(np.isfinite(coef)):
        return None
    return [float(c) for c in coef]


def _candidates(groups: list[str]) -> dict[str, Callable[[dict[str, float]], list[float]]]:
    """Candidate calibrations as design rows, simplest first: scale; scale + intercept; a scale per group +
    intercept."""
    return {
        "scale": lambda g: [sum(g.values())],
        "affine": lambda g: [sum(g.values()), 1.0],
        "group_affine": lambda g: [g.get(name, 0.0) for name in groups] + [1.0],
    }


def _to_calibration(method: str, coef: list[float], groups: list[str], loo: dict[str, float]) -> Calibration:
    if method == "scale":
        return Calibration(method, scale=coef[0], intercept_ms=0.0, group_scale={}, loo_mape=loo)
    if method == "affine":
        return Calibration(method, scale=coef[0], intercept_ms=coef[1], group_scale={}, loo_mape=loo)
    scales = dict(zip(groups, coef[:-1]))
    other = scales.pop("other", 1.0)
    group_scale = {**scales, "stem": other, "merge": other, "head": other}
    return Calibration(method, scale=1.0, intercept_ms=coef[-1], group_scale=group_scale, loo_mape=loo)


def _loo_errors(rows: list[list[float]], measured_ms: list[float], coef: list[float]) -> list[float]:
    """Each network's absolute relative error when the candidate is fitted on all the others."""
    n, params = len(measured_ms), len(rows[0])
    errors = []
    for i in range(n):
        keep = [j for j in range(n) if j != i]
        c = _wls([rows[j] for j in keep], [measured_ms[j] for j in keep]) if n > params else coef
        pred = sum(a * b for a, b in zip(rows[i], c)) if c is not None else float("inf")
        errors.append(abs(pred / measured_ms[i] - 1))
    return errors


def fit_calibration(raw_by_group: list[dict[str, float]], measured_ms: list[float]) -> Calibration:
    """Fit the calibration on whole networks: ``raw_by_group[i]`` (raw ms by block group) vs ``measured_ms[i]``.

    Candidates, simplest first: a scale; a scale plus intercept; a scale per group (each mixer's blocks, and stem +
    merges + head together) plus intercept; all fitted by least squares on the relative error. Each is scored by its
    leave-one-out mean absolute relative error, and the simplest candidate within one standard error of the best
    score wins (the one-standard-error rule): a model with more parameters must clearly earn its place on networks
    it did not see, since its extra parameters mostly fit the noise of a handful of networks (on the 2-core machine
    here the per-group model won the leave-one-out score by a hair and then did worse on 50 new networks). No wider
    margin than that: the shipped float32 table's plain scale (2.29%) was kept over the affine fit (1.84%, one
    standard error 0.23%) by a 25% margin, and its errors then grew with a network's size (+7.6% per e-fold on its
    own 32 networks): networks of 6-10 ms, the fast end a search's front is made of, were predicted 1.5-1.7% lower
    than the rest, and 9 of 10 exported front members re-measured above their prediction (up to +8.7%). A
    candidate with a non-positive scale, or more parameters than a third of the networks, is skipped. Returns the
    :class:`Calibration` with the scores (``loo_mape``) and no provenance (the build adds it).
    """
    n = len(measured_ms)
    if n == 0:
        raise HilonasError("calibration needs at least one measured network")
    folded = [_groups_of(r) for r in raw_by_group]
    groups = sorted({g for r in folded for g in r})
    scores: dict[str, float] = {}
    spreads: dict[str, float] = {}
    fitted: dict[str, list[float]] = {}
    for name, design in _candidates(groups).items():
        rows = [design(g) for g in folded]
        if name != "scale" and n < 3 * len(rows[0]):
            continue
        coef = _wls(rows, measured_ms)
        scales = coef[:-1] if coef is not None and name == "group_affine" else (coef or [])[:1]
        if coef is None or any(c <= 0 for c in scales):
            continue
        errors = _loo_errors(rows, measured_ms, coef)
        scores[name] = sum(errors) / n
        spreads[name] = statistics.stdev(errors) / math.sqrt(n) if n > 1 and math.isfinite(scores[name]) else 0.0
        fitted[name] = coef
    if not fitted:
        raw = [sum(g.values()) for g in folded]
        fitted["scale"] = [sum(m / r for m, r in zip(measured_ms, raw)) / n]
        scores["scale"], spreads["scale"] = float("nan"), 0.0
    finite = {k: v for k, v in scores.items() if math.isfinite(v)}
    if finite:
        best = min(finite, key=finite.get)
        limit = finite[best] + spreads[best]
        chosen = next(k for k in fitted if k in finite and finite[k] <= limit)  # candidates are simplest first
    else:
        chosen = next(iter(fitted))
    return _to_calibration(chosen, fitted[chosen], groups, {k: round(v, 5) for k, v in scores.items()})


def calibration_networks(calibration: dict[str, Any] | None, figure: str = "measured_ms") -> list[tuple[Any, float]]:
    """The networks a table's calibration was fitted on, as stored: (ArchConfig, ``figure`` in ms: the one measured
    for the table, or ``"median_ms"``). Entries that do not parse, or lack the figure, are skipped."""
    from hilonas.config import ArchConfig
    from hilonas.errors import HilonasError

    out = []
    for net in (calibration or {}).get("networks", []):
        try:
            out.append((ArchConfig.from_dict(net["arch"]), float(net[figure])))
        except (HilonasError, KeyError, TypeError, ValueError):
            continue
    return out
