"""Latency limits that hold: ``--latency-margin`` pads each prediction before the limit is applied, ``auto`` uses the
table's validated p90 error, the Pareto page shows the error; a table of other model code is flagged on use."""
import json

import optuna
import pytest
from optuna.trial import TrialState

from hilonas.errors import HilonasError
from hilonas.search.driver import feasibility, parse_margin, run_search

from ..shared import assert_one_line_error, run_cli


def trials_of(workdir, name):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'runs' / name / 'study.db'}")
    return study, study.get_trials(states=(TrialState.COMPLETE,))


def table_file(workdir):
    return next((workdir / "latency_tables").glob("*.json"))


def predictions(workdir):
    """Predicted latency of every architecture of the tiny space, sorted."""
    from hilonas.latency.predictor import LatencyPredictor
    from hilonas.latency.table import LatencyTable
    from hilonas.spaces import SearchSpace

    space = SearchSpace.load(str(workdir / "space.yaml"))
    predictor = LatencyPredictor(LatencyTable.load(table_file(workdir)))
    return sorted(predictor.predict(a) for a in space.sample_distinct(space.size(), 0))


def test_feasibility_rule():
    assert feasibility(10.0, None, None) == {}
    assert feasibility(10.0, None, 0.1) == {"latency_margin": 0.1}
    attrs = feasibility(10.0, 10.5, 0.1)
    assert attrs["feasible"] is False and attrs["constraint"] == pytest.approx(0.5)
    assert feasibility(10.0, 11.0, 0.1)["feasible"] and feasibility(10.0, 10.0, None)["constraint"] == 0.0
    assert parse_margin("auto") == "auto" and parse_margin("0.05") == 0.05 and parse_margin(0) == 0.0


@pytest.mark.slow
def test_margin_pads_predictions_before_the_limit(workdir, settings):
    lat = predictions(workdir)
    # The limit pads the median prediction: about half the space is feasible with the margin, so 8 trials see both
    # kinds (the session's table is timed afresh each run; a limit at the median itself left none feasible at times)
    limit = lat[len(lat) // 2] * 1.25
    run_search(settings(workdir, trials=8, workers=1, executor="local", study="m", max_latency_ms=limit,
                        latency_margin="0.25"), progress=False)
    study, done = trials_of(workdir, "m")
    assert study.user_attrs["latency_margin"] == 0.25
    assert any(t.user_attrs["feasible"] for t in done) and not all(t.user_attrs["feasible"] for t in done)
    for t in done:
        padded = t.user_attrs["predicted_latency_ms"] * 1.25
        assert t.user_attrs["latency_margin"] == 0.25
        assert t.user_attrs["feasible"] == (padded <= limit)
        assert t.user_attrs["constraint"] == pytest.approx(padded - limit)
        assert ("skipped" in t.user_attrs) == (not t.user_attrs["feasible"])


@pytest.mark.slow
def test_auto_margin_uses_the_validated_p90_and_the_page_shows_it(workdir, settings):
    from hilonas.analysis.plots import pareto_figure
    from hilonas.latency.table import LatencyTable
    from hilonas.search.study import study_results

    table = LatencyTable.load(table_file(workdir))
    table.set_validation({"n": 8, "seed": 0, "mape": 0.03, "p90_ape": 0.07, "within_10": 0.9, "speed_factor": 1.0})
    table.save()
    run_search(settings(workdir, trials=2, workers=1, executor="local", study="a", max_latency_ms=1e6,
                        latency_margin="auto"), progress=False)
    study, done = trials_of(workdir, "a")
    assert study.user_attrs["latency_margin"] == 0.07 and study.user_attrs["latency_error_p90"] == 0.07
    assert all(t.user_attrs["latency_margin"] == 0.07 and t.user_attrs["feasible"] for t in done)
    df, _ = study_results(["a"], runs_dir=workdir / "runs")
    assert (df["latency_error"] == 0.07).all()
    hover = " ".join(h for trace in pareto_figure(df).data if trace.hovertext for h in trace.hovertext)
    assert "± 7.0%" in hover and "predicted " in hover


@pytest.mark.slow
def test_p90_is_recorded_and_shown_without_a_margin(workdir, settings):
    from hilonas.latency.table import LatencyTable
    from hilonas.search.study import study_results

    table = LatencyTable.load(table_file(workdir))
    table.set_validation({"n": 8, "seed": 0, "mape": 0.03, "p90_ape": 0.04, "within_10": 1.0, "speed_factor": 1.0})
    table.save()
    run_search(settings(workdir, trials=1, workers=1, executor="local", study="p"), progress=False)
    study, done = trials_of(workdir, "p")
    assert study.user_attrs["latency_error_p90"] == 0.04 and "latency_margin" not in study.user_attrs
    assert "latency_margin" not in done[0].user_attrs and "constraint" not in done[0].user_attrs
    df, _ = study_results(["p"], runs_dir=workdir / "runs")
    assert (df["latency_error"] == 0.04).all()


def test_auto_without_validation_is_one_line_naming_the_fix(workdir, settings):
    before = table_file(workdir).read_bytes()
    with pytest.raises(HilonasError) as err:
        run_search(settings(workdir, trials=1, executor="local", max_latency_ms=5.0, latency_margin="auto"),
                   progress=False)
    message = str(err.value)
    assert "--latency-margin" in message and "hilonas latency validate" in message and "fraction" in message
    assert "\n" not in message
    assert table_file(workdir).read_bytes() == before
    assert not list(workdir.rglob("study.db")), "refused before the study was created"


BAD_MARGINS = [-0.1, 1.0, "1.5", "abc", "nan"]


@pytest.mark.parametrize("margin", BAD_MARGINS, ids=[str(m) for m in BAD_MARGINS])
def test_bad_margin_is_one_line_before_anything_starts(workdir, settings, margin):
    with pytest.raises(HilonasError) as err:
        run_search(settings(workdir, trials=1, max_latency_ms=5.0, latency_margin=margin), progress=False)
    message = str(err.value)
    assert "--latency-margin" in message and "\n" not in message, message
    assert not list(workdir.rglob("study.db")), "refused before any study was created"


def test_bad_margin_from_the_cli_exits_2_with_one_line(workdir, capsys):
    result = run_cli(capsys, "search", "--space", str(workdir / "space.yaml"), "--trials", "1", "--no-progress",
                     "--max-latency-ms", "5", "--latency-margin", "lots", "--tables", str(workdir / "latency_tables"),
                     "--runs", str(workdir / "runs"))
    assert_one_line_error(result, "--latency-margin")


@pytest.mark.slow
def test_search_flags_a_table_of_other_model_code(workdir, settings, capsys):
    path = table_file(workdir)
    doc = json.loads(path.read_text())
    doc["settings"]["model_code"] = "000000000000"
    doc["settings"]["model_code_files"]["hilonet.py"] = "000000000000"  # the model changed since the build
    path.write_text(json.dumps(doc))
    run_search(settings(workdir, trials=1, workers=1, executor="local", study="stale"), progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "model code" in line]
    assert len(warnings) == 1 and str(path) in warnings[0] and "hilonas latency build --space" in warnings[0]
