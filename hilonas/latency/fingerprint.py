"""Hardware fingerprint: what a latency table was measured on.

A table belongs to one fingerprint: device kind and name, logical cores and the threads used, torch version, backend,
dtype, batch size and input resolution. Its ``id`` (``cpu-amd-epyc-t1-b1-r224-1a2b3c4d``) names the table file: a
readable prefix plus a hash of every field, so two fingerprints share an id only when all fields agree.

Reading the fingerprint of this machine imports torch (for its version and CUDA); the dataclass itself does not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass
from typing import Any

from hilonas.errors import HilonasError

__all__ = ["Fingerprint", "current_fingerprint", "cpu_model_name", "TARGETS", "BACKENDS", "DTYPES"]

TARGETS = ("cpu", "cuda")
BACKENDS = ("eager",)  # room for 'compiled' / 'onnxruntime'
DTYPES = ("float32",)


@dataclass(frozen=True)
class Fingerprint:
    """The hardware and settings a latency figure holds for.

    Attributes:
        device_kind: 'cpu' or 'cuda'.
        device_name: CPU model name from the OS, or the CUDA device name.
        capability: CUDA compute capability ('9.0'), '' on CPU.
        logical_cores: logical cores this process may use (CPU affinity), on the host.
        threads: torch intra-op threads used for timing (CPU); 0 on CUDA, where it does not apply.
        torch_version: ``torch.__version__``.
        backend: how the network runs ('eager').
        dtype: parameter and input dtype ('float32').
        batch: images per forward.
        resolution: input image side in pixels.
    """

    device_kind: str
    device_name: str
    capability: str
    logical_cores: int
    threads: int
    torch_version: str
    backend: str
    dtype: str
    batch: int
    resolution: int

    @property
    def id(self) -> str:
        """Stable short id: readable prefix plus the first 8 hex digits of a SHA-256 over every field."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(blob.encode()).hexdigest()[:8]
        slug = re.sub(r"[^a-z0-9]+", "-", self.device_name.lower()).strip("-")[:32].strip("-") or "unknown"
        threads = f"t{self.threads}" if self.device_kind == "cpu" else f"sm{self.capability.replace('.', '')}"
        return f"{self.device_kind}-{slug}-{threads}-b{self.batch}-r{self.resolution}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Fingerprint:
        """Inverse of :meth:`to_dict`; a missing or mistyped field raises :class:`HilonasError` naming it."""
        if not isinstance(data, dict):
            raise HilonasError(f"fingerprint must be a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                raise HilonasError(f"fingerprint.{f.name} is missing")
            value = data[f.name]
            want = int if f.type in ("int", int) else str
            if isinstance(value, bool) or not isinstance(value, want):
                raise HilonasError(f"fingerprint.{f.name}={value!r} must be a {want.__name__}")
            values[f.name] = value
        return cls(**values)

    def diff(self, other: Fingerprint) -> list[str]:
        """Names of the fields whose values differ, in field order."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def describe_diff(self, other: Fingerprint) -> str:
        """``'threads: 1 != 2, batch: 1 != 8'`` (self's value first)."""
        return ", ".join(f"{n}: {getattr(self, n)!r} != {getattr(other, n)!r}" for n in self.diff(other))

    def describe(self) -> str:
        dev = self.device_name + (f" (sm {self.capability})" if self.capability else "")
        threads = f", {self.threads} thread(s)" if self.device_kind == "cpu" else ""
        return (f"{self.device_kind}: {dev}, {self.logical_cores} logical cores{threads}, torch {self.torch_version}, "
                f"{self.backend} {self.dtype}, batch {self.batch}, {self.resolution}x{self.resolution}")


def cpu_model_name() -> str:
    """The CPU model as the OS names it (``/proc/cpuinfo`` on Linux, sysctl on macOS, else ``platform``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
                    name = line.split(":", 1)[1].strip()
                    if name:
                        return " ".join(name.split())
    except OSError:
        pass
    if platform.system() == "Darwin":
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5)
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _logical_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def current_fingerprint(target: str = "cpu", *, threads: int = 1, batch: int = 1, resolution: int = 224,
                        dtype: str = "float32", backend: str = "eager") -> Fingerprint:
    """The fingerprint of this machine for ``target`` ('cpu' or 'cuda') and the given settings.

    Raises:
        HilonasError: an unknown target, backend or dtype, a non-positive number, or 'cuda' without a CUDA device.
    """
    if target not in TARGETS:
        raise HilonasError(f"--target={target!r} is unknown: use one of {', '.join(TARGETS)}")
    if backend not in BACKENDS:
        raise HilonasError(f"--backend={backend!r} is not supported yet: use one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise HilonasError(f"--dtype={dtype!r} is not supported yet: use one of {', '.join(DTYPES)}")
    for name, value in (("threads", threads), ("batch", batch), ("resolution", resolution)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HilonasError(f"--{name}={value!r} must be a positive integer")
    import torch

    if target == "cuda":
        if not torch.cuda.is_available():
            raise HilonasError("--target=cuda: no CUDA device is visible here (torch.cuda.is_available() is False); "
                               "use --target cpu or run on a machine with a GPU")
        idx = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        name, capability, threads = torch.cuda.get_device_name(idx), f"{major}.{minor}", 0
    else:
        name, capability = cpu_model_name(), ""
    return Fingerprint(device_kind=target, device_name=name, capability=capability, logical_cores=_logical_cores(),
                       threads=threads, torch_version=str(torch.__version__), backend=backend, dtype=dtype,
                       batch=batch, resolution=resolution)
