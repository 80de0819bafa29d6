"""The Pareto page's hover shows each prediction with its error: the margin it was judged with, else the table's
validated p90 error recorded on the study; landmarks without a latency are left off the page."""
import pandas as pd
import pytest

from hilonas.analysis.plots import pareto_figure
from hilonas.analysis.results import latency_error, results_frame

ARCH = {"stages": [{"depth": 1, "dim": 8, "heads": 1, "mlp_ratio": 4.0, "mixer": "none", "alpha": 0.0, "window": 1}],
        "img_size": 32}


def record(number, lat, settings, **attrs):
    return {"study": "s", "number": number, "state": "COMPLETE", "accuracy": 0.5 + number / 100,
            "predicted_latency_ms": lat, "throughput": 1000 / lat, "arch": ARCH, "arch_text": "x",
            "settings": {"target": "cpu", "objective": "latency", **settings}, **attrs}


@pytest.mark.parametrize("attrs, settings, expected", [
    ({}, {}, None),
    ({}, {"latency_error_p90": 0.06}, 0.06),
    ({}, {"latency_margin": 0.1, "latency_error_p90": 0.06}, 0.1),
    ({"latency_margin": 0.02}, {"latency_margin": 0.1, "latency_error_p90": 0.06}, 0.02),
    ({"latency_margin": 0.0}, {"latency_error_p90": 0.06}, 0.06),
])
def test_latency_error_prefers_the_margin_then_the_p90(attrs, settings, expected):
    assert latency_error(attrs, settings) == expected


def hovers(fig):
    return [h for trace in fig.data if trace.hovertext for h in trace.hovertext]


def test_hover_shows_prediction_plus_minus_error():
    df = results_frame([record(0, 2.0, {"latency_error_p90": 0.064}), record(1, 3.0, {"latency_error_p90": 0.064})])
    assert (df["latency_error"] == 0.064).all()
    texts = hovers(pareto_figure(df))
    assert texts and all("predicted " in t and " ms ± 6.4%" in t for t in texts)
    plain = results_frame([record(0, 2.0, {})])
    assert all("±" not in t and "predicted 2.00 ms" in t for t in hovers(pareto_figure(plain)))


def test_landmarks_without_latency_are_left_off_the_page():
    df = results_frame([record(0, 2.0, {})])
    marks = results_frame([
        {**record(-1, 2.5, {}), "landmark": "measured"},
        {**record(-2, 1.0, {}), "landmark": "far", "state": "SKIPPED", "predicted_latency_ms": None,
         "throughput": None, "accuracy": None},
    ])
    trace = next(t for t in pareto_figure(df, marks).data if t.name == "reference architectures")
    assert list(trace.text) == ["measured"]
    assert isinstance(marks, pd.DataFrame) and len(marks) == 2  # the frame keeps both; only the page drops one
