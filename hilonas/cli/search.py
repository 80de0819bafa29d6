"""``hilonas search`` and ``hilonas studies``: run a multi-objective search, list the studies."""
from __future__ import annotations

from typing import Optional

import typer

from hilonas.cli._common import (
    BATCH_MAX,
    DEFAULT_PROXY_RESOLUTION,
    DEFAULT_RUNS_DIR,
    DEFAULT_TRIALS,
    DEFAULT_WORKERS,
    MAX_EPOCHS,
    count_option,
    data_option,
    dtype_option,
    echo_json,
    json_option,
    no_probe_option,
    number_option,
    proxy_data_option,
    quiet_torch,
    runs_option,
    runtime_option,
    seed_option,
    space_option,
    tables_option,
    target_option,
)
from hilonas.proxy import DEFAULT_PROXY, REFERENCE_FACTOR
from hilonas.search.promote import DEFAULT_PROMOTE

DEFAULT_SAMPLER = "nsga2"
DEFAULT_OBJECTIVE = "latency"
DEFAULT_EXECUTOR = "ray"


_TRIAL_TIMEOUT = number_option(None, help="seconds a trial may run, from its submission: one running longer is "
                               "cancelled and recorded failed, and a later trial replaces it")
_PROMOTE = count_option(DEFAULT_PROMOTE, minimum=0, help="front members trained again at the reference budget "
                        f"({REFERENCE_FACTOR:g}x the proxy's) after the trials; the Pareto page and export use "
                        "their figure; 0 skips")
_PROXY = typer.Option(DEFAULT_PROXY, help="what scores a trial: naswot (the zero-cost score of the untrained network, "
                     "well under a second; ranks like long training better than the short training did on the embedded "
                     "digits) or train (the short training's held-out top-1, 5-11 s)")
_ALLOW_SPACE_CHANGE = typer.Option(False, "--allow-space-change", help="resume a study whose search space changed "
                                   "since it started (earlier trials are kept; those outside it are not reused)")


def _budget_options(epochs: Optional[float], steps: Optional[int], batch_size: Optional[int]) -> dict:
    """The proxy budget overrides given on the command line (none given: the proxy's defaults)."""
    given = {"epochs": epochs, "steps": steps, "batch_size": batch_size}
    return {k: v for k, v in given.items() if v is not None}


# long: one typer option per line, every search setting on the command line
def search(space: str = space_option(),
           target: str = target_option("hardware the latency is for: cpu or cuda"),
           dtype: str = dtype_option(),
           runtime: str = runtime_option(),
           data: Optional[str] = data_option(),
           proxy_data: Optional[str] = proxy_data_option(),
           proxy: str = _PROXY,
           trials: int = count_option(DEFAULT_TRIALS,
                                      help="finished trials wanted in the study (a resume continues up to it)"),
           workers: int = count_option(DEFAULT_WORKERS, help="trials evaluated at once (one CPU and one thread each)"),
           study: Optional[str] = typer.Option(None, help="study name (default: SPACE-TARGET, plus -DTYPE and "
                                               f"-RUNTIME when not float32 / eager); {DEFAULT_RUNS_DIR}/<study>/"),
           storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default "
                                                 f"sqlite:///{DEFAULT_RUNS_DIR}/<study>/study.db)"),
           sampler: str = typer.Option(DEFAULT_SAMPLER, help="nsga2, tpe or random"),
           objective: str = typer.Option(DEFAULT_OBJECTIVE, help="second objective: latency (min) or throughput (max)"),
           max_latency_ms: Optional[float] = number_option(None, help="latency limit (an Optuna constraint)"),
           latency_margin: Optional[str] = typer.Option(
               None, help="auto (the table's validated p90 error) or a fraction, e.g. 0.05: a trial is feasible only "
               "if its predicted latency x (1 + margin) <= --max-latency-ms"),
           epochs: Optional[float] = number_option(None, help="proxy budget in epochs (default: the proxy's)",
                                                   maximum=MAX_EPOCHS),
           steps: Optional[int] = count_option(None, help="proxy budget in optimizer steps (overrides --epochs)"),
           batch_size: Optional[int] = count_option(None, help="proxy training batch size", maximum=BATCH_MAX),
           resolution: int = count_option(DEFAULT_PROXY_RESOLUTION,
                                          help="resolution the proxy scores and promotion trains at (latency "
                                          "uses the space's img_size)"),
           seed: int = seed_option("sampler and training seed"),
           executor: str = typer.Option(DEFAULT_EXECUTOR, help="ray (default) or local (in-process, for debugging)"),
           ray_address: Optional[str] = typer.Option(None, help="join this Ray cluster instead of starting one"),
           tables: str = tables_option("latency tables folder"),
           runs: str = runs_option(),
           resume: bool = typer.Option(False, "--resume", help="require the study to exist already"),
           trial_timeout: Optional[float] = _TRIAL_TIMEOUT,
           allow_space_change: bool = _ALLOW_SPACE_CHANGE, promote: int = _PROMOTE,
           no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
           no_probe: bool = no_probe_option(),
           as_json: bool = json_option("print the summary as one JSON object")) -> None:
    """Multi-objective search: the proxy's score (NASWOT or short training) vs latency (from the table), trials in parallel on Ray; then the front is promoted (trained for accuracy)."""  # noqa: E501
    quiet_torch()
    import dataclasses

    from hilonas.search.driver import SearchSettings, run_search

    settings = SearchSettings(space=space, target=target, data=data, proxy_data=proxy_data, proxy=proxy,
                              trials=trials,
                              workers=workers, study=study,
                              storage=storage, sampler=sampler, objective=objective, max_latency_ms=max_latency_ms,
                              latency_margin=latency_margin,
                              budget=_budget_options(epochs, steps, batch_size), resolution=resolution, seed=seed,
                              executor=executor, ray_address=ray_address, tables_dir=tables, runs_dir=runs,
                              resume=resume, probe=not no_probe, trial_timeout=trial_timeout,
                              allow_space_change=allow_space_change, promote=promote, latency_dtype=dtype,
                              latency_runtime=runtime)
    try:
        summary = run_search(settings, progress=not no_progress and not as_json)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished trials are kept, running ones marked failed; run the same command to "
                   "continue", err=True)
        raise typer.Exit(130) from None
    if as_json:
        echo_json(dataclasses.asdict(summary))
        return
    promoted = f" ({summary.promoted} promoted now)" if summary.promoted else ""
    typer.echo(f"study {summary.study}: {summary.finished} finished trials ({summary.new_trials} new, "
               f"{summary.failed} failed this run), front of {summary.front_size}{promoted}, "
               f"{summary.wall_seconds:.0f} s")
    typer.echo(f"  storage: {summary.storage}")
    typer.echo(f"  latency table: {summary.table}")
    typer.echo(f"  next: hilonas pareto {summary.study}   |   hilonas export {summary.study} --trial N")


def studies(runs: str = runs_option(),
            as_json: bool = json_option("print a JSON list")) -> None:
    """The studies under runs/, with their trial counts."""
    from hilonas.search.study import list_studies

    rows = list_studies(runs)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        typer.echo(f"no studies in {runs}/ (start one with hilonas search)")
    for r in rows:
        s = r["settings"]
        typer.echo(f"{r['study']:24s} {r.get('complete', 0):>4} complete {r.get('fail', 0):>3} failed  "
                   f"space={s.get('space')} target={s.get('target')} objective={s.get('objective')} "
                   f"limit={s.get('max_latency_ms')}  {r['storage']}")
