"""The speed probe: probe networks span the table, the factor is the median ratio, it is recorded (bounded,
merged across writers), and a table measured on a faster machine is corrected by it."""
from __future__ import annotations

import copy
import json

import pytest

from hilonas.latency import probe as probe_mod
from hilonas.latency.build import build_table
from hilonas.latency.table import MAX_PROBES, LatencyTable
from hilonas.latency.timing import Timing
from hilonas.latency.validate import validate_table

from .conftest import FAST


def _timing(ms: float) -> Timing:
    return Timing(median_ms=ms, spread=0.0, runs=1, samples_ms=[ms], device="cpu", threads=1, noisy=False,
                  attempts=1)


def _table_with_networks(tmp_path, fp, measured: list[float]) -> LatencyTable:
    from hilonas.config import ArchConfig

    base = dict(depths=(1,), embed_dims=(8,), num_heads=(1,), mlp_ratios=(2.0,), mixers=("none",), alphas=(0.0,),
                window_sizes=(1,), img_size=32, num_classes=10)
    nets = [{"arch": ArchConfig(**{**base, "embed_dims": (8 * (i + 1),)}).to_dict(), "measured_ms": ms}
            for i, ms in enumerate(measured)]
    table = LatencyTable.open(fp, tmp_path)
    table.set_calibration({"method": "scale", "scale": 1.0, "intercept_ms": 0.0, "networks": nets})
    table.set_settings({k: v for k, v in FAST.items() if k != "group"})
    table.save()
    return table


def test_probe_networks_span_the_table(tmp_path, cpu_fp):
    table = _table_with_networks(tmp_path, cpu_fp, [5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0])
    picked = [ms for _, ms in probe_mod.probe_networks(table, 4)]
    assert picked[0] == 1.0 and picked[-1] == 9.0 and len(picked) == 4 and picked == sorted(picked)
    assert [ms for _, ms in probe_mod.probe_networks(table, 10)] == sorted([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0])
    assert probe_mod.probe_speed(LatencyTable.open(cpu_fp, tmp_path / "empty")) is None  # nothing to probe with


def test_factor_is_the_median_ratio_and_is_recorded(tmp_path, cpu_fp, monkeypatch):
    table = _table_with_networks(tmp_path, cpu_fp, [1.0, 2.0, 4.0])
    now = {8: 1.5, 16: 2.4, 24: 4.4}  # by width: ratios 1.5, 1.2, 1.1

    def fake_passes(keys, archs, fp, **settings):
        for _ in range(settings["rounds"]):
            yield [_timing(now[a.embed_dims[0]]) for a in archs]

    monkeypatch.setattr("hilonas.latency.measure.mixed_passes", fake_passes)
    result = probe_mod.probe_speed(table, budget_s=5)
    assert result.factor == pytest.approx(1.2) and result.spread == pytest.approx(0.4)
    assert result.networks == 3 and result.ratios == pytest.approx((1.5, 1.2, 1.1))
    on_disk = json.loads(table.path.read_text())
    assert on_disk["probes"][-1]["factor"] == pytest.approx(1.2)
    # Bounded history, merged with what another process saved meanwhile.
    other = LatencyTable.load(table.path)
    for i in range(MAX_PROBES + 3):
        other.add_probe({"factor": 1.0 + i / 100, "taken_at": f"t{i}"})
    other.save()
    probe_mod.probe_speed(table, budget_s=5)
    history = LatencyTable.load(table.path).probes
    assert len(history) == MAX_PROBES and history[-1]["factor"] == pytest.approx(1.2)
    assert history[-2]["taken_at"] == f"t{MAX_PROBES + 2}"


def test_factor_far_from_one_is_one_warning_line(tmp_path, cpu_fp, capsys):
    table = _table_with_networks(tmp_path, cpu_fp, [1.0])
    assert probe_mod.warn_factor(1.1, table) is None and probe_mod.warn_factor(None, table) is None
    line = probe_mod.warn_factor(1.3, table)
    err = capsys.readouterr().err.strip()
    assert err == line and "\n" not in err and "30% slower" in err and "--recalibrate" in err


