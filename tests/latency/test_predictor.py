"""LatencyPredictor: sum x calibration by hand, missing blocks raise (or are measured), calibration fitting."""
import random

import pytest

from hilonas.config import ArchConfig
from hilonas.latency.build import fit_calibration, spearman
from hilonas.latency.keys import arch_blocks
from hilonas.latency.predictor import LatencyPredictor, MissingBlockError, apply_calibration, block_group
from hilonas.latency.table import LatencyTable

from .conftest import FAST, fake_fp

ARCH = ArchConfig(depths=(2, 3), embed_dims=(16, 32), num_heads=(1, 4), mlp_ratios=(2.0, 4.0), mixers=("none", "hilo"),
                  alphas=(0.0, 0.5), window_sizes=(1, 2), img_size=32, patch_size=4, num_classes=10).validate()
MS = {"stem": 0.5, "block:none": 1.0, "merge": 0.25, "block:hilo": 2.0, "head": 0.125}


def fake_table(tmp_path, calibration=None, fp=None, skip=()):
    table = LatencyTable.open(fp or fake_fp(), tmp_path)
    for key in arch_blocks(ARCH):
        if block_group(key) not in skip:
            table.add(key, {"median_ms": MS[block_group(key)]})
    if calibration is not None:
        table.set_calibration(calibration)
    return table


def test_raw_sum_by_hand(tmp_path):
    predictor = LatencyPredictor(fake_table(tmp_path))
    # stem 0.5 + 2 x 1.0 + merge 0.25 + 3 x 2.0 + head 0.125
    assert predictor.predict_raw(ARCH) == pytest.approx(8.875)
    assert predictor.predict(ARCH) == pytest.approx(8.875)  # no calibration: the plain sum
    assert predictor.breakdown(ARCH) == pytest.approx({"stem": 0.5, "block:none": 2.0, "merge": 0.25,
                                                       "block:hilo": 6.0, "head": 0.125})


def test_affine_calibration_by_hand(tmp_path):
    cal = {"method": "affine", "scale": 1.2, "intercept_ms": 0.5, "group_scale": {}}
    predictor = LatencyPredictor(fake_table(tmp_path, cal))
    assert predictor.predict(ARCH) == pytest.approx(0.5 + 1.2 * 8.875)
    assert predictor.predict_raw(ARCH) == pytest.approx(8.875)
    assert predictor.predict(ARCH) == predictor.predict(ARCH)  # cached path gives the same figure


def test_group_calibration_by_hand(tmp_path):
    cal = {"method": "group_affine", "scale": 1.0, "intercept_ms": 0.25,
           "group_scale": {"block:hilo": 1.5, "block:none": 1.1, "stem": 2.0, "merge": 2.0, "head": 2.0}}
    predictor = LatencyPredictor(fake_table(tmp_path, cal))
    assert predictor.predict(ARCH) == pytest.approx(0.25 + 1.5 * 6.0 + 1.1 * 2.0 + 2.0 * (0.5 + 0.25 + 0.125))
    assert apply_calibration(cal, predictor.breakdown(ARCH)) == pytest.approx(predictor.predict(ARCH))


def test_missing_block_raises_naming_it(tmp_path):
    table = fake_table(tmp_path, skip=("merge",))
    predictor = LatencyPredictor(table)
    merge = next(k for k in arch_blocks(ARCH) if k.kind == "merge")
    with pytest.raises(MissingBlockError) as err:
        predictor.predict(ARCH)
    assert merge.id in str(err.value) and err.value.key == merge
    assert predictor.missing(ARCH) == [merge]


def test_measure_missing_measures_adds_and_saves(tmp_path, cpu_fp):
    table = fake_table(tmp_path, fp=cpu_fp, skip=("merge",))
    table.set_settings({k: v for k, v in FAST.items() if k != "group"})
    table.save()
    predictor = LatencyPredictor(table, measure_missing=True)
    value = predictor.predict(ARCH)
    merge = next(k for k in arch_blocks(ARCH) if k.kind == "merge")
    assert merge.id in table.entries and table.entries[merge.id]["source"] == "measure_missing"
    assert value == pytest.approx(8.625 + table.latency_ms(merge))
    assert merge.id in LatencyTable.open(cpu_fp, tmp_path).entries  # saved


def test_prediction_is_fast_and_torch_free(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from hilonas.latency.predictor import LatencyPredictor; "
            "from hilonas.latency.table import LatencyTable; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_fit_calibration_recovers_an_affine_truth():
    rng = random.Random(0)
    raw = [{"block:hilo": rng.uniform(2, 10), "block:none": rng.uniform(1, 5), "stem": 0.3, "merge": 0.4,
            "head": 0.05} for _ in range(12)]
    measured = [1.15 * sum(r.values()) + 0.7 for r in raw]
    cal = fit_calibration(raw, measured)
    assert cal["method"] in ("affine", "group_affine")
    for r, m in zip(raw, measured):
        assert apply_calibration(cal, r) == pytest.approx(m, rel=1e-6)


def test_fit_calibration_with_few_networks_is_a_scale():
    raw = [{"block:hilo": 4.0}, {"block:hilo": 8.0}]
    cal = fit_calibration(raw, [5.0, 10.0])
    assert cal["method"] == "scale" and cal["scale"] == pytest.approx(1.25) and cal["intercept_ms"] == 0.0


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, rel=1e-6)  # ties: average ranks
