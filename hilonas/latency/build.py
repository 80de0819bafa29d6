"""Build, complete and validate the latency table of a search space on this machine.

- :func:`build_table`: measure every distinct block of the space that the table lacks (a rich progress bar with ETA;
  saved after every group of blocks, so an interrupted build resumes where it stopped), then measure some whole
  networks and fit the table's calibration on them.
- :func:`ensure_table`: what a search calls before it starts: builds what is missing, silent when the table is complete.
- :func:`validate_table`: sample networks the calibration never saw, measure them whole with the same protocol and
  report how far the predictions are off.

Measurement protocol (the same for blocks and whole networks, recorded in the table's ``settings``; details in
:mod:`hilonas.latency.measure`): ``rounds`` passes over all blocks (or networks), each pass ``repeats`` timed calls
per block after a warm-up; the figure kept is the fastest sample over the passes (``statistic: min``). Blocks that
keep their shape are timed as a chain of ``chain`` distinct copies. A calibration fitted on whole networks corrects
what a sum of blocks misses.
"""
from __future__ import annotations

import hashlib
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.latency.fingerprint import Fingerprint
from hilonas.latency.keys import BlockKey
from hilonas.latency.predictor import LatencyPredictor, MissingBlockError
from hilonas.latency.table import DEFAULT_TABLES_DIR, LatencyTable
from hilonas.spaces import SearchSpace

__all__ = ["build_table", "ensure_table", "table_complete", "validate_table", "sample_archs", "space_at", "fit_calibration",
           "spearman", "machine_busy", "DEFAULT_CALIB_NETWORKS"]

DEFAULT_CALIB_NETWORKS = 16
DEFAULT_GROUP = 8


# ------------------------------------------------------------------------------------------------------- helpers
def space_at(space: SearchSpace, resolution: int) -> SearchSpace:
    """``space`` with ``img_size = resolution`` (re-validated), or ``space`` itself when it already is."""
    if space.fixed.get("img_size", 224) == resolution:
        return space
    data = {"name": space.name, "description": space.description, "fixed": {**space.fixed, "img_size": resolution},
            "stages": [{k: list(v) for k, v in st.items()} for st in space.stages]}
    return SearchSpace.from_dict(data, source=f"{space.source or space.name} at {resolution} px")


def sample_archs(space: SearchSpace, n: int, seed: int | str,
                 exclude: set[ArchConfig] | None = None) -> list[ArchConfig]:
    """``n`` distinct architectures drawn uniformly from ``space`` with ``seed``, none of them in ``exclude``."""
    out = space.random_archs(n, seed, exclude)
    if len(out) < n:
        raise HilonasError(f"space {space.name} has fewer than {n} distinct architectures to sample "
                           f"(found {len(out)}): ask for fewer")
    return out


def machine_busy(seconds: float = 0.3) -> float | None:
    """Share of the machine's CPU time other work used over ``seconds`` (0..1), from /proc/stat; None elsewhere."""
    def read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                parts = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
        return sum(parts[:8]), idle

    a = read()
    if a is None:
        return None
    time.sleep(seconds)
    b = read()
    if b is None or b[0] == a[0]:
        return None
    return max(0.0, min(1.0, 1.0 - (b[1] - a[1]) / (b[0] - a[0])))


def _model_code_hash() -> str:
    """Hash of the source that decides what a block computes (layers and model), to tell stale tables apart."""
    import hilonas.layers
    import hilonas.models.hilonet

    h = hashlib.sha256()
    files = sorted(Path(hilonas.layers.__file__).parent.glob("*.py")) + [Path(hilonas.models.hilonet.__file__)]
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _settings(**overrides: Any) -> dict[str, Any]:
    """Measurement settings: :data:`hilonas.latency.measure.MEASURE_DEFAULTS` plus ``group``, with overrides."""
    from hilonas.latency.measure import timing_settings

    group = overrides.pop("group", None)
    s = timing_settings(**overrides)
    s["group"] = DEFAULT_GROUP if group is None else group
    if isinstance(s["group"], bool) or not isinstance(s["group"], int) or s["group"] < 1:
        raise HilonasError(f"group={s['group']!r} must be an integer >= 1")
    return s


