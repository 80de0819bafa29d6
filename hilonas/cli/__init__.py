"""The ``hilonas`` command, one module per command group. Nothing else in hilonas imports this package.

Each command parses its options, calls one library function and formats what it returns; checking values is the
library's job. Heavy imports (torch, optuna, ray, plotly) happen inside the commands that need them, so
``hilonas --help`` is instant. Every user mistake surfaces as a :class:`hilonas.errors.HilonasError`: :func:`main`
prints it as one line on stderr and exits with status 2.
"""
from __future__ import annotations

import functools
import re
import sys
from typing import Any, Optional

import typer

from hilonas.cli import bench, latency, models, prune, results, search, spaces
from hilonas.errors import HilonasError

__all__ = ["app", "main", "ERROR_EXIT_CODE"]

ERROR_EXIT_CODE = 2  # what a user mistake exits with (typer's own usage errors use 2 as well)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Hardware-aware architecture search for vision transformers built on HiLo attention (LITv2).")
# Top-level commands, in the order a user meets them.
app.command()(latency.hardware)
app.command()(search.search)
app.command()(search.studies)
app.command()(results.results)
app.command()(results.pareto)
app.command()(results.export)
app.command()(models.flops)
app.command()(models.train)
app.command()(prune.prune)
app.add_typer(spaces.app, name="space")
app.add_typer(latency.app, name="latency")
app.add_typer(bench.app, name="bench")


@functools.cache
def _command() -> Any:
    """The click command behind ``app``, built once per process (typer rebuilds it on every call: ~16 ms)."""
    return typer.main.get_command(app)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of the console script (and of tests, with ``argv``): runs the command, then exits.

    A HilonasError becomes ``error: <message>`` on one line of stderr and exit status 2; anything else escaping is a
    bug and keeps its traceback.
    """
    try:
        _command().main(args=argv, prog_name="hilonas", standalone_mode=True)
    except HilonasError as err:
        _fail(str(err))
    except (MemoryError, RuntimeError) as err:
        # Running out of memory is the size the user asked for (dims, img_size, batch) meeting this machine, not a
        # bug: one line. Any other RuntimeError is a bug and keeps its traceback.
        if not _out_of_memory(err):
            raise
        what = re.search(r"tried to allocate ([\d.]+ ?[KMGT]?i?B|\d+ bytes)", str(err))
        _fail(f"out of memory{f' (tried to allocate {what.group(1)})' if what else ''}: the network, image size or "
              "batch is too large for this machine: use smaller dims, depths, --img-size/--resolution or --batch")


def _out_of_memory(err: BaseException) -> bool:
    """True for torch's and Python's ways of saying an allocation failed (CPU and CUDA)."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _fail(message: str) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)  # one line, whatever the message holds
    sys.exit(ERROR_EXIT_CODE)
