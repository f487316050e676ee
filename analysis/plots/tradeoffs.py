"""A variant's declared trade-off (analysis.tradeoffs.Tradeoff): each gain against the knob,
and accuracy against the size gain with the Pareto front and the pick."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from ..labels import metric_label, param_label
from ..tradeoffs import Tradeoff
from .axes import _log_axis, _plotly_log_axis, _wrap
from .sensitivity import _mpl_curve, _plotly_curve

if TYPE_CHECKING:
    from .tradeoffs import Tradeoff


# --- a variant's declared trade-offs (analysis.tradeoffs) -----------------------------------

def tradeoff_png(t: Tradeoff) -> Figure:
    """One panel per declared gain against the knob, then accuracy against the size gain
    with its Pareto front; every name from the variant's declaration (t.declared)."""
    d = t.declared
    n = len(d.gains) + 1
    fig = Figure(figsize=(13 * n / 3, 4.2), layout="constrained")
    axes = fig.subplots(1, n)
    pts, front = t.points, t.front()
    knob = pts[d.knob].astype(float)
    for ax, col in zip(axes, d.gains):
        curve = t.curves.get(col)
        if curve is not None:
            _mpl_curve(ax, curve, argmax=False)
            ax.legend(fontsize=7)
        else:
            ax.scatter(knob, pts[col], s=12, color="k")
            if knob.min() > 0 and knob.max() > knob.min():
                _log_axis(ax, float(knob.min()), float(knob.max()))
            ax.set_xlabel(param_label(d.knob))
            ax.set_ylabel(metric_label(col))
        ax.set_title(_wrap(f"{metric_label(col)} vs {d.knob}", 4.2), fontsize=10)
    ax = axes[-1]
    ax.scatter(pts[d.size], pts["acc"], s=14, color="0.5", label="trials")
    ax.plot(front[d.size], front["acc"], "o-", color="C3", label="Pareto front")
    ax.set_xlabel(metric_label(d.size))
    ax.set_ylabel(metric_label(t.acc_col))
    ax.set_title(_wrap(f"{metric_label(t.acc_col)} vs {metric_label(d.size)}", 4.2), fontsize=10)
    ax.legend(fontsize=7)
    fig.suptitle(f"{t.experiment}: {d.figure}", fontsize=11)
    return fig


def tradeoff_plotly(t: Tradeoff) -> go.Figure:
    d = t.declared
    pts, front = t.points, t.front()
    last = len(d.gains) + 1
    fig = make_subplots(rows=1, cols=last, subplot_titles=(
        *(f"{metric_label(col)} vs {d.knob}" for col in d.gains),
        f"{metric_label(t.acc_col)} vs {metric_label(d.size)}"))
    knob = pts[d.knob].astype(float)
    for col_i, col in enumerate(d.gains, 1):
        curve = t.curves.get(col)
        if curve is not None:
            _plotly_curve(fig, curve, argmax=False, row=1, col=col_i)
        else:
            fig.add_trace(go.Scatter(x=knob, y=pts[col], mode="markers", showlegend=False,
                                     marker={"color": "black"}), row=1, col=col_i)
        if knob.min() > 0 and knob.max() > knob.min():
            _plotly_log_axis(fig, float(knob.min()), float(knob.max()), row=1, col=col_i)
        fig.update_xaxes(title_text=param_label(d.knob), row=1, col=col_i)
        fig.update_yaxes(title_text=metric_label(col), row=1, col=col_i)

    def hover(v: pd.Series) -> pd.Series:
        return v.map(lambda e: f"{d.knob}={e:.3g}")

    fig.add_trace(go.Scatter(x=pts[d.size], y=pts["acc"], mode="markers", name="trials",
                             text=hover(pts[d.knob]), marker={"color": "gray"}), row=1, col=last)
    fig.add_trace(go.Scatter(x=front[d.size], y=front["acc"], mode="lines+markers", name="Pareto front",
                             text=hover(front[d.knob]), line={"color": "red"}), row=1, col=last)
    fig.update_xaxes(title_text=metric_label(d.size), row=1, col=last)
    fig.update_yaxes(title_text=metric_label(t.acc_col), row=1, col=last)
    fig.update_layout(title=f"{t.experiment}: {d.figure}", template="plotly_white", height=430)
    return fig
