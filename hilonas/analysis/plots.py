"""The Pareto page: an interactive plotly figure of the proxy's score vs latency (or throughput), with the promoted
accuracies of front members. Only module importing plotly.

The y axis is what the studies' trials were scored by (``score``): the short training's held-out top-1, where a
promoted member's triangle sits on the same axis joined to its proxy point, or the NASWOT score, which is not an
accuracy: then promoted accuracies get a second y axis on the right, each joined to its member by a dotted vertical
line (one network: the same latency).

Drawing only: the data (trials, fronts, landmarks) comes from :mod:`hilonas.analysis.results` and is tested there.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from hilonas.errors import HilonasError
from hilonas.io import atomic_write

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]


def _hover(row: pd.Series) -> str:
    flops = f"{row['flops'] / 1e9:.3f} G" if pd.notna(row.get("flops")) else "-"
    params = f"{row['params'] / 1e6:.2f} M" if pd.notna(row.get("params")) else "-"
    acc = _score_text(row)
    if pd.notna(row.get("promoted_accuracy")):
        acc += f" (promoted top-1 {row['promoted_accuracy']:.4f})"
    label = row.get("landmark") if isinstance(row.get("landmark"), str) else f"trial {row['number']}"
    error = row.get("latency_error")
    spread = f" ± {error:.1%}" if isinstance(error, (int, float)) and pd.notna(error) and error > 0 else ""
    return (f"<b>{row['study']} · {label}</b><br>{row.get('arch_text') or ''}<br>{acc}<br>"
            f"predicted {row['latency_ms']:.2f} ms{spread} ({row['throughput']:.0f} img/s)<br>"
            f"FLOPs {flops} · params {params}")


def _score_text(row: pd.Series) -> str:
    """'NASWOT 612.3' or 'accuracy 0.5123' (the proxy's score of a row), 'not scored' when it has none."""
    if pd.isna(row.get("score")):
        return "not scored"
    if row.get("proxy") == "naswot":
        return f"NASWOT {row['score']:.1f}"
    return f"accuracy {row['score']:.4f}"


def mixers_of(arch_text: str) -> str:
    """The attention mixers of an architecture's stages, from its ``describe()`` text: 'hilo', or 'hat/hilo' when
    stages differ ('none' stages left out; '' when there is no text)."""
    seen: list[str] = []
    for stage in str(arch_text or "").strip("[]").split(" @")[0].strip("[] ").split("|"):
        words = stage.split()
        if len(words) > 1 and words[1] != "none" and words[1] not in seen:
            seen.append(words[1])
    return "/".join(seen)


X_AXES = ("latency", "throughput")


def check_axis(x: str) -> str:
    """``x`` when it is one of :data:`X_AXES`; a HilonasError naming ``--x`` otherwise."""
    if x not in X_AXES:
        raise HilonasError(f"--x={x!r} is unknown: use {' or '.join(X_AXES)}")
    return x


def pareto_figure(df: pd.DataFrame, landmarks: pd.DataFrame | None = None, x: str = "latency") -> go.Figure:
    """Every trial (dominated ones faint), each study's front as a step line, limits and landmarks."""
    check_axis(x)
    col = "latency_ms" if x == "latency" else "throughput"
    fig = go.Figure()
    # Trials over the limit were not scored: drawn at the bottom of their study's scores, as faint crosses.
    done = df[(df["state"] == "COMPLETE") & (df["score"].notna() | ~df["feasible"]) & df["latency_ms"].notna()]
    second = _needs_second_axis(done)
    for i, (study, part) in enumerate(done.groupby("study", sort=False)):
        colour = _COLOURS[i % len(_COLOURS)]
        target = part["target"].iloc[0] or ""
        name = f"{study} ({target})" if target else str(study)
        mixers = part["arch_text"].map(mixers_of) if "arch_text" in part else pd.Series("", index=part.index)
        several = mixers.nunique() > 1  # a space that chooses among mixers: the front says which hold it
        floor = part["score"].min() if part["score"].notna().any() else 0.0
        for subset, opacity, label, size in (
                (part[~part["on_front"] & part["feasible"]], 0.3, "trials", 7),
                (part[~part["feasible"]], 0.15, "over the limit", 6),
                (part[part["on_front"]], 1.0, "front", 10)):
            if subset.empty:
                continue
            text = mixers[subset.index] if several and label == "front" else None
            fig.add_trace(go.Scatter(
                x=subset[col], y=subset["score"].fillna(floor), mode="markers+text" if text is not None else "markers",
                name=f"{name}: {label}", legendgroup=str(study), opacity=opacity, text=text,
                textposition="bottom center", textfont={"size": 10, "color": colour},
                marker={"color": colour, "size": size, "symbol": "x" if label == "over the limit" else "circle"},
                hovertext=[_hover(r) for _, r in subset.iterrows()], hoverinfo="text"))
        front = part[part["on_front"]].sort_values(col, ascending=(x == "latency"))
        if len(front) > 1:
            fig.add_trace(go.Scatter(x=front[col], y=front["score"], mode="lines", name=f"{name}: front",
                                     legendgroup=str(study), line={"color": colour, "shape": "hv", "width": 2},
                                     hoverinfo="skip", showlegend=False))
        _measured(fig, part, colour, name, str(study), x)
        _promoted(fig, part, colour, name, str(study), col, second)
        limit = part["max_latency_ms"].dropna()
        if not limit.empty:
            value = float(limit.iloc[0])
            xv = value if x == "latency" else 1000.0 / value
            fig.add_vline(x=xv, line={"color": colour, "dash": "dash"},
                          annotation_text=f"limit {value:g} ms ({study})", annotation_position="top")
    _landmarks(fig, landmarks, col)
    _layout(fig, done, second, x)
    return fig


def _landmarks(fig: go.Figure, landmarks: pd.DataFrame | None, col: str) -> None:
    """The space's reference architectures as labelled stars (one not measurable here has no latency: left off)."""
    if landmarks is None:
        return
    landmarks = landmarks[landmarks["latency_ms"].notna() & landmarks["score"].notna()]
    if not landmarks.empty:
        fig.add_trace(go.Scatter(
            x=landmarks[col], y=landmarks["score"], mode="markers+text", name="reference architectures",
            text=landmarks["landmark"], textposition="top center",
            marker={"symbol": "star", "size": 14, "color": "#444"},
            hovertext=[_hover(r) for _, r in landmarks.iterrows()], hoverinfo="text"))


def _layout(fig: go.Figure, done: pd.DataFrame, second: bool, x: str) -> None:
    """Titles and axes; with ``second``, the right-hand axis of the promoted accuracies."""
    fig.update_layout(
        title=("Accuracy (proxy)" if not second else "Proxy score and promoted accuracy") + " vs "
        + ("predicted latency" if x == "latency" else "throughput"),
        xaxis_title="predicted latency (ms, batch as measured)" if x == "latency" else "throughput (images/s)",
        yaxis_title=_score_title(done, second),
        template="plotly_white", hovermode="closest",
        legend={"orientation": "h", "y": -0.2})
    if second and "promoted_accuracy" in done and done["promoted_accuracy"].notna().any():
        fig.update_layout(yaxis2={"title": "top-1 accuracy (held-out), triangles: promoted (reference budget)"
                                           + _one(done, "data"), "overlaying": "y", "side": "right",
                                  "showgrid": False, "tickformat": ".1%",
                                  "range": _padded(done["promoted_accuracy"].dropna())})


def _padded(values: pd.Series) -> list[float]:
    """An axis range around ``values`` with room above and below (at least 2 points of accuracy each way), so that
    triangles at the extremes do not sit on the plot's edges."""
    lo, hi = float(values.min()), float(values.max())
    pad = max(0.25 * (hi - lo), 0.02)
    return [lo - pad, hi + pad]


def _needs_second_axis(done: pd.DataFrame) -> bool:
    """Whether promoted accuracies need an axis of their own: some study's score is not an accuracy (NASWOT)."""
    return "proxy" in done and bool((done["proxy"] != "train").any())


def _one(done: pd.DataFrame, column: str) -> str:
    """' on <value>' when every row agrees on ``column``, else ''."""
    values = set(done[column].dropna()) if column in done else set()
    return f" on {values.pop()}" if len(values) == 1 else ""


def _score_title(done: pd.DataFrame, second: bool) -> str:
    """The y axis: what the proxy points (and, on one axis, the promoted triangles) were scored on."""
    if not second:
        return (f"top-1 accuracy (held-out): proxy{_one(done, 'proxy_data')}; "
                f"triangles: promoted (reference budget){_one(done, 'data')}")
    if set(done["proxy"]) == {"naswot"}:
        return f"NASWOT score (log|K|, untrained network){_one(done, 'proxy_data')}: higher ranks higher"
    return "proxy score per study (NASWOT, or held-out top-1 of the short training)"


def _joins(fig: go.Figure, x0: pd.Series, y0: pd.Series, x1: pd.Series, y1: pd.Series, colour: str,
           group: str) -> None:
    """One dotted trace of segments (x0, y0) -> (x1, y1), row by row: a point joined to its second figure."""
    xs: list = []
    ys: list = []
    for a, b, c, d in zip(x0, y0, x1, y1):
        xs += [a, c, None]
        ys += [b, d, None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": colour, "dash": "dot", "width": 1},
                             legendgroup=group, hoverinfo="skip", showlegend=False))