def _progress(enabled: bool):
    """A rich Progress on stderr (bar, count, elapsed, ETA), or a no-op stand-in."""
    if not enabled:
        return _NoProgress()
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), transient=False)


class _NoProgress:
    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# -------------------------------------------------------------------------------------------------- calibration
def _groups_of(raw: dict[str, float]) -> dict[str, float]:
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


def _calibration_models(groups: list[str]) -> dict[str, Callable[[dict[str, float]], list[float]]]:
    """Candidate calibrations as design rows: scale; scale + intercept; a scale per group + intercept."""
    return {
        "scale": lambda g: [sum(g.values())],
        "affine": lambda g: [sum(g.values()), 1.0],
        "group_affine": lambda g: [g.get(name, 0.0) for name in groups] + [1.0],
    }


def _to_calibration(model: str, coef: list[float], groups: list[str]) -> dict[str, Any]:
    if model == "scale":
        return {"method": model, "scale": coef[0], "intercept_ms": 0.0, "group_scale": {}}
    if model == "affine":
        return {"method": model, "scale": coef[0], "intercept_ms": coef[1], "group_scale": {}}
    scales = dict(zip(groups, coef[:-1]))
    other = scales.pop("other", 1.0)
    group_scale = {**scales, "stem": other, "merge": other, "head": other}
    return {"method": model, "scale": 1.0, "intercept_ms": coef[-1], "group_scale": group_scale}


def fit_calibration(raw_by_group: list[dict[str, float]], measured_ms: list[float]) -> dict[str, Any]:
    """Fit the calibration on whole networks: ``raw_by_group[i]`` (raw ms by block group) vs ``measured_ms[i]``.

    Candidates, simplest first: a scale; a scale plus intercept; a scale per group (each mixer's blocks, and stem +
    merges + head together) plus intercept; all fitted by least squares on the relative error. Each is scored by its
    leave-one-out mean absolute relative error, and the simplest candidate within one standard error, or 25%, of
    the best score wins: a model with more parameters must clearly earn its place on networks it did not see, since
    its extra parameters mostly fit the noise of a handful of networks (on the 2-core machine here the per-group
    model won the leave-one-out score by a hair and then did worse on 50 new networks). A candidate with a
    non-positive scale, or more parameters than a third of the networks, is skipped. Returns the calibration dict
    the predictor reads, with the scores (``loo_mape``).
    """
    n = len(measured_ms)
    if n == 0:
        raise HilonasError("calibration needs at least one measured network")
    folded = [_groups_of(r) for r in raw_by_group]
    groups = sorted({g for r in folded for g in r})
    scores: dict[str, float] = {}
    spreads: dict[str, float] = {}
    fitted: dict[str, list[float]] = {}
    for name, design in _calibration_models(groups).items():
        rows = [design(g) for g in folded]
        params = len(rows[0])
        if name != "scale" and n < 3 * params:
            continue
        coef = _wls(rows, measured_ms)
        scales = coef[:-1] if coef is not None and name == "group_affine" else (coef or [])[:1]
        if coef is None or any(c <= 0 for c in scales):
            continue
        errors = []
        for i in range(n):  # leave-one-out
            keep = [j for j in range(n) if j != i]
            c = _wls([rows[j] for j in keep], [measured_ms[j] for j in keep]) if n > params else coef
            pred = sum(a * b for a, b in zip(rows[i], c)) if c is not None else float("inf")
            errors.append(abs(pred / measured_ms[i] - 1))
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
        limit = max(finite[best] + spreads[best], 1.25 * finite[best])
        chosen = next(k for k in fitted if k in finite and finite[k] <= limit)  # candidates are simplest first
    else:
        chosen = next(iter(fitted))
    cal = _to_calibration(chosen, fitted[chosen], groups)
    cal["loo_mape"] = {k: round(v, 5) for k, v in scores.items()}
    return cal


