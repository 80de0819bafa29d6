"""A trained network on disk: ``weights.safetensors`` + ``config.yaml`` (+ ``metrics.json``) in one folder.

The config is the architecture the weights belong to (classes, channels and resolution of the training data), so
``load_trained(folder)`` or ``create_model(folder / 'config.yaml')`` + ``safetensors.torch.load_file`` rebuild it.
Each file is written to a temporary name and renamed, so a crash never leaves a half-written file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.io import atomic_write

__all__ = ["save_trained", "load_trained", "train_to_folder", "WEIGHTS_FILE", "CONFIG_FILE", "METRICS_FILE"]

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"


def save_trained(folder: str | Path, arch: ArchConfig, state_dict: dict, metrics: dict[str, Any] | None = None) -> Path:
    """Write the weights (safetensors), the config YAML and the metrics into ``folder`` (created if needed)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise HilonasError(f"--out {folder} cannot be created ({err.strerror}): choose another folder") from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write(folder / CONFIG_FILE, arch.to_yaml())
    if metrics is not None:
        atomic_write(folder / METRICS_FILE, json.dumps(metrics, indent=1) + "\n")
    return folder


def train_to_folder(config: str | Path | ArchConfig, out: str | Path, *, data: str | None = None, epochs: float = 10.0,
                    resolution: int = 32, seed: int = 0, batch_size: int = 64, lr: float = 2e-3, threads: int = 1,
                    device: str = "cpu") -> dict[str, Any]:
    """Train one architecture with the proxy trainer and save it into ``out`` (see :func:`save_trained`).

    ``config`` is a variant name, a config YAML or an ArchConfig. ``out`` being a file and a bad budget are refused
    before any data is read, a bad resolution by the data loader, a bad device or thread count by the trainer (before
    training). Returns the metrics written to metrics.json plus ``arch`` (the saved architecture,
    described) and ``data_text`` (the dataset, described).

    Raises:
        HilonasError: naming the option, for the cases above, a dataset that cannot be read, or a training that
            diverged.
    """
    import dataclasses

    from hilonas.config import resolve_arch
    from hilonas.proxy.data import load_dataset
    from hilonas.proxy.train import DEFAULT_BUDGET, adapt_arch, train_proxy

    arch = resolve_arch(config)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HilonasError(f"--out {out} is a file: give a folder")
    budget = dataclasses.replace(DEFAULT_BUDGET, epochs=epochs, batch_size=batch_size, lr=lr)  # checks them
    dataset = load_dataset(data, resolution=resolution, seed=seed)
    result = train_proxy(arch, dataset, budget, seed=seed, threads=threads, device=device, return_model=True)
    if result.failed:
        raise HilonasError(f"training failed: {result.reason}; try a lower --lr")
    trained = adapt_arch(arch, dataset)
    metrics = {"config": str(config), "data": dataset.name, **result.to_dict()}
    save_trained(out, trained, result.state_dict, metrics)
    return {**metrics, "arch": trained.describe(), "data_text": dataset.describe()}


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