def _measured(fig: go.Figure, part: pd.DataFrame, colour: str, name: str, group: str, x: str) -> None:
    """Exported trials re-measured on the target: a diamond at the measured figure, joined to the prediction."""
    if x != "latency" or "measured_latency_ms" not in part:
        return
    done = part[part["measured_latency_ms"].notna()]
    if done.empty:
        return
    _joins(fig, done["latency_ms"], done["score"], done["measured_latency_ms"], done["score"], colour, group)
    fig.add_trace(go.Scatter(
        x=done["measured_latency_ms"], y=done["score"], mode="markers", name=f"{name}: measured (exported)",
        legendgroup=group, marker={"color": colour, "size": 11, "symbol": "diamond-open", "line": {"width": 2}},
        hovertext=[f"<b>trial {r['number']}: measured {r['measured_latency_ms']:.2f} ms</b><br>predicted "
                   f"{r['latency_ms']:.2f} ms ({r['measured_latency_ms'] / r['latency_ms'] - 1:+.1%})"
                   for _, r in done.iterrows()], hoverinfo="text"))


def _promoted(fig: go.Figure, part: pd.DataFrame, colour: str, name: str, group: str, col: str,
              second: bool = False) -> None:
    """Front members trained again at the reference budget: a triangle at the promoted accuracy, joined to the proxy
    point by a dotted line (same latency: one network, two figures). With ``second`` the triangles sit on the right
    axis and the join is a dotted vertical line through the whole plot."""
    if "promoted_accuracy" not in part:
        return
    done = part[part["promoted_accuracy"].notna()]
    if done.empty:
        return
    if second:
        for xv in done[col]:
            fig.add_shape(type="line", x0=xv, x1=xv, yref="paper", y0=0, y1=1, layer="below",
                          line={"color": colour, "dash": "dot", "width": 1})
    else:
        _joins(fig, done[col], done["score"], done[col], done["promoted_accuracy"], colour, group)
    fig.add_trace(go.Scatter(
        x=done[col], y=done["promoted_accuracy"], mode="markers", name=f"{name}: promoted (reference budget)",
        yaxis="y2" if second else "y", legendgroup=group,
        marker={"color": colour, "size": 12, "symbol": "triangle-up", "line": {"width": 1, "color": "#222"}},
        hovertext=[_promoted_hover(r) for _, r in done.iterrows()], hoverinfo="text"))


