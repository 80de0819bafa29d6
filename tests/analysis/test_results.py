"""Front extraction, exactly, on hand-made studies; the renderer smoke-tested."""
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from hilonas.analysis.front import pareto_mask
from hilonas.analysis.results import front, results_frame
from hilonas.search.study import trial_records

ARCH = {"stages": [{"depth": 1, "dim": 8, "heads": 1, "mlp_ratio": 4.0, "mixer": "none", "alpha": 0.0, "window": 1}],
        "img_size": 32}


def test_pareto_mask_by_hand():
    acc = [0.9, 0.8, 0.85, 0.7, 0.9, 0.95]
    lat = [10., 5., 7., 6., 12., 20.]
    # 0: (0.9, 10) front; 1: (0.8, 5) front; 2: (0.85, 7) front; 3: dominated by 1; 4: dominated by 0; 5: front.
    assert pareto_mask(acc, lat) == [True, True, True, False, False, True]
    assert pareto_mask(acc, lat, feasible=[True, True, False, True, True, True]) == \
        [True, True, False, False, False, True]
    # Throughput is maximised: negate the latency-like axis.
    assert pareto_mask([0.9, 0.8], [100., 200.], maximize_second=True) == [True, True]
    assert pareto_mask([0.9, 0.8], [200., 100.], maximize_second=True) == [True, False]
    assert pareto_mask([0.5, 0.5], [3., 3.]) == [True, True]  # exact duplicates both stay
    assert pareto_mask([], []) == []


def make_study(name, points, limit=None):
    study = optuna.create_study(study_name=name, directions=["maximize", "minimize"])
    study.set_user_attr("hilonas_settings", f'{{"target": "cpu", "objective": "latency", "max_latency_ms": '
                                            f'{"null" if limit is None else limit}}}')
    for acc, lat in points:
        attrs = {"arch": ARCH, "arch_text": "x", "predicted_latency_ms": lat, "throughput": 1000 / lat,
                 "flops": 1, "params": 2}
        if limit is not None:
            attrs.update(feasible=lat <= limit, constraint=lat - limit)
        study.add_trial(create_trial(values=[acc, lat], params={"s0_depth": 1},
                                     distributions={"s0_depth": CategoricalDistribution([1, 2])}, user_attrs=attrs))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "boom"}))
    return study


def test_results_frame_front_constraint_and_merge():
    a = make_study("a", [(0.9, 10.), (0.8, 5.), (0.85, 7.), (0.7, 6.), (0.95, 20.)], limit=15.0)
    b = make_study("b", [(0.6, 1.), (0.5, 2.)])
    df = results_frame(trial_records(a) + trial_records(b))
    assert len(df) == 5 + 1 + 2 + 1
    fa = df[(df.study == "a") & df.on_front].number.tolist()
    assert sorted(fa) == [0, 1, 2]  # trial 4 (0.95 at 20 ms) is over the 15 ms limit: never on the front
    assert not df[(df.study == "a") & (df.number == 4)].feasible.item()
    assert df[(df.study == "b") & df.on_front].number.tolist() == [0]  # fronts are per study
    failed = df[df.state == "FAIL"]
    assert len(failed) == 2 and failed.accuracy.isna().all() and (failed.fail_reason == "boom").all()
    f = front(df)
    assert f[f.study == "a"].latency_ms.tolist() == [5.0, 7.0, 10.0]


def test_a_duplicate_is_not_a_front_member_of_its_own():
    """NSGA-II proposes networks it has tried: such a trial copies the first one's figures (duplicate_of) and the
    front holds the network once, as the trial that trained it."""
    study = make_study("d", [(0.9, 10.), (0.8, 5.)])
    first = study.trials[1]
    study.add_trial(create_trial(values=first.values, params=first.params, distributions=first.distributions,
                                 user_attrs={**first.user_attrs, "duplicate_of": first.number}))
    df = results_frame(trial_records(study))
    assert df[df.on_front].number.tolist() == [0, 1]
    assert df[df.duplicate_of.notna()].number.tolist() == [3]


def test_renderer_smoke(tmp_path):
    from hilonas.analysis.plots import pareto_figure, write_html

    df = results_frame(trial_records(make_study("a", [(0.9, 10.), (0.8, 5.), (0.7, 20.)], limit=15.0)))
    marks = results_frame([{"study": "a", "number": -1, "state": "COMPLETE", "accuracy": 0.85,
                            "predicted_latency_ms": 8.0, "throughput": 125.0, "landmark": "litv2-s-like",
                            "arch": ARCH, "arch_text": "x", "settings": {}}])
    fig = pareto_figure(df, marks)
    names = [t.name for t in fig.data]
    assert any("front" in n for n in names) and "reference architectures" in names
    page = write_html(fig, tmp_path / "p.html")
    text = page.read_text()
    assert "plotly" in text.lower() and "litv2-s-like" in text and len(text) > 1_000_000  # plotly.js embedded
    with pytest.raises(Exception, match="does not exist"):
        write_html(fig, tmp_path / "missing" / "p.html")