def _slowed_copy(table: LatencyTable, folder, factor: float) -> LatencyTable:
    """The table as a machine ``1/factor`` times as fast would have measured it: every stored figure scaled."""
    data = json.loads(table.path.read_text())
    scaled = copy.deepcopy(data)
    for entry in scaled["entries"].values():
        for k in ("median_ms", "min_ms"):
            if k in entry:
                entry[k] *= factor
    cal = scaled["calibration"]
    cal["intercept_ms"] = cal.get("intercept_ms", 0.0) * factor
    for net in cal["networks"]:
        net["measured_ms"] *= factor
        net["median_ms"] = net.get("median_ms", net["measured_ms"]) * factor
    folder.mkdir()
    path = folder / table.path.name
    path.write_text(json.dumps(scaled))
    return LatencyTable.load(path)


def test_a_table_from_a_faster_machine_is_corrected_by_the_probe(tmp_path, tiny_space, cpu_fp):
    settings = {**FAST, "rounds": 3, "repeats": 10, "warmup": 5}  # tiny networks need a real warm-up to time stably
    table = build_table(tiny_space, cpu_fp, tables_dir=tmp_path / "real", progress=False, calib_networks=6,
                        **settings).table
    fast = _slowed_copy(table, tmp_path / "fast", 0.5)  # "measured" on a machine twice as fast
    plain = validate_table(tiny_space, cpu_fp, n=6, seed=5, table=fast, progress=False, probe=False)
    probed = validate_table(tiny_space, cpu_fp, n=6, seed=5, table=fast, progress=False)
    assert plain["bias"] < -0.35  # half the measured time, give or take the noise of tiny networks
    assert 1.7 < probed["probe"]["factor"] < 2.3
    assert abs(probed["bias"]) < 0.12 and abs(probed["bias"]) < abs(plain["bias"]) / 3
    assert probed["within_10_drift_corrected"] is not None
    assert LatencyTable.load(fast.path).validation["speed_factor"] == pytest.approx(probed["probe"]["factor"],
                                                                                     abs=1e-4)


def test_group_factors_and_residual(tmp_path, cpu_fp, monkeypatch):
    """Each kind of block gets the median ratio of its probe blocks; the residual is what the networks show beyond
    their regrouped blocks, so the corrected prediction of a probe network reproduces its ratio."""
    from hilonas.latency.calibration import block_group
    from hilonas.latency.keys import arch_blocks
    from hilonas.latency.predictor import LatencyPredictor

    table = _table_with_networks(tmp_path, cpu_fp, [1.0, 2.0, 4.0])
    stored = dict(probe_mod.probe_networks(table))
    archs = list(stored)
    for arch in archs:
        for key in arch_blocks(arch):
            table.add(key, {"median_ms": 0.1 * (1 + key.dim / 8), "min_ms": 0.1 * (1 + key.dim / 8)})
    table.save()
    slower = {"stem": 2.0, "block:none": 1.5, "head": 1.0}

    def fake_passes(keys, archs, fp, **settings):
        for _ in range(settings["rounds"]):
            yield ([_timing(table.latency_ms(k) * slower[block_group(k)]) for k in keys]
                   + [_timing(1.6 * stored[a]) for a in archs])

    monkeypatch.setattr("hilonas.latency.measure.mixed_passes", fake_passes)
    result = probe_mod.probe_speed(table, budget_s=5)
    assert result.group_factors == pytest.approx(slower) and result.blocks == len(probe_mod.probe_blocks(table))
    assert result.block_factor == pytest.approx(1.5)
    corrected = LatencyPredictor(table, **result.correction())
    for arch in archs:  # whole networks run 1.6x slower: the correction reproduces it
        assert corrected.predict(arch) == pytest.approx(1.6 * LatencyPredictor(table).predict(arch), rel=0.05)
    assert table.probes[-1]["group_factors"] == pytest.approx(slower)
