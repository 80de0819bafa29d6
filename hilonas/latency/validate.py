"""How far a latency table's predictions are off: networks the calibration never saw, measured whole.

:func:`validate_table` samples networks of the space (skipping the calibration's), measures them with the table's own
protocol and compares with the predictions: error shares, mean and worst error, rank agreement (Spearman, from
scipy), bias, and the machine's drift since the build (calibration networks re-measured in the same passes).

Two corrections separate the table's error from the machine's speed. First a speed probe
(:func:`hilonas.latency.probe.probe_speed`, skipped with ``probe=False``) gives the start-of-run factor the predictions
are multiplied by: the plain figures, what a search or an export on this machine would have predicted. Then
``drift_probes`` calibration networks are measured in the same passes as the validation networks; their median ratio
(now / at build) scales the predictions for the drift-corrected figures (``*_drift_corrected``): the machine as it ran
during the validation itself, so what is left is the table's own error. The figures are kept in the table
(``validation`` section) for ``search --latency-margin auto``.
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
from hilonas.latency.build import machine_busy, progress_bar, warn_busy
from hilonas.latency.calibration import calibration_networks
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
    return {arch.canonical(): ms for arch, ms in calibration_networks(table.calibration)}


def _row(predictor: LatencyPredictor, arch: ArchConfig, timing: Any, statistic: str) -> dict[str, Any]:
    from hilonas.latency.measure import figure_ms

    pred = predictor.predict(arch)
    measured = figure_ms(timing, statistic)
    return {"arch": arch.describe(), "predicted_ms": round(pred, 4), "measured_ms": round(measured, 4),
            "median_ms": round(timing.median_ms, 4), "raw_ms": round(predictor.predict_raw(arch), 4),
            "base_ms": round(predictor.predict_base(arch), 4),
            "error": round(pred / measured - 1, 5), "spread": round(timing.spread, 4), "noisy": timing.noisy}


def _figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    errors = [abs(r["error"]) for r in rows]
    return {
        "n": n,
        "within_5": sum(e <= 0.05 for e in errors) / n,
        "within_10": sum(e <= 0.10 for e in errors) / n,
        "mape": sum(errors) / n,
        "p90_ape": float(statistics.quantiles(errors, n=10, method="inclusive")[-1]) if n > 1 else errors[0],
        "max_ape": max(errors),
        "spearman": spearman([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]),
        "bias": sum(r["error"] for r in rows) / n,
    }


def validate_table(space: SearchSpace, fp: Fingerprint, n: int = 50, seed: int = 0, *,
                   tables_dir: str | Path = DEFAULT_TABLES_DIR, table: LatencyTable | None = None,
                   progress: bool = True, force: bool = False, drift_probes: int = 8, probe: bool = True,
                   probe_budget_s: float | None = None, **settings: Any) -> dict[str, Any]:
    """Measure ``n`` random networks of ``space`` whole and compare with the table's predictions.

    Networks are drawn with ``seed``, skipping those the calibration was fitted on, and measured with the table's
    own protocol (settings given here override it). Blocks missing from the table raise :class:`MissingBlockError`.

    The speed probe and the drift correction are described in the module docstring.

    Returns:
        ``{"n", "within_5", "within_10" (shares of networks, 0..1), "mape", "max_ape" (absolute relative errors,
        0.05 = 5%), "spearman", "bias" (mean signed error), "drift" (how much slower the machine runs
        ``drift_probes`` of the calibration networks now than when they were measured for the table, measured in
        the same passes, a diagnostic of the machine, not of the table; None without calibration), "calibration"
        (method or None), "statistic", "machine_busy", "seconds", "table", "probe" ({factor, spread, seconds,
        networks, rounds, ...} or None), "within_5_drift_corrected", "within_10_drift_corrected",
        "mape_drift_corrected" (None without calibration networks), "rows": [per network: arch, predicted_ms
        (with the start-of-run factor), measured_ms, median_ms, raw_ms, error, spread, noisy]}``.
    """
    if n < 1:
        raise HilonasError(f"--n={n} must be >= 1")
    started = time.perf_counter()
    table = _usable_table(table, fp, tables_dir, force, space)
    cal_archs = _calibration_networks(table)
    probes = list(cal_archs)[:drift_probes]
    archs = space.at_resolution(fp.resolution).sample_distinct(n, seed, exclude=set(cal_archs))
    _check_blocks(LatencyPredictor(table), archs)
    speed = _start_probe(table, fp, probe, probe_budget_s, space)
    predictor = LatencyPredictor(table, **(speed.correction() if speed is not None else {}))
    from hilonas.latency.measure import figure_ms, measure_archs, table_settings

    merged = table_settings(table, settings)

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
    result = {
        **_figures(rows),
        **_drift_corrected(rows, speed.factor if speed is not None else 1.0, drift),
        "drift": drift,
        "probe": speed.to_dict() if speed is not None else None,
        "calibration": (table.calibration or {}).get("method"),
        "statistic": merged["statistic"],
        "machine_busy": busy,
        "seconds": round(time.perf_counter() - started, 2),
        "table": str(table.path),
        "rows": rows,
    }
    _keep(table, result, seed)
    return result


def _usable_table(table: LatencyTable | None, fp: Fingerprint, tables_dir: str | Path, force: bool,
                  space: SearchSpace) -> LatencyTable:
    if table is None:
        table = LatencyTable.open(fp, tables_dir, force=force)
    if not table.entries:
        raise HilonasError(f"latency table {table.path} has no entries: build it first with "
                           f"`{fp.build_command(space.name)}`")
    return table


def _check_blocks(predictor: LatencyPredictor, archs: list[ArchConfig]) -> None:
    """Fail before measuring anything when a network has a block the table lacks."""
    for a in archs:
        missing = predictor.missing(a)
        if missing:
            raise MissingBlockError(missing[0], predictor.table)


def _start_probe(table: LatencyTable, fp: Fingerprint, probe: bool, budget_s: float | None,
                 space: SearchSpace) -> Any:
    """The start-of-run speed probe of the space's block groups (recorded in the table), or None when skipped or
    impossible."""
    from hilonas.latency.probe import DEFAULT_PROBE_BUDGET_S, probe_speed, space_groups, warn_factor, warn_kernels

    warn_kernels(table)
    if not probe:
        return None
    speed = probe_speed(table, fp, budget_s=budget_s or DEFAULT_PROBE_BUDGET_S,
                        groups=space_groups(space, fp.resolution))
    warn_factor(speed.factor if speed is not None else None, table)
    return speed


def _drift_corrected(rows: list[dict[str, Any]], start_factor: float, drift: float | None) -> dict[str, Any]:
    """Figures with the predictions scaled by the machine's speed during the run (1 + drift) instead of the
    start-of-run factor: what is left is the table's own error."""
    if drift is None:
        return {"within_5_drift_corrected": None, "within_10_drift_corrected": None, "mape_drift_corrected": None}
    from hilonas.latency.probe import at_speed

    errors = [abs(at_speed(r["predicted_ms"], start_factor, 1 + drift) / r["measured_ms"] - 1) for r in rows]
    n = len(errors)
    return {"within_5_drift_corrected": sum(e <= 0.05 for e in errors) / n,
            "within_10_drift_corrected": sum(e <= 0.10 for e in errors) / n,
            "mape_drift_corrected": sum(errors) / n}


def _keep(table: LatencyTable, result: dict[str, Any], seed: int) -> None:
    """The table keeps its last validation's errors (``search --latency-margin auto`` reads p90_ape)."""
    table.set_validation({
        "n": result["n"], "seed": seed, "mape": round(result["mape"], 5), "p90_ape": round(result["p90_ape"], 5),
        "within_10": round(result["within_10"], 4), "taken_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "speed_factor": (result["probe"] or {}).get("factor", 1.0)})
    table.save()