def test_knee_and_selection_rules():
    from hilonas.errors import HilonasError
    from hilonas.export import knee_index, select_trial

    # A front that rises steeply then flattens: the knee is the bend at (2, 0.9).
    assert knee_index([1.0, 2.0, 3.0, 4.0], [0.5, 0.9, 0.93, 0.95]) == 1
    assert knee_index([1.0, 2.0], [0.5, 0.9]) == 1
    df = results_frame(trial_records(make_study("a", [(0.9, 10.), (0.8, 5.), (0.85, 7.), (0.7, 6.), (0.95, 20.)],
                                                limit=15.0)))
    assert select_trial(df, max_latency_ms=8.0)["number"] == 2  # most accurate at <= 8 ms
    assert select_trial(df, min_accuracy=0.82)["number"] == 2  # fastest at >= 0.82
    assert select_trial(df, max_latency_ms=100.0)["number"] == 0  # trial 4 is over the study's limit
    assert select_trial(df, knee=True)["number"] in (0, 1, 2)
    with pytest.raises(HilonasError, match="no finished trial is that fast"):
        select_trial(df, max_latency_ms=1.0)
    with pytest.raises(HilonasError, match="exactly one"):
        select_trial(df, trial=0, knee=True)
    with pytest.raises(HilonasError, match="--trial=5 has no result"):
        select_trial(df, trial=5)  # the FAILED trial


def test_exported_trials_are_marked_measured_beside_their_prediction():
    from hilonas.analysis.plots import pareto_figure

    study = make_study("m", [(0.9, 10.0), (0.8, 5.0)])
    study.set_user_attr("measured_exports", {"1": {"measured_latency_ms": 5.5}})
    df = results_frame(trial_records(study))
    assert df.set_index("number")["measured_latency_ms"].to_dict()[1] == 5.5
    fig = pareto_figure(df)
    (measured,) = [t for t in fig.data if t.name and t.name.endswith("measured (exported)")]
    assert list(measured.x) == [5.5] and list(measured.y) == [0.8]
    assert "+10.0%" in measured.hovertext[0]
    # Latency axis only: on a throughput page there is no measured marker.
    assert not [t for t in pareto_figure(df, x="throughput").data if t.name and "measured" in t.name]


def test_a_trial_can_be_exported_from_a_study_with_skipped_trials():
    """A study with a latency limit has skipped (infeasible) trials; the others export by number."""
    import pandas as pd

    from hilonas.errors import HilonasError
    from hilonas.export import select_trial

    study = make_study("s", [(0.9, 10.0), (0.8, 5.0)], limit=7.0)
    study.add_trial(create_trial(values=[0.0, 9.0], params={"s0_depth": 1},
                                 distributions={"s0_depth": CategoricalDistribution([1, 2])},
                                 user_attrs={"arch": ARCH, "arch_text": "x", "predicted_latency_ms": 9.0,
                                             "throughput": 111.0, "feasible": False, "constraint": 2.0,
                                             "skipped": "predicted latency over --max-latency-ms: not trained"}))
    df = results_frame(trial_records(study))
    assert pd.isna(df.set_index("number").loc[1, "skipped"])  # NaN where a trial has no such text
    assert select_trial(df, trial=1)["number"] == 1
    with pytest.raises(HilonasError, match="not trained"):
        select_trial(df, trial=3)


def test_the_front_names_its_mixers_when_the_space_chooses_among_them():
    from hilonas.analysis.plots import mixers_of, pareto_figure

    assert mixers_of("[1x48 none | 1x192 hilo h4 a0.75 w2 | 1x384 hat h8 w7] @224") == "hilo/hat"
    assert mixers_of("[2x48 none | 3x192 cga h4 w7 r2 | 2x384 cga h8] @224") == "cga"
    df = results_frame(trial_records(make_study("mx", [(0.9, 10.0), (0.8, 5.0), (0.7, 20.0)])))
    df["arch_text"] = df["number"].map({0: "[1x8 none | 1x16 hat h2 w2] @32", 1: "[1x8 none | 1x16 cga h2 w2] @32",
                                        2: "[1x8 none | 1x16 hilo h2 w2] @32"}).fillna("")
    (front,) = [t for t in pareto_figure(df).data if t.name == "mx (cpu): front" and "markers" in t.mode]
    assert sorted(front.text) == ["cga", "hat"]
    df["arch_text"] = "[1x8 none | 1x16 hilo h2 w2] @32"  # one mixer everywhere: no labels
    (front,) = [t for t in pareto_figure(df).data if t.name == "mx (cpu): front" and "markers" in t.mode]
    assert front.text is None


def test_a_trial_over_the_limit_has_no_score_and_sits_at_the_floor_of_a_naswot_page():
    """Optuna holds 0 for a trial predicted over the limit (never scored): the frame gives it no score, and the
    page draws its cross at the bottom of its study's scores, so a NASWOT axis (hundreds) is not stretched to 0."""
    from hilonas.analysis.plots import pareto_figure

    study = make_study("n", [(480.0, 8.0), (505.0, 9.0)], limit=11.0)
    study.set_user_attr("hilonas_settings", '{"target": "cpu", "objective": "latency", "max_latency_ms": 11, '
                                            '"proxy": "naswot"}')
    study.add_trial(create_trial(values=[0.0, 14.0], params={"s0_depth": 1},
                                 distributions={"s0_depth": CategoricalDistribution([1, 2])},
                                 user_attrs={"arch": ARCH, "arch_text": "x", "predicted_latency_ms": 14.0,
                                             "throughput": 1000 / 14, "feasible": False,
                                             "skipped": "predicted latency over --max-latency-ms: not trained"}))
    df = results_frame(trial_records(study))
    over = df[df.number == 3].iloc[0]
    assert pd.isna(over.score) and not over.feasible and set(df.proxy) == {"naswot"} and df.accuracy.isna().all()
    fig = pareto_figure(df)
    crosses = [t for t in fig.data if t.name == "n (cpu): over the limit"]
    assert len(crosses) == 1 and list(crosses[0].y) == [480.0] and "not scored" in crosses[0].hovertext[0]
    assert min(y for t in fig.data if t.y is not None for y in t.y if y is not None) == 480.0
    assert fig.layout.yaxis.title.text.startswith("NASWOT score")
