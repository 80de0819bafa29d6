"""``hilonas bench attention|proxy|search|latency``: both sides timed in one run, ratios printed."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from hilonas.cli._common import (
    BATCH_MAX,
    COUNT_MAX,
    DEFAULT_PROXY_RESOLUTION,
    MAX_EPOCHS,
    batch_option,
    count_option,
    data_option,
    dtype_option,
    echo_json,
    json_option,
    number_option,
    output_file_option,
    proxy_data_option,
    quiet_torch,
    resolution_option,
    runtime_option,
    seed_option,
    space_option,
    tables_option,
    target_option,
    threads_option,
)
from hilonas.mixers import MIXERS, attention_mixers
from hilonas.proxy import REFERENCE_FACTOR

app = typer.Typer(no_args_is_help=True, help="Benchmarks: both sides timed in one run, ratios printed.")

# The candidates are the registry's attending mixers (hilonas.bench.attention.bench_mixers), listed from it.
_ATTENTION_EPILOG = "Mixers compared: " + "; ".join(f"{m}: {MIXERS[m].description}" for m in attention_mixers())


def _progress_line(line: str) -> None:
    typer.echo(line, err=True)


def _emit(result: Any, as_json: bool, fmt: Callable[[Any], str]) -> None:
    """``result`` as one JSON object, or formatted for reading."""
    if as_json:
        echo_json(result)
    else:
        typer.echo(fmt(result))


@app.command("attention", epilog=_ATTENTION_EPILOG)
def bench_attention(batch: int = count_option(64, help="images per forward", maximum=BATCH_MAX),
                    tokens: int = count_option(14, help="token map side (tokens x tokens)"),
                    dim: int = count_option(768, help="channel width"),
                    heads: int = count_option(12, help="attention heads"),
                    alpha: float = number_option(0.9, help="HiLo alpha", strictly=False, maximum=1.0),
                    hilo_window: int = count_option(2, help="HiLo window size"),
                    sr_ratio: int = count_option(2, help="SRA reduction ratio"),
                    local_window: int = count_option(7, help="local window attention size"),
                    repeats: int = count_option(10, help="interleaved timing rounds"),
                    threads: int = threads_option("CPU threads", default=2),
                    device: str = typer.Option("cpu", help="cpu or cuda"),
                    dtypes: str = typer.Option("float32", help="comma-separated dtypes to time, each with its GEMM "
                                               "roofline: float32, bfloat16, float16 (CUDA only)"),
                    as_json: bool = json_option()) -> None:
    """The HiLo paper's single-layer comparison: every mixer, fused and explicit, in each dtype: img/s, ratios to
    HiLo-fused and the share of the same run's GEMM throughput (roofline)."""
    quiet_torch()
    import warnings

    from hilonas.bench.attention import format_attention_bench, parse_dtypes, run_attention_bench

    with warnings.catch_warnings(record=True) as caught:  # the bench's own warnings as one stderr line each
        warnings.simplefilter("always", RuntimeWarning)
        result = run_attention_bench(batch=batch, tokens=tokens, dim=dim, heads=heads, alpha=alpha,
                                     hilo_window=hilo_window, sr_ratio=sr_ratio, local_window=local_window,
                                     repeats=repeats, threads=threads, device=device, dtypes=parse_dtypes(dtypes))
    for message in dict.fromkeys(str(w.message) for w in caught):
        typer.echo(f"warning: {message}", err=True)
    _emit(result, as_json, format_attention_bench)


