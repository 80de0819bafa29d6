"""``hilonas hardware`` and ``hilonas latency build|validate``: this machine's fingerprint and its latency tables."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from hilonas.cli._common import (
    DEFAULT_RESOLUTION,
    batch_option,
    count_option,
    dtype_option,
    echo_json,
    json_option,
    no_probe_option,
    output_file_option,
    quiet_torch,
    resolution_option,
    runtime_option,
    seed_option,
    space_option,
    tables_option,
    target_option,
    threads_option,
)
from hilonas.errors import HilonasError
from hilonas.latency.build import DEFAULT_CALIB_NETWORKS  # torch-free at import

app = typer.Typer(no_args_is_help=True, help="Latency tables: build one for this machine, validate it.")

DEFAULT_VALIDATE_N = 50
FIGURES = ("n", "within_5", "within_10", "mape", "p90_ape", "max_ape", "spearman", "bias", "drift", "probe",
           "within_5_drift_corrected", "within_10_drift_corrected", "mape_drift_corrected")


def fingerprint_for(target: str, threads: int, batch: int, resolution: Optional[int], space: Optional[str] = None,
                    dtype: str = "float32", runtime: str = "eager"):
    """(fingerprint, loaded space or None): the resolution defaults to the space's img_size (224 without one)."""
    sp = None
    if space is not None:
        from hilonas.spaces import SearchSpace

        sp = SearchSpace.load(space)
    if resolution is None:
        resolution = int(sp.fixed.get("img_size", DEFAULT_RESOLUTION)) if sp is not None else DEFAULT_RESOLUTION
    from hilonas.latency.fingerprint import current_fingerprint

    fp = current_fingerprint(target, threads=threads, batch=batch, resolution=resolution, dtype=dtype,
                             backend=runtime)
    return fp, sp


def _probe_line(probe: dict[str, Any]) -> str:
    """``'1.27x slower than the table (by kind: block:hilo 1.25, merge 1.60, ...), 2026-11-22T18:01'`` for a probe
    of the table's history."""
    factor = probe.get("factor")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
        how = f"factor {factor!r}"
    elif factor >= 1:
        how = f"{factor:.2f}x slower than the table"
    else:
        how = f"{1 / factor:.2f}x faster than the table"
    groups = probe.get("group_factors")
    if isinstance(groups, dict) and groups:
        how += " (by kind: " + ", ".join(f"{g} {v:.2f}" if isinstance(v, (int, float)) else f"{g} {v!r}"
                                         for g, v in sorted(groups.items())) + ")"
    taken = str(probe.get("taken_at") or "")[:16]
    return how + (f", {taken}" if taken else "")


