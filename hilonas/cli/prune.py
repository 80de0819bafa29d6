"""``hilonas prune``: global magnitude pruning of an exported network, or structured removal of heads and channels."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hilonas.cli._common import (
    BATCH_MAX,
    MAX_LR,
    count_option,
    echo_json,
    json_option,
    number_option,
    output_folder_option,
    quiet_torch,
    seed_option,
    tables_option,
    threads_option,
)
from hilonas.errors import HilonasError


def _sparsity(value: Optional[float]) -> Optional[float]:
    from hilonas.prune import check_prune_options

    if value is not None:
        check_prune_options(value, "one-shot", 0)
    return value


def _schedule(value: str) -> str:
    from hilonas.prune import SCHEDULES

    if value not in SCHEDULES:
        raise HilonasError(f"--schedule={value!r} is unknown: use one of {', '.join(SCHEDULES)}")
    return value


def prune(export_dir: Path = typer.Argument(..., help="a folder written by `hilonas export --weights` (or "
                                            "`hilonas train`)"),
          sparsity: float = typer.Option(..., help="share of the weights to remove, in [0, 1)", callback=_sparsity),
          schedule: str = typer.Option("one-shot", help="one-shot (prune, then fine-tune) or cubic (sparsity rises "
                                       "over the fine-tuning steps)", callback=_schedule),
          finetune_steps: int = count_option(0, help="fine-tuning steps, the mask re-applied after each", minimum=0),
          structured: bool = typer.Option(False, "--structured", help="remove whole HiLo heads and MLP channels: a "
                                          "smaller architecture, predicted by the latency table and re-measured"),
          min_keep: float = number_option(0.0005, help="share of all prunable weights every layer keeps at least",
                                          strictly=False, maximum=1.0),
          out: Optional[Path] = output_folder_option(None, "new folder (default: EXPORT_DIR-pruned-sNN beside it)"),
          data: Optional[str] = typer.Option(None, help="dataset for accuracy and fine-tuning (default: the one the "
                                             "weights were trained on)"),
          lr: float = number_option(2e-4, help="peak fine-tuning learning rate (AdamW, cosine decay)",
                                    maximum=MAX_LR),
          batch_size: int = count_option(64, help="images per fine-tuning step", maximum=BATCH_MAX),
          seed: int = seed_option("fine-tuning batch order"),
          threads: int = threads_option("torch threads for pruning and fine-tuning"),
          no_measure: bool = typer.Option(False, "--no-measure", help="skip re-measuring the latency"),
          force: bool = typer.Option(False, "--force", help="replace --out if it holds an earlier export"),
          tables: str = tables_option("latency tables folder (for predictions and re-measurement)"),
          as_json: bool = json_option("print the report as one JSON object")) -> None:
    """Prune an exported network (GlobalMP: one global |w| threshold) and fine-tune it; or, with --structured, remove whole heads and MLP channels."""  # noqa: E501
    quiet_torch()
    from hilonas.prune import prune_export

    report = prune_export(export_dir, out, sparsity=sparsity, schedule=schedule, finetune_steps=finetune_steps,
                          structured=structured, min_keep=min_keep, data=data, seed=seed, lr=lr,
                          batch_size=batch_size, threads=threads, measure=not no_measure,
                          tables_dir=tables, force=force)
    if as_json:
        echo_json(report)
        return
    _print(report)


def _print(r: dict) -> None:
    typer.echo(f"{r['method']} pruning of {r['source']} (target {r['sparsity_target']:.3f}, {r['schedule']}, "
               f"{r['finetune_steps']} fine-tuning steps on {r['data']})")
    if r["method"] == "structured":
        typer.echo(f"  architecture  {r['arch_before']}")
        typer.echo(f"             -> {r['arch_after']}")
        typer.echo(f"  params        {r['params_before'] / 1e6:.3f} M -> {r['params_after'] / 1e6:.3f} M; removed "
                   f"{r['sparsity_reached']:.1%} of the conv/linear weights")
    else:
        worst = max(r["layers"], key=lambda row: row["sparsity"])
        floor = "yes" if r["every_layer_keeps_floor"] else "NO"
        typer.echo(f"  sparsity      {r['sparsity_reached']:.4f} of {r['prunable_weights']} conv/linear weights; "
                   f"every layer keeps >= {r['min_keep_weights']} weights: {floor} (sparsest: {worst['layer']} "
                   f"{worst['sparsity']:.3f})")
    tuned = f", after fine-tuning {r['accuracy_after']:.4f}" if r["finetune_steps"] else " (no fine-tuning)"
    typer.echo(f"  accuracy      dense {r['accuracy_dense']:.4f}"
               + (f", pruned {r['accuracy_pruned']:.4f}" if "accuracy_pruned" in r else "")
               + f"{tuned} (held-out split of {r['data']})")
    lat = r["latency"]
    if not lat.get("measured"):
        typer.echo(f"  latency       not measured: {lat.get('reason')}")
    elif r["method"] == "structured":
        typer.echo(f"  latency       {lat['dense_ms']:.3f} ms -> {lat['pruned_ms']:.3f} ms measured "
                   f"({lat['speedup']:.2f}x); predicted {lat['predicted_ms']:.3f} -> {lat['pruned_predicted_ms']:.3f} "
                   f"ms (error {lat['error']:+.1%}; from {lat['blocks_measured']} blocks measured now, "
                   f"{lat['blocks_added']} of them new to the table)")
    else:
        typer.echo(f"  latency       {lat['dense_ms']:.3f} ms re-measured (the dense network); with the real weights, "
                   f"timed in the same passes: dense {lat['dense_weights_ms']:.3f} ms, pruned "
                   f"{lat['pruned_weights_ms']:.3f} ms ({lat['pruned_over_dense']:.3f}x)")
        typer.echo(f"                {lat['note']}")
    typer.echo(f"  wrote {r['out']}/arch.yaml and weights.safetensors")