# --------------------------------------------------------------------------------------------------------- build
def _open(space: SearchSpace, fp: Fingerprint, tables_dir: str | Path, force: bool) -> tuple[SearchSpace, LatencyTable]:
    if fp.resolution != space.fixed.get("img_size", 224):
        space = space_at(space, fp.resolution)
    return space, LatencyTable.open(fp, tables_dir, force=force)


def _table_settings(table: LatencyTable, overrides: dict[str, Any]) -> dict[str, Any]:
    """The table's own measurement settings (defaults where it has none), with ``overrides`` that are not None."""
    from hilonas.latency.measure import MEASURE_DEFAULTS

    known = (*MEASURE_DEFAULTS, "group")
    base = {k: table.settings[k] for k in known if k in table.settings}
    if table.entries and "statistic" not in table.settings:
        base["statistic"] = "median"  # a table written before 'min' existed
    return _settings(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


def _warn_busy(busy: float | None) -> None:
    if busy is not None and busy > 0.25:
        print(f"warning: other processes are using {busy:.0%} of the CPUs; timings will be noisy "
              "(measure on an idle machine for a table you keep)", file=sys.stderr)


def build_table(space: SearchSpace, fp: Fingerprint, *, tables_dir: str | Path = DEFAULT_TABLES_DIR,
                calib_networks: int = DEFAULT_CALIB_NETWORKS, progress: bool = True, force: bool = False,
                recalibrate: bool = False, seed: int = 0,
                on_block: Callable[[BlockKey], None] | None = None, **settings: Any) -> LatencyTable:
    """Measure the blocks of ``space`` the table of ``fp`` lacks, then (re)fit its calibration. Returns the table.

    Args:
        space: the search space (its blocks at ``fp.resolution``).
        fp: the target; must be this machine's (measurements run here).
        tables_dir: where the table file lives.
        calib_networks: whole networks measured to fit the calibration (0: none).
        progress: show a rich progress bar with ETA on stderr.
        force: use an existing table file even if its fingerprint differs.
        recalibrate: refit the calibration even when the table has one and no block was added.
        seed: seed of the calibration networks' sampling.
        on_block: called with each key once it is saved (tests use it to interrupt a build).
        **settings: measurement settings (warmup, repeats, max_spread, max_attempts, rounds, chain, statistic,
            group); an existing table's own settings are kept unless given.

    The table is saved after every group of blocks, so an interrupted build loses at most one group and the next
    build measures only the rest. The returned table carries ``build_stats``: blocks_total, blocks_measured,
    networks_measured, seconds, calibration (method), machine_busy, path.
    """
    from hilonas.latency.measure import NetworkPasses, measure_blocks, steady_allocator

    started = time.perf_counter()
    space, table = _open(space, fp, tables_dir, force)
    merged = _table_settings(table, settings)
    rounds = merged["rounds"]
    keys = space.enumerate_blocks()
    todo = table.incomplete(keys, rounds)
    new_keys = len(table.missing(keys))
    need_cal = calib_networks > 0 and bool(recalibrate or todo or table.calibration is None)
    busy = machine_busy() if todo or need_cal else None
    _warn_busy(busy)
    extra = {"model_code": _model_code_hash(), "allocator": steady_allocator()}
    if table.entries and table.settings.get("model_code") not in (None, extra["model_code"]):
        print(f"warning: {table.path} was measured with other layer/model code than this hilonas has: delete it "
              "and build again if the blocks' computation changed", file=sys.stderr)
    if any(table.settings.get(k) != v for k, v in {**merged, **extra}.items()):
        table.set_settings({**table.settings, **merged, **extra})
    timing_kw = {k: v for k, v in merged.items() if k != "group"}
    cal_archs = sample_archs(space, calib_networks, f"calibration:{seed}") if need_cal else []
    networks = NetworkPasses(cal_archs, fp, **timing_kw) if need_cal else None
    with _progress(progress and bool(todo or need_cal)) as bar:
        block_task = bar.add_task(f"blocks of {space.name}", total=sum(rounds - table.passes(k) for k in todo)) \
            if todo else None
        net_task = bar.add_task("calibration networks (passes)", total=rounds * len(cal_archs)) if need_cal else None
        for r in range(rounds):
            # One pass over every block still short of r + 1 passes, then one over the calibration networks, then
            # the next pass: a block's passes lie minutes apart, and blocks and networks share the machine's
            # conditions. Blocks are saved after every group, so an interrupted build resumes where it stopped.
            need = [k for k in todo if table.passes(k) <= r]
            for group in _chunks(need, merged["group"]):
                timings = measure_blocks(group, fp, **{**timing_kw, "rounds": 1})
                for key, t in zip(group, timings):
                    table.add_pass(key, t, chain=merged["chain"] if key.kind == "block" else 1)
                table.save()
                for key in group:
                    bar.advance(block_task)
                    if on_block is not None:
                        on_block(key)
            if networks is not None:
                networks.run_pass(lambda _a: bar.advance(net_task))
        if networks is not None:
            _calibrate(table, cal_archs, networks.timings(), merged["statistic"], seed)
            table.save()
    if not table.path.exists():
        table.save()
    table.build_stats = {"blocks_total": len(keys), "blocks_measured": new_keys, "blocks_completed": len(todo),
                         "networks_measured": calib_networks if need_cal else 0,
                         "seconds": round(time.perf_counter() - started, 2),
                         "calibration": (table.calibration or {}).get("method"), "machine_busy": busy,
                         "path": str(table.path)}
    return table


def _calibrate(table: LatencyTable, archs: list[ArchConfig], timings: list[Any], statistic: str, seed: int) -> None:
    from hilonas.latency.measure import figure_ms

    predictor = LatencyPredictor(table)
    raw = [predictor.breakdown(a) for a in archs]
    measured = [figure_ms(t, statistic) for t in timings]
    cal = fit_calibration(raw, measured)
    cal.update({
        "fitted_on": len(archs),
        "seed": seed,
        "statistic": statistic,
        "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "networks": [{"describe": a.describe(), "measured_ms": round(m, 4), "median_ms": round(t.median_ms, 4),
                      "raw_ms": round(sum(r.values()), 4), "spread": round(t.spread, 4), "arch": a.to_dict()}
                     for a, t, m, r in zip(archs, timings, measured, raw)],
    })
    table.set_calibration(cal)


