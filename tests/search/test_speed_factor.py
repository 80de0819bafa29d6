"""The search scales predictions by the speed probe's factor, records it on the study, and keeps one factor per
study across resumes (so all its trials compare on one scale)."""
import optuna

from hilonas.config import ArchConfig
from hilonas.latency.predictor import LatencyPredictor
from hilonas.latency.table import LatencyTable
from hilonas.search.driver import STUDY_PROBES_ATTR, STUDY_SPEED_ATTR, run_search


def _study(workdir, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'runs' / name / 'study.db'}")


def test_factor_is_applied_recorded_and_kept_on_resume(workdir, settings):
    run_search(settings(workdir, study="p", trials=2, workers=1, executor="local", probe=True), progress=False)
    study = _study(workdir, "p")
    factor = study.user_attrs[STUDY_SPEED_ATTR]
    probes = study.user_attrs[STUDY_PROBES_ATTR]
    assert len(probes) == 1 and probes[0]["factor"] == factor and factor > 0
    table = LatencyTable.load(next((workdir / "latency_tables").glob("*.json")))
    assert table.probes[-1]["factor"] == factor  # the table's history has it too
    predictor = LatencyPredictor(table)
    for t in study.trials:
        base = predictor.predict_base(ArchConfig.from_dict(t.user_attrs["arch"]))
        assert abs(t.user_attrs["predicted_latency_ms"] / (base * factor) - 1) < 1e-9
    # Resumed: a new probe is taken and recorded, the study keeps its first factor.
    run_search(settings(workdir, study="p", trials=3, workers=1, executor="local", probe=True), progress=False)
    study = _study(workdir, "p")
    assert study.user_attrs[STUDY_SPEED_ATTR] == factor and len(study.user_attrs[STUDY_PROBES_ATTR]) == 2


def test_no_probe_means_factor_one_and_nothing_recorded(workdir, settings):
    before = next((workdir / "latency_tables").glob("*.json")).read_bytes()
    run_search(settings(workdir, study="np", trials=1, workers=1, executor="local", probe=False), progress=False)
    study = _study(workdir, "np")
    assert study.user_attrs[STUDY_SPEED_ATTR] == 1.0 and STUDY_PROBES_ATTR not in study.user_attrs
    assert next((workdir / "latency_tables").glob("*.json")).read_bytes() == before