def _tables_for(fp: Any, tables: str, details: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """(tables matching ``fp``, the others with why they do not match) under ``tables``; a matching table comes with
    how its host's details differ from ``details`` and its last speed probe."""
    from hilonas.latency.fingerprint import details_diff
    from hilonas.latency.table import LatencyTable, list_tables

    matching, others = [], []
    for path, tfp, problem in list_tables(tables):
        if tfp is None:
            others.append({"path": str(path), "problem": problem})
        elif tfp.id == fp.id:
            t = LatencyTable.load(path, expect=fp)
            probes, table_details = t.probes, t.details
            matching.append({"path": str(path), "blocks": len(t.entries),
                             "calibration": (t.calibration or {}).get("method"), "statistic": t.statistic,
                             "details": table_details or None,
                             "details_diff": details_diff(details, table_details),
                             "probe": probes[-1] if probes and isinstance(probes[-1], dict) else None})
        else:
            others.append({"path": str(path), "differs_in": tfp.diff(fp)})
    return matching, others


def _echo_matching(matching: list[dict]) -> None:
    for t in matching:
        typer.echo(f"  {t['path']}: {t['blocks']} blocks, calibration {t['calibration'] or 'none'}")
        if t["details"] is None:
            typer.echo("    measured on: not recorded (table predates machine details)")
        elif t["details_diff"]:
            typer.echo(f"    measured on another host behind the same fingerprint: {'; '.join(t['details_diff'])} "
                       "(this host first)")
        else:
            typer.echo("    measured on: a host with the same details as this one")
        typer.echo("    last speed probe: " + (_probe_line(t["probe"]) if t["probe"] else "none yet"))


def hardware(target: str = target_option(),
             dtype: str = dtype_option(),
             runtime: str = runtime_option(),
             threads: int = threads_option("CPU threads the latency is measured with"),
             batch: int = batch_option(),
             resolution: int = count_option(DEFAULT_RESOLUTION, help="input image side in pixels"),
             tables: str = tables_option(),
             as_json: bool = json_option()) -> None:
    """This machine's hardware fingerprint, what else the OS shows of it, and the latency tables that match it."""
    from hilonas.latency.fingerprint import machine_details

    quiet_torch()
    fp, _ = fingerprint_for(target, threads, batch, resolution, dtype=dtype, runtime=runtime)
    details = machine_details(target)
    matching, others = _tables_for(fp, tables, details)
    if as_json:
        echo_json({"fingerprint_id": fp.id, "fingerprint": fp.to_dict(), "details": details, "tables": matching,
                   "other_tables": others})
        return
    typer.echo(f"fingerprint {fp.id}")
    for name, value in fp.to_dict().items():
        typer.echo(f"  {name:14s} {value}")
    typer.echo("machine details (not part of the id)")
    for name, value in details.items():
        typer.echo(f"  {name:14s} {' '.join(map(str, value)) if isinstance(value, list) else value}")
    typer.echo(f"tables in {tables}/ for this fingerprint: {len(matching) or 'none'}")
    _echo_matching(matching)
    if not matching:
        typer.echo(f"  build one: {fp.build_command()}")
    for o in others:
        why = f"differs in {', '.join(o['differs_in'])}" if "differs_in" in o else o["problem"]
        typer.echo(f"  (other: {o['path']}: {why})")


@app.command("build")
def latency_build(space: str = space_option(),
                  target: str = target_option(),
                  dtype: str = dtype_option(),
                  runtime: str = runtime_option(),
                  threads: int = threads_option(),
                  batch: int = batch_option(),
                  resolution: Optional[int] = resolution_option(),
                  tables: str = tables_option(),
                  force: bool = typer.Option(False, "--force", help="use a table whose fingerprint differs"),
                  recalibrate: bool = typer.Option(False, "--recalibrate",
                                                   help="measure the calibration networks again and refit"),
                  refit: bool = typer.Option(False, "--refit", help="refit the calibration on the networks the "
                                             "table stores, measuring nothing"),
                  calib_networks: int = count_option(DEFAULT_CALIB_NETWORKS, minimum=0,
                                                     help="whole networks measured for the calibration (0: none)"),
                  repeats: Optional[int] = count_option(None, help="timed calls per pass (default 12)", maximum=10_000),
                  rounds: Optional[int] = count_option(None, help="passes over all blocks (default 20)", maximum=1000),
                  as_json: bool = json_option()) -> None:
    """Measure every block of a space on this machine into its latency table, then fit the calibration."""
    fp, sp = fingerprint_for(target, threads, batch, resolution, space, dtype=dtype, runtime=runtime)
    quiet_torch()
    from hilonas.latency.build import build_table, refit_table

    if refit:
        if recalibrate:
            raise HilonasError("--refit and --recalibrate exclude each other: --refit refits on the stored figures, "
                               "--recalibrate measures the networks again; pass one")
        refitted = refit_table(fp, tables, force=force)
        stats, cal = {"path": str(refitted.path), "refitted": True}, refitted.calibration or {}
        if as_json:
            echo_json({"fingerprint_id": fp.id, **stats, "calibration": {k: v for k, v in cal.items()
                                                                         if k != "networks"}})
            return
    else:
        report = build_table(sp, fp, tables_dir=tables, calib_networks=calib_networks, progress=not as_json,
                             force=force, recalibrate=recalibrate, repeats=repeats, rounds=rounds)
        stats, cal = report.to_dict(), report.table.calibration or {}
        if as_json:
            echo_json({"fingerprint_id": fp.id, **stats})
            return
        typer.echo(f"{stats['blocks_total']} blocks ({stats['blocks_measured']} measured now), "
                   f"{stats['networks_measured']} calibration networks, in {stats['seconds']:.1f} s")
    if cal:
        typer.echo(f"calibration: {cal.get('method')} (scale {cal.get('scale', 1):.3f}, intercept "
                   f"{cal.get('intercept_ms', 0):.3f} ms, leave-one-out error {cal.get('loo_mape', {})})")
    typer.echo(f"table: {stats['path']}")


def _validate(sp: Any, fp: Any, n: int, seed: int, tables: str, table: Optional[str], force: bool,
              progress: bool, probe: bool) -> tuple[dict[str, Any], Any]:
    """(validate_table's figures, the table validated)."""
    from hilonas.latency.build import check_model_code
    from hilonas.latency.table import LatencyTable
    from hilonas.latency.validate import validate_table

    loaded = LatencyTable.load(table, expect=fp, force=force) if table else LatencyTable.open(fp, tables, force=force)
    check_model_code(loaded, sp.name)
    return validate_table(sp, fp, n=n, seed=seed, table=loaded, progress=progress, probe=probe), loaded


@app.command("validate")
def latency_validate(space: str = space_option(),
                     n: int = count_option(DEFAULT_VALIDATE_N, "--n", help="random networks to measure",
                                           maximum=10_000),
                     seed: int = seed_option("sampling seed"),
                     target: str = target_option(),
                     dtype: str = dtype_option(),
                     runtime: str = runtime_option(),
                     threads: int = threads_option(),
                     batch: int = batch_option(),
                     resolution: Optional[int] = resolution_option(),
                     tables: str = tables_option(),
                     table: Optional[str] = typer.Option(None, help="a table file (default: this machine's)"),
                     force: bool = typer.Option(False, "--force", help="use a table whose fingerprint differs"),
                     no_probe: bool = no_probe_option(),
                     as_json: bool = json_option("print the figures as one JSON object"),
                     csv: Optional[Path] = output_file_option("write the per-network rows to this CSV")) -> None:
    """Measure N random networks whole and report how far the table's predictions are off."""
    fp, sp = fingerprint_for(target, threads, batch, resolution, space, dtype=dtype, runtime=runtime)
    quiet_torch()
    result, loaded = _validate(sp, fp, n, seed, tables, table, force, progress=not as_json, probe=not no_probe)
    if csv:
        from hilonas.io import write_csv_rows

        write_csv_rows(csv, result["rows"])
    if as_json:
        figures = {k: round(result[k], 4) if isinstance(result[k], float) else result[k] for k in FIGURES}
        echo_json({**figures, "rows": result["rows"]})  # the per-network rows the CSV holds
        return
    _print_validation(result, f"{n} random networks of {sp.name} (seed {seed}) measured whole against {loaded.path}:")
    if csv:
        typer.echo(f"  rows: {csv}")


def _print_validation(result: dict[str, Any], title: str) -> None:
    typer.echo(title)
    if result["probe"] is not None:
        p = result["probe"]
        typer.echo(f"  speed probe at start: factor {p['factor']:.3f} (spread {p['spread']:.3f}, {p['networks']} "
                   f"networks, {p['seconds']:.1f} s); predictions below are corrected by it"
                   + (" kind by kind" if p.get("residual") is not None else ""))
    typer.echo(f"  within +-5%: {result['within_5']:.0%}   within +-10%: {result['within_10']:.0%}   "
               f"mean |error| {result['mape']:.1%}   max |error| {result['max_ape']:.1%}   "
               f"Spearman {result['spearman']:.3f}   bias {result['bias']:+.1%}")
    typer.echo(f"  statistic {result['statistic']}, calibration {result['calibration']}, {result['seconds']:.0f} s"
               + (f", CPUs busy with other work {result['machine_busy']:.0%} at start"
                  if result["machine_busy"] is not None else ""))
    if result["drift"] is not None:
        d = result["drift"]
        typer.echo(f"  machine drift: the table's calibration networks, measured again in the same passes, run "
                   f"{abs(d):.1%} {'slower' if d >= 0 else 'faster'} than when the table was built")
        typer.echo(f"  drift-corrected (predictions scaled by that instead): within +-5% "
                   f"{result['within_5_drift_corrected']:.0%}   within +-10% {result['within_10_drift_corrected']:.0%}"
                   f"   mean |error| {result['mape_drift_corrected']:.1%}")