def table_complete(space: SearchSpace, fp: Fingerprint, table: LatencyTable, **kwargs: Any) -> bool:
    """Whether ``table`` has every block of ``space`` (all passes) and its calibration: nothing to measure."""
    calib = kwargs.get("calib_networks", DEFAULT_CALIB_NETWORKS)
    rounds = _table_settings(table, {"rounds": kwargs.get("rounds")})["rounds"]
    keys = space_at(space, fp.resolution).enumerate_blocks()
    return not table.incomplete(keys, rounds) and (table.calibration is not None or not calib)


def ensure_table(space: SearchSpace, fp: Fingerprint, tables_dir: str | Path = DEFAULT_TABLES_DIR, *,
                 progress: bool = False, force: bool = False, **kwargs: Any) -> LatencyTable:
    """The complete table of ``space`` on ``fp``: built (or completed) when blocks or the calibration are missing.

    Silent and measurement-free when the table is already complete; ``kwargs`` go to :func:`build_table`.
    """
    _, table = _open(space, fp, tables_dir, force)
    if table_complete(space, fp, table, **kwargs):
        table.build_stats = {"blocks_total": len(table.entries), "blocks_measured": 0, "blocks_completed": 0,
                             "networks_measured": 0,
                             "seconds": 0.0, "calibration": (table.calibration or {}).get("method"),
                             "machine_busy": None, "path": str(table.path)}
        return table
    return build_table(space, fp, tables_dir=tables_dir, progress=progress, force=force, **kwargs)


