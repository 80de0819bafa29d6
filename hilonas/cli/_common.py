"""What the command modules share: default values, common options, JSON output, quieting torch's warnings.

No heavy import here (torch, optuna, ray, plotly): ``hilonas --help`` imports every command module.
"""
from __future__ import annotations

import json
import math
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from hilonas.errors import HilonasError
from hilonas.io import DEFAULT_RUNS_DIR, DEFAULT_TABLES_DIR

__all__ = ["DEFAULT_SPACE", "DEFAULT_TARGET", "DEFAULT_TRIALS", "DEFAULT_WORKERS", "DEFAULT_RESOLUTION",
           "DEFAULT_PROXY_RESOLUTION", "DEFAULT_TABLES_DIR", "DEFAULT_RUNS_DIR", "echo_json", "quiet_torch",
           "json_option", "tables_option", "runs_option", "storage_option", "space_option", "target_option",
           "dtype_option", "runtime_option", "threads_option", "batch_option", "resolution_option", "data_option",
           "seed_option", "count_option", "number_option", "output_file_option", "output_folder_option", "SEED_LIMIT",
           "MAX_LR", "MAX_EPOCHS", "max_threads"]

DEFAULT_SPACE = "litv2_tiny"  # the CPU-sized shipped space
DEFAULT_TARGET = "cpu"
DEFAULT_TRIALS = 16  # finished trials a search aims for
DEFAULT_WORKERS = 2  # trials evaluated at once
DEFAULT_RESOLUTION = 224  # latency resolution when there is no space to take it from
DEFAULT_PROXY_RESOLUTION = 32  # proxy training resolution
SEED_LIMIT = 2**32  # seeds are in [0, 2**32): what numpy, Python's random and Optuna's samplers all accept
MAX_LR = 10.0  # a learning rate above this only diverges; far above it (1e300) overflows torch's float32 tensors
MAX_EPOCHS = 100_000.0  # beyond any real budget; 1e300 epochs overflowed the step count or trained forever


def echo_json(obj: Any) -> None:
    """``obj`` as one line of JSON on stdout."""
    typer.echo(json.dumps(obj, indent=None, sort_keys=False))


def quiet_torch() -> None:
    """Silence torch's FutureWarning/UserWarning chatter before a command imports it."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


# ------------------------------------------------------------------------------------------ checked options
# Typer callbacks run while the command line is parsed, before the command's body: a bad value is refused with one
# HilonasError line (main prints it, exit 2) before anything is loaded, started or written.
def _flag(param: typer.CallbackParam) -> str:
    return max(param.opts, key=len) if param.opts else f"--{param.name}"


def max_threads() -> int:
    """The most threads a command may ask for: this machine's logical CPUs."""
    return os.cpu_count() or 1


def _int_range(low: int, high: Callable[[], int] | None, fix: str, why: str = "") -> Callable:
    """A callback refusing an integer outside [low, high()] (None: the option was not given, and passes)."""

    def check(param: typer.CallbackParam, value: Optional[int]) -> Optional[int]:
        top = high() if high is not None else None
        if value is not None and (value < low or (top is not None and value > top)):
            span = f"from {low} to {top}" if top is not None else f">= {low}"
            raise HilonasError(f"{_flag(param)}={value} is out of range: give {fix} {span}{why}")
        return value

    return check


def _number_range(low: float, high: float | None, low_open: bool, fix: str) -> Callable:
    """A callback refusing a number that is nan, infinite or outside the range (None passes)."""

    def check(param: typer.CallbackParam, value: Optional[float]) -> Optional[float]:
        if value is None:
            return value
        inside = value > low if low_open else value >= low
        if not math.isfinite(value) or not inside or (high is not None and value > high):
            span = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise HilonasError(f"{_flag(param)}={value:g} is out of range: give {fix} {span}")
        return value

    return check


def seed_option(help: str = "random seed") -> Any:
    return typer.Option(0, help=f"{help} (0 to {SEED_LIMIT - 1})",
                        callback=_int_range(0, lambda: SEED_LIMIT - 1, "a seed"))


COUNT_MAX = 1_000_000  # no count a command takes is sensibly larger: beyond it a run would never end
BATCH_MAX = 4096  # images in one forward or training step (more only exhausts memory: the OS kills the process)


def count_option(default: Any, *flags: str, help: str, minimum: int = 1, maximum: int = COUNT_MAX) -> Any:
    """An integer option from ``minimum`` to ``maximum`` (None as default: optional)."""
    return typer.Option(default, *flags, help=help, callback=_int_range(minimum, lambda: maximum, "an integer"))


def number_option(default: Any, *flags: str, help: str, minimum: float = 0.0, strictly: bool = True,
                  maximum: float | None = None) -> Any:
    """A finite float option above ``minimum`` (or at it unless ``strictly``), at most ``maximum``."""
    check = _number_range(minimum, maximum, strictly, "a finite number")
    return typer.Option(default, *flags, help=help, callback=check)


