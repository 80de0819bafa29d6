"""``hilonas flops`` and ``hilonas train``: one architecture's cost, and training it."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hilonas.cli._common import (
    BATCH_MAX,
    DEFAULT_PROXY_RESOLUTION,
    DEFAULT_RUNS_DIR,
    MAX_EPOCHS,
    MAX_LR,
    count_option,
    data_option,
    dtype_option,
    echo_json,
    json_option,
    number_option,
    output_folder_option,
    quiet_torch,
    runtime_option,
    seed_option,
    threads_option,
)

DEFAULT_TRAIN_EPOCHS = 10.0
DEFAULT_TRAIN_OUT = Path(DEFAULT_RUNS_DIR) / "train"


def flops(config: str = typer.Argument(..., help="variant name (litv2_s, litv2_m, litv2_b) or a config YAML"),
          img_size: Optional[int] = typer.Option(None, help="input resolution (default: the config's img_size)"),
          time_forward: bool = typer.Option(False, "--time", help="also time one forward pass (median of repeats)"),
          threads: int = threads_option("CPU threads for --time"),
          dtype: str = dtype_option("dtype --time runs in: float32 or bfloat16 (float16 is CUDA only)"),
          runtime: str = runtime_option("runtime --time runs in: eager (PyTorch) or onnxruntime (float32)"),
          as_json: bool = json_option()) -> None:
    """Parameters and FLOPs (multiply-accumulates, fvcore) of an architecture, by stage."""
    quiet_torch()
    from hilonas.models.flops import flops_summary

    out = flops_summary(config, img_size, time_forward=time_forward, threads=threads, dtype=dtype, runtime=runtime)
    if as_json:
        echo_json(out)
        return
    typer.echo(f"{config}: {out['arch']}")
    typer.echo(f"  params  {out['params'] / 1e6:8.2f} M")
    typer.echo(f"  FLOPs   {out['flops'] / 1e9:8.3f} G (multiply-accumulates at {out['img_size']}x{out['img_size']})")
    for name, value in out["flops_by_stage"].items():
        typer.echo(f"    {name:12s} {value / 1e9:8.3f} G")
    if time_forward:
        f = out["forward_ms"]
        typer.echo(f"  forward {f['median']:8.2f} ms (batch 1, {f['threads']} thread(s), {f['dtype']} "
                   f"{f['runtime']}, median of {f['runs']} runs, spread {f['spread']:.1%})")


def train(config: str = typer.Argument(..., help="variant name or a config YAML (an exported file too)"),
          data: Optional[str] = data_option(),
          epochs: float = number_option(DEFAULT_TRAIN_EPOCHS, help="passes over the training split",
                                        maximum=MAX_EPOCHS),
          resolution: int = count_option(DEFAULT_PROXY_RESOLUTION, help="training resolution"),
          seed: int = seed_option("initialisation, split and batch order"),
          batch_size: int = count_option(64, help="images per training step", maximum=BATCH_MAX),
          lr: float = number_option(2e-3, help="peak AdamW learning rate", maximum=MAX_LR),
          threads: int = threads_option("torch threads"),
          device: str = typer.Option("cpu", help="cpu or cuda"),
          out: Path = output_folder_option(DEFAULT_TRAIN_OUT, "folder for weights.safetensors, config.yaml, "
                                           "metrics.json"),
          as_json: bool = json_option("print the metrics as one JSON object")) -> None:
    """Train one architecture with the proxy trainer and save its weights (safetensors) and config."""
    quiet_torch()
    from hilonas.proxy.checkpoint import train_to_folder

    metrics = train_to_folder(config, out, data=data, epochs=epochs, resolution=resolution, seed=seed,
                              batch_size=batch_size, lr=lr, threads=threads, device=device)
    arch_text, data_text = metrics.pop("arch"), metrics.pop("data_text")
    if as_json:
        echo_json({**metrics, "out": str(out)})
        return
    typer.echo(f"{arch_text} on {data_text}")
    typer.echo(f"  held-out top-1 {metrics['accuracy']:.4f}, {metrics['epochs']:g} epochs ({metrics['steps']} steps) "
               f"in {metrics['seconds']:.1f} s, {metrics['images_per_s']:.0f} images/s")
    typer.echo(f"  saved {out}/weights.safetensors and {out}/config.yaml")
