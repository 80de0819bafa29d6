"""LatencyPredictor: sum x calibration by hand, missing blocks raise (or are measured), calibration fitting."""
import math
import random

import pytest

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.latency.calibration import Calibration, block_group, fit_calibration
from hilonas.latency.keys import arch_blocks
from hilonas.latency.predictor import LatencyPredictor, MissingBlockError
from hilonas.latency.table import LatencyTable
from hilonas.latency.validate import spearman

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
    assert Calibration.from_dict(cal).apply(predictor.breakdown(ARCH)) == pytest.approx(predictor.predict(ARCH))
    assert predictor.calibration == Calibration.from_dict(cal)


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
    assert isinstance(cal, Calibration) and cal.method in ("affine", "group_affine")
    assert {"scale", "affine"} <= set(cal.loo_mape) and cal.fitted_on is None  # scores, no provenance yet
    for r, m in zip(raw, measured):
        assert cal.apply(r) == pytest.approx(m, rel=1e-6)
    # The predictor applies the same formula to a table holding the calibration.
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_an_intercept_one_standard_error_better_is_kept():
    """The simplest candidate within one standard error of the best wins, and no wider margin: networks with a
    per-network overhead (0.8 ms beside blocks x 1.054, 1.5% noise, 32 networks) get the affine fit although the
    plain scale's leave-one-out error is within 25% of it, because a scale then mis-predicts by size (small
    networks low, large ones high), the fast end being where a search's front lies."""
    import statistics

    rng = random.Random(3)
    raw = [{"block:hilo": rng.uniform(5, 13), "stem": 1.0, "merge": 0.8, "head": 0.2} for _ in range(32)]
    measured = [(1.054 * sum(r.values()) + 0.8) * (1 + rng.gauss(0, 0.015)) for r in raw]
    cal = fit_calibration(raw, measured)
    assert cal.loo_mape["scale"] <= 1.25 * cal.loo_mape["affine"]  # what a 25% margin kept
    assert cal.method == "affine" and cal.intercept_ms == pytest.approx(0.8, abs=0.3)
    small = [cal.apply(r) / m - 1 for r, m in zip(raw, measured) if sum(r.values()) < 8]
    large = [cal.apply(r) / m - 1 for r, m in zip(raw, measured) if sum(r.values()) > 12]
    assert abs(statistics.mean(small) - statistics.mean(large)) < 0.01


def test_fit_calibration_with_few_networks_is_a_scale():
    raw = [{"block:hilo": 4.0}, {"block:hilo": 8.0}]
    cal = fit_calibration(raw, [5.0, 10.0])
    assert cal.method == "scale" and cal.scale == pytest.approx(1.25) and cal.intercept_ms == 0.0
    assert cal.group_scale == {} and cal.apply({"block:hilo": 2.0}) == pytest.approx(2.5)
    with pytest.raises(HilonasError, match="at least one"):
        fit_calibration([], [])


def test_predictor_applies_the_fitted_calibration(tmp_path):
    """One formula: what a table with a fitted calibration predicts is Calibration.apply of the breakdown."""
    rng = random.Random(1)
    raw = [{"block:hilo": rng.uniform(2, 10), "block:none": rng.uniform(1, 5), "stem": rng.uniform(0.2, 0.6),
            "merge": 0.4, "head": 0.05} for _ in range(12)]
    measured = [1.3 * r["block:hilo"] + 0.9 * r["block:none"] + 2.0 * (r["stem"] + 0.45) + 0.3 for r in raw]
    cal = fit_calibration(raw, measured)
    table = fake_table(tmp_path)
    table.set_calibration(cal)
    assert table.calibration == cal.to_dict() and table.fitted_calibration() == cal
    predictor = LatencyPredictor(table)
    assert predictor.predict(ARCH) == pytest.approx(cal.apply(predictor.breakdown(ARCH)), rel=1e-12)


