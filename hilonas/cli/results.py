"""``hilonas results``, ``hilonas pareto`` and ``hilonas export``: what a study found, drawn and picked."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from hilonas.cli._common import (
    DEFAULT_RUNS_DIR,
    MAX_EPOCHS,
    count_option,
    echo_json,
    json_option,
    no_probe_option,
    number_option,
    output_file_option,
    output_folder_option,
    quiet_torch,
    runs_option,
    storage_option,
    tables_option,
)

RESULT_COLUMNS = ["number", "state", "score", "promoted_accuracy", "latency_ms", "feasible", "on_front", "flops",
                  "params", "arch_text"]


def results(study: str = typer.Argument(..., help=f"study name ({DEFAULT_RUNS_DIR}/<study>/study.db)"),
            storage: Optional[str] = storage_option(),
            runs: str = runs_option(),
            csv: Optional[Path] = output_file_option("write every trial to this CSV file"),
            parquet: Optional[Path] = output_file_option("write every trial to this Parquet file"),
            front_only: bool = typer.Option(False, "--front", help="print only the Pareto front")) -> None:
    """The trials of a study as a table (pandas): objectives, feasibility, front membership, architecture."""
    import pandas as pd

    from hilonas.analysis.results import write_trials
    from hilonas.search.study import study_results

    df, _ = study_results([study], storage, runs)
    for path, kind in ((csv, "csv"), (parquet, "parquet")):
        if path is not None:
            typer.echo(f"wrote {write_trials(df, path, kind)} trials to {path}")
    view = df[df["on_front"]] if front_only else df
    if not df.empty:
        from hilonas.proxy import PROXY_INFO

        kind = df["proxy"].iloc[0]
        meaning = PROXY_INFO.get(kind, {}).get("meaning", kind)
        typer.echo(f"score: {meaning}; promoted_accuracy: held-out top-1 after training at the reference budget")
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_colwidth", 90):
        typer.echo(view[RESULT_COLUMNS].to_string(index=False))


def pareto(studies_: list[str] = typer.Argument(..., metavar="STUDY...", help="one or more study names"),
           storage: Optional[str] = storage_option(),
           runs: str = runs_option(),
           out: Optional[Path] = output_file_option(f"HTML page (default {DEFAULT_RUNS_DIR}/<first study>/"
                                                    "pareto.html)"),
           png: Optional[Path] = output_file_option("also a static PNG (needs Chromium for kaleido)"),
           x: str = typer.Option("latency", help="x axis: latency or throughput"),
           landmarks: bool = typer.Option(False, "--landmarks",
                                          help="evaluate the space's reference architectures into the study first"),
           tables: str = tables_option("latency tables folder (for --landmarks)")) -> None:
    """The score-vs-latency Pareto page with promoted accuracies (plotly, works offline): fronts of several studies side by side."""  # noqa: E501
    from hilonas.analysis.plots import check_axis, pareto_figure, write_html, write_png

    check_axis(x)  # before --landmarks scores anything (with --proxy train: minutes of training)
    if landmarks:
        quiet_torch()
        from hilonas.search.landmarks import evaluate_landmarks
        from hilonas.search.study import load_existing

        for name in studies_:
            marks = evaluate_landmarks(load_existing(name, storage, runs), tables_dir=tables)
            typer.echo(f"{name}: scored {len(marks)} reference architectures")
    from hilonas.search.study import study_results

    df, marks_df = study_results(studies_, storage, runs, with_landmarks=True)

    fig = pareto_figure(df, marks_df, x=x)
    page = write_html(fig, out or Path(runs) / studies_[0] / "pareto.html")
    typer.echo(f"wrote {page} ({int(df['on_front'].sum())} front members of {len(df)} trials"
               f"{f', {len(marks_df)} landmarks' if marks_df is not None else ''}); open it in a browser")
    if png is not None:
        typer.echo(f"wrote {write_png(fig, png)}")


def _print_export(study: str, row: Any, target: Path, prov: dict[str, Any]) -> None:
    from hilonas.export import WARN_ERROR

    m = prov.get("measurement", {})
    typer.echo(f"exported trial {prov['trial']} of {study} to {target}/arch.yaml")
    typer.echo(f"  {row['arch_text']}")
    if (prov.get("dtype"), prov.get("runtime")) != ("float32", "eager"):
        typer.echo(f"  target: {prov.get('dtype')} on {prov.get('runtime')}")
    score = (f"proxy accuracy {prov['proxy_accuracy']:.4f}" if prov.get("proxy_accuracy") is not None
             else f"NASWOT score {prov['proxy_score']:.1f}")
    promoted = (f", promoted top-1 {prov['promoted_accuracy']:.4f}" if prov.get("promoted_accuracy") is not None
                else "")
    typer.echo(f"  {score}{promoted}, predicted latency in the search "
               f"{prov['predicted_latency_ms']:.2f} ms, FLOPs {prov['flops'] / 1e9:.3f} G, "
               f"params {prov['params'] / 1e6:.2f} M")
    if m.get("measured"):
        if m.get("speed_probe"):
            factor = m["speed_factor"]
            typer.echo(f"  speed probe: latencies here are {factor:.3f}x the table's (this machine runs "
                       f"{abs(factor - 1):.1%} {'slower' if factor >= 1 else 'faster'}; "
                       f"{m['speed_probe']['seconds']:.0f} s); predicted here today {m['predicted_today_ms']:.2f} ms "
                       "(each kind of block scaled by its own factor)")
        probed = bool(m.get("speed_probe"))
        against = "predicted today" if probed else "the table's prediction without a probe"
        typer.echo(f"  re-measured in a fresh process: {m['measured_latency_ms']:.2f} ms ({m['error']:+.1%} vs "
                   f"{against}, {m['predicted_today_ms']:.2f} ms)")
        if "error_drift_corrected" in m:
            typer.echo(f"  the probe's networks, timed beside it, ran {m['beside_factor']:.3f}x the table: "
                       f"{m['error_drift_corrected']:+.1%} vs the prediction at that speed "
                       f"({m['predicted_beside_ms']:.2f} ms), the table's own error")
        typer.echo(f"  to see this figure in your own process, start it with: {m['environment']} python ...")
        table_error = m.get("error_drift_corrected", m["error"])
        if abs(table_error) > WARN_ERROR:
            typer.echo(f"warning: measured latency differs from the prediction by {table_error:+.1%} "
                       f"(more than {WARN_ERROR:.0%}); check `hilonas latency validate`", err=True)
        elif abs(m["error"]) > WARN_ERROR:
            moved = "the machine's speed moved since the probe" if probed else \
                "this machine runs at another speed than the table's host"
            typer.echo(f"note: {moved}: {m['error']:+.1%} against {against}, {table_error:+.1%} at the speed the "
                       "probe's networks ran beside the export", err=True)
    elif m:
        typer.echo(f"  not re-measured: {m['reason']}")
    for p in prov.get("limit", {}).get("passed_over", []):
        typer.echo(f"  passed over trial {p['trial']}: re-measured {p['measured_latency_ms']:.2f} ms, over "
                   f"--max-latency-ms {prov['limit']['max_latency_ms']:g}")
    if "onnx" in prov:
        typer.echo(f"  model.onnx: max abs diff vs PyTorch {prov['onnx']['max_abs_diff']:.2e}")
    if "weights" in prov:
        w = prov["weights"]
        typer.echo(f"  weights.safetensors: {w['accuracy']:.4f} held-out top-1 on {w['data']}")
    typer.echo(f"  build it: hilonas.create_model('{target}/arch.yaml') or "
               f"timm.create_model('hilonas_arch', config='{target}/arch.yaml')")


def export(study: str = typer.Argument(..., help="study name"),
           trial: Optional[int] = count_option(None, help="export this trial number", minimum=0),
           max_latency_ms: Optional[float] = number_option(None, help="the best-scored trial at most this slow, "
                                                           "held by re-measuring: a trial over it is passed over"),
           tries: int = count_option(3, help="with --max-latency-ms: how many trials to re-measure before giving up",
                                     minimum=1),
           min_accuracy: Optional[float] = number_option(None, help="the fastest trial at least this accurate "
                                                         "(promoted accuracy; with --proxy train also the proxy's)",
                                                         strictly=False, maximum=1.0),
           knee: bool = typer.Option(False, "--knee", help="the front's knee: the best accuracy/latency "
                            "trade-off (over the promoted members when there are any)"),
           out: Optional[Path] = output_folder_option(None, f"new folder (default {DEFAULT_RUNS_DIR}/<study>/"
                                                      "export-trial<N>)"),
           weights: bool = typer.Option(False, "--weights", help="train with the proxy trainer and save weights"),
           epochs: Optional[float] = number_option(None, help="epochs for --weights (default: the study's budget)",
                                                   maximum=MAX_EPOCHS),
           onnx: bool = typer.Option(False, "--onnx", help="also write model.onnx, checked with onnxruntime"),
           no_measure: bool = typer.Option(False, "--no-measure", help="skip re-measuring the latency"),
           no_probe: bool = no_probe_option(),
           force: bool = typer.Option(False, "--force", help="replace --out if it holds an earlier export "
                                                        "(once the new export is done)"),
           tables: str = tables_option("latency tables folder (for the re-measurement)"),
           storage: Optional[str] = storage_option(),
           runs: str = runs_option(),
           as_json: bool = json_option("print the provenance as one JSON object")) -> None:
    """Export a trial's architecture (--trial, --max-latency-ms, --min-accuracy or --knee) as YAML with provenance (buildable by hilonas.create_model and timm)."""  # noqa: E501
    quiet_torch()
    from hilonas.export import export_from_study

    row, target, prov = export_from_study(study, out, storage=storage, runs_dir=runs, trial=trial,
                                          max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, knee=knee,
                                          tries=tries, weights=weights, onnx=onnx, measure=not no_measure,
                                          probe=not no_probe, epochs=epochs, force=force, tables_dir=tables)
    if as_json:
        echo_json({"out": str(target), **prov})
        return
    _print_export(study, row, target, prov)