def _promoted_hover(r: pd.Series) -> str:
    gain = (f" ({100 * (r['promoted_accuracy'] - r['score']):+.1f} points)" if r.get("proxy") == "train"
            else "")
    return (f"<b>trial {r['number']}: promoted top-1 {r['promoted_accuracy']:.4f}</b><br>proxy {_score_text(r)}"
            f"{gain}<br>{r.get('arch_text') or ''}")


def write_html(fig: go.Figure, path: str | Path) -> Path:
    """Write a self-contained page (plotly.js embedded: it opens offline), atomically."""
    path = Path(path)
    _check_dir(path)
    html = fig.to_html(include_plotlyjs=True, full_html=True, div_id="pareto")
    return atomic_write(path, html)


def write_png(fig: go.Figure, path: str | Path, width: int = 1100, height: int = 700) -> Path:
    """A static PNG through kaleido, which needs a Chromium; a clear message when there is none."""
    path = Path(path)
    _check_dir(path)
    try:
        data = fig.to_image(format="png", width=width, height=height)
    except Exception as err:
        raise HilonasError(f"--png {path}: static export needs kaleido and a Chromium browser "
                           f"({str(err).splitlines()[0][:120]}); install Debian's chromium, or use the HTML page") \
            from None
    return atomic_write(path, data)


def _check_dir(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise HilonasError(f"{path}: folder {parent} does not exist: create it or choose another path")
    if not os.access(parent, os.W_OK):
        raise HilonasError(f"{path}: folder {parent} is not writable: choose another path")
