"""Results of one or more studies as a pandas DataFrame: one row per trial, objectives, feasibility, front membership.

Input is the plain records of :func:`hilonas.search.study.trial_records` (so this module never imports optuna);
:func:`hilonas.search.study.study_results` reads them from a study's storage into this frame.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from hilonas.analysis.front import pareto_mask
from hilonas.errors import HilonasError
from hilonas.io import atomic_write

COLUMNS = ["study", "target", "number", "state", "proxy", "score", "accuracy", "promoted_accuracy", "latency_ms",
           "throughput", "feasible", "on_front", "flops", "params", "arch_text", "train_seconds", "duplicate_of",
           "skipped", "fail_reason", "landmark"]


def results_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """A row per trial of every study in ``records``; ``on_front`` marks each study's own Pareto front (each
    network once: a trial told as a duplicate of an earlier one is not a member).

    ``score`` is what the study's ``proxy`` scored the trial by (the search's first objective): the NASWOT score, or
    the short training's held-out top-1, which is then also ``accuracy`` (NaN for a NASWOT study: a score is not an
    accuracy); ``promoted_accuracy`` is a front member's top-1 after training at the reference budget. The front is
    over COMPLETE, feasible trials; the score is maximised and latency minimised (throughput maximised when the
    study's objective is throughput, which orders trials the same way for a fixed batch).
    """
    from hilonas.proxy import proxy_kind

    rows = []
    for r in records:
        settings = r.get("settings", {})
        arch = r.get("arch") or {}
        proxy = proxy_kind(settings)
        # Records from before the score was named carry it as "accuracy" (old landmarks).
        # A trial over the latency limit was not scored (Optuna holds a placeholder 0 for it).
        score = r.get("score", r.get("accuracy")) if r["state"] == "COMPLETE" and not r.get("skipped") else None
        row = {
            "study": r["study"], "target": settings.get("target"), "number": r["number"], "state": r["state"],
            "proxy": proxy, "score": score, "accuracy": score if proxy == "train" else None,
            "latency_ms": r.get("predicted_latency_ms"), "throughput": r.get("throughput"),
            "feasible": bool(r.get("feasible", True)) and r["state"] == "COMPLETE" and not r.get("skipped"),
            "flops": r.get("flops"), "params": r.get("params"), "arch_text": r.get("arch_text"),
            "train_seconds": r.get("train_seconds"), "duplicate_of": r.get("duplicate_of"),
            "skipped": r.get("skipped"), "fail_reason": r.get("fail_reason"), "landmark": r.get("landmark"),
            "objective": settings.get("objective"), "max_latency_ms": settings.get("max_latency_ms"),
            "fingerprint_id": settings.get("fingerprint_id"), "arch": arch,
            "latency_error": latency_error(r, settings), "measured_latency_ms": r.get("measured_latency_ms"),
            "promoted_accuracy": r.get("promoted_accuracy"),  # the reference-budget figure (hilonas.search.promote)
            # What the proxy scored the trials on, and the data promotion trained on.
            "proxy_data": settings.get("proxy_data", settings.get("data")), "data": settings.get("data"),
        }
        for i, st in enumerate(arch.get("stages", [])):
            for key in ("depth", "dim", "heads", "mixer", "alpha", "window", "mlp_ratio"):
                row[f"s{i}_{key}"] = st.get(key)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    df["on_front"] = False
    for _, part in df.groupby("study", sort=False):
        # A duplicate (the sampler proposed a network trained before; it carries that trial's figures) is not a
        # front member of its own: the trial it copies stands for the network.
        ok = (part["feasible"] & part["score"].notna() & part["latency_ms"].notna() & part["landmark"].isna()
              & part["duplicate_of"].isna())
        cand = part[ok]
        if cand.empty:
            continue
        mask = pareto_mask(cand["score"].tolist(), cand["latency_ms"].tolist())
        df.loc[cand.index[mask], "on_front"] = True
    ordered = [c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]
    return df[ordered].sort_values(["study", "number"], kind="stable").reset_index(drop=True)


def latency_error(record: dict[str, Any], settings: dict[str, Any]) -> float | None:
    """How far a prediction may be off (0.05 = 5%): the margin the trial was judged with (its own, else the study's
    last), else the table's validated p90 error recorded on the study; None when neither is known."""
    for value in (record.get("latency_margin"), settings.get("latency_margin"), settings.get("latency_error_p90")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def front(df: pd.DataFrame) -> pd.DataFrame:
    """The front members, fastest first."""
    return df[df["on_front"]].sort_values(["study", "latency_ms"], kind="stable")


def write_trials(df: pd.DataFrame, path: str | Path, kind: str = "csv") -> int:
    """Write every trial of ``df`` (without the nested ``arch`` column) to ``path`` atomically; returns the rows.

    ``kind`` is ``csv`` or ``parquet`` (needs pyarrow). The folder must exist.

    Raises:
        HilonasError: naming ``--csv``/``--parquet`` and the path, for a missing folder or a missing pyarrow.
    """
    path = Path(path)
    if kind not in ("csv", "parquet"):
        raise HilonasError(f"kind={kind!r} is unknown: use csv or parquet")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise HilonasError(f"--{kind} {path}: folder {parent} does not exist: create it first")
    out = df.drop(columns=["arch"], errors="ignore")
    if kind == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise HilonasError("--parquet needs pyarrow (pip install pyarrow); use --csv instead") from None
        atomic_write(path, lambda tmp: out.to_parquet(tmp, index=False))
    else:
        atomic_write(path, lambda tmp: out.to_csv(tmp, index=False))
    return len(out)