def test_calibration_dict_round_trip_keeps_every_field():
    data = {"method": "affine", "scale": 1.1, "intercept_ms": 0.2, "group_scale": {}, "loo_mape": {"scale": 0.1},
            "fitted_on": 3, "seed": 0, "statistic": "min", "fitted_at": "2026-01-01T00:00:00+0000",
            "networks": [{"describe": "x", "measured_ms": 1.0}], "note": "kept"}
    cal = Calibration.from_dict(data)
    assert cal.to_dict() == data and list(cal.to_dict()) == list(data) and cal.extra == {"note": "kept"}
    assert Calibration.from_dict({"method": "scale", "scale": 2}).apply({"stem": 1.0, "block:hilo": 2.0}) == 6.0
    with pytest.raises(HilonasError, match="calibration.scale"):
        Calibration.from_dict({"method": "scale", "scale": "fast"})


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, rel=1e-6)  # ties: average ranks
    assert math.isnan(spearman([1.0], [2.0])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_group_factors_scale_each_kind_of_block_before_the_calibration(tmp_path):
    """predict = speed_factor * calibration(sum_g group_factor[g] * raw_g); a group without a factor takes the
    default; predict_base ignores the correction; a probe's dict gives the predictor through speed_kwargs."""
    from hilonas.latency.probe import speed_kwargs

    cal = {"method": "affine", "scale": 1.2, "intercept_ms": 0.5, "group_scale": {}}
    table = fake_table(tmp_path, cal)
    probe = {"factor": 1.4, "residual": 1.05, "group_factors": {"stem": 2.0, "head": 3.0}, "block_factor": 1.5}
    p = LatencyPredictor(table, **speed_kwargs(probe))
    # stem 0.5 x 2 + head 0.125 x 3, the rest (block:none 2.0, merge 0.25, block:hilo 6.0) and the intercept x 1.5
    assert p.predict(ARCH) == pytest.approx(1.05 * (1.5 * 0.5 + 1.2 * (1.0 + 0.375 + 1.5 * 8.25)))
    assert p.predict_base(ARCH) == pytest.approx(0.5 + 1.2 * 8.875)
    assert LatencyPredictor(table, **speed_kwargs({"factor": 1.4})).predict(ARCH) == pytest.approx(
        1.4 * (0.5 + 1.2 * 8.875))  # a probe without group factors (taken before they existed) scales by its factor
    assert speed_kwargs(None) == {} and speed_kwargs({}) == {}
    sized = LatencyPredictor(table, group_factors={"stem": 2.0}, default_group_factor=1.0, size_exponent=-0.5)
    # each block's figure ms becomes factor * ms ** -0.5 * ms: stem 2 * 0.5 ** 0.5, the others ms ** 0.5
    others = 2 * 1.0 + 0.25 ** 0.5 + 3 * 2.0 ** 0.5 + 0.125 ** 0.5
    assert sized.predict(ARCH) == pytest.approx(0.5 + 1.2 * (2.0 * 0.5 ** 0.5 + others))
    with pytest.raises(HilonasError, match="positive"):
        LatencyPredictor(table, group_factors={"stem": float("nan")})


def test_a_block_measured_today_is_stored_at_the_tables_speed(tmp_path, cpu_fp, monkeypatch):
    """With a speed factor of 2 (this machine runs twice as slow as the table's), a missing block measured now is
    stored at half its measured figure, so today's prediction of it is what was measured (not twice that)."""
    import hilonas.latency.measure as measure
    from hilonas.latency.timing import Timing

    table = fake_table(tmp_path, fp=cpu_fp, skip=("merge",))
    merge = next(k for k in arch_blocks(ARCH) if k.kind == "merge")
    monkeypatch.setattr(measure, "measure_block", lambda key, fp, **kw: Timing(
        median_ms=3.0, spread=0.0, runs=2, samples_ms=[3.0, 3.2], device="cpu", threads=1, noisy=False, attempts=1))
    today = LatencyPredictor(table, measure_missing=True, speed_factor=2.0)
    value = today.predict(ARCH)
    assert table.latency_ms(merge) == pytest.approx(1.5)  # at the table's speed
    assert table.entries[merge.id]["measured_speed"] == 2.0
    assert value == pytest.approx(2.0 * 8.625 + 3.0)  # the other blocks scaled to today, the new one as measured
