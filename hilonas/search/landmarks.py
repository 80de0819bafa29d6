"""Reference architectures of a space (LITv2-S/M/B scaled to it) scored exactly like trials, kept in the study.

They are stored as a study attribute, not as trials, so samplers never mistake them for proposals of their own.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import optuna

from hilonas.errors import HilonasError
from hilonas.io import DEFAULT_TABLES_DIR
from hilonas.search import study as studies
from hilonas.search.objective import TrialPayload, evaluate
from hilonas.spaces import SearchSpace

if TYPE_CHECKING:
    from hilonas.latency.fingerprint import Fingerprint


NOT_MEASURABLE = "not measurable here"


def on_target(settings: dict[str, Any], fingerprint: Fingerprint) -> bool:
    """Whether this machine is the study's target (same fingerprint id); False when it cannot even be asked."""
    from hilonas.latency.fingerprint import current_like

    try:
        here = current_like(fingerprint)
    except (HilonasError, RuntimeError):
        return False
    return here.id == fingerprint.id


def evaluate_landmarks(study: optuna.Study, tables_dir: str = DEFAULT_TABLES_DIR) -> list[dict[str, Any]]:
    """Train and time every reference of the study's space with the study's own settings; store and return them.

    Latency comes from the target's table, corrected like the study's trials (its kept speed probe). Blocks it
    lacks are measured (and added to it) only when this machine is the study's target; elsewhere such a reference
    is marked :data:`NOT_MEASURABLE` (latency None, not trained, left off the Pareto page) and no table file is
    written.
    """
    from hilonas.latency.build import check_model_code
    from hilonas.latency.fingerprint import Fingerprint
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.table import LatencyTable
    from hilonas.proxy import proxy_kind
    from hilonas.proxy.data import dataset_spec, load_dataset

    settings = studies.study_settings(study)
    space = SearchSpace.load(settings.get("space_source") or settings["space"])
    if not space.references:
        raise HilonasError(f"--landmarks: space {space.name!r} names no reference architectures "
                           "(add a 'references:' section to its YAML)")
    fingerprint = Fingerprint.from_dict(settings["fingerprint"])
    table = LatencyTable.open(fingerprint, tables_dir=tables_dir)
    check_model_code(table, space.name)
    predictor = LatencyPredictor(table, measure_missing=on_target(settings, fingerprint),
                                 **studies.kept_correction(study))  # on the study's scale, like its trials
    # Landmarks sit among the trials, so they are scored like the trials: the same proxy on the same data.
    data = load_dataset(dataset_spec(settings.get("proxy_data", settings.get("data"))),
                        resolution=int(settings["resolution"]),
                        seed=int(settings["seed"]))
    kept = {r["landmark"]: r for r in studies.landmark_records(study)}
    records: list[dict[str, Any]] = []
    for label, arch in space.references:
        old = kept.get(label)
        if (old is not None and old.get("arch") == arch.to_dict() and old.get("score") is not None
                and old.get("predicted_latency_ms") is not None):
            records.append({k: v for k, v in old.items() if k not in ("study", "settings")})
            continue  # scored before with the same settings: a study's settings never change
        if not predictor.measure_missing and predictor.missing(arch):
            records.append(_not_measurable(len(records), label, arch, fingerprint, table))
            continue
        latency = predictor.predict(arch)
        # Nothing else runs now: the machine's cores (up to 4) train it, 1.3-1.7x faster than one thread.
        result = evaluate(TrialPayload(arch=arch, budget=dict(settings["budget"]), proxy=proxy_kind(settings),
                                       seed=int(settings["seed"]), threads=min(4, os.cpu_count() or 1)), data)
        records.append({"number": -1 - len(records), "state": "COMPLETE" if not result.failed else "FAIL",
                        "landmark": label, "arch": arch.to_dict(), "arch_text": arch.describe(),
                        "score": result.score, "predicted_latency_ms": latency,
                        "throughput": 1000.0 * fingerprint.batch / latency, "flops": result.flops,
                        "params": result.params, "feasible": True})
    studies.store_landmarks(study, records)
    return records


def _not_measurable(index: int, label: str, arch: Any, fingerprint: Fingerprint, table: Any) -> dict[str, Any]:
    """The record of a reference whose blocks the table lacks, on a machine that is not the target (one warning)."""
    why = (f"{NOT_MEASURABLE}: blocks missing from latency table {table.path} and this machine is not the study's "
           f"target {fingerprint.id}")
    print(f"warning: --landmarks {label}: {why}; left off the page (run `hilonas pareto --landmarks` on the target)",
          file=sys.stderr)
    return {"number": -1 - index, "state": "SKIPPED", "landmark": label, "arch": arch.to_dict(),
            "arch_text": arch.describe(), "score": None, "predicted_latency_ms": None, "throughput": None,
            "feasible": False, "skipped": why}
