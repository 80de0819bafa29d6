"""How far a latency table's predictions are off: networks the calibration never saw, measured whole.

:func:`validate_table` samples networks of the space (skipping the calibration's), measures them with the table's own
protocol and compares with the predictions: error shares, mean and worst error, rank agreement (Spearman, from
scipy), bias, and the machine's drift since the build (calibration networks re-measured in the same passes).
"""
from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.io import DEFAULT_TABLES_DIR
from hilonas.latency.build import machine_busy, progress_bar, table_settings, warn_busy
from hilonas.latency.fingerprint import Fingerprint
from hilonas.latency.predictor import LatencyPredictor, MissingBlockError
from hilonas.latency.table import LatencyTable
from hilonas.spaces import SearchSpace

__all__ = ["spearman", "validate_table"]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``: average ranks for ties); nan for fewer than two
    points or a constant side."""
    from scipy.stats import spearmanr

    if len(a) != len(b):
        raise ValueError("spearman needs two sequences of equal length")
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


def _calibration_networks(table: LatencyTable) -> dict[ArchConfig, float]:
    """The networks the table's calibration was fitted on (canonical) -> their measured figure (ms)."""
    out: dict[ArchConfig, float] = {}
    for net in (table.calibration or {}).get("networks", []):
        try:
            out[ArchConfig.from_dict(net["arch"]).canonical()] = float(net["measured_ms"])
        except (HilonasError, KeyError, TypeError, ValueError):
            continue
    return out


def _row(predictor: LatencyPredictor, arch: ArchConfig, timing: Any, statistic: str) -> dict[str, Any]:
    from hilonas.latency.measure import figure_ms

    pred = predictor.predict(arch)
    measured = figure_ms(timing, statistic)
    return {"arch": arch.describe(), "predicted_ms": round(pred, 4), "measured_ms": round(measured, 4),
            "median_ms": round(timing.median_ms, 4), "raw_ms": round(predictor.predict_raw(arch), 4),
            "error": round(pred / measured - 1, 5), "spread": round(timing.spread, 4), "noisy": timing.noisy}


def _figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    errors = [abs(r["error"]) for r in rows]
    return {
        "n": n,
        "within_5": sum(e <= 0.05 for e in errors) / n,
        "within_10": sum(e <= 0.10 for e in errors) / n,
        "mape": sum(errors) / n,
        "max_ape": max(errors),
        "spearman": spearman([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]),
        "bias": sum(r["error"] for r in rows) / n,
    }


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
        the same passes, a diagnostic of the machine, not of the table; None without calibration), "calibration"
        (method or None), "statistic", "machine_busy", "seconds", "table", "rows": [per network: arch,
        predicted_ms, measured_ms, median_ms, raw_ms, error, spread, noisy]}``.
    """
    if n < 1:
        raise HilonasError(f"--n={n} must be >= 1")
    started = time.perf_counter()
    if table is None:
        table = LatencyTable.open(fp, tables_dir, force=force)
    if not table.entries:
        raise HilonasError(f"latency table {table.path} has no entries: build it first with "
                           f"`hilonas latency build --space {space.name}`")
    cal_archs = _calibration_networks(table)
    probes = list(cal_archs)[:drift_probes]
    archs = space.at_resolution(fp.resolution).sample_distinct(n, seed, exclude=set(cal_archs))
    predictor = LatencyPredictor(table)
    for a in archs:  # fail before measuring anything
        missing = predictor.missing(a)
        if missing:
            raise MissingBlockError(missing[0], table)
    merged = table_settings(table, settings)
    from hilonas.latency.measure import figure_ms, measure_archs

    busy = machine_busy()
    warn_busy(busy)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"validation networks ({n + len(probes)}), passes", total=merged["rounds"])
        timings = measure_archs(archs + probes, fp, on_pass=lambda _r: bar.advance(task),
                                **{k: v for k, v in merged.items() if k != "group"})
    # Calibration networks measured again in the same passes: how much faster or slower the machine is now than
    # when the table was built (other load, thermal state), which no table can predict.
    ratios = [figure_ms(t, merged["statistic"]) / cal_archs[a] for a, t in zip(probes, timings[n:])]
    drift = statistics.median(ratios) - 1 if ratios else None
    rows = [_row(predictor, a, t, merged["statistic"]) for a, t in zip(archs, timings[:n])]
    return {
        **_figures(rows),
        "drift": drift,
        "calibration": (table.calibration or {}).get("method"),
        "statistic": merged["statistic"],
        "machine_busy": busy,
        "seconds": round(time.perf_counter() - started, 2),
        "table": str(table.path),
        "rows": rows,
    }
