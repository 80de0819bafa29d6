"""build_table / ensure_table / validate_table on a tiny space with tiny timing settings."""
import math
import statistics

import pytest

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.latency import build as build_mod
from hilonas.latency.build import BuildReport, build_table, ensure_table
from hilonas.latency.table import LatencyTable
from hilonas.latency.validate import validate_table

from .conftest import FAST


class Interrupt(Exception):
    pass


KILL_AFTER_SIX = """
import json, os, signal, sys
from hilonas.latency.build import build_table
from hilonas.latency.fingerprint import current_fingerprint
from hilonas.spaces import SearchSpace
space, fast, folder = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
seen = []
def kill_after_six(key):
    seen.append(key)
    if len(seen) == 6:
        os.kill(os.getpid(), signal.SIGKILL)
build_table(SearchSpace.from_dict(space), current_fingerprint("cpu", threads=1, batch=1, resolution=32),
            tables_dir=folder, progress=False, calib_networks=4, on_block=kill_after_six, **fast)
"""


def test_build_killed_mid_way_resumes_where_it_stopped(tmp_path, tiny_space, cpu_fp):
    """kill -9 of the building process after six blocks: the table holds them (saved a group at a time, atomically),
    and the next build measures only the rest."""
    import json
    import signal
    import subprocess
    import sys

    from ..shared import TINY_SPACE

    keys = tiny_space.enumerate_blocks()
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_SIX, json.dumps(TINY_SPACE), json.dumps(FAST),
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written file (atomic_write's temporary) left beside the table
    saved = LatencyTable.open(cpu_fp, tmp_path)
    assert len(saved.entries) == 6 and saved.calibration is None  # two groups of three were saved

    measured = []
    report = build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=4,
                         on_block=measured.append, **FAST)
    table = report.table
    assert [k.id for k in measured] == [k.id for k in keys[6:]]  # only the rest
    assert report.blocks_total == len(keys) and report.blocks_measured == len(keys) - 6
    assert report.networks_measured == 4 and report.calibration == table.calibration["method"]
    assert report.path == str(table.path) and report.to_dict()["blocks_measured"] == len(keys) - 6
    assert "table" not in report.to_dict() and set(report.to_dict()) == {
        "blocks_total", "blocks_measured", "blocks_completed", "networks_measured", "seconds", "calibration",
        "machine_busy", "path", "speed_factor"}
    assert report.speed_factor is None  # the killed build ran on this host: nothing is rescaled
    assert set(table.entries) == {k.id for k in keys}
    assert table.calibration["fitted_on"] == 4 and len(table.calibration["networks"]) == 4
    assert table.settings["statistic"] == "min" and table.settings["repeats"] == FAST["repeats"]
    assert LatencyTable.open(cpu_fp, tmp_path).calibration == table.calibration  # saved

    again = build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=4, **FAST)
    assert again.blocks_measured == 0 and again.networks_measured == 0


def test_build_in_passes_resumes_inside_a_later_pass(tmp_path, tiny_space, cpu_fp):
    keys = tiny_space.enumerate_blocks()
    calls = []

    def stop_in_second_pass(key):
        calls.append(key)
        if len(calls) == len(keys) + 3:
            raise Interrupt

    settings = {**FAST, "rounds": 2}
    with pytest.raises(Interrupt):
        build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=0,
                    on_block=stop_in_second_pass, **settings)
    saved = LatencyTable.open(cpu_fp, tmp_path)
    assert sorted(saved.passes(k) for k in keys) == [1] * (len(keys) - 3) + [2] * 3
    assert len(saved.incomplete(keys, 2)) == len(keys) - 3

    measured = []
    report = build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=0,
                         on_block=measured.append, **settings)
    table = report.table
    assert [k.id for k in measured] == [k.id for k in keys[3:]]  # only the passes still owed
    assert all(table.passes(k) == 2 for k in keys)
    entry = table.entries[keys[0].id]
    assert len(entry["pass_mins"]) == 2 and entry["min_ms"] == min(entry["pass_mins"])
    assert entry["runs"] == 2 * FAST["repeats"]
    assert report.blocks_measured == 0 and report.blocks_completed == len(keys) - 3


