"""What the command modules share: default values, common options, JSON output, quieting torch's warnings.

No heavy import here (torch, optuna, ray, plotly): ``hilonas --help`` imports every command module.
"""
from __future__ import annotations

import json
import warnings
from typing import Any

import typer

from hilonas.io import DEFAULT_RUNS_DIR, DEFAULT_TABLES_DIR

__all__ = ["DEFAULT_SPACE", "DEFAULT_TARGET", "DEFAULT_TRIALS", "DEFAULT_WORKERS", "DEFAULT_RESOLUTION",
           "DEFAULT_PROXY_RESOLUTION", "DEFAULT_TABLES_DIR", "DEFAULT_RUNS_DIR", "echo_json", "quiet_torch",
           "json_option", "tables_option", "runs_option", "storage_option", "space_option", "target_option",
           "threads_option", "batch_option", "resolution_option", "data_option"]

DEFAULT_SPACE = "litv2_tiny"  # the CPU-sized shipped space
DEFAULT_TARGET = "cpu"
DEFAULT_TRIALS = 16  # finished trials a search aims for
DEFAULT_WORKERS = 2  # trials evaluated at once
DEFAULT_RESOLUTION = 224  # latency resolution when there is no space to take it from
DEFAULT_PROXY_RESOLUTION = 32  # proxy training resolution


def echo_json(obj: Any) -> None:
    """``obj`` as one line of JSON on stdout."""
    typer.echo(json.dumps(obj, indent=None, sort_keys=False))


def quiet_torch() -> None:
    """Silence torch's FutureWarning/UserWarning chatter before a command imports it."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def json_option(help: str = "print one JSON object") -> Any:
    return typer.Option(False, "--json", help=help)


def tables_option(help: str = "folder of latency tables") -> Any:
    return typer.Option(DEFAULT_TABLES_DIR, help=help)


def runs_option() -> Any:
    return typer.Option(DEFAULT_RUNS_DIR, help="folder of studies")


def storage_option() -> Any:
    return typer.Option(None, help="Optuna storage URL when not the default file")


def space_option() -> Any:
    return typer.Option(DEFAULT_SPACE, help="a shipped space name or a space YAML")


def target_option(help: str = "cpu or cuda") -> Any:
    return typer.Option(DEFAULT_TARGET, help=help)


def threads_option(help: str = "CPU threads") -> Any:
    return typer.Option(1, help=help)


def batch_option() -> Any:
    return typer.Option(1, help="images per forward")


def resolution_option() -> Any:
    return typer.Option(None, help="image side (default: the space's img_size)")


def data_option() -> Any:
    return typer.Option(None, help="dataset: a folder, cifar10:PATH, cifar100:PATH, digits "
                        "(default: the embedded MNIST subset)")



def no_probe_option() -> Any:
    return typer.Option(False, "--no-probe", help="skip the speed probe (a few stored networks re-timed, <= 20 s) "
                        "that scales predictions to this machine's speed today")
