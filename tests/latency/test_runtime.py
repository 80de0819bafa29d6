"""The runtime is part of the latency target: onnxruntime blocks and networks are timed in real InferenceSessions
built from the same modules, compute what eager PyTorch computes, and get their own fingerprint and table."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.latency import fingerprint as fpmod
from hilonas.latency.external import _measure
from hilonas.latency.keys import arch_blocks
from hilonas.latency.measure import block_module, build_arch_model, measure_archs, measure_blocks
from hilonas.latency.runtime import runner

from .conftest import FAST

ARCH = ArchConfig(depths=(1, 1), embed_dims=(16, 32), num_heads=(1, 2), mlp_ratios=(2.0, 2.0), mixers=("none", "hilo"),
                  alphas=(0.0, 0.5), window_sizes=(1, 2), img_size=32, num_classes=10)
SETTINGS = {k: v for k, v in FAST.items() if k != "group"}


@pytest.fixture
def ort_fp():
    return fpmod.current_fingerprint("cpu", threads=1, batch=1, resolution=32, backend="onnxruntime")


def test_each_runtime_has_its_own_fingerprint(cpu_fp, ort_fp):
    assert ort_fp.id != cpu_fp.id and ort_fp.diff(cpu_fp) == ["backend"]
    assert "--runtime onnxruntime" in ort_fp.build_command("litv2_tiny")
    with pytest.raises(HilonasError, match=r"--runtime=onnxruntime with --dtype=bfloat16"):
        fpmod.current_fingerprint("cpu", dtype="bfloat16", backend="onnxruntime")
    with pytest.raises(HilonasError, match=r"--runtime='tvm' is not supported: use one of eager, onnxruntime"):
        fpmod.current_fingerprint("cpu", backend="tvm")


def test_an_onnxruntime_runner_computes_what_eager_computes():
    for key in arch_blocks(ARCH):
        module, inputs = block_module(key, fused=False)
        run = runner(module, inputs, "onnxruntime")
        got = run()[0]
        with torch.inference_mode():
            want = module(*inputs)
        want = want[0] if isinstance(want, tuple) else want  # a merge also returns the new map's size
        assert isinstance(got, np.ndarray), key.id  # a real session's output
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4, err_msg=key.id)


def test_blocks_and_networks_are_timed_in_sessions(ort_fp):
    keys = list(arch_blocks(ARCH))[:3]
    assert all(t.median_ms > 0 for t in measure_blocks(keys, ort_fp, **SETTINGS))
    (net,) = measure_archs([ARCH], ort_fp, **SETTINGS)
    assert net.median_ms > 0
    model, _ = build_arch_model(ARCH, ort_fp)
    assert not any(getattr(m, "fused", False) for m in model.modules())  # the explicit path is what exports


def test_export_remeasures_in_the_runtime(tmp_path):
    import yaml

    path = tmp_path / "arch.yaml"
    path.write_text(yaml.safe_dump({"arch": ARCH.to_dict()}))
    out = _measure(str(path), threads=1, batch=1, settings=SETTINGS, statistic="min", device="cpu",
                   runtime="onnxruntime")
    assert out["measured_latency_ms"] > 0


def test_companions_are_timed_in_the_same_passes(tmp_path, monkeypatch):
    """The exported model and its companions (the table's probe networks, built as the table builds them) go
    through one round-robin timing: the same passes, so the machine's moves during it hit them all alike."""
    import dataclasses

    import yaml

    from hilonas.latency import timing as timing_mod

    calls = []
    real = timing_mod.time_rounds
    monkeypatch.setattr(timing_mod, "time_rounds", lambda fns, **kw: calls.append(len(fns)) or real(fns, **kw))
    path = tmp_path / "arch.yaml"
    path.write_text(yaml.safe_dump({"arch": ARCH.to_dict()}))
    fp = fpmod.current_fingerprint("cpu", threads=1, batch=1, resolution=32)
    wider = dataclasses.replace(ARCH, embed_dims=(16, 48), num_heads=(1, 4)).validate()
    out = _measure(str(path), threads=1, batch=1, settings=SETTINGS, statistic="min", device="cpu",
                   companions={"fingerprint": fp.to_dict(), "archs": [ARCH.to_dict(), wider.to_dict()]})
    assert calls == [3] and len(out["companions_ms"]) == 2 and all(ms > 0 for ms in out["companions_ms"])
    assert "companions_ms" not in _measure(str(path), threads=1, batch=1, settings=SETTINGS, statistic="min",
                                           device="cpu")


def test_a_padded_map_exports_right():
    """The TorchScript exporter truncates the ceiling division of a padded map (wrong shapes at run time); the
    export recipe checks its graph and falls back to the torch.export-based exporter."""
    import io

    from hilonas.latency.runtime import export_onnx_model, ort_session
    from hilonas.models import HiLoNet

    arch = ArchConfig(depths=(1, 1), embed_dims=(16, 32), num_heads=(1, 2), mlp_ratios=(2.0, 2.0),
                      mixers=("none", "hilo"), alphas=(0.0, 0.5), window_sizes=(1, 4), img_size=48, num_classes=10,
                      pad=True)
    model = HiLoNet(arch, fused=False).eval()
    x = torch.randn(1, 3, 48, 48)
    buf = io.BytesIO()
    assert export_onnx_model(model, x, buf) == "dynamo"  # 6x6 tokens in windows of 4: padded to 8x8
    got = ort_session(buf.getvalue(), 1).run(None, {"x": x.numpy()})[0]
    with torch.inference_mode():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-5)
