"""How a target runs a module: eager PyTorch, or an onnxruntime ``InferenceSession``.

The runtime is part of the target (the fingerprint's ``backend`` field, ``--runtime`` on the command line), because
latency rankings change with it: small networks are dominated by eager PyTorch's per-operator overhead, which
onnxruntime removes. :func:`runner` turns a module and its inputs into the zero-argument callable that the one timing
harness (:mod:`hilonas.latency.timing`) times, for blocks, whole networks and the export's re-measurement alike.

onnxruntime: the module is exported to ONNX in memory (TorchScript exporter, opset :data:`ONNX_OPSET`, the explicit
attention path: the exporter mistranslates fused SDPA, and onnxruntime fuses attention itself) and run in a session
with the target's intra-op threads, sequential execution and all graph optimisations, on the CPU execution provider
(CUDA's when the target is a GPU and the installed onnxruntime has it). Integer arguments of a block (its token map's
height and width) are fixed in the graph.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hilonas.errors import HilonasError
from hilonas.latency.fingerprint import BACKENDS

__all__ = ["RUNTIMES", "ONNX_OPSET", "runner", "export_onnx_model", "ort_session", "uses_fused"]

RUNTIMES = BACKENDS  # the fingerprint's ``backend`` values: the runtimes a target can name
ONNX_OPSET = 17  # the TorchScript exporter's opset
DYNAMO_OPSET = 18  # the torch.export-based exporter's (its lowest)


def uses_fused(runtime: str) -> bool:
    """Whether modules for ``runtime`` take the fused attention path (F.scaled_dot_product_attention)."""
    return runtime == "eager"


class _Bound(nn.Module):
    """``module(x, *extra)`` as a one-input module (the extra arguments fixed), for the ONNX exporter."""

    def __init__(self, module: nn.Module, extra: Sequence[Any]) -> None:
        super().__init__()
        self.module, self.extra = module, tuple(extra)

    def forward(self, x: torch.Tensor) -> Any:
        return self.module(x, *self.extra)


def export_onnx_model(module: nn.Module, example: torch.Tensor, dest: str | Path | io.BytesIO, *,
                      input_name: str = "x", output_name: str = "y", dynamic_batch: bool = False) -> str:
    """Export ``module`` (one tensor in, one out) to ONNX at ``dest``: the project's one ONNX export recipe.

    The TorchScript exporter first (fast); its graph is run once in onnxruntime and compared with PyTorch, because it
    exports the ceiling divisions of padded maps (a window that does not tile a 7x7 or 14x14 map) with truncating
    integer division and so computes wrong shapes there. When its graph fails or differs, the torch.export-based
    exporter (slower, exact) is used instead, without a dynamic batch. Returns the exporter used.
    """
    buf = io.BytesIO()
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=ONNX_OPSET, input_names=[input_name],
                          output_names=[output_name], dynamic_axes=axes)
    exporter = "torchscript"
    if not _same_outputs(buf.getvalue(), module, example, input_name):
        import contextlib

        buf = io.BytesIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (example,), dynamo=True, opset_version=DYNAMO_OPSET,
                                        input_names=[input_name], output_names=[output_name], verbose=False)
            program.save(buf)
        exporter = "dynamo"
    if isinstance(dest, io.BytesIO):
        dest.write(buf.getvalue())
    else:
        Path(dest).write_bytes(buf.getvalue())
    return exporter


def _same_outputs(model: bytes, module: nn.Module, example: torch.Tensor, input_name: str) -> bool:
    """Whether onnxruntime runs ``model`` on ``example`` and gets what ``module`` computes (float32 tolerance)."""
    try:
        import onnxruntime as ort

        quiet = ort.RunOptions()
        quiet.log_severity_level = 4
        feeds = {input_name: example.detach().cpu().numpy()}
        got = ort_session(model, 1, quiet=True).run(None, feeds, quiet)[0]
    except Exception:  # any failure of the graph means: use the other exporter
        return False
    with torch.inference_mode():
        want = module(example)
    want = (want[0] if isinstance(want, tuple) else want).float().cpu()
    if tuple(got.shape) != tuple(want.shape):
        return False
    scale = float(want.abs().max()) or 1.0
    return float((torch.from_numpy(got).float() - want).abs().max()) <= 1e-3 * scale


def ort_session(model: bytes | str | Path, threads: int, device: str = "cpu", *, quiet: bool = False) -> Any:
    """An onnxruntime session for ``model`` with ``threads`` intra-op threads (sequential, all optimisations);
    ``quiet``: onnxruntime logs nothing below fatal (a graph that is only being checked)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if quiet:
        options.log_severity_level = 4
    options.intra_op_num_threads = max(int(threads), 1)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CUDAExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=providers)


def runner(module: nn.Module, inputs: Sequence[Any], runtime: str, *, threads: int = 1,
           device: str = "cpu") -> Callable[[], Any]:
    """The zero-argument callable that runs ``module(*inputs)`` the way ``runtime`` runs it.

    ``inputs``: one tensor first, then plain Python arguments (fixed in the ONNX graph). For ``eager`` this is the
    call itself; for ``onnxruntime`` the module is exported and a session built here, once.
    """
    if runtime == "eager":
        return lambda: module(*inputs)
    if runtime != "onnxruntime":
        raise HilonasError(f"--runtime={runtime!r} is not supported: use one of {', '.join(RUNTIMES)}")
    x, extra = inputs[0], inputs[1:]
    buf = io.BytesIO()
    export_onnx_model(_Bound(module, extra).eval(), x, buf)
    session = ort_session(buf.getvalue(), threads, device)
    feeds = {"x": x.detach().cpu().numpy()}
    return lambda: session.run(None, feeds)