# ------------------------------------------------------------------------------------------------------ validate
def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan for fewer than two points or a constant side."""
    if len(a) != len(b):
        raise ValueError("spearman needs two sequences of equal length")
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return float("nan") if va == 0 or vb == 0 else cov / math.sqrt(va * vb)


def validate_table(space: SearchSpace, fp: Fingerprint, n: int = 50, seed: int = 0, *,
                   tables_dir: str | Path = DEFAULT_TABLES_DIR, table: LatencyTable | None = None,
                   progress: bool = True, force: bool = False, drift_probes: int = 8,
                   **settings: Any) -> dict[str, Any]:
    """Measure ``n`` random networks of ``space`` whole and compare with the table's predictions.

    Networks are drawn with ``seed``, skipping those the calibration was fitted on, and measured with the table's
    own protocol (settings given here override it). Blocks missing from the table raise :class:`MissingBlockError`.

    Returns:
        ``{"n", "within_5", "within_10" (shares of networks, 0..1), "mape", "max_ape" (absolute relative errors,
        0.05 = 5%), "spearman", "bias" (mean signed error), "drift" (how much slower the machine runs
        ``drift_probes`` of the calibration networks now than when they were measured for the table, measured in
        the same passes, a diagnostic of the machine, not of the table; None without calibration), "seconds",
        "table", "rows": [per network: arch,
        predicted_ms, measured_ms, median_ms, raw_ms, error, spread, noisy]}``.
    """
    if n < 1:
        raise HilonasError(f"--n={n} must be >= 1")
    started = time.perf_counter()
    space_r = space_at(space, fp.resolution)
    if table is None:
        table = LatencyTable.open(fp, tables_dir, force=force)
    if not table.entries:
        raise HilonasError(f"latency table {table.path} has no entries: build it first with "
                           f"`hilonas latency build --space {space.name}`")
    cal_archs: dict[ArchConfig, float] = {}
    for net in (table.calibration or {}).get("networks", []):
        try:
            cal_archs[ArchConfig.from_dict(net["arch"]).canonical()] = float(net["measured_ms"])
        except (HilonasError, KeyError, TypeError, ValueError):
            continue
    probes = list(cal_archs)[:drift_probes]
    archs = sample_archs(space_r, n, seed, exclude=set(cal_archs))
    predictor = LatencyPredictor(table)
    for a in archs:  # fail before measuring anything
        missing = predictor.missing(a)
        if missing:
            raise MissingBlockError(missing[0], table)
    merged = _table_settings(table, settings)
    from hilonas.latency.measure import figure_ms, measure_archs

    busy = machine_busy()
    _warn_busy(busy)
    with _progress(progress) as bar:
        task = bar.add_task("validation networks", total=n + len(probes))
        timings = measure_archs(archs + probes, fp, on_done=lambda _a: bar.advance(task),
                                **{k: v for k, v in merged.items() if k != "group"})
    # Calibration networks measured again in the same passes: how much faster or slower the machine is now than
    # when the table was built (other load, thermal state), which no table can predict.
    ratios = [figure_ms(t, merged["statistic"]) / cal_archs[a] for a, t in zip(probes, timings[n:])]
    drift = statistics.median(ratios) - 1 if ratios else None
    timings = timings[:n]
    rows = []
    for a, t in zip(archs, timings):
        pred = predictor.predict(a)
        measured = figure_ms(t, merged["statistic"])
        rows.append({"arch": a.describe(), "predicted_ms": round(pred, 4), "measured_ms": round(measured, 4),
                     "median_ms": round(t.median_ms, 4), "raw_ms": round(predictor.predict_raw(a), 4),
                     "error": round(pred / measured - 1, 5), "spread": round(t.spread, 4), "noisy": t.noisy})
    errors = [abs(r["error"]) for r in rows]
    result = {
        "n": n,
        "within_5": sum(e <= 0.05 for e in errors) / n,
        "within_10": sum(e <= 0.10 for e in errors) / n,
        "mape": sum(errors) / n,
        "max_ape": max(errors),
        "spearman": spearman([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]),
        "bias": sum(r["error"] for r in rows) / n,
        "drift": drift,
        "calibration": (table.calibration or {}).get("method"),
        "statistic": merged["statistic"],
        "machine_busy": busy,
        "seconds": round(time.perf_counter() - started, 2),
        "table": str(table.path),
        "rows": rows,
    }
    return result
