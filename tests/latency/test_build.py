"""build_table / ensure_table / validate_table on a tiny space with tiny timing settings."""
import pytest

from hilonas.config import ArchConfig
from hilonas.errors import HilonasError
from hilonas.latency import build as build_mod
from hilonas.latency.build import build_table, ensure_table, sample_archs, space_at, validate_table
from hilonas.latency.table import LatencyTable

from .conftest import FAST


class Interrupt(Exception):
    pass


def test_interrupted_build_resumes_where_it_stopped(tmp_path, tiny_space, cpu_fp):
    keys = tiny_space.enumerate_blocks()
    seen = []

    def stop_after_six(key):
        seen.append(key)
        if len(seen) == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=4, on_block=stop_after_six,
                    **FAST)
    saved = LatencyTable.open(cpu_fp, tmp_path)
    assert len(saved.entries) == 6 and saved.calibration is None  # two groups of three were saved

    measured = []
    table = build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=4,
                        on_block=measured.append, **FAST)
    assert [k.id for k in measured] == [k.id for k in keys[6:]]  # only the rest
    assert table.build_stats["blocks_total"] == len(keys) and table.build_stats["blocks_measured"] == len(keys) - 6
    assert set(table.entries) == {k.id for k in keys}
    assert table.calibration["fitted_on"] == 4 and len(table.calibration["networks"]) == 4
    assert table.settings["statistic"] == "min" and table.settings["repeats"] == FAST["repeats"]

    again = build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=4, **FAST)
    assert again.build_stats["blocks_measured"] == 0 and again.build_stats["networks_measured"] == 0


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
    table = build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=0,
                        on_block=measured.append, **settings)
    assert [k.id for k in measured] == [k.id for k in keys[3:]]  # only the passes still owed
    assert all(table.passes(k) == 2 for k in keys)
    entry = table.entries[keys[0].id]
    assert len(entry["pass_mins"]) == 2 and entry["min_ms"] == min(entry["pass_mins"])
    assert entry["runs"] == 2 * FAST["repeats"]
    assert table.build_stats["blocks_measured"] == 0 and table.build_stats["blocks_completed"] == len(keys) - 3


def test_ensure_table_builds_once_then_is_quiet(tmp_path, tiny_space, cpu_fp, monkeypatch, capsys):
    table = ensure_table(tiny_space, cpu_fp, tmp_path, calib_networks=3, **FAST)
    assert table.build_stats["blocks_measured"] == len(tiny_space.enumerate_blocks())

    def no_measuring(*args, **kwargs):
        raise AssertionError("a complete table must not be measured again")

    monkeypatch.setattr(build_mod, "build_table", no_measuring)
    capsys.readouterr()
    again = ensure_table(tiny_space, cpu_fp, tmp_path, calib_networks=3)
    assert again.build_stats["blocks_measured"] == 0 and again.entries == table.entries
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_validate_reports_figures_on_networks_the_calibration_never_saw(tmp_path, tiny_space, cpu_fp):
    table = build_table(tiny_space, cpu_fp, tables_dir=tmp_path, progress=False, calib_networks=4, **FAST)
    calibrated = {ArchConfig.from_dict(n["arch"]) for n in table.calibration["networks"]}
    result = validate_table(tiny_space, cpu_fp, n=6, seed=3, tables_dir=tmp_path, progress=False)
    assert {"n", "within_5", "within_10", "mape", "max_ape", "spearman"} <= set(result)
    assert result["n"] == 6 and len(result["rows"]) == 6
    assert 0 <= result["within_5"] <= result["within_10"] <= 1 and result["max_ape"] >= result["mape"] >= 0
    validated = set(sample_archs(tiny_space, 6, 3, exclude=calibrated))
    assert not validated & calibrated
    assert {a.describe() for a in validated} == {r["arch"] for r in result["rows"]}
    for row in result["rows"]:
        assert row["error"] == pytest.approx(row["predicted_ms"] / row["measured_ms"] - 1, abs=1e-3)
    # Calibration networks re-measured in the same passes tell how far the machine drifted since the build.
    assert result["drift"] > -1


def test_validate_without_a_table_says_build_first(tmp_path, tiny_space, cpu_fp):
    with pytest.raises(HilonasError, match="latency build"):
        validate_table(tiny_space, cpu_fp, n=2, tables_dir=tmp_path, progress=False)


def test_sampling_is_seeded_and_distinct(tiny_space):
    a = sample_archs(tiny_space, 5, 1)
    assert a == sample_archs(tiny_space, 5, 1) and len(set(a)) == 5
    with pytest.raises(HilonasError, match="fewer than"):
        sample_archs(tiny_space, tiny_space.size() * 10, 1)


def test_space_at_another_resolution(tiny_space):
    at64 = space_at(tiny_space, 64)
    assert at64.fixed["img_size"] == 64 and space_at(tiny_space, 32) is tiny_space
    assert {k.h for k in at64.enumerate_blocks() if k.kind == "block"} == {16, 8}
