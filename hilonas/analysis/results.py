"""Results of one or more studies as a pandas DataFrame: one row per trial, objectives, feasibility, front membership.

Input is the plain records of :func:`hilonas.search.study.trial_records` (so this module never imports optuna).
"""
from __future__ import annotations

from typing import Any, Iterable

import pandas as pd

from hilonas.analysis.front import pareto_mask

COLUMNS = ["study", "target", "number", "state", "accuracy", "latency_ms", "throughput", "feasible", "on_front",
           "flops", "params", "arch_text", "train_seconds", "duplicate_of", "skipped", "fail_reason", "landmark"]


def results_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """A row per trial of every study in ``records``; ``on_front`` marks each study's own Pareto front.

    The front is over COMPLETE, feasible trials; accuracy is maximised and latency minimised (throughput maximised
    when the study's objective is throughput, which orders trials the same way for a fixed batch).
    """
    rows = []
    for r in records:
        settings = r.get("settings", {})
        arch = r.get("arch") or {}
        row = {
            "study": r["study"], "target": settings.get("target"), "number": r["number"], "state": r["state"],
            "accuracy": r.get("accuracy") if r["state"] == "COMPLETE" else None,
            "latency_ms": r.get("predicted_latency_ms"), "throughput": r.get("throughput"),
            "feasible": bool(r.get("feasible", True)) and r["state"] == "COMPLETE" and not r.get("skipped"),
            "flops": r.get("flops"), "params": r.get("params"), "arch_text": r.get("arch_text"),
            "train_seconds": r.get("train_seconds"), "duplicate_of": r.get("duplicate_of"),
            "skipped": r.get("skipped"), "fail_reason": r.get("fail_reason"), "landmark": r.get("landmark"),
            "objective": settings.get("objective"), "max_latency_ms": settings.get("max_latency_ms"),
            "fingerprint_id": settings.get("fingerprint_id"), "arch": arch,
        }
        for i, st in enumerate(arch.get("stages", [])):
            for key in ("depth", "dim", "heads", "mixer", "alpha", "window", "mlp_ratio"):
                row[f"s{i}_{key}"] = st.get(key)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    df["on_front"] = False
    for study, part in df.groupby("study", sort=False):
        ok = part["feasible"] & part["accuracy"].notna() & part["latency_ms"].notna() & part["landmark"].isna()
        cand = part[ok]
        if cand.empty:
            continue
        mask = pareto_mask(cand["accuracy"].tolist(), cand["latency_ms"].tolist())
        df.loc[cand.index[mask], "on_front"] = True
    ordered = [c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]
    return df[ordered].sort_values(["study", "number"], kind="stable").reset_index(drop=True)


def front(df: pd.DataFrame) -> pd.DataFrame:
    """The front members, fastest first."""
    return df[df["on_front"]].sort_values(["study", "latency_ms"], kind="stable")
