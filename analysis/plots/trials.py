"""What the trials did: parameter importances and learning curves."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..labels import metric_label, param_label
from .axes import STATUS_COLORS, _wrap

if TYPE_CHECKING:
    pass


# --- importances --------------------------------------------------------------------------

def importance_png(table: pd.DataFrame, title: str) -> Figure:
    fig = Figure(figsize=(7, 0.45 * len(table) + 1.8), layout="constrained")
    ax = fig.add_subplot()
    ys = np.arange(len(table))
    h = 0.38
    ax.barh(ys - h / 2, table["fanova"], h, label="fANOVA")
    ax.barh(ys + h / 2, table["ped_anova"], h, label="PED-ANOVA")
    ax.set_yticks(ys, [param_label(p) for p in table["param"]])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("importance (share of the total)")
    fig.suptitle(_wrap(title, 7), fontsize=10)  # over the whole figure: the parameter labels take the left
    ax.legend(fontsize=7)
    return fig


def importance_plotly(table: pd.DataFrame, title: str) -> go.Figure:
    names = [param_label(p) for p in table["param"]]
    fig = go.Figure([go.Bar(y=names, x=table["fanova"], orientation="h", name="fANOVA"),
                     go.Bar(y=names, x=table["ped_anova"], orientation="h", name="PED-ANOVA")])
    fig.update_layout(title=title, barmode="group", template="plotly_white", xaxis={"range": [0, 1],
                      "title": "importance (share of the total)"}, yaxis={"autorange": "reversed"},
                      height=160 + 45 * len(table))
    return fig


# --- learning curves ----------------------------------------------------------------------

def _status_of(history: pd.DataFrame, results: pd.DataFrame | None) -> pd.Series:
    if results is None or "status" not in results.columns:
        return pd.Series("completed", index=history.index)
    m = results.groupby("trial_id")["status"].first()
    return history["trial_id"].map(m).fillna("completed")


def learning_png(history: pd.DataFrame, experiment: str, results: pd.DataFrame | None = None,
                 metric: str = "val_acc") -> Figure:
    h = history[history["experiment"] == experiment].sort_values(["trial_id", "epoch"])
    status = _status_of(h, results)
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot()
    seen = set()
    for tid, g in h.groupby("trial_id", sort=False):
        s = status.loc[g.index[0]]
        ax.plot(g["epoch"], g[metric], color=STATUS_COLORS.get(s, "k"), lw=0.8, alpha=0.6,
                label=None if s in seen else s)
        seen.add(s)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{experiment}: learning curves ({h['trial_id'].nunique()} trials)", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def learning_plotly(history: pd.DataFrame, experiment: str, results: pd.DataFrame | None = None,
                    metric: str = "val_acc") -> go.Figure:
    h = history[history["experiment"] == experiment].sort_values(["trial_id", "epoch"])
    status = _status_of(h, results)
    fig = go.Figure()
    # One trace per status, trials separated by None gaps: hundreds of trials
    # stay a handful of traces, keeping the HTML small and fast.
    for s, hs in h.groupby(status, sort=True):
        xs, ys = [], []
        for _, g in hs.groupby("trial_id", sort=False):
            xs += [*g["epoch"].tolist(), None]
            ys += [*g[metric].astype(float).tolist(), None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"{s} ({hs['trial_id'].nunique()})",
                                 line={"color": STATUS_COLORS.get(s, "black"), "width": 1}, opacity=0.6))
    fig.update_layout(title=f"{experiment}: learning curves", xaxis_title="epoch", yaxis_title=metric_label(metric),
                      template="plotly_white", height=420)
    return fig
