"""The ``hilonas`` command. Nothing imports this module.

Heavy imports (torch, optuna, ray, plotly) happen inside the commands that need them, so ``hilonas --help`` is
instant. Every user mistake surfaces as a :class:`hilonas.errors.HilonasError`: one line on stderr, exit status 2.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from hilonas.errors import HilonasError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hardware-aware architecture search for vision transformers built on HiLo attention (LITv2).")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: both sides timed in one run, ratios printed.")
app.add_typer(bench_app, name="bench")
spaces_app = typer.Typer(no_args_is_help=True, help="Search spaces: list the shipped ones, show one.")
app.add_typer(spaces_app, name="space")
latency_app = typer.Typer(no_args_is_help=True, help="Latency tables: build one for this machine, validate it.")
app.add_typer(latency_app, name="latency")


def _quiet_torch() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=None, sort_keys=False))


# --------------------------------------------------------------------------------------------------------- spaces
@spaces_app.command("list")
def space_list() -> None:
    """The search spaces shipped with hilonas."""
    from hilonas.spaces import SearchSpace, packaged_spaces

    for name in sorted(packaged_spaces()):
        space = SearchSpace.load(name)
        typer.echo(f"{name:14s} {space.size():>12,} architectures  {len(space.enumerate_blocks()):>4} blocks  "
                   f"{space.description}")


@spaces_app.command("show")
def space_show(space: str = typer.Argument(..., help="a shipped space name or a YAML path"),
               blocks: bool = typer.Option(False, "--blocks", help="also list every distinct latency block")) -> None:
    """Check a space and print its choices (and its blocks with --blocks)."""
    from hilonas.spaces import SearchSpace

    sp = SearchSpace.load(space)
    typer.echo(sp.describe())
    keys = sp.enumerate_blocks()
    typer.echo(f"  {len(keys)} distinct blocks; references: {', '.join(r for r, _ in sp.references) or 'none'}")
    if blocks:
        for k in keys:
            typer.echo(f"    {k.id}")


# ---------------------------------------------------------------------------------------------------------- flops
@app.command()
def flops(config: str = typer.Argument(..., help="variant name (litv2_s, litv2_m, litv2_b) or a config YAML"),
          img_size: Optional[int] = typer.Option(None, help="input resolution (default: the config's img_size)"),
          time_forward: bool = typer.Option(False, "--time", help="also time one forward pass (median of repeats)"),
          threads: int = typer.Option(1, help="CPU threads for --time"),
          as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Parameters and FLOPs (multiply-accumulates, fvcore) of an architecture, by stage."""
    import dataclasses

    from hilonas.config import resolve_arch

    arch = resolve_arch(config)
    if img_size is not None:
        if img_size < 1:
            raise HilonasError(f"--img-size={img_size} must be a positive number of pixels")
        arch = dataclasses.replace(arch, img_size=img_size).validate()
    _quiet_torch()
    import torch

    from hilonas.models import HiLoNet
    from hilonas.models.flops import count_flops

    model = HiLoNet(arch).eval()
    x = torch.zeros(1, arch.in_chans, arch.img_size, arch.img_size)
    report = count_flops(model, x)
    out = {"config": config, "arch": arch.describe(), "img_size": arch.img_size, "params": report.params,
           "flops": report.total, "flops_by_stage": report.stage_flops()}
    if time_forward:
        from hilonas.latency.timing import time_module

        t = time_module(model, x, threads=threads, warmup=3, repeats=10)
        out["forward_ms"] = {"median": t.median_ms, "spread": t.spread, "runs": t.runs, "threads": t.threads}
    if as_json:
        _echo_json(out)
        return
    typer.echo(f"{config}: {out['arch']}")
    typer.echo(f"  params  {report.params / 1e6:8.2f} M")
    typer.echo(f"  FLOPs   {report.total / 1e9:8.3f} G (multiply-accumulates at {arch.img_size}x{arch.img_size})")
    for name, value in out["flops_by_stage"].items():
        typer.echo(f"    {name:12s} {value / 1e9:8.3f} G")
    if time_forward:
        f = out["forward_ms"]
        typer.echo(f"  forward {f['median']:8.2f} ms (batch 1, {f['threads']} thread(s), median of {f['runs']} runs, "
                   f"spread {f['spread']:.1%})")