def _stat_or_none(flag: str, path: Path) -> Optional[os.stat_result]:
    """``os.stat(path)``, None when nothing is there; any other reason the path cannot be looked at (a name too long,
    a symlink loop, a folder without permission) is one line naming the option."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise HilonasError(f"{flag} {path}: {err.strerror or err}: choose another path") from None


def _check_parents(flag: str, path: Path) -> None:
    """The nearest existing folder above ``path`` must be a folder and writable (a file cannot be written under a
    file, nor in a read-only folder)."""
    if not str(path).strip():
        raise HilonasError(f"{flag} is empty: give a path")
    _stat_or_none(flag, path)
    for parent in path.parents:
        if _stat_or_none(flag, parent) is not None:
            if not parent.is_dir():
                raise HilonasError(f"{flag} {path}: {parent} is a file, not a folder: choose another path")
            if not os.access(parent, os.W_OK):
                raise HilonasError(f"{flag} {path}: folder {parent} is not writable: choose another path")
            return


def _output_file(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    if value is not None:
        if os.path.isdir(value):
            raise HilonasError(f"{_flag(param)} {value} is a folder: give the path of a file to write (a new name "
                               "inside it, for instance)")
        found = _stat_or_none(_flag(param), value)
        # The file is written beside and renamed over the old one: that would replace a device or a pipe itself.
        if found is not None and not stat.S_ISREG(found.st_mode):
            raise HilonasError(f"{_flag(param)} {value} is not a regular file (a device, a pipe or a socket): give "
                               "the path of a file to write")
        _check_parents(_flag(param), value)
    return value


def _output_folder(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    if value is not None:
        if os.path.exists(value) and not os.path.isdir(value):
            raise HilonasError(f"{_flag(param)} {value} is a file: give a folder to write into")
        _check_parents(_flag(param), value)
    return value


def output_file_option(help: str) -> Any:
    """An optional file to write: refused when it is a folder or its folder cannot hold it."""
    return typer.Option(None, help=help, callback=_output_file)


def output_folder_option(default: Any, help: str) -> Any:
    """A folder to write into: refused when it is an existing file or a file stands in its path."""
    return typer.Option(default, help=help, callback=_output_folder)


def json_option(help: str = "print one JSON object") -> Any:
    return typer.Option(False, "--json", help=help)


def _folder(param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """A folder hilonas reads and may create: refused when a file (or anything but a folder) stands there."""
    if value is not None:
        if not value.strip():
            raise HilonasError(f"{_flag(param)} is empty: give a folder")
        found = _stat_or_none(_flag(param), Path(value))
        if found is not None and not stat.S_ISDIR(found.st_mode):
            raise HilonasError(f"{_flag(param)} {value} is a file, not a folder: give a folder (it is created when "
                               "missing)")
    return value


def tables_option(help: str = "folder of latency tables") -> Any:
    return typer.Option(DEFAULT_TABLES_DIR, help=help, callback=_folder)


def runs_option() -> Any:
    return typer.Option(DEFAULT_RUNS_DIR, help="folder of studies", callback=_folder)


def storage_option() -> Any:
    return typer.Option(None, help="Optuna storage URL when not the default file")


def space_option() -> Any:
    return typer.Option(DEFAULT_SPACE, help="a shipped space name or a space YAML")


def target_option(help: str = "cpu or cuda") -> Any:
    return typer.Option(DEFAULT_TARGET, help=help)


def dtype_option(help: str = "parameters' and inputs' dtype the latency is for: float32, bfloat16 (CPUs with "
                 "avx512_bf16 or AMX run it natively) or float16 (CUDA only)") -> Any:
    return typer.Option("float32", help=help)


def runtime_option(help: str = "runtime the latency is for: eager (PyTorch) or onnxruntime (each block and network "
                   "exported to ONNX and run in an InferenceSession; float32)") -> Any:
    return typer.Option("eager", help=help)


def threads_option(help: str = "CPU threads", default: int = 1) -> Any:
    """Threads for torch: from 1 to this machine's CPU count (more only oversubscribes; far more crashes torch)."""
    return typer.Option(min(default, max_threads()), help=help,
                        callback=_int_range(1, max_threads, "a thread count", " (this machine's CPUs)"))


def batch_option() -> Any:
    return count_option(1, help="images per forward", maximum=BATCH_MAX)


def resolution_option() -> Any:
    return count_option(None, help="image side (default: the space's img_size)")


def data_option() -> Any:
    return typer.Option(None, help="dataset: a folder, cifar10:PATH, cifar100:PATH, mnist (the embedded MNIST-5k), "
                        "digits, cluttered:CANVAS:PIECES[:RENDERS] (default: the embedded cluttered digits)")


def proxy_data_option() -> Any:
    return typer.Option(None, help="data the proxy scores trials on (same: --data itself); default: --data for "
                        "naswot; for the short training on the cluttered digits the same digits without fragments "
                        "(cluttered:CANVAS:0:1), otherwise --data. Promotion trains on --data")



def no_probe_option() -> Any:
    return typer.Option(False, "--no-probe", help="skip the speed probe (a few stored networks re-timed, <= 20 s) "
                        "that scales predictions to this machine's speed today")
