"""The dtype is part of the latency target: its own fingerprint id and table, blocks and networks measured in it,
the exported network re-measured in it, a table of one dtype refused for another, bfloat16 on a CPU without
bfloat16 instructions warned about and still measured."""
from __future__ import annotations

import pytest
import torch

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.latency import fingerprint as fpmod
from hilonas.latency.build import build_table
from hilonas.latency.external import _measure
from hilonas.latency.keys import arch_blocks
from hilonas.latency.measure import block_module, build_arch_model
from hilonas.latency.table import LatencyTable, table_path

from .conftest import FAST

ARCH = ArchConfig(depths=(1, 1), embed_dims=(16, 32), num_heads=(1, 2), mlp_ratios=(2.0, 2.0), mixers=("none", "hilo"),
                  alphas=(0.0, 0.5), window_sizes=(1, 2), img_size=32, num_classes=10)


@pytest.fixture
def bf16_fp():
    return fpmod.current_fingerprint("cpu", threads=1, batch=1, resolution=32, dtype="bfloat16")


def test_each_dtype_has_its_own_fingerprint(cpu_fp, bf16_fp):
    assert bf16_fp.id != cpu_fp.id and bf16_fp.diff(cpu_fp) == ["dtype"]
    assert fpmod.current_like(bf16_fp) == bf16_fp and fpmod.torch_dtype(bf16_fp) is torch.bfloat16
    with pytest.raises(HilonasError, match=r"--dtype=float16 runs on CUDA only.*bfloat16"):
        fpmod.current_fingerprint("cpu", dtype="float16")
    with pytest.raises(HilonasError, match=r"--dtype='int8' is not supported: use one of float32, bfloat16"):
        fpmod.current_fingerprint("cpu", dtype="int8")


def test_blocks_and_networks_run_in_the_target_dtype(bf16_fp):
    for key in arch_blocks(ARCH):
        module, inputs = block_module(key, dtype=torch.bfloat16)
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
        with torch.no_grad():
            out = module(*inputs)
        assert (out[0] if isinstance(out, tuple) else out).dtype == torch.bfloat16, key.id
    model, x = build_arch_model(ARCH, bf16_fp)
    assert x.dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        assert model(x).dtype == torch.bfloat16


def test_a_table_of_one_dtype_is_refused_for_another(tmp_path, tiny_space, cpu_fp, bf16_fp):
    report = build_table(tiny_space, bf16_fp, tables_dir=tmp_path, progress=False, calib_networks=2, **FAST)
    assert report.table.path == table_path(bf16_fp, tmp_path) and report.table.entries
    with pytest.raises(HilonasError, match="dtype"):
        LatencyTable.load(report.table.path, expect=cpu_fp)
    assert not table_path(cpu_fp, tmp_path).exists()  # the float32 table is another file


def test_a_bf16_table_of_a_native_bf16_host_is_refused_where_bf16_is_emulated(tmp_path, monkeypatch, cpu_fp,
                                                                                 bf16_fp):
    native, emulated = ["avx2", "avx512f", "avx512_bf16"], ["avx2"]
    for fp in (bf16_fp, cpu_fp):
        table = LatencyTable(table_path(fp, tmp_path), fp)
        table.set_details({"cpu_model": "AMD EPYC", "cpu_flags": native})
        table.save()
    monkeypatch.setattr(fpmod, "_cpuinfo_facts", lambda: {"cpu_flags": emulated})
    with pytest.raises(HilonasError, match=r"cpu_flags: the table's host ran bfloat16 natively.*--tables DIR.*--force"):
        LatencyTable.open(bf16_fp, tmp_path)
    assert LatencyTable.open(bf16_fp, tmp_path, force=True).fingerprint == bf16_fp
    assert LatencyTable.open(cpu_fp, tmp_path).fingerprint == cpu_fp  # float32: the probe's factor holds across ISAs
    monkeypatch.setattr(fpmod, "_cpuinfo_facts", lambda: {"cpu_flags": ["avx512f", "amx_bf16"]})
    assert LatencyTable.open(bf16_fp, tmp_path).fingerprint == bf16_fp  # another native host: the probe's business
    monkeypatch.setattr(fpmod, "_cpuinfo_facts", lambda: {})  # flags not shown: nothing to go by
    assert LatencyTable.open(bf16_fp, tmp_path).fingerprint == bf16_fp
    table = LatencyTable.open(bf16_fp, tmp_path)
    table.set_details({"cpu_model": "AMD EPYC", "cpu_flags": emulated})
    table.save()
    monkeypatch.setattr(fpmod, "_cpuinfo_facts", lambda: {"cpu_flags": native})
    with pytest.raises(HilonasError, match=r"ran bfloat16 emulated \(avx2\), this CPU runs it natively"):
        LatencyTable.open(bf16_fp, tmp_path)


def test_export_remeasures_in_the_target_dtype(tmp_path):
    import yaml

    path = tmp_path / "arch.yaml"
    path.write_text(yaml.safe_dump({"arch": ARCH.to_dict()}))
    settings = {k: v for k, v in FAST.items() if k != "group"}
    out = _measure(str(path), threads=1, batch=1, settings=settings, statistic="min", device="cpu", dtype="bfloat16")
    assert out["measured_latency_ms"] > 0 and out["runs"] >= 1


def test_bf16_without_bf16_instructions_warns_once_and_works(monkeypatch, capsys):
    monkeypatch.setattr(fpmod, "_cpuinfo_facts", lambda: {"cpu_flags": ["avx2", "avx512f"]})
    monkeypatch.setattr(fpmod, "_WARNED_BF16", False)
    fp = fpmod.current_fingerprint("cpu", threads=1, batch=1, resolution=32, dtype="bfloat16")
    fpmod.current_fingerprint("cpu", threads=1, batch=1, resolution=32, dtype="bfloat16")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "avx512_bf16" in err and "emulated" in err
    model, x = build_arch_model(ARCH, fp)
    with torch.no_grad():
        assert torch.isfinite(model(x).float()).all()
    monkeypatch.setattr(fpmod, "_cpuinfo_facts", lambda: {"cpu_flags": ["avx512f", "avx512_bf16"]})
    monkeypatch.setattr(fpmod, "_WARNED_BF16", False)
    fpmod.current_fingerprint("cpu", threads=1, batch=1, resolution=32, dtype="bfloat16")
    assert capsys.readouterr().err == ""
