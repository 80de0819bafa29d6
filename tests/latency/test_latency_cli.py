"""The latency commands: JSON outputs, build + validate end to end, one-line errors with exit status 2.

Commands run in-process through ``hilonas.cli.main`` (the console script's entry point, which turns a
HilonasError into one line and exit status 2), so torch is imported once; tests/test_cli.py runs the real script.
"""
import csv
import json

import pytest
import yaml

from hilonas.cli import main
from hilonas.config import ArchConfig
from hilonas.latency.build import build_table

from ..shared import assert_one_line_error
from ..shared import run_cli as run
from .conftest import FAST, TINY_SPACE


@pytest.fixture
def built(tmp_path, tiny_space, cpu_fp):
    """A tiny space file and its table, built with tiny timing settings."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE))
    table = build_table(tiny_space, cpu_fp, tables_dir=tmp_path / "tables", progress=False, calib_networks=3,
                        **FAST).table
    return space, table


def test_hardware_json_lists_the_matching_table(capsys, built):
    space, table = built
    code, out, err = run(capsys, "hardware", "--json", "--resolution", "32", "--tables", str(table.path.parent))
    assert code == 0, err
    data = json.loads(out)
    assert data["fingerprint"]["resolution"] == 32 and data["fingerprint_id"] == table.fingerprint.id
    assert [t["path"] for t in data["tables"]] == [str(table.path)] and data["tables"][0]["blocks"] == len(table)
    code, out, _ = run(capsys, "hardware", "--threads", "2", "--tables", str(table.path.parent))
    assert code == 0 and "threads        2" in out and "differs in" in out


def test_build_is_resumable_and_prints_counts(capsys, built):
    space, table = built
    code, out, err = run(capsys, "latency", "build", "--space", str(space), "--tables", str(table.path.parent))
    assert code == 0, err
    assert f"{len(table)} blocks (0 measured now)" in out and str(table.path) in out


def test_refit_refits_on_the_stored_networks_and_measures_nothing(capsys, built, monkeypatch, tmp_path):
    """``latency build --refit`` fits the calibration again on the networks the table stores, with their stored
    figures (any machine may do it: nothing is measured); the seed and the networks are kept."""
    from hilonas.latency.calibration import fit_calibration
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.table import LatencyTable

    space, table = built
    stored = table.calibration
    table.set_calibration({**stored, "method": "manual", "scale": 9.0, "intercept_ms": 0.0})
    table.save()
    monkeypatch.setattr("hilonas.latency.measure.measure_blocks", lambda *a, **k: pytest.fail("measured a block"))
    monkeypatch.setattr("hilonas.latency.measure.network_passes", lambda *a, **k: pytest.fail("measured a network"))
    code, out, err = run(capsys, "latency", "build", "--space", str(space), "--tables", str(table.path.parent),
                         "--refit", "--json")
    assert code == 0, err
    refitted = LatencyTable.load(table.path).calibration
    predictor = LatencyPredictor(table)
    archs = [ArchConfig.from_dict(n["arch"]) for n in stored["networks"]]
    expected = fit_calibration([predictor.breakdown(a) for a in archs], [n["measured_ms"] for n in stored["networks"]])
    assert refitted["method"] == expected.method and refitted["scale"] == pytest.approx(expected.scale)
    assert refitted["seed"] == stored["seed"] and refitted["fitted_on"] == len(archs)
    assert [n["measured_ms"] for n in refitted["networks"]] == [n["measured_ms"] for n in stored["networks"]]
    assert json.loads(out)["calibration"]["method"] == expected.method

    assert_one_line_error(run(capsys, "latency", "build", "--space", str(space), "--tables", str(table.path.parent),
                              "--refit", "--recalibrate"), "--refit", "--recalibrate")
    assert_one_line_error(run(capsys, "latency", "build", "--space", str(space), "--tables", str(tmp_path / "none"),
                              "--refit"), "no calibration networks", "--tables")
    assert not (tmp_path / "none").exists()


def test_validate_json_and_csv(capsys, built, tmp_path):
    space, table = built
    csv = tmp_path / "rows.csv"
    code, out, err = run(capsys, "latency", "validate", "--space", str(space), "--n", "3", "--seed", "1",
                         "--tables", str(table.path.parent), "--json", "--csv", str(csv))
    assert code == 0, err
    figures = json.loads(out)
    assert set(figures) == {"n", "within_5", "within_10", "mape", "p90_ape", "max_ape", "spearman", "bias", "drift",
                            "probe", "within_5_drift_corrected", "within_10_drift_corrected", "mape_drift_corrected",
                            "rows"}
    assert figures["n"] == 3
    # The JSON carries the per-network rows the CSV holds, one per network, with the prediction and the measurement.
    import csv as csv_module

    with open(csv) as f:
        written = list(csv_module.DictReader(f))
    assert [r["arch"] for r in figures["rows"]] == [r["arch"] for r in written] and len(written) == 3
    assert all(r["predicted_ms"] > 0 and r["measured_ms"] > 0 for r in figures["rows"])
    assert figures["probe"]["factor"] > 0 and figures["probe"]["networks"] == 3  # the tiny table's 3 networks
    assert 0 <= figures["within_10_drift_corrected"] <= 1
    assert len(csv.read_text().strip().splitlines()) == 4
    from hilonas.latency.table import LatencyTable

    kept = LatencyTable.load(table.path)  # the table keeps the validation and the probe
    assert kept.validation["n"] == 3 and kept.validation["p90_ape"] == pytest.approx(figures["p90_ape"], abs=1e-4)
    assert kept.probes[-1]["factor"] == pytest.approx(figures["probe"]["factor"], abs=1e-4)


def test_validate_no_probe(capsys, built):
    space, table = built
    code, out, err = run(capsys, "latency", "validate", "--space", str(space), "--n", "2", "--seed", "2",
                         "--tables", str(table.path.parent), "--json", "--no-probe")
    assert code == 0, err
    assert json.loads(out)["probe"] is None
    from hilonas.latency.table import LatencyTable

    assert LatencyTable.load(table.path).probes == []


def test_mismatched_table_needs_force(capsys, built):
    space, table = built
    args = ("latency", "validate", "--space", str(space), "--n", "2", "--table", str(table.path), "--threads", "2")
    assert_one_line_error(run(capsys, *args), "threads", str(table.path), "--force")
    code, out, err = run(capsys, *args, "--force", "--json")
    assert code == 0, err


def test_corrupt_table_is_one_line_with_its_path(capsys, built):
    space, table = built
    text = table.path.read_text()[:-20]
    table.path.write_text(text)
    assert_one_line_error(run(capsys, "latency", "build", "--space", str(space), "--tables", str(table.path.parent)),
                          str(table.path), "corrupt")
    assert table.path.read_text() == text


def test_bench_latency_json(capsys, built):
    space, table = built
    code, out, err = run(capsys, "bench", "latency", "--space", str(space), "--tables", str(table.path.parent),
                         "--archs", "20", "--measure", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["predict_us"] > 0 and data["measure_over_predict"] > 1 and len(data["measured"]) == 1


@pytest.mark.parametrize("args, needle", [
    (("latency", "build", "--space", "no_such_space"), "no_such_space"),
    (("latency", "validate", "--space", "no_such_space"), "no_such_space"),
    (("latency", "build", "--threads", "0"), "--threads=0"),
    (("latency", "build", "--target", "tpu"), "tpu"),
    (("latency", "validate", "--n", "0"), "--n=0"),
    (("bench", "latency", "--archs", "0"), "--archs=0"),
    (("bench", "latency", "--measure", "0"), "--measure=0"),
    (("latency", "build", "--calib-networks", "-1"), "--calib-networks=-1"),
    (("hardware", "--batch", "0"), "--batch=0"),
])
def test_bad_inputs_are_one_line(capsys, tmp_path, args, needle):
    assert_one_line_error(run(capsys, *args, "--tables", str(tmp_path)), needle)


def test_without_a_table_validate_and_bench_say_build_first(capsys, tmp_path):
    assert_one_line_error(run(capsys, "latency", "validate", "--tables", str(tmp_path)), "latency build")
    assert_one_line_error(run(capsys, "bench", "latency", "--tables", str(tmp_path)), "latency build")


def test_validate_csv_is_written_atomically(capsys, built, tmp_path, monkeypatch):
    """--csv replaces the file whole: complete rows, no temporary file left; a failed write keeps the old file."""
    space, table = built
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    path = out_dir / "rows.csv"
    path.write_text("old contents\n")
    args = ("latency", "validate", "--space", str(space), "--n", "2", "--tables", str(table.path.parent), "--json",
            "--csv", str(path))
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert [p.name for p in out_dir.iterdir()] == ["rows.csv"]
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and {"arch", "predicted_ms", "measured_ms", "error"} <= set(rows[0])
    written = path.read_text()

    def fail_midway(self, rows):
        raise RuntimeError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", fail_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        main(list(args))
    assert path.read_text() == written and [p.name for p in out_dir.iterdir()] == ["rows.csv"]
