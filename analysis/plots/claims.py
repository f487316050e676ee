"""The claims and comparisons: differences from the twin or baseline with their verdicts, tuned
vs tuned at a stated budget, and each variant's best against the baseline."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from plotly.subplots import make_subplots

from study.stats.intervals import zero_spread

from ..budget import best_label
from ..labels import metric_label
from .axes import _wrap

if TYPE_CHECKING:
    pass


# --- variant comparison -------------------------------------------------------------------

def _p_text(r) -> str:
    if r["test"] in ("baseline", "none"):
        return r["test"]
    p = "n/a" if not np.isfinite(r["p_value"]) else f"{r['p_value']:.3g}"
    return f"{r['diff']:+.4f} (p={p})"


def _panels(table: pd.DataFrame) -> list[tuple]:
    # table order: depth, then metrics as compare.METRICS lists them (val before test)
    keys = table[["depth", "metric"]]
    return list(dict.fromkeys(keys.itertuples(index=False, name=None)))


def comparison_png(table: pd.DataFrame) -> Figure:
    keys = _panels(table)
    fig = Figure(figsize=(5.5 * max(1, len(keys)), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(keys))))
    for ax, (depth, metric) in zip(axes, keys):
        g = table[(table["depth"] == depth) & (table["metric"] == metric)].reset_index(drop=True)
        xs = np.arange(len(g))
        err = np.vstack([g["mean"] - g["ci_lo"], g["ci_hi"] - g["mean"]])
        ax.errorbar(xs, g["mean"], yerr=np.nan_to_num(err), fmt="o", capsize=5)
        for i, r in g.iterrows():
            ax.annotate(f"n={r['n']} ({r['source']})\n{_p_text(r)}", (i, r["mean"]), textcoords="offset points",
                        xytext=(7, -4), fontsize=7)
        ax.set_xticks(xs, g["variant"])
        ax.set_xlim(-0.5, len(g) - 0.2)
        ax.set_ylabel(f"{metric_label(metric)} (mean, 95% CI)")
        ax.set_title(f"depth {depth}: {metric_label(metric)}", fontsize=10)
    return fig


def comparison_plotly(table: pd.DataFrame) -> go.Figure:
    keys = _panels(table)
    fig = make_subplots(rows=1, cols=max(1, len(keys)),
                        subplot_titles=[f"depth {d}: {metric_label(m)}" for d, m in keys] or [""])
    for i, (depth, metric) in enumerate(keys, 1):
        g = table[(table["depth"] == depth) & (table["metric"] == metric)]
        fig.add_trace(go.Scatter(
            x=g["variant"], y=g["mean"], mode="markers", showlegend=False, marker={"size": 9},
            error_y={"type": "data", "symmetric": False, "array": (g["ci_hi"] - g["mean"]).fillna(0),
                     "arrayminus": (g["mean"] - g["ci_lo"]).fillna(0)},
            text=[f"n={r['n']} ({r['source']}); diff vs {r['baseline']}: {_p_text(r)}" for _, r in g.iterrows()]),
            row=1, col=i)
        fig.update_yaxes(title_text=f"{metric_label(metric)} (mean, 95% CI)", row=1, col=i)
    fig.update_layout(title="Variants vs baseline (best configuration over seeds)", template="plotly_white",
                      height=430)
    return fig


# --- differences from the twin / baseline --------------------------------------------------

POINTS = 100.0  # differences of accuracies are drawn in accuracy points


def _diff_rows(claims: pd.DataFrame, tuned: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(panel title, rows with label/est/lo/hi/ref/verdict/flat) for panels that have an estimate."""
    panels = []
    c = claims[np.isfinite(claims["estimate"].astype(float))] if len(claims) else claims
    if len(c):
        flat = [zero_spread(r["ci_lo"], r["ci_hi"], r["n"]) for _, r in c.iterrows()]
        panels.append(("Claims: variant minus twin, or better minus worse level", pd.DataFrame({
            "label": [textwrap.fill(f"{r['claim']} (depth {r['depth']}, "
                                    + (f"{r['setting']}, " if isinstance(r.get("setting"), str) and r.get("setting")
                                       else "") + f"n={r['n']}"
                                    + ("; identical at every seed, no spread)" if f else ")"), 48)
                      for f, (_, r) in zip(flat, c.iterrows())],
            "est": c["estimate"].astype(float) * POINTS, "lo": c["ci_lo"].astype(float) * POINTS,
            "hi": c["ci_hi"].astype(float) * POINTS, "ref": c["null"].astype(float) * POINTS,
            "reported": (c["reported"].astype(float) if "reported" in c.columns else np.nan) * POINTS,
            "verdict": c["verdict"], "flat": flat})))
    t = tuned[np.isfinite(tuned["diff"].astype(float))] if len(tuned) else tuned
    if len(t):
        flat = [zero_spread(r["ci_lo"], r["ci_hi"], r["n"]) for _, r in t.iterrows()]
        panels.append((f"Tuned vs tuned: {metric_label(t['metric'].iloc[0])}, variant minus "
                        f"{t['baseline'].iloc[0]}", pd.DataFrame({
            "label": [textwrap.fill(f"{r['subject']} (depth {r['depth']}, {r['n']} vs {r['n_baseline']} seeds"
                                    + ("; identical at every seed, no spread)" if f else ")"), 48)
                      for f, (_, r) in zip(flat, t.iterrows())],
            "est": t["diff"].astype(float) * POINTS, "lo": t["ci_lo"].astype(float) * POINTS,
            "hi": t["ci_hi"].astype(float) * POINTS, "ref": 0.0, "reported": np.nan, "verdict": t["verdict"],
            "flat": flat})))
    return panels