def test_ensure_table_builds_once_then_is_quiet(tmp_path, tiny_space, cpu_fp, monkeypatch, capsys):
    first = ensure_table(tiny_space, cpu_fp, tmp_path, calib_networks=3, **FAST)
    assert isinstance(first, BuildReport) and first.blocks_measured == len(tiny_space.enumerate_blocks())
    table = first.table

    def no_measuring(*args, **kwargs):
        raise AssertionError("a complete table must not be measured again")

    monkeypatch.setattr(build_mod, "build_table", no_measuring)
    capsys.readouterr()
    again = ensure_table(tiny_space, cpu_fp, tmp_path, calib_networks=3)
    assert isinstance(again, BuildReport) and again.blocks_measured == 0 and again.networks_measured == 0
    assert again.table.entries == table.entries and again.calibration == table.calibration["method"]
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_validate_reports_figures_on_networks_the_calibration_never_saw(tmp_path, tiny_space, cpu_fp):
    table = build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=4, **FAST).table
    calibrated = {ArchConfig.from_dict(n["arch"]) for n in table.calibration["networks"]}
    result = validate_table(tiny_space, cpu_fp, n=6, seed=3, tables_dir=tmp_path, progress=False)
    assert {"n", "within_5", "within_10", "mape", "max_ape", "spearman"} <= set(result)
    assert result["n"] == 6 and len(result["rows"]) == 6
    assert 0 <= result["within_5"] <= result["within_10"] <= 1 and result["max_ape"] >= result["mape"] >= 0
    validated = set(tiny_space.sample_distinct(6, 3, exclude=calibrated))
    assert not validated & calibrated
    assert {a.describe() for a in validated} == {r["arch"] for r in result["rows"]}
    for row in result["rows"]:
        assert row["error"] == pytest.approx(row["predicted_ms"] / row["measured_ms"] - 1, abs=1e-3)
    assert result["calibration"] == table.calibration["method"] and result["statistic"] == "min"
    # Calibration networks re-measured in the same passes tell how far the machine drifted since the build: the
    # median of (figure now / figure at the build) - 1 over the probes, a finite ratio minus one.
    assert isinstance(result["drift"], float) and math.isfinite(result["drift"]) and result["drift"] > -1


def test_drift_is_the_median_probe_ratio(tmp_path, tiny_space, cpu_fp, monkeypatch):
    """With the whole-network timings scripted, drift is exactly median(probe now / probe at build) - 1, the rows'
    errors are recomputed from the same figures, and a table without calibration reports drift None."""
    from hilonas.latency import measure
    from hilonas.latency.timing import Timing

    table = build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=4, **FAST).table
    at_build = [n["measured_ms"] for n in table.calibration["networks"]]
    factors = [1.5, 0.5, 2.0, 1.25]

    def scripted(archs, fp, on_pass=None, **settings):
        n = len(archs) - len(at_build)
        figures = [1.0 + i for i in range(n)] + [m * f for m, f in zip(at_build, factors)]
        return [Timing(median_ms=v, spread=0.0, runs=1, samples_ms=[v], device="cpu", threads=1, noisy=False,
                       attempts=1) for v in figures]

    monkeypatch.setattr(measure, "measure_archs", scripted)
    result = validate_table(tiny_space, cpu_fp, n=3, seed=5, tables_dir=tmp_path, progress=False)
    assert result["drift"] == pytest.approx(statistics.median(factors) - 1)
    assert [r["measured_ms"] for r in result["rows"]] == [1.0, 2.0, 3.0]

    table.set_calibration(None)
    table.save()
    result = validate_table(tiny_space, cpu_fp, n=3, seed=5, tables_dir=tmp_path, progress=False)
    assert result["drift"] is None and result["calibration"] is None


def test_validate_without_a_table_says_build_first(tmp_path, tiny_space, cpu_fp):
    with pytest.raises(HilonasError, match="latency build"):
        validate_table(tiny_space, cpu_fp, n=2, tables_dir=tmp_path, progress=False)


def test_sampling_is_seeded_and_distinct(tiny_space):
    a = tiny_space.sample_distinct(5, 1)
    assert a == tiny_space.sample_distinct(5, 1) and len(set(a)) == 5
    assert not set(tiny_space.sample_distinct(5, 1, exclude=set(a[:2]))) & set(a[:2])
    with pytest.raises(HilonasError, match="fewer than"):
        tiny_space.sample_distinct(tiny_space.size() * 10, 1)


def test_space_at_another_resolution(tiny_space):
    at64 = tiny_space.at_resolution(64)
    assert at64.fixed["img_size"] == 64 and tiny_space.at_resolution(32) is tiny_space
    assert {k.h for k in at64.enumerate_blocks() if k.kind == "block"} == {16, 8}


