"""The search corrects predictions by the speed probe (group factors and residual), records it on the study, keeps
one correction per study across resumes (so all its trials compare on one scale), and landmarks use it too."""
import optuna

from hilonas.config import ArchConfig
from hilonas.latency.predictor import LatencyPredictor
from hilonas.latency.probe import speed_kwargs
from hilonas.latency.table import LatencyTable
from hilonas.search.driver import STUDY_CORRECTION_ATTR, STUDY_PROBES_ATTR, STUDY_SPEED_ATTR, run_search


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
    kept = study.user_attrs[STUDY_CORRECTION_ATTR]
    assert kept == probes[0] and kept["group_factors"]  # the block correction is used when it explains the networks
    corrected = LatencyPredictor(table, **speed_kwargs(kept))
    for t in study.trials:
        arch = ArchConfig.from_dict(t.user_attrs["arch"])
        assert abs(t.user_attrs["predicted_latency_ms"] / corrected.predict(arch) - 1) < 1e-9
    # Resumed: a new probe is taken and recorded, the study keeps its first correction.
    run_search(settings(workdir, study="p", trials=3, workers=1, executor="local", probe=True), progress=False)
    study = _study(workdir, "p")
    assert study.user_attrs[STUDY_SPEED_ATTR] == factor and len(study.user_attrs[STUDY_PROBES_ATTR]) == 2
    assert study.user_attrs[STUDY_CORRECTION_ATTR] == kept
    new = [t for t in study.trials if t.number >= 2 and "predicted_latency_ms" in t.user_attrs]
    assert new and all(abs(t.user_attrs["predicted_latency_ms"] / corrected.predict(
        ArchConfig.from_dict(t.user_attrs["arch"])) - 1) < 1e-9 for t in new)


def test_no_probe_means_factor_one_and_nothing_recorded(workdir, settings):
    before = next((workdir / "latency_tables").glob("*.json")).read_bytes()
    run_search(settings(workdir, study="np", trials=1, workers=1, executor="local", probe=False), progress=False)
    study = _study(workdir, "np")
    assert study.user_attrs[STUDY_SPEED_ATTR] == 1.0 and STUDY_PROBES_ATTR not in study.user_attrs
    assert STUDY_CORRECTION_ATTR not in study.user_attrs
    assert next((workdir / "latency_tables").glob("*.json")).read_bytes() == before