VERDICT_COLORS = {"reproduced": "#2ca02c", "better": "#2ca02c", "contradicted": "#d62728", "worse": "#d62728",
                  "smaller than reported": "#ff7f0e", "open": "#7f7f7f", "inconclusive": "#7f7f7f",
                  "not exercised": "#bbbbbb"}


def differences_png(claims: pd.DataFrame, tuned: pd.DataFrame) -> Figure | None:
    """Differences with 95% intervals and a zero line; None when nothing has an estimate."""
    panels = _diff_rows(claims, tuned)
    if not panels:
        return None
    lines = sum(p["label"].str.count("\n").sum() + len(p) for _, p in panels)
    fig = Figure(figsize=(9, max(3.0, 0.32 * lines + 1.3 * len(panels))), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(panels), 1, height_ratios=[len(p) + 1 for _, p in panels]))
    for ax, (title, p) in zip(axes, panels):
        ys = np.arange(len(p))
        for y, (_, r) in zip(ys, p.iterrows()):
            color = VERDICT_COLORS.get(r["verdict"], "k")
            err = [[r["est"] - r["lo"]], [r["hi"] - r["est"]]] if np.isfinite(r["lo"]) else None
            ax.errorbar([r["est"]], [y], xerr=err, fmt="o", capsize=4, color=color,
                        mfc="white" if r["flat"] else color)
            if r["ref"] != 0:
                ax.plot([r["ref"]] * 2, [y - 0.35, y + 0.35], color="C1", lw=1.5)
            if np.isfinite(r["reported"]):
                ax.plot([r["reported"]], [y], marker="D", ms=6, color="C4", mfc="none", ls="none")
        ax.axvline(0, color="k", lw=1)
        ax.set_yticks(ys, p["label"], fontsize=7)
        ax.set_ylim(len(p) - 0.5, -0.5)
        ax.set_title(_wrap(title, 6), fontsize=9)
        margin = bool((p["ref"] != 0).any())
        reported = bool(np.isfinite(p["reported"].astype(float)).any())
        ax.set_xlabel("difference in accuracy points, 95% CI" + ("; orange: non-inferiority margin" if margin else "")
                      + ("; purple diamond: the effect the paper reports" if reported else ""), fontsize=8)
    return fig