def test_a_second_space_adds_its_networks_to_the_calibration(tmp_path, tiny_space, cpu_fp, monkeypatch):
    """One table serves every space built on its hardware: building a second space refits the calibration on both
    spaces' networks (the first space's kept with their stored figures), and --recalibrate measures all again."""
    from hilonas.spaces import SearchSpace

    from ..shared import TINY_SPACE

    other = SearchSpace.from_dict({**TINY_SPACE, "name": "test_tiny_sra",
                                   "stages": [TINY_SPACE["stages"][0],
                                              {**TINY_SPACE["stages"][1], "mixer": "sra", "window": 2}]}, "other")
    build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=3, **FAST)
    first = LatencyTable.open(cpu_fp, tmp_path).calibration["networks"]
    assert [n["space"] for n in first] == ["test_tiny"] * 3
    build_table(other, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=2, **FAST)
    cal = LatencyTable.open(cpu_fp, tmp_path).calibration
    assert cal["fitted_on"] == 5
    assert sorted(n["space"] for n in cal["networks"]) == ["test_tiny"] * 3 + ["test_tiny_sra"] * 2
    kept = {n["describe"]: n["measured_ms"] for n in cal["networks"] if n["space"] == "test_tiny"}
    assert kept == {n["describe"]: n["measured_ms"] for n in first}  # stored figures, not measured again

    measured = []
    real = build_mod._measure
    monkeypatch.setattr(build_mod, "_measure", lambda table, todo, archs, *a: measured.append(len(archs))
                        or real(table, todo, archs, *a))
    build_table(other, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=2, recalibrate=True, **FAST)
    cal = LatencyTable.open(cpu_fp, tmp_path).calibration
    assert measured == [5] and cal["fitted_on"] == 5
    assert sorted(n["space"] for n in cal["networks"]) == ["test_tiny"] * 3 + ["test_tiny_sra"] * 2


def test_a_second_space_built_into_another_hosts_table_goes_on_its_scale(tmp_path, tiny_space, cpu_fp, monkeypatch):
    """A table is one host's speed. Blocks and networks of a second space measured here, into a table that a host
    twice as fast measured, are stored divided by the speed probe's factor (recorded as ``measured_speed``) and the
    table keeps naming its own host, so one probe later predicts every network of both spaces at this machine's
    speed. On the table's own host nothing is probed or scaled."""
    from hilonas.latency import probe as probe_mod
    from hilonas.latency.keys import arch_blocks
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.timing import Timing
    from hilonas.spaces import SearchSpace

    from ..shared import TINY_SPACE

    slow = {"x": 1.0}  # this host's time over the table host's

    def true_ms(key):  # the table host's time for one block
        return 6.0 if key.kind == "stem" else 1.0 + key.dim / 8 + (0.5 if key.mixer == "sra" else 0.0)

    def timing(ms):
        return Timing(median_ms=ms, spread=0.0, runs=1, samples_ms=[ms], device="cpu", threads=1, noisy=False,
                      attempts=1)

    def net_ms(arch):
        return sum(n * true_ms(k) for k, n in arch_blocks(arch).items()) * slow["x"]

    def fake_passes(archs, fp, **settings):
        for _ in range(settings["rounds"]):
            yield [timing(net_ms(a)) for a in archs]

    monkeypatch.setattr("hilonas.latency.measure.measure_blocks",
                        lambda keys, fp, **s: [timing(true_ms(k) * slow["x"]) for k in keys])
    monkeypatch.setattr("hilonas.latency.measure.network_passes", fake_passes)
    first = build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=6, **FAST)
    assert first.speed_factor is None and first.table.details["host"] == probe_mod.host_id()

    table = LatencyTable.open(cpu_fp, tmp_path)  # now pretend another host measured it, and this one is 2x slower
    table.set_details({**table.details, "host": "elsewhere"})
    table.save()
    slow["x"] = 2.0
    other = SearchSpace.from_dict({**TINY_SPACE, "name": "test_tiny_sra",
                                   "stages": [TINY_SPACE["stages"][0],
                                              {**TINY_SPACE["stages"][1], "mixer": "sra", "window": 2}]}, "other")
    report = build_table(other, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=4, **FAST)
    assert report.speed_factor == pytest.approx(2.0)
    table = LatencyTable.open(cpu_fp, tmp_path)
    assert table.details["host"] == "elsewhere" and table.probes[-1]["factor"] == pytest.approx(2.0)
    new = [k for k in other.enumerate_blocks() if k.mixer == "sra"]
    assert new and all(table.entries[k.id]["measured_speed"] == pytest.approx(2.0) for k in new)
    assert all(table.latency_ms(k) == pytest.approx(true_ms(k)) for k in other.enumerate_blocks())
    nets = [n for n in table.calibration["networks"] if n["space"] == "test_tiny_sra"]
    assert len(nets) == 4 and all(n["measured_ms"] == pytest.approx(net_ms(ArchConfig.from_dict(n["arch"])) / 2)
                                  for n in nets)
    today = LatencyPredictor(table, **probe_mod.probe_speed(table, pool=False).correction())
    plain = LatencyPredictor(table)
    for arch in other.sample_distinct(5, "check") + tiny_space.sample_distinct(5, "check"):
        assert today.predict(arch) == pytest.approx(2.0 * plain.predict(arch))

    monkeypatch.setattr(probe_mod, "probe_speed", lambda *a, **k: pytest.fail("probed on the table's own host"))
    table.set_details({**table.details, "host": probe_mod.host_id()})
    table.save()
    again = build_table(other, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=4, recalibrate=True,
                        **FAST)
    assert again.speed_factor is None
