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
