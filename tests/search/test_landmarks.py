"""``pareto --landmarks`` on a machine that is not the study's target: latency from the target's table only, a
reference whose blocks the table lacks is 'not measurable here' (and left off the page), and no table file is
written."""
import dataclasses
import json

import optuna
import pytest
import yaml

from ..shared import TINY_SPACE
from .conftest import FAST_BUDGET

REFERENCES = {
    "ref-small": {"stages": [{"depth": 1, "dim": 8, "mlp_ratio": 2, "mixer": "none"},
                             {"depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2, "mixer": "hilo", "alpha": 0.5,
                              "window": 1}]},
    "ref-big": {"stages": [{"depth": 2, "dim": 16, "mlp_ratio": 2, "mixer": "none"},
                           {"depth": 2, "dim": 32, "heads": 2, "mlp_ratio": 2, "mixer": "hilo", "alpha": 0.5,
                            "window": 2}]},
}


def other_target(fp):
    """A fingerprint this machine does not have."""
    return dataclasses.replace(fp, device_name="Some Other CPU 9000")


def make_study(workdir, fingerprint):
    space_path = workdir / "space_refs.yaml"
    space_path.write_text(yaml.safe_dump({**TINY_SPACE, "references": REFERENCES}))
    study = optuna.create_study(study_name="far", storage=f"sqlite:///{workdir / 'far.db'}",
                                directions=["maximize", "minimize"])
    study.set_user_attr("hilonas_settings", json.dumps({
        "space": TINY_SPACE["name"], "space_source": str(space_path), "target": "cpu",
        "fingerprint_id": fingerprint.id, "fingerprint": fingerprint.to_dict(), "objective": "latency",
        "max_latency_ms": None, "data": None, "budget": dict(FAST_BUDGET), "seed": 0, "resolution": 16,
        "img_size": 32}))
    return study


def put_target_table(workdir, fingerprint, keep):
    """The session's table re-labelled as ``fingerprint``'s, keeping ``keep`` of its entries (all: None)."""
    from hilonas.latency.table import table_path

    source = next((workdir / "latency_tables").glob("*.json"))
    doc = json.loads(source.read_text())
    doc["fingerprint"], doc["fingerprint_id"] = fingerprint.to_dict(), fingerprint.id
    if keep is not None:
        doc["entries"] = dict(sorted(doc["entries"].items())[:keep])
    path = table_path(fingerprint, workdir / "latency_tables")
    path.write_text(json.dumps(doc))
    return path


def snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("keep", [0, None, "no table"])
def test_landmarks_on_a_non_target_machine_write_no_table(workdir, target_fp, keep, capsys):
    from hilonas.analysis.plots import pareto_figure
    from hilonas.search.landmarks import NOT_MEASURABLE, evaluate_landmarks, on_target
    from hilonas.search.study import study_results

    far = other_target(target_fp)
    assert far.id != target_fp.id
    if keep != "no table":
        put_target_table(workdir, far, keep)
    study = make_study(workdir, far)
    assert not on_target(json.loads(study.user_attrs["hilonas_settings"]), far)
    tables = workdir / "latency_tables"
    before = snapshot(tables)
    records = evaluate_landmarks(study, tables_dir=str(tables))
    assert snapshot(tables) == before  # not one byte written, no file added (no lock file either)
    assert sorted(r["landmark"] for r in records) == sorted(REFERENCES)
    if keep is None:  # the target's table has every block: predicted from it, trained
        assert all(r["predicted_latency_ms"] > 0 and r["state"] == "COMPLETE" for r in records)
    else:
        assert all(r["predicted_latency_ms"] is None and NOT_MEASURABLE in r["skipped"] for r in records)
        assert capsys.readouterr().err.count(NOT_MEASURABLE) == len(REFERENCES)
        trials, marks = study_results(["far"], storage_url=f"sqlite:///{workdir / 'far.db'}", with_landmarks=True)
        fig = pareto_figure(trials, marks)
        assert not [t for t in fig.data if t.name == "reference architectures"]  # left off the page


def test_landmarks_on_the_target_still_measure_missing_blocks(workdir, target_fp):
    from hilonas.latency.table import LatencyTable
    from hilonas.search.landmarks import evaluate_landmarks, on_target

    path = next((workdir / "latency_tables").glob("*.json"))
    doc = json.loads(path.read_text())
    doc["entries"] = dict(sorted(doc["entries"].items())[2:])  # two blocks to measure here
    path.write_text(json.dumps(doc))
    study = make_study(workdir, target_fp)
    assert on_target(json.loads(study.user_attrs["hilonas_settings"]), target_fp)
    records = evaluate_landmarks(study, tables_dir=str(workdir / "latency_tables"))
    assert all(r["predicted_latency_ms"] > 0 for r in records)
    assert len(LatencyTable.load(path)) > len(doc["entries"])


def test_landmarks_are_on_the_study_scale(workdir, target_fp):
    """A study whose trials were corrected by a speed probe predicts its landmarks with the same correction."""
    from hilonas.config import ArchConfig
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.probe import speed_kwargs
    from hilonas.latency.table import LatencyTable
    from hilonas.search.landmarks import evaluate_landmarks
    from hilonas.search.study import CORRECTION_ATTR

    far = other_target(target_fp)
    path = put_target_table(workdir, far, None)
    study = make_study(workdir, far)
    kept = {"factor": 1.3, "residual": 1.1, "group_factors": {"stem": 2.0, "block:hilo": 1.25}, "block_factor": 1.2}
    study.set_user_attr(CORRECTION_ATTR, kept)
    records = evaluate_landmarks(study, tables_dir=str(workdir / "latency_tables"))
    table = LatencyTable.load(path)
    corrected, base = LatencyPredictor(table, **speed_kwargs(kept)), LatencyPredictor(table)
    for r in records:
        arch = ArchConfig.from_dict(r["arch"])
        assert r["predicted_latency_ms"] == pytest.approx(corrected.predict(arch))
        assert r["predicted_latency_ms"] > 1.2 * base.predict(arch)