def _extra_epochs(text: str) -> list[float]:
    from hilonas.errors import HilonasError

    try:
        epochs = [float(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise HilonasError(f"--extra-epochs={text!r} must be comma-separated numbers, e.g. 0.5,1,4") from None
    for e in epochs:
        if not 0 < e <= MAX_EPOCHS:  # also nan
            raise HilonasError(f"--extra-epochs={text!r}: {e:g} is out of range: give epochs > 0 and <= "
                               f"{MAX_EPOCHS:g}, e.g. 0.5,1,4")
    return epochs


@app.command("proxy")
def bench_proxy(space: str = space_option(),
                n: int = count_option(16, help="architectures to sample", maximum=10_000),
                seed: int = seed_option("sampling, split, initialisation and batch order"),
                data: Optional[str] = data_option(),
                proxy_data: Optional[str] = proxy_data_option(),
                resolution: int = count_option(DEFAULT_PROXY_RESOLUTION, help="proxy resolution"),
                epochs: Optional[float] = number_option(None, help="default proxy budget in epochs (default: "
                                                        "ProxyBudget's)", maximum=MAX_EPOCHS),
                reference_factor: Optional[float] = number_option(None, help="the reference trains this many times "
                                                                  f"longer (default {REFERENCE_FACTOR:g}: the "
                                                                  "promotion budget)"),
                reference_seeds: int = count_option(1, help="reference runs per architecture (mean accuracy)"),
                val_fraction: Optional[float] = number_option(None, help="held-out share where the data has no "
                                                              "split (default: 0.5 embedded, 0.2 folders)",
                                                              maximum=1.0),
                extra_epochs: str = typer.Option("", help="other budgets to compare, comma-separated epochs "
                                                 "(e.g. 0.5,1,4)"),
                workers: int = count_option(1, help="processes scoring architectures side by side"),
                threads: int = threads_option("torch threads per worker"),
                log: Optional[Path] = output_file_option("JSONL of finished architectures; resumes from it"),
                as_json: bool = json_option()) -> None:
    """Rank agreement (Spearman, Kendall) of every accuracy proxy with a 30x longer training, and its cost."""
    extra = _extra_epochs(extra_epochs)
    quiet_torch()
    import dataclasses

    from hilonas.bench.proxy import format_proxy_bench, run_proxy_bench
    from hilonas.proxy.train import DEFAULT_BUDGET

    budget = DEFAULT_BUDGET if epochs is None else dataclasses.replace(DEFAULT_BUDGET, epochs=epochs)
    report = run_proxy_bench(space, n, seed, data=data, proxy_data=proxy_data, resolution=resolution, budget=budget,
                             reference_factor=reference_factor, extra_epochs=extra, reference_seeds=reference_seeds,
                             val_fraction=val_fraction, workers=workers, threads=threads,
                             log=log, progress=None if as_json else _progress_line)
    _emit(report, as_json, format_proxy_bench)


@app.command("search")
def bench_search(space: str = space_option(),
                 trials: int = count_option(8, help="trials per run (one run with 1 worker, one with 2)"),
                 steps: int = count_option(60, help="proxy training steps per trial"),
                 seed: int = seed_option(),
                 tables: str = tables_option("latency tables folder"),
                 as_json: bool = json_option()) -> None:
    """Driver overhead (share of the trial loop not spent evaluating) with 1 and 2 workers, and the speed-up."""
    quiet_torch()
    from hilonas.bench.search import format_search_bench, run_search_bench

    result = run_search_bench(space, trials, steps, seed, tables_dir=tables)
    if as_json:
        echo_json({k: result[k] for k in ("overhead_share_1", "overhead_share_2", "speedup_2_vs_1")} | result)
    else:
        typer.echo(format_search_bench(result))


@app.command("latency")
def bench_latency(space: str = space_option(),
                  target: str = target_option(),
                  dtype: str = dtype_option(),
                  runtime: str = runtime_option(),
                  threads: int = threads_option(),
                  batch: int = batch_option(),
                  resolution: Optional[int] = resolution_option(),
                  tables: str = tables_option(),
                  archs: int = count_option(2000, help="architectures to predict", maximum=100 * COUNT_MAX),
                  measure: int = count_option(3, help="networks to measure whole for the ratio"),
                  as_json: bool = json_option()) -> None:
    """Microseconds per latency prediction from a loaded table, against measuring the network."""
    quiet_torch()
    from hilonas.bench.latency import format_latency_bench, run_latency_bench

    result = run_latency_bench(space, target=target, threads=threads, batch=batch, resolution=resolution,
                               tables_dir=tables, archs=archs, measure=measure, dtype=dtype, runtime=runtime)
    _emit(result, as_json, format_latency_bench)