def differences_plotly(claims: pd.DataFrame, tuned: pd.DataFrame) -> go.Figure | None:
    panels = _diff_rows(claims, tuned)
    if not panels:
        return None
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[t for t, _ in panels], vertical_spacing=0.18,
                        row_heights=[len(p) + 1 for _, p in panels])
    for i, (_, p) in enumerate(panels, 1):
        labels = p["label"].str.replace("\n", "<br>", regex=False)
        fig.add_trace(go.Scatter(
            x=p["est"], y=labels, mode="markers", showlegend=False,
            marker={"size": 10, "color": [VERDICT_COLORS.get(v, "black") for v in p["verdict"]],
                    "symbol": ["circle-open" if f else "circle" for f in p["flat"]]},
            error_x={"type": "data", "symmetric": False, "array": (p["hi"] - p["est"]).fillna(0),
                     "arrayminus": (p["est"] - p["lo"]).fillna(0)},
            text=[f"{v}: {e:+.2f} [{lo:+.2f}, {hi:+.2f}] points" + (" (identical at every seed)" if f else "")
                  for v, e, lo, hi, f in zip(p["verdict"], p["est"], p["lo"], p["hi"], p["flat"])]), row=i, col=1)
        margins = p[p["ref"] != 0]
        if len(margins):
            fig.add_trace(go.Scatter(x=margins["ref"], y=labels[margins.index], mode="markers", name="margin",
                                     marker={"symbol": "line-ns-open", "size": 18, "color": "orange"},
                                     showlegend=False), row=i, col=1)
        rep = p[np.isfinite(p["reported"].astype(float))]
        if len(rep):
            fig.add_trace(go.Scatter(x=rep["reported"], y=labels[rep.index], mode="markers", name="reported",
                                     marker={"symbol": "diamond-open", "size": 11, "color": "purple"},
                                     text=[f"reported {x:+.2f} points" for x in rep["reported"]],
                                     showlegend=False), row=i, col=1)
        fig.add_vline(x=0, line={"color": "black", "width": 1}, row=i, col=1)
        fig.update_yaxes(type="category", autorange="reversed", row=i, col=1)
        fig.update_xaxes(title_text="difference in accuracy points (95% CI)", row=i, col=1)
    fig.update_layout(title="Differences from the twin / baseline (green reproduced, orange smaller than "
                            "reported, red contradicted, grey open)", template="plotly_white",
                      height=180 + 48 * sum(len(p) for _, p in panels) + 60 * len(panels))
    return fig


# --- tuned vs tuned at a stated budget ---------------------------------------------------------


def budget_png(table: pd.DataFrame) -> Figure | None:
    """Expected best validation accuracy against the number of search trials, each
    variant beside the baseline, one panel per depth; None when there is no curve."""
    if table.empty:
        return None
    depths = sorted(table["depth"].unique())
    fig = Figure(figsize=(4.2 * len(depths), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(depths), squeeze=False)[0])
    for ax, depth in zip(axes, depths):
        g = table[table["depth"] == depth]
        base = g.groupby("budget")["baseline_expected_best"].first()
        ax.plot(base.index, base.to_numpy(), "k--", marker="o", ms=3, label=str(g["baseline"].iloc[0]))
        for i, (s, h) in enumerate(g.groupby("subject")):
            ax.plot(h["budget"], h["expected_best"], marker="o", ms=3, color=f"C{i}", label=s)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
        ax.set_xlabel("search trials (budget n)", fontsize=8)
        ax.set_ylabel(_wrap(f"expected {best_label(g['metric'].iloc[0])} of n trials", 3.0), fontsize=8)
        ax.set_title(f"depth {depth}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return fig


def budget_plotly(table: pd.DataFrame) -> go.Figure | None:
    if table.empty:
        return None
    depths = sorted(table["depth"].unique())
    fig = make_subplots(rows=1, cols=len(depths), subplot_titles=[f"depth {d}" for d in depths])
    for col, depth in enumerate(depths, start=1):
        g = table[table["depth"] == depth]
        base = g.groupby("budget")["baseline_expected_best"].first()
        fig.add_trace(go.Scatter(x=list(base.index), y=base.to_numpy(), name=str(g["baseline"].iloc[0]),
                                 line={"dash": "dash", "color": "black"}, showlegend=col == 1), row=1, col=col)
        for s, h in g.groupby("subject"):
            fig.add_trace(go.Scatter(x=h["budget"], y=h["expected_best"], name=s, showlegend=col == 1),
                          row=1, col=col)
        fig.update_xaxes(title_text="search trials (budget n)", row=1, col=col, dtick=1)
    fig.update_yaxes(title_text=f"expected {best_label(table['metric'].iloc[0])}", row=1, col=1)
    fig.update_layout(height=340, margin={"t": 40, "b": 40})
    return fig
