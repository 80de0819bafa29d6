"""A trained network on disk: ``weights.safetensors`` + ``config.yaml`` (+ ``metrics.json``) in one folder.

The config is the architecture the weights belong to (classes, channels and resolution of the training data), so
``load_trained(folder)`` or ``create_model(folder / 'config.yaml')`` + ``safetensors.torch.load_file`` rebuild it.
Each file is written to a temporary name and renamed, so a crash never leaves a half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError

__all__ = ["save_trained", "load_trained", "WEIGHTS_FILE", "CONFIG_FILE", "METRICS_FILE"]

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_trained(folder: str | Path, arch: ArchConfig, state_dict: dict, metrics: dict[str, Any] | None = None) -> Path:
    """Write the weights (safetensors), the config YAML and the metrics into ``folder`` (created if needed)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HilonasError(f"--out {folder} cannot be created ({err.strerror}): choose another folder") from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    _atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(arch.to_yaml()))
    if metrics is not None:
        _atomic_write(folder / METRICS_FILE, lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=1) + "\n"))
    return folder


def load_trained(folder: str | Path):
    """The model saved by :func:`save_trained`, weights loaded, in eval mode."""
    from safetensors.torch import load_file

    from hilonas.models import HiLoNet

    folder = Path(folder)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise HilonasError(f"{folder / name} does not exist: give a folder written by `hilonas train`")
    arch = ArchConfig.load(folder / CONFIG_FILE)
    model = HiLoNet(arch)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.eval()
