"""A table keeps its last validation errors; a table measured with other model code is flagged on every use."""
import json

import pytest

from hilonas.latency.build import _model_code_files, _model_code_hash, check_model_code
from hilonas.latency.keys import BlockKey
from hilonas.latency.table import LatencyTable

from .conftest import fake_fp

SUMMARY = {"n": 8, "seed": 0, "mape": 0.031, "p90_ape": 0.058, "within_10": 0.875, "speed_factor": 1.02}


def key(i: int) -> BlockKey:
    return BlockKey("block", 8 * (i + 1), 4, 4, hidden=16 * (i + 1), mixer="none")


def small_table(tmp_path, **settings) -> LatencyTable:
    table = LatencyTable.open(fake_fp(), tmp_path)
    table.add(key(0), {"median_ms": 1.0})
    table.set_settings(dict(settings))
    table.save()
    return table


def test_validation_round_trip_and_old_files(tmp_path):
    table = small_table(tmp_path)
    assert LatencyTable.open(fake_fp(), tmp_path).validation is None  # files without one load as before
    assert "validation" not in json.loads(table.path.read_text())
    table.set_validation(SUMMARY)
    table.save()
    again = LatencyTable.open(fake_fp(), tmp_path)
    assert {k: again.validation[k] for k in SUMMARY} == SUMMARY and again.validation["taken_at"]
    assert again.p90_error == pytest.approx(0.058)
    assert json.loads(table.path.read_text())["validation"]["p90_ape"] == 0.058


def test_validation_is_merged_under_the_lock_like_calibration(tmp_path):
    small_table(tmp_path)
    validator, builder = LatencyTable.open(fake_fp(), tmp_path), LatencyTable.open(fake_fp(), tmp_path)
    validator.set_validation(SUMMARY)
    validator.save()
    builder.add(key(1), {"median_ms": 2.0})  # opened before the validation was saved: must not drop it
    builder.save()
    final = LatencyTable.open(fake_fp(), tmp_path)
    assert final.validation["p90_ape"] == 0.058 and len(final) == 2
    # A table handed over as text (cluster copy-back) carries its validation into the file.
    other = tmp_path / "other"
    LatencyTable.from_json(final.path.read_text(), LatencyTable.open(fake_fp(), other).path).save()
    assert LatencyTable.open(fake_fp(), other).p90_error == pytest.approx(0.058)


def test_p90_error_is_none_without_a_usable_figure(tmp_path):
    table = small_table(tmp_path)
    assert table.p90_error is None
    table.set_validation({"n": 3, "p90_ape": None})
    assert table.p90_error is None


def test_model_code_mismatch_is_one_warning_naming_table_and_fix(tmp_path, capsys):
    stale = small_table(tmp_path, model_code="000000000000")
    message = check_model_code(stale, "litv2_tiny")
    err = capsys.readouterr().err
    assert err.strip() == message and len(err.strip().splitlines()) == 1
    assert str(stale.path) in message and "hilonas latency build --space litv2_tiny" in message
    assert "delete" in message and _model_code_hash() in message
    assert check_model_code(stale, warn=False) and capsys.readouterr().err == ""


@pytest.mark.parametrize("settings", [{}, {"model_code": "current"}])
def test_current_or_unrecorded_model_code_is_not_flagged(tmp_path, capsys, settings):
    if settings:
        settings = {"model_code": _model_code_hash()}
    assert check_model_code(small_table(tmp_path, **settings)) is None
    assert capsys.readouterr().err == ""


def test_only_a_changed_source_file_makes_a_table_stale(tmp_path, capsys):
    files = _model_code_files()
    assert "hilonet.py" in files and "attention.py" in files
    older = {k: v for k, v in files.items() if k != "attention.py"}  # a layer file added since the build
    fresh = small_table(tmp_path / "a", model_code="000000000000", model_code_files=older)
    assert check_model_code(fresh) is None and capsys.readouterr().err == ""
    changed = {**files, "hilonet.py": "000000000000"}
    stale = small_table(tmp_path / "b", model_code="000000000000", model_code_files=changed)
    message = check_model_code(stale, "litv2_tiny", warn=False)
    assert message and "changed since: hilonet.py" in message and "attention.py" not in message