# ---------------------------------------------------------------------------------------------------------- bench
@bench_app.command("attention")
def bench_attention(batch: int = typer.Option(64, help="images per forward"),
                    tokens: int = typer.Option(14, help="token map side (tokens x tokens)"),
                    dim: int = typer.Option(768), heads: int = typer.Option(12),
                    alpha: float = typer.Option(0.9, help="HiLo alpha"),
                    hilo_window: int = typer.Option(2, help="HiLo window size"),
                    sr_ratio: int = typer.Option(2, help="SRA reduction ratio"),
                    local_window: int = typer.Option(7, help="local window attention size"),
                    repeats: int = typer.Option(10, help="interleaved timing rounds"),
                    threads: int = typer.Option(2, help="CPU threads"),
                    device: str = typer.Option("cpu", help="cpu or cuda"),
                    as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """The HiLo paper's single-layer comparison: every mixer, fused and explicit, img/s and ratios to HiLo-fused."""
    for name, value in (("batch", batch), ("tokens", tokens), ("dim", dim), ("heads", heads), ("repeats", repeats),
                        ("threads", threads), ("hilo-window", hilo_window), ("sr-ratio", sr_ratio),
                        ("local-window", local_window)):
        if value < 1:
            raise HilonasError(f"--{name}={value} must be >= 1")
    if dim % heads:
        raise HilonasError(f"--dim={dim} is not divisible by --heads={heads}: use a multiple of the heads")
    if not 0 <= alpha <= 1:
        raise HilonasError(f"--alpha={alpha} is outside [0, 1]")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise HilonasError(f"--device={device!r} is unknown: use cpu or cuda")
    _quiet_torch()
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HilonasError(f"--device={device}: no CUDA device is visible here; use --device cpu")
    from hilonas.bench.attention import format_attention_bench, run_attention_bench

    result = run_attention_bench(batch=batch, tokens=tokens, dim=dim, heads=heads, alpha=alpha,
                                 hilo_window=hilo_window, sr_ratio=sr_ratio, local_window=local_window,
                                 repeats=repeats, threads=threads, device=device)
    if as_json:
        _echo_json(result)
    else:
        typer.echo(format_attention_bench(result))


@bench_app.command("proxy")
def bench_proxy(space: str = typer.Option("litv2_tiny", help="a shipped space name or a space YAML"),
                n: int = typer.Option(16, help="architectures to sample"),
                seed: int = typer.Option(0, help="sampling, split, initialisation and batch order"),
                data: Optional[str] = typer.Option(None, help="dataset: a folder, cifar10:PATH, cifar100:PATH, "
                                                   "digits (default: the embedded MNIST subset)"),
                resolution: int = typer.Option(32, help="proxy resolution"),
                epochs: Optional[float] = typer.Option(None, help="default proxy budget in epochs (default: "
                                                       "ProxyBudget's)"),
                reference_factor: float = typer.Option(10.0, help="the reference trains this many times longer"),
                reference_seeds: int = typer.Option(1, help="reference runs per architecture (mean accuracy)"),
                val_fraction: Optional[float] = typer.Option(None, help="held-out share where the data has no "
                                                             "split (default: 0.5 embedded, 0.2 folders)"),
                extra_epochs: str = typer.Option("", help="other budgets to compare, comma-separated epochs "
                                                 "(e.g. 0.5,1,4)"),
                workers: int = typer.Option(1, help="processes scoring architectures side by side"),
                threads: int = typer.Option(1, help="torch threads per worker"),
                log: Optional[Path] = typer.Option(None, help="JSONL of finished architectures; resumes from it"),
                as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Rank agreement (Spearman, Kendall) of every accuracy proxy with a 10x longer training, and its cost."""
    try:
        extra = [float(e) for e in extra_epochs.split(",") if e.strip()]
    except ValueError:
        raise HilonasError(f"--extra-epochs={extra_epochs!r} must be comma-separated numbers, e.g. 0.5,1,4") from None
    if resolution < 4:
        raise HilonasError(f"--resolution={resolution} must be >= 4 pixels")
    if epochs is not None and not epochs > 0:
        raise HilonasError(f"--epochs={epochs} must be > 0")
    _quiet_torch()
    import dataclasses

    from hilonas.bench.proxy import format_proxy_bench, run_proxy_bench
    from hilonas.proxy.train import DEFAULT_BUDGET

    budget = DEFAULT_BUDGET if epochs is None else dataclasses.replace(DEFAULT_BUDGET, epochs=epochs)
    report = run_proxy_bench(space, n, seed, data=data, resolution=resolution, budget=budget,
                             reference_factor=reference_factor, extra_epochs=extra, reference_seeds=reference_seeds,
                             val_fraction=val_fraction, workers=workers, threads=threads,
                             log=log, progress=None if as_json else (lambda line: typer.echo(line, err=True)))
    if as_json:
        _echo_json(report)
    else:
        typer.echo(format_proxy_bench(report))


# ---------------------------------------------------------------------------------------------------------- train
@app.command()
def train(config: str = typer.Argument(..., help="variant name or a config YAML (an exported file too)"),
          data: Optional[str] = typer.Option(None, help="dataset: a folder, cifar10:PATH, cifar100:PATH, digits "
                                             "(default: the embedded MNIST subset)"),
          epochs: float = typer.Option(10.0, help="passes over the training split"),
          resolution: int = typer.Option(32, help="training resolution"),
          seed: int = typer.Option(0),
          batch_size: int = typer.Option(64),
          lr: float = typer.Option(2e-3, help="peak AdamW learning rate"),
          threads: int = typer.Option(1, help="torch threads"),
          device: str = typer.Option("cpu", help="cpu or cuda"),
          out: Path = typer.Option(Path("runs/train"), help="folder for weights.safetensors, config.yaml, "
                                   "metrics.json"),
          as_json: bool = typer.Option(False, "--json", help="print the metrics as one JSON object")) -> None:
    """Train one architecture with the proxy trainer and save its weights (safetensors) and config."""
    from hilonas.config import resolve_arch

    arch = resolve_arch(config)
    if not epochs > 0:
        raise HilonasError(f"--epochs={epochs} must be > 0")
    if resolution < 4:
        raise HilonasError(f"--resolution={resolution} must be >= 4 pixels")
    if threads < 1:
        raise HilonasError(f"--threads={threads} must be >= 1")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise HilonasError(f"--device={device!r} is unknown: use cpu or cuda")
    if out.exists() and not out.is_dir():
        raise HilonasError(f"--out {out} is a file: give a folder")
    _quiet_torch()
    import dataclasses

    from hilonas.proxy.checkpoint import save_trained
    from hilonas.proxy.data import load_dataset
    from hilonas.proxy.train import DEFAULT_BUDGET, adapt_arch, train_proxy

    budget = dataclasses.replace(DEFAULT_BUDGET, epochs=epochs, batch_size=batch_size, lr=lr)
    dataset = load_dataset(data, resolution=resolution, seed=seed)
    result = train_proxy(arch, dataset, budget, seed=seed, threads=threads, device=device, return_model=True)
    if result.failed:
        raise HilonasError(f"training failed: {result.reason}; try a lower --lr")
    metrics = {"config": config, "data": dataset.name, **result.to_dict()}
    save_trained(out, adapt_arch(arch, dataset), result.state_dict, metrics)
    if as_json:
        _echo_json({**metrics, "out": str(out)})
        return
    typer.echo(f"{adapt_arch(arch, dataset).describe()} on {dataset.describe()}")
    typer.echo(f"  held-out top-1 {result.accuracy:.4f}, {result.epochs:g} epochs ({result.steps} steps) in "
               f"{result.seconds:.1f} s, {result.images_per_s:.0f} images/s")
    typer.echo(f"  saved {out}/weights.safetensors and {out}/config.yaml")


@bench_app.command("search")
def bench_search(space: str = typer.Option("litv2_tiny", help="a shipped space name or a space YAML"),
                 trials: int = typer.Option(8, help="trials per run (one run with 1 worker, one with 2)"),
                 steps: int = typer.Option(60, help="proxy training steps per trial"),
                 seed: int = typer.Option(0),
                 tables: str = typer.Option("latency_tables", help="latency tables folder"),
                 as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Driver overhead (share of the trial loop not spent evaluating) with 1 and 2 workers, and the speed-up."""
    if trials < 2:
        raise HilonasError(f"--trials={trials} must be >= 2 so that 2 workers have something to share")
    if steps < 1:
        raise HilonasError(f"--steps={steps} must be >= 1")
    _quiet_torch()
    from hilonas.bench.search import format_search_bench, run_search_bench

    result = run_search_bench(space, trials, steps, seed, tables_dir=tables)
    if as_json:
        _echo_json({k: result[k] for k in ("overhead_share_1", "overhead_share_2", "speedup_2_vs_1")} | result)
    else:
        typer.echo(format_search_bench(result))


# --------------------------------------------------------------------------------------------------------- search
def _budget_options(epochs: Optional[float], steps: Optional[int], batch_size: Optional[int]) -> dict:
    budget: dict = {}
    if epochs is not None:
        budget["epochs"] = epochs
    if steps is not None:
        budget["steps"] = steps
    if batch_size is not None:
        budget["batch_size"] = batch_size
    return budget


@app.command()
def search(space: str = typer.Option("litv2_tiny", help="a shipped space name or a space YAML"),
           target: str = typer.Option("cpu", help="hardware the latency is for: cpu or cuda"),
           data: Optional[str] = typer.Option(None, help="dataset: default (embedded), a folder, cifar10:PATH"),
           trials: int = typer.Option(16, help="finished trials wanted in the study (a resume continues up to it)"),
           workers: int = typer.Option(2, help="trials evaluated at once (one CPU and one thread each)"),
           study: Optional[str] = typer.Option(None, help="study name (default: SPACE-TARGET); runs/<study>/"),
           storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default sqlite:///runs/<study>/study.db)"),
           sampler: str = typer.Option("nsga2", help="nsga2, tpe or random"),
           objective: str = typer.Option("latency", help="second objective: latency (min) or throughput (max)"),
           max_latency_ms: Optional[float] = typer.Option(None, help="latency limit (an Optuna constraint)"),
           epochs: Optional[float] = typer.Option(None, help="proxy budget in epochs (default: the proxy's)"),
           steps: Optional[int] = typer.Option(None, help="proxy budget in optimizer steps (overrides --epochs)"),
           batch_size: Optional[int] = typer.Option(None, help="proxy training batch size"),
           resolution: int = typer.Option(32, help="proxy training resolution (latency uses the space's img_size)"),
           seed: int = typer.Option(0, help="sampler and training seed"),
           executor: str = typer.Option("ray", help="ray (default) or local (in-process, for debugging)"),
           ray_address: Optional[str] = typer.Option(None, help="join this Ray cluster instead of starting one"),
           tables: str = typer.Option("latency_tables", help="latency tables folder"),
           runs: str = typer.Option("runs", help="folder of studies"),
           resume: bool = typer.Option(False, "--resume", help="require the study to exist already"),
           no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
           as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object")) -> None:
    """Multi-objective search: accuracy (proxy training) vs latency (from the table), trials in parallel on Ray."""
    _quiet_torch()
    import dataclasses

    from hilonas.search.driver import SearchSettings, run_search

    settings = SearchSettings(space=space, target=target, data=data, trials=trials, workers=workers, study=study,
                              storage=storage, sampler=sampler, objective=objective, max_latency_ms=max_latency_ms,
                              budget=_budget_options(epochs, steps, batch_size), resolution=resolution, seed=seed,
                              executor=executor, ray_address=ray_address, tables_dir=tables, runs_dir=runs,
                              resume=resume)
    try:
        summary = run_search(settings, progress=not no_progress and not as_json)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished trials are kept, running ones marked failed; run the same command to "
                   "continue", err=True)
        raise typer.Exit(130)
    if as_json:
        _echo_json(dataclasses.asdict(summary))
        return
    typer.echo(f"study {summary.study}: {summary.finished} finished trials ({summary.new_trials} new, "
               f"{summary.failed} failed this run), front of {summary.front_size}, {summary.wall_seconds:.0f} s")
    typer.echo(f"  storage: {summary.storage}")
    typer.echo(f"  latency table: {summary.table}")
    typer.echo(f"  next: hilonas pareto {summary.study}   |   hilonas export {summary.study} --trial N")


@app.command()
def studies(runs: str = typer.Option("runs", help="folder of studies"),
            as_json: bool = typer.Option(False, "--json", help="print a JSON list")) -> None:
    """The studies under runs/, with their trial counts."""
    from hilonas.search.study import list_studies

    rows = list_studies(runs) if Path(runs).is_dir() else []
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        typer.echo(f"no studies in {runs}/ (start one with hilonas search)")
    for r in rows:
        s = r["settings"]
        typer.echo(f"{r['study']:24s} {r.get('complete', 0):>4} complete {r.get('fail', 0):>3} failed  "
                   f"space={s.get('space')} target={s.get('target')} objective={s.get('objective')} "
                   f"limit={s.get('max_latency_ms')}  {r['storage']}")


# ------------------------------------------------------------------------------------------ results/pareto/export
def _results(study_names: list[str], storage: Optional[str], runs: str, with_landmarks: bool = False):
    from hilonas.analysis.results import results_frame
    from hilonas.search.study import landmark_records, load_existing, trial_records

    records, marks = [], []
    for name in study_names:
        study = load_existing(name, storage, runs)
        records += trial_records(study)
        marks += landmark_records(study) if with_landmarks else []
    return results_frame(records), (results_frame(marks) if marks else None)


@app.command()
def results(study: str = typer.Argument(..., help="study name (runs/<study>/study.db)"),
            storage: Optional[str] = typer.Option(None, help="Optuna storage URL when not the default file"),
            runs: str = typer.Option("runs", help="folder of studies"),
            csv: Optional[Path] = typer.Option(None, help="write every trial to this CSV file"),
            parquet: Optional[Path] = typer.Option(None, help="write every trial to this Parquet file"),
            front_only: bool = typer.Option(False, "--front", help="print only the Pareto front")) -> None:
    """The trials of a study as a table (pandas): objectives, feasibility, front membership, architecture."""
    df, _ = _results([study], storage, runs)
    for path, kind in ((csv, "csv"), (parquet, "parquet")):
        if path is None:
            continue
        if not path.parent.is_dir():
            raise HilonasError(f"--{kind} {path}: folder {path.parent} does not exist: create it first")
        out = df.drop(columns=["arch"]).copy()
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            out.to_csv(tmp, index=False) if kind == "csv" else out.to_parquet(tmp, index=False)
        except ImportError:
            tmp.unlink(missing_ok=True)
            raise HilonasError("--parquet needs pyarrow (pip install pyarrow); use --csv instead") from None
        tmp.replace(path)
        typer.echo(f"wrote {len(out)} trials to {path}")
    view = df[df["on_front"]] if front_only else df
    cols = ["number", "state", "accuracy", "latency_ms", "feasible", "on_front", "flops", "params", "arch_text"]
    import pandas as pd

    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_colwidth", 90):
        typer.echo(view[cols].to_string(index=False))


@app.command()
def pareto(studies_: list[str] = typer.Argument(..., metavar="STUDY...", help="one or more study names"),
           storage: Optional[str] = typer.Option(None, help="Optuna storage URL when not the default file"),
           runs: str = typer.Option("runs", help="folder of studies"),
           out: Optional[Path] = typer.Option(None, help="HTML page (default runs/<first study>/pareto.html)"),
           png: Optional[Path] = typer.Option(None, help="also a static PNG (needs Chromium for kaleido)"),
           x: str = typer.Option("latency", help="x axis: latency or throughput"),
           landmarks: bool = typer.Option(False, "--landmarks",
                                          help="evaluate the space's reference architectures into the study first"),
           tables: str = typer.Option("latency_tables", help="latency tables folder (for --landmarks)")) -> None:
    """The accuracy-vs-latency Pareto page (plotly, works offline): fronts of several studies side by side."""
    if x not in ("latency", "throughput"):
        raise HilonasError(f"--x={x!r} is unknown: use latency or throughput")
    if landmarks:
        _quiet_torch()
        from hilonas.search.landmarks import evaluate_landmarks
        from hilonas.search.study import load_existing

        for name in studies_:
            marks = evaluate_landmarks(load_existing(name, storage, runs), tables_dir=tables)
            typer.echo(f"{name}: scored {len(marks)} reference architectures")
    df, marks_df = _results(studies_, storage, runs, with_landmarks=True)
    from hilonas.analysis.plots import pareto_figure, write_html, write_png

    fig = pareto_figure(df, marks_df, x=x)
    page = write_html(fig, out or Path(runs) / studies_[0] / "pareto.html")
    typer.echo(f"wrote {page} ({int(df['on_front'].sum())} front members of {len(df)} trials"
               f"{f', {len(marks_df)} landmarks' if marks_df is not None else ''}); open it in a browser")
    if png is not None:
        typer.echo(f"wrote {write_png(fig, png)}")


@app.command()
def export(study: str = typer.Argument(..., help="study name"),
           trial: Optional[int] = typer.Option(None, help="export this trial number"),
           max_latency_ms: Optional[float] = typer.Option(None, help="the most accurate trial at most this slow"),
           min_accuracy: Optional[float] = typer.Option(None, help="the fastest trial at least this accurate"),
           knee: bool = typer.Option(False, "--knee", help="the front's knee: the best accuracy/latency trade-off"),
           out: Optional[Path] = typer.Option(None, help="new folder (default runs/<study>/export-trial<N>)"),
           weights: bool = typer.Option(False, "--weights", help="train with the proxy trainer and save weights"),
           epochs: Optional[float] = typer.Option(None, help="epochs for --weights (default: the study's budget)"),
           onnx: bool = typer.Option(False, "--onnx", help="also write model.onnx, checked with onnxruntime"),
           no_measure: bool = typer.Option(False, "--no-measure", help="skip re-measuring the latency"),
           force: bool = typer.Option(False, "--force", help="replace --out if it exists (once the export is done)"),
           tables: str = typer.Option("latency_tables", help="latency tables folder (for the re-measurement)"),
           storage: Optional[str] = typer.Option(None, help="Optuna storage URL when not the default file"),
           runs: str = typer.Option("runs", help="folder of studies"),
           as_json: bool = typer.Option(False, "--json", help="print the provenance as one JSON object")) -> None:
    """Export a trial's architecture (--trial, --max-latency-ms, --min-accuracy or --knee) as YAML with provenance (buildable by hilonas.create_model and timm)."""
    from hilonas.export import WARN_ERROR, export_trial, select_trial
    from hilonas.search.study import load_existing, study_settings

    opened = load_existing(study, storage, runs)
    df, _ = _results([study], storage, runs)
    row = select_trial(df, trial=trial, max_latency_ms=max_latency_ms, min_accuracy=min_accuracy, knee=knee)
    target = out or Path(runs) / study / f"export-trial{int(row['number'])}"
    _quiet_torch()
    prov = export_trial(row, study_settings(opened), target, weights=weights, onnx=onnx, measure=not no_measure,
                        epochs=epochs, force=force, tables_dir=tables)
    m = prov.get("measurement", {})
    if m.get("measured"):
        m["error"] = m["measured_latency_ms"] / prov["predicted_latency_ms"] - 1.0
    if as_json:
        _echo_json({"out": str(target), **prov})
        return
    typer.echo(f"exported trial {prov['trial']} of {study} to {target}/arch.yaml")
    typer.echo(f"  {row['arch_text']}")
    typer.echo(f"  proxy accuracy {prov['proxy_accuracy']:.4f}, predicted latency {prov['predicted_latency_ms']:.2f} ms, "
               f"FLOPs {prov['flops'] / 1e9:.3f} G, params {prov['params'] / 1e6:.2f} M")
    if m.get("measured"):
        typer.echo(f"  re-measured here: {m['measured_latency_ms']:.2f} ms ({m['error']:+.1%} vs predicted)")
        if abs(m["error"]) > WARN_ERROR:
            typer.echo(f"warning: measured latency differs from the prediction by {m['error']:+.1%} "
                       f"(more than {WARN_ERROR:.0%}); check `hilonas latency validate`", err=True)
    elif m:
        typer.echo(f"  not re-measured: {m['reason']}")
    if "onnx" in prov:
        typer.echo(f"  model.onnx: max abs diff vs PyTorch {prov['onnx']['max_abs_diff']:.2e}")
    if "weights" in prov:
        typer.echo(f"  weights.safetensors: {prov['weights']['accuracy']:.4f} held-out top-1 on {prov['weights']['data']}")
    typer.echo(f"  build it: hilonas.create_model('{target}/arch.yaml') or "
               f"timm.create_model('hilonas_arch', config='{target}/arch.yaml')")


# -------------------------------------------------------------------------------------------------------- latency
def _fingerprint(target: str, threads: int, batch: int, resolution: Optional[int], space: Optional[str] = None):
    """(fingerprint, loaded space or None): the resolution defaults to the space's img_size (224 without one)."""
    sp = None
    if space is not None:
        from hilonas.spaces import SearchSpace

        sp = SearchSpace.load(space)
    if resolution is None:
        resolution = int(sp.fixed.get("img_size", 224)) if sp is not None else 224
    from hilonas.latency.fingerprint import current_fingerprint

    return current_fingerprint(target, threads=threads, batch=batch, resolution=resolution), sp


@app.command()
def hardware(target: str = typer.Option("cpu", help="cpu or cuda"),
             threads: int = typer.Option(1, help="CPU threads the latency is measured with"),
             batch: int = typer.Option(1, help="images per forward"),
             resolution: int = typer.Option(224, help="input image side in pixels"),
             tables: str = typer.Option("latency_tables", help="folder of latency tables"),
             as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """This machine's hardware fingerprint and the latency tables that match it."""
    _quiet_torch()
    from hilonas.latency.table import LatencyTable, list_tables

    fp, _ = _fingerprint(target, threads, batch, resolution)
    matching, others = [], []
    for path, tfp, problem in list_tables(tables):
        if tfp is None:
            others.append({"path": str(path), "problem": problem})
        elif tfp.id == fp.id:
            t = LatencyTable.load(path, expect=fp)
            matching.append({"path": str(path), "blocks": len(t.entries),
                             "calibration": (t.calibration or {}).get("method"), "statistic": t.statistic})
        else:
            others.append({"path": str(path), "differs_in": tfp.diff(fp)})
    if as_json:
        _echo_json({"fingerprint_id": fp.id, "fingerprint": fp.to_dict(), "tables": matching, "other_tables": others})
        return
    typer.echo(f"fingerprint {fp.id}")
    for name, value in fp.to_dict().items():
        typer.echo(f"  {name:14s} {value}")
    typer.echo(f"tables in {tables}/ for this fingerprint: {len(matching) or 'none'}")
    for t in matching:
        typer.echo(f"  {t['path']}: {t['blocks']} blocks, calibration {t['calibration'] or 'none'}")
    if not matching:
        typer.echo(f"  build one: hilonas latency build --space SPACE --target {target} --threads {threads} "
                   f"--batch {batch} --resolution {resolution}")
    for o in others:
        why = f"differs in {', '.join(o['differs_in'])}" if "differs_in" in o else o["problem"]
        typer.echo(f"  (other: {o['path']}: {why})")


@latency_app.command("build")
def latency_build(space: str = typer.Option("litv2_tiny", help="a shipped space name or a space YAML"),
                  target: str = typer.Option("cpu", help="cpu or cuda"),
                  threads: int = typer.Option(1, help="CPU threads"),
                  batch: int = typer.Option(1, help="images per forward"),
                  resolution: Optional[int] = typer.Option(None, help="image side (default: the space's img_size)"),
                  tables: str = typer.Option("latency_tables", help="folder of latency tables"),
                  force: bool = typer.Option(False, "--force", help="use a table whose fingerprint differs"),
                  recalibrate: bool = typer.Option(False, "--recalibrate", help="refit the calibration"),
                  calib_networks: int = typer.Option(16, help="whole networks measured for the calibration"),
                  repeats: Optional[int] = typer.Option(None, help="timed calls per pass (default 12)"),
                  rounds: Optional[int] = typer.Option(None, help="passes over all blocks (default 20)"),
                  as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Measure every block of a space on this machine into its latency table, then fit the calibration."""
    if calib_networks < 0:
        raise HilonasError(f"--calib-networks={calib_networks} must be >= 0")
    fp, sp = _fingerprint(target, threads, batch, resolution, space)
    _quiet_torch()
    from hilonas.latency.build import build_table

    table = build_table(sp, fp, tables_dir=tables, calib_networks=calib_networks, progress=not as_json, force=force,
                        recalibrate=recalibrate, repeats=repeats, rounds=rounds)
    stats = table.build_stats
    if as_json:
        _echo_json({"fingerprint_id": fp.id, **stats})
        return
    typer.echo(f"{stats['blocks_total']} blocks ({stats['blocks_measured']} measured now), "
               f"{stats['networks_measured']} calibration networks, in {stats['seconds']:.1f} s")
    cal = table.calibration or {}
    if cal:
        typer.echo(f"calibration: {cal.get('method')} (scale {cal.get('scale', 1):.3f}, intercept "
                   f"{cal.get('intercept_ms', 0):.3f} ms, leave-one-out error {cal.get('loo_mape', {})})")
    typer.echo(f"table: {table.path}")


@latency_app.command("validate")
def latency_validate(space: str = typer.Option("litv2_tiny", help="a shipped space name or a space YAML"),
                     n: int = typer.Option(50, "--n", help="random networks to measure"),
                     seed: int = typer.Option(0, help="sampling seed"),
                     target: str = typer.Option("cpu", help="cpu or cuda"),
                     threads: int = typer.Option(1, help="CPU threads"),
                     batch: int = typer.Option(1, help="images per forward"),
                     resolution: Optional[int] = typer.Option(None, help="image side (default: the space's img_size)"),
                     tables: str = typer.Option("latency_tables", help="folder of latency tables"),
                     table: Optional[str] = typer.Option(None, help="a table file (default: this machine's)"),
                     force: bool = typer.Option(False, "--force", help="use a table whose fingerprint differs"),
                     as_json: bool = typer.Option(False, "--json", help="print the figures as one JSON object"),
                     csv: Optional[str] = typer.Option(None, help="write the per-network rows to this CSV")) -> None:
    """Measure N random networks whole and report how far the table's predictions are off."""
    fp, sp = _fingerprint(target, threads, batch, resolution, space)
    _quiet_torch()
    from hilonas.latency.build import validate_table
    from hilonas.latency.table import LatencyTable

    loaded = LatencyTable.load(table, expect=fp, force=force) if table else LatencyTable.open(fp, tables, force=force)
    result = validate_table(sp, fp, n=n, seed=seed, table=loaded, progress=not as_json)
    if csv:
        import csv as csv_mod

        path = Path(csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv_mod.DictWriter(fh, fieldnames=list(result["rows"][0]))
            writer.writeheader()
            writer.writerows(result["rows"])
    figures = {k: result[k] for k in ("n", "within_5", "within_10", "mape", "max_ape", "spearman", "bias", "drift")}
    if as_json:
        _echo_json({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()})
        return
    typer.echo(f"{n} random networks of {sp.name} (seed {seed}) measured whole against {loaded.path}:")
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
    if csv:
        typer.echo(f"  rows: {csv}")


@bench_app.command("latency")
def bench_latency(space: str = typer.Option("litv2_tiny", help="a shipped space name or a space YAML"),
                  target: str = typer.Option("cpu", help="cpu or cuda"),
                  threads: int = typer.Option(1, help="CPU threads"),
                  batch: int = typer.Option(1, help="images per forward"),
                  resolution: Optional[int] = typer.Option(None, help="image side (default: the space's img_size)"),
                  tables: str = typer.Option("latency_tables", help="folder of latency tables"),
                  archs: int = typer.Option(2000, help="architectures to predict"),
                  measure: int = typer.Option(3, help="networks to measure whole for the ratio"),
                  as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Microseconds per latency prediction from a loaded table, against measuring the network."""
    if archs < 1 or measure < 1:
        raise HilonasError(f"--archs={archs} and --measure={measure} must be >= 1")
    _fingerprint(target, threads, batch, resolution, space)  # checks the inputs before torch-heavy work
    _quiet_torch()
    from hilonas.bench.latency import format_latency_bench, run_latency_bench

    result = run_latency_bench(space, target=target, threads=threads, batch=batch, resolution=resolution,
                               tables_dir=tables, archs=archs, measure=measure)
    if as_json:
        _echo_json(result)
    else:
        typer.echo(format_latency_bench(result))


# ----------------------------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of the console script: user errors -> one line on stderr and exit status 2."""
    try:
        app(args=argv, standalone_mode=True)
    except HilonasError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
