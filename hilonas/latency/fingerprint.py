"""Hardware fingerprint: what a latency table was measured on.

A table belongs to one fingerprint: device kind and name, logical cores and the threads used, torch version, backend,
dtype, batch size and input resolution. Its ``id`` (``cpu-amd-epyc-t1-b1-r224-1a2b3c4d``) names the table file: a
readable prefix plus a hash of every field, so two fingerprints share an id only when all fields agree.

Reading the fingerprint of this machine imports torch (for its version and CUDA); the dataclass itself does not.
:func:`machine_details` records what tells hosts behind one fingerprint apart (CPU flags, caches, clocks, GPU facts);
it is kept next to a table, never hashed into the id.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass
from typing import Any

from hilonas.errors import HilonasError

__all__ = ["Fingerprint", "current_fingerprint", "current_like", "torch_dtype", "cpu_model_name", "machine_details",
           "details_diff", "bf16_kernels_differ", "kernel_flags_differ", "TARGETS", "BACKENDS", "DTYPES"]

TARGETS = ("cpu", "cuda")
BACKENDS = ("eager", "onnxruntime")  # how the network runs: the target's runtime (``--runtime``)
DTYPES = ("float32", "bfloat16", "float16")  # float16: CUDA only
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU instructions that run bfloat16 natively (else it is emulated)


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
        backend: the runtime the network runs in ('eager' PyTorch or 'onnxruntime'; ``--runtime``).
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

    def build_command(self, space: str = "SPACE") -> str:
        """The ``hilonas latency build`` line that makes this fingerprint's table for ``space``."""
        threads = f" --threads {self.threads}" if self.device_kind == "cpu" else ""
        dtype = f" --dtype {self.dtype}" if self.dtype != "float32" else ""
        runtime = f" --runtime {self.backend}" if self.backend != "eager" else ""
        return (f"hilonas latency build --space {space} --target {self.device_kind}{threads} --batch {self.batch} "
                f"--resolution {self.resolution}{dtype}{runtime}")

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
        raise HilonasError(f"--runtime={backend!r} is not supported: use one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise HilonasError(f"--dtype={dtype!r} is not supported: use one of {', '.join(DTYPES)}")
    if dtype == "float16" and target != "cuda":
        raise HilonasError("--dtype=float16 runs on CUDA only (CPU float16 kernels are emulated): use --dtype "
                           "bfloat16 on a CPU")
    if backend == "onnxruntime":
        _check_onnxruntime(target, dtype)
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
        if dtype == "bfloat16":
            _warn_without_bf16()
    return Fingerprint(device_kind=target, device_name=name, capability=capability, logical_cores=_logical_cores(),
                       threads=threads, torch_version=str(torch.__version__), backend=backend, dtype=dtype,
                       batch=batch, resolution=resolution)


def _check_onnxruntime(target: str, dtype: str) -> None:
    """Refuse, in one line naming the field, an onnxruntime target this installation cannot run."""
    if dtype != "float32":
        raise HilonasError(f"--runtime=onnxruntime with --dtype={dtype}: onnxruntime's CPU kernels cover float32 only "
                           "here; use --dtype float32 with onnxruntime, or --runtime eager for bfloat16")
    try:
        import onnxruntime as ort
    except ImportError:
        raise HilonasError("--runtime=onnxruntime: the onnxruntime package is not installed in this environment: "
                           "pip install onnxruntime") from None
    if target == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise HilonasError("--runtime=onnxruntime --target=cuda: this onnxruntime has no CUDA execution provider; "
                           "install onnxruntime-gpu, or measure with --runtime eager")


def current_like(fp: Fingerprint) -> Fingerprint:
    """This machine's fingerprint with ``fp``'s settings (target kind, threads, dtype, backend, batch, resolution):
    equal to ``fp`` exactly when this machine is ``fp``'s target."""
    return current_fingerprint(fp.device_kind, threads=max(fp.threads, 1), batch=fp.batch, resolution=fp.resolution,
                               dtype=fp.dtype, backend=fp.backend)


def torch_dtype(fp: Fingerprint) -> Any:
    """The torch dtype of ``fp``'s parameters and inputs."""
    import torch

    return getattr(torch, fp.dtype)


_WARNED_BF16 = False


def _warn_without_bf16() -> None:
    """One stderr line when this CPU has no bfloat16 instructions: it still works, emulated and slow."""
    global _WARNED_BF16
    if _WARNED_BF16 or _native_bf16(_cpuinfo_facts()) is not False:
        return
    _WARNED_BF16 = True
    import sys

    print(f"warning: this CPU shows none of {', '.join(BF16_FLAGS)}: bfloat16 runs emulated, usually slower than "
          "float32; the table measures what it gets", file=sys.stderr)


def _native_bf16(details: dict[str, Any]) -> bool | None:
    """Whether a host with these :func:`machine_details` runs bfloat16 natively; None when its flags are unknown."""
    flags = details.get("cpu_flags")
    return bool(set(flags) & set(BF16_FLAGS)) if isinstance(flags, list) and flags else None


def kernel_flags_differ(table_details: dict[str, Any]) -> str | None:
    """``'cpu flags avx2 avx512f avx512_bf16 avx512_vnni vs avx2'`` (:func:`details_diff` of the kernel-changing ISA
    flags, :data:`KERNEL_FLAGS`) when the table's host had other ones than this CPU, else None (also when either
    side's flags are unknown)."""
    theirs = {"cpu_flags": table_details["cpu_flags"]} if table_details.get("cpu_flags") else {}
    mine = {k: v for k, v in _cpuinfo_facts().items() if k == "cpu_flags" and v}
    return next(iter(details_diff(theirs, mine)), None)


def bf16_kernels_differ(fp: Fingerprint, table_details: dict[str, Any]) -> str | None:
    """For a CPU bfloat16 target, what differs when the table's host ran bfloat16 natively and this one emulates it,
    or the reverse (None otherwise, and when either side's flags are unknown).

    The fingerprint id leaves ISA flags out (a float32 table built with AVX-512 kernels held within +-10% on an
    AVX2-only host of the same name, once the speed probe scaled it), but emulated bfloat16 is another program: on
    such a host it ran 15x slower than the table, unevenly across blocks, so no speed factor corrects it."""
    if fp.device_kind != "cpu" or fp.dtype != "bfloat16":
        return None
    theirs, mine = _native_bf16(table_details), _native_bf16(_cpuinfo_facts())
    if theirs is None or mine is None or theirs == mine:
        return None
    native = "runs it natively" if mine else f"has none of {', '.join(BF16_FLAGS)} (bfloat16 is emulated here)"
    return (f"cpu_flags: the table's host ran bfloat16 {'natively' if theirs else 'emulated'} "
            f"({' '.join(table_details.get('cpu_flags', [])) or 'none'}), this CPU {native}")


# ------------------------------------------------------------------------------------------------ machine details
# What tells two hosts with the same fingerprint apart (the fingerprint's device name is often just 'AMD EPYC' in a VM).
# Recorded next to a table and printed by `hilonas hardware`; never part of the fingerprint id, so the id of a machine
# stays what it was.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
_CACHE_NAMES = {(1, "Data"): "l1d_cache", (1, "Instruction"): "l1i_cache", (2, "Unified"): "l2_cache",
                (3, "Unified"): "l3_cache"}
_LABELS = {"cpu_model": "cpu model", "cpu_flags": "cpu flags", "l1d_cache": "l1d cache", "l1i_cache": "l1i cache",
           "l2_cache": "l2 cache", "l3_cache": "l3 cache", "max_mhz": "max MHz", "cpu_mhz": "reported MHz",
           "sockets": "sockets", "physical_cores": "physical cores", "logical_cpus": "logical cpus",
           "kernel": "kernel", "glibc": "glibc", "gpu_name": "gpu", "gpu_capability": "gpu capability",
           "gpu_sm_count": "gpu SMs", "gpu_memory_mib": "gpu memory MiB", "cuda_driver": "cuda driver",
           "cuda_runtime": "cuda runtime"}
_MHZ_TOLERANCE = 0.02  # the MHz /proc/cpuinfo reports moves a little between boots of one host


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _cpuinfo_facts() -> dict[str, Any]:
    """Flags (the subset in :data:`KERNEL_FLAGS`), reported MHz, sockets and physical cores from ``/proc/cpuinfo``."""
    text = _read("/proc/cpuinfo")
    if not text:
        return {}
    flags: set[str] = set()
    mhz: list[float] = []
    cores: set[tuple[str, str]] = set()
    sockets: set[str] = set()
    current = {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if "core id" in current:
                cores.add((current.get("physical id", "0"), current["core id"]))
            current = {}
            continue
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        current[name] = value
        if name in ("flags", "features"):
            flags.update(value.split())
        elif name == "cpu mhz":
            with contextlib.suppress(ValueError):
                mhz.append(float(value))
        elif name == "physical id":
            sockets.add(value)
    facts: dict[str, Any] = {"cpu_flags": [f for f in KERNEL_FLAGS if f in flags]} if flags else {}
    if mhz:
        facts["cpu_mhz"] = round(max(mhz))
    if sockets:
        facts["sockets"] = len(sockets)
    if cores:
        facts["physical_cores"] = len(cores)
    return facts


def _cache_sizes(cpu: str = "/sys/devices/system/cpu/cpu0") -> dict[str, str]:
    """``{'l2_cache': '1024K', 'l3_cache': '32768K', ...}`` of one CPU, as sysfs writes the sizes."""
    out = {}
    for index in range(8):
        base = f"{cpu}/cache/index{index}"
        level, kind, size = _read(f"{base}/level"), _read(f"{base}/type"), _read(f"{base}/size")
        if level is None:
            continue
        name = _CACHE_NAMES.get((int(level) if level.isdigit() else -1, kind or ""))
        if name and size:
            out[name] = size
    return out


def _max_mhz(model: str) -> int | None:
    """The highest clock in MHz: cpufreq's ``cpuinfo_max_freq`` (kHz), else the '@ 2.60GHz' of the model string."""
    for path in ("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq",
                 "/sys/devices/system/cpu/cpufreq/policy0/cpuinfo_max_freq"):
        khz = _read(path)
        if khz and khz.isdigit():
            return round(int(khz) / 1000)
    match = re.search(r"@\s*([0-9.]+)\s*GHz", model)
    return round(float(match.group(1)) * 1000) if match else None


def _cuda_details() -> dict[str, Any]:
    """Name, capability, SM count, memory and CUDA versions of the current CUDA device (empty without one)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {}
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        out: dict[str, Any] = {"gpu_name": props.name, "gpu_capability": f"{props.major}.{props.minor}",
                               "gpu_sm_count": int(props.multi_processor_count),
                               "gpu_memory_mib": int(props.total_memory) // 2**20,
                               "cuda_runtime": torch.version.cuda}
    except Exception:  # a broken driver must not break `hilonas hardware`
        return {}
    driver = _read("/proc/driver/nvidia/version") or ""
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", driver)
    if match:
        out["cuda_driver"] = match.group(1)
    return out


def machine_details(target: str = "cpu") -> dict[str, Any]:
    """What the OS shows about this host beyond the fingerprint: CPU model, the ISA flags that change kernels
    (:data:`KERNEL_FLAGS` present), cache sizes, clocks, sockets/cores/cpus, kernel release, glibc; with
    ``target='cuda'`` also the GPU's name, capability, SM count, memory and the CUDA driver/runtime versions.

    Facts the OS does not show are left out; this never raises. Only ``target='cuda'`` imports torch.
    """
    model = cpu_model_name()
    details: dict[str, Any] = {"cpu_model": model}
    details.update(_cpuinfo_facts())
    details.update(_cache_sizes())
    mhz = _max_mhz(model)
    if mhz:
        details["max_mhz"] = mhz
    details["logical_cpus"] = os.cpu_count()
    details["kernel"] = platform.release() or None
    with contextlib.suppress(AttributeError, ValueError, OSError):
        details["glibc"] = os.confstr("CS_GNU_LIBC_VERSION")
    if target == "cuda":
        details.update(_cuda_details())
    return {k: v for k, v in details.items() if v not in (None, "")}


def details_diff(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """What differs between two :func:`machine_details` (``a``'s value first): ``['l3 cache 32768K vs 16384K',
    'max MHz 3700 vs 2450']``. A fact only one side knows is not a difference; the reported MHz counts only when
    neither side knows its max MHz and they differ by more than 2%."""
    a, b = a or {}, b or {}
    out = []
    for key in [k for k in a if k in b and k != "host"]:  # 'host' (a build's host id) is no fact of the hardware
        va, vb = a[key], b[key]
        if key == "cpu_mhz":
            if "max_mhz" in a or "max_mhz" in b or not _numbers(va, vb) or \
                    abs(va - vb) <= _MHZ_TOLERANCE * max(va, vb, 1):
                continue
        elif va == vb or (key == "cpu_flags" and isinstance(va, list) and isinstance(vb, list)
                          and set(va) == set(vb)):
            continue
        if isinstance(va, list) and isinstance(vb, list):
            va, vb = " ".join(map(str, va)) or "none", " ".join(map(str, vb)) or "none"
        out.append(f"{_LABELS.get(key, key.replace('_', ' '))} {va} vs {vb}")
    return out


def _numbers(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
