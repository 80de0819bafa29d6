"""export --max-latency-ms holds the limit by measurement: a trial that re-measures over it is passed over (nothing
written for it, its measurement kept in the study) and the next most accurate trial under the limit is tried."""
import shutil

import pytest

from hilonas.errors import HilonasError
from hilonas.export import export_from_study
from hilonas.search.study import MEASURED_EXPORTS_ATTR, load_existing, study_results


@pytest.fixture
def study_copy(export_study, tmp_path):
    shutil.copytree(export_study / "runs", tmp_path / "runs")
    return tmp_path / "runs"


def _fake_remeasure(over: set[int], by_arch: dict[str, tuple[int, float]], calls: list[int]):
    """Measures trials in ``over`` at 3x their prediction, the others at their prediction."""

    def remeasure(arch, settings, tables_dir, *, arch_yaml, probe=True):
        number, predicted = by_arch[arch.describe()]
        calls.append(number)
        ms = predicted * (3.0 if number in over else 1.0)
        return {"measured": True, "measured_latency_ms": ms, "predicted_today_ms": predicted, "speed_factor": 1.0,
                "error": ms / predicted - 1, "measured_at": "now"}

    return remeasure


def _ranked(runs):
    df, _ = study_results(["ex"], None, runs)
    done = df[(df["state"] == "COMPLETE") & df["feasible"] & df["score"].notna() & df["landmark"].isna()]
    done = done.sort_values(["score", "latency_ms"], ascending=[False, True], kind="stable")
    by_arch = {r["arch_text"]: (int(r["number"]), float(r["latency_ms"])) for _, r in done.iterrows()}
    return done, by_arch


def test_a_trial_over_the_limit_is_passed_over(study_copy, monkeypatch, capsys):
    done, by_arch = _ranked(study_copy)
    assert len(done) >= 2
    first, second = (int(n) for n in done["number"].iloc[:2])
    limit = float(done["latency_ms"].max()) * 1.01  # every trial is under it by prediction
    calls: list[int] = []
    monkeypatch.setattr("hilonas.export.remeasure", _fake_remeasure({first}, by_arch, calls))
    row, target, prov = export_from_study("ex", runs_dir=study_copy, max_latency_ms=limit, tries=2)
    assert calls == [first, second] and int(row["number"]) == second
    assert target == study_copy / "ex" / f"export-trial{second}" and (target / "arch.yaml").is_file()
    assert not (study_copy / "ex" / f"export-trial{first}").exists()  # nothing written for the trial passed over
    assert [p["trial"] for p in prov["limit"]["passed_over"]] == [first]
    assert f"trial {first} re-measured" in capsys.readouterr().err
    measured = load_existing("ex", None, study_copy).user_attrs[MEASURED_EXPORTS_ATTR]
    assert {str(first), str(second)} <= set(measured)  # both measurements are kept for the Pareto page


def test_all_tries_over_the_limit_write_nothing(study_copy, monkeypatch, tmp_path):
    done, by_arch = _ranked(study_copy)
    limit = float(done["latency_ms"].max()) * 1.01
    calls: list[int] = []
    every = {n for n, _ in by_arch.values()}
    monkeypatch.setattr("hilonas.export.remeasure", _fake_remeasure(every, by_arch, calls))
    with pytest.raises(HilonasError, match=r"--max-latency-ms=.*nothing written; pass --tries N"):
        export_from_study("ex", tmp_path / "out", runs_dir=study_copy, max_latency_ms=limit, tries=1)
    assert len(calls) == 1 and not (tmp_path / "out").exists()
    with pytest.raises(HilonasError, match=r"--tries=0 must be >= 1"):
        export_from_study("ex", runs_dir=study_copy, max_latency_ms=limit, tries=0)
