"""Figures: each plot as a matplotlib Figure (PNG) and a plotly Figure (HTML).

Matplotlib figures are built with the object API (matplotlib.figure.Figure),
which renders through the Agg canvas without touching pyplot's global
backend or figure registry: safe in servers, tests and notebooks alike.

What every figure keeps to: axes and legends in words (labels.py), log axes
labelled at 1-2-5 steps only (default minor labels overlap), titles wrapped to
the figure's width, categories in reading order (numbers numerically), and a
panel drawn only when it holds information (a rate that is zero everywhere is
said in the title instead).
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullFormatter
from plotly.subplots import make_subplots

from .budget import best_label
from .declared import level_rates
from .labels import fidelity_label, metric_label, param_label
from .sensitivity import Curve, level_order
from study.stats.intervals import zero_spread

if TYPE_CHECKING:
    from .tradeoffs import Tradeoff

STATUS_COLORS = {"completed": "#1f77b4", "pruned": "#b0b0b0", "diverged": "#d62728", "failed": "#ff7f0e"}
BAND = "rgba(31,119,180,0.2)"
MAX_LOG_TICKS = 6
CHARS_PER_INCH = 13  # a 10 pt title: how many characters fit in an inch of figure width


def _label(c: Curve) -> str:
    what = f"{metric_label(c.metric)} vs {param_label(c.param)}"
    return f"{c.experiment}: {what}" if c.experiment else what


def _wrap(text: str, inches: float) -> str:
    return textwrap.fill(text, max(20, int(inches * CHARS_PER_INCH)))


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick positions for a log axis over [lo, hi]: 1-2-5 steps, thinned to at
    most MAX_LOG_TICKS, at least two (finer steps inside a narrow range)."""
    lo, hi = min(lo, hi), max(lo, hi)
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for subs in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), tuple(range(1, 10))):
        ticks = [float(f"{m * 10.0**e:.6g}") for e in decades for m in subs if lo <= m * 10.0**e <= hi]
        if len(ticks) >= 2:
            break
    if len(ticks) > MAX_LOG_TICKS:
        ticks = ticks[::math.ceil(len(ticks) / MAX_LOG_TICKS)]
    return ticks if len(ticks) >= 2 else [float(f"{lo:.2g}"), float(f"{hi:.2g}")]


def _log_axis(ax, lo: float, hi: float, axis: str = "x") -> None:
    """A log axis whose labels do not overlap: plain numbers at log_ticks, no minor labels."""
    a = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    ticks = log_ticks(lo, hi)
    a.set_major_locator(FixedLocator(ticks))
    a.set_ticklabels([f"{t:g}" for t in ticks])
    a.set_minor_formatter(NullFormatter())


def _plotly_log_axis(fig: go.Figure, lo: float, hi: float, **rc) -> None:
    ticks = log_ticks(lo, hi)
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks], **rc)


# --- sensitivity curve --------------------------------------------------------------------

def _mpl_curve(ax, c: Curve, *, argmax: bool = True) -> None:
    ax.fill_between(c.grid, c.lo, c.hi, color="C0", alpha=0.2, lw=0, label="95% bootstrap band")
    # an optimum is what a response curve is read for; a compression curve only has a trend
    what = c.result if argmax else ("" if c.detectable else "no detectable trend")
    ax.plot(c.grid, c.mean, color="C0", ls="-" if c.detectable else "--",
            label=f"GP fit (n={c.n})" + (f": {what}" if what else ""))
    ax.scatter(c.x, c.y, s=12, color="k", alpha=0.7, zorder=3, label="trials")
    if argmax and c.detectable:
        ax.axvspan(c.argmax_lo, c.argmax_hi, color="C3", alpha=0.1, lw=0)
        ax.axvline(c.argmax, color="C3", ls="--", lw=1)
    if c.log:
        _log_axis(ax, float(c.grid[0]), float(c.grid[-1]))
    ax.set_xlabel(param_label(c.param))
    ax.set_ylabel(metric_label(c.metric))


def curve_png(c: Curve) -> Figure:
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    _mpl_curve(ax, c)
    ax.set_title(_wrap(_label(c), 6.5), fontsize=10)
    ax.legend(fontsize=7)
    return fig


def _plotly_curve(fig: go.Figure, c: Curve, *, argmax: bool = True, **rc) -> None:
    fig.add_trace(go.Scatter(x=np.r_[c.grid, c.grid[::-1]], y=np.r_[c.hi, c.lo[::-1]], fill="toself",
                             fillcolor=BAND, line={"width": 0}, hoverinfo="skip", name="95% band",
                             showlegend=False), **rc)
    fig.add_trace(go.Scatter(x=c.grid, y=c.mean, mode="lines",
                             line={"color": "#1f77b4", "dash": "solid" if c.detectable else "dash"},
                             name=f"GP fit (n={c.n})", showlegend=False), **rc)
    fig.add_trace(go.Scatter(x=c.x, y=c.y, mode="markers", marker={"size": 6, "color": "black", "opacity": 0.7},
                             name="trials", showlegend=False), **rc)
    if argmax and c.detectable:
        fig.add_vrect(x0=c.argmax_lo, x1=c.argmax_hi, fillcolor="red", opacity=0.08, line_width=0, **rc)
        fig.add_vline(x=c.argmax, line={"color": "red", "dash": "dash", "width": 1}, **rc)


def curve_plotly(c: Curve) -> go.Figure:
    fig = go.Figure()
    _plotly_curve(fig, c)
    fig.update_layout(title=f"{_label(c)}<br><sup>{c.result}, n={c.n}</sup>", xaxis_title=param_label(c.param),
                      yaxis_title=metric_label(c.metric), template="plotly_white", height=420)
    if c.log:
        _plotly_log_axis(fig, float(c.grid[0]), float(c.grid[-1]))
    return fig


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


# --- categorical levels -------------------------------------------------------------------

def _fidelities(g: pd.DataFrame) -> list[str]:
    if "fidelity" not in g.columns:
        return ["final"]
    f = [x for x in g["fidelity"].unique() if x != "final"]
    return sorted(f, key=lambda x: int(str(x).split()[-1])) + (["final"] if (g["fidelity"] == "final").any() else [])


def _sel(levels: pd.DataFrame, experiment: str, param: str) -> pd.DataFrame:
    g = levels[(levels["experiment"] == experiment) & (levels["param"] == param)].reset_index(drop=True)
    if "fidelity" not in g.columns:
        g = g.assign(fidelity="final")
    return g.assign(level=g["level"].astype(str))


def levels_drawable(levels: pd.DataFrame, experiment: str, param: str) -> bool:
    """Whether a levels figure would compare anything: two levels or more
    with a finite mean (at some fidelity)."""
    g = _sel(levels, experiment, param)
    return g.loc[np.isfinite(g["mean"].astype(float)), "level"].nunique() >= 2


_RATE_COLORS = ("#7f7f7f", "#9467bd", "#8c564b", "#e377c2")  # the variants' own rates, in declaration order


def _all_rates() -> list[tuple[str, str, str, str]]:
    """(column, legend, colour, what a trial counted by it did) of every rate a levels
    table can hold: divergence, then the rates the variants declare."""
    declared = [(r.column, r.label, _RATE_COLORS[i % len(_RATE_COLORS)], r.event)
                for i, r in enumerate(level_rates())]
    return [("divergence_rate", "divergence rate", "#d62728", "diverged"), *declared]


def _rates(fin: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(column, legend, colour) of the failure rates worth a panel: those above zero somewhere."""
    return [(col, name, color) for col, name, color, _ in _all_rates()
            if col in fin.columns and (fin[col].astype(float).fillna(0) > 0).any()]


def _rates_note(fin: pd.DataFrame, rates: list) -> str:
    """The rates left out for being zero, in words: "no trial diverged"."""
    shown = {c for c, _, _ in rates}
    # divergence is counted for every variant; a declared rate only where its variant reports it
    quiet = [event for col, _, _, event in _all_rates() if col not in shown
             and (col == "divergence_rate" or (col in fin.columns and fin[col].notna().any()))]
    return f"no trial {' or '.join(quiet)}" if quiet and len(fin) else ""


def levels_png(levels: pd.DataFrame, experiment: str, param: str) -> Figure:
    g = _sel(levels, experiment, param)
    names = level_order(g["level"])
    xs0 = {n: i for i, n in enumerate(names)}
    fids = _fidelities(g)
    fin = g[g["fidelity"] == "final"]
    rates = _rates(fin)
    width = max(6.0, 1.2 * len(names) + 2)
    fig = Figure(figsize=(width, 5.5 if rates else 4.2), layout="constrained")
    if rates:
        ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.4])
    else:
        ax, ax2 = fig.add_subplot(), None
    for j, f in enumerate(fids):
        gf = g[g["fidelity"] == f]
        if not np.isfinite(gf["mean"].astype(float)).any():
            continue  # no trial at this fidelity has a value: no legend entry for nothing
        xs = np.array([xs0[v] for v in gf["level"]]) + 0.12 * (j - (len(fids) - 1) / 2)
        err = np.vstack([gf["mean"] - gf["ci_lo"], gf["ci_hi"] - gf["mean"]])
        ax.errorbar(xs, gf["mean"], yerr=np.nan_to_num(err), fmt="o", capsize=4,
                    color=_fid_color(j, len(fids)), label=fidelity_label(f))
        for x, m, n in zip(xs, gf["mean"], gf["n_completed"]):
            if np.isfinite(m):  # neighbouring fidelities' counts above and below: they never collide
                ax.annotate(f"n={n}", (x, m), textcoords="offset points", xytext=(4, 4 if j % 2 else -11),
                            fontsize=7)
    ax.set_ylabel(f"mean {metric_label('val_acc')}\n(95% CI)")
    note = _rates_note(fin, rates)
    ax.set_title(_wrap(f"{experiment}: {param_label(param)}" + (f" ({note})" if note else ""), width),
                 fontsize=10)
    ax.legend(fontsize=7)
    bottom = ax
    if ax2 is not None:
        xs = np.array([xs0[v] for v in fin["level"]])
        w = 0.8 / len(rates)
        for k, (col, name, color) in enumerate(rates):
            ax2.bar(xs + w * (k - (len(rates) - 1) / 2), fin[col].astype(float).fillna(0), w, color=color,
                    label=name)
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("share of trials")
        ax2.legend(fontsize=7)
        bottom = ax2
    bottom.set_xticks(range(len(names)), names)
    bottom.set_xlim(-0.6, len(names) - 0.4)
    bottom.set_xlabel(param_label(param))
    return fig


def levels_plotly(levels: pd.DataFrame, experiment: str, param: str) -> go.Figure:
    g = _sel(levels, experiment, param)
    names = level_order(g["level"])
    fids = _fidelities(g)
    fin = g[g["fidelity"] == "final"]
    rates = _rates(fin)
    fig = make_subplots(rows=2 if rates else 1, cols=1, shared_xaxes=True,
                        row_heights=[0.68, 0.32] if rates else None, vertical_spacing=0.06)
    for j, f in enumerate(fids):
        gf = g[g["fidelity"] == f]
        if not np.isfinite(gf["mean"].astype(float)).any():
            continue
        fig.add_trace(go.Scatter(x=gf["level"], y=gf["mean"], mode="markers", name=fidelity_label(f),
                                 marker={"color": _fid_color(j, len(fids)), "size": 9},
                                 error_y={"type": "data", "symmetric": False,
                                          "array": (gf["ci_hi"] - gf["mean"]).fillna(0),
                                          "arrayminus": (gf["mean"] - gf["ci_lo"]).fillna(0)},
                                 text=[f"{f}: n completed {a} of {b}" for a, b in
                                       zip(gf["n_completed"], gf["n_trials"])]), row=1, col=1)
    for col, name, color in rates:
        fig.add_trace(go.Bar(x=fin["level"], y=fin[col], name=name, marker_color=color), row=2, col=1)
    fig.update_yaxes(title_text=f"mean {metric_label('val_acc')} (95% CI)", row=1, col=1)
    if rates:
        fig.update_yaxes(title_text="share of trials (final)", range=[0, 1], row=2, col=1)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=names)
    fig.update_xaxes(title_text=param_label(param), row=2 if rates else 1, col=1)
    note = _rates_note(fin, rates)
    fig.update_layout(title=f"{experiment}: {param_label(param)}" + (f"<br><sup>{note}</sup>" if note else ""),
                      template="plotly_white", height=480 if rates else 400, barmode="group")
    return fig


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


# --- sensitivity at every fidelity ---------------------------------------------------------

FIDELITY_COLORS = ["#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b"]


def _fid_order(curves: list[Curve]) -> list[Curve]:
    # rungs by epoch, the final (completed-trial) fit last and darkest
    return sorted(curves, key=lambda c: (c.epoch is None, c.epoch or 0))


def _fid_color(i: int, n: int) -> str:
    return FIDELITY_COLORS[-1] if i == n - 1 else FIDELITY_COLORS[min(i, len(FIDELITY_COLORS) - 2)]


def _curves_title(curves: list[Curve]) -> str:
    c0 = curves[0]
    flat = "" if any(c.detectable for c in curves) else ": no detectable effect"
    return f"{c0.experiment}: {metric_label(c0.metric)} vs {param_label(c0.param)}{flat}"


def curves_png(curves: list[Curve]) -> Figure:
    """One parameter's fits at every fidelity (rung epochs and final), overlaid;
    a fit without a detectable effect is dashed and says so in the legend."""
    curves = _fid_order(curves)
    c0 = curves[0]
    fig = Figure(figsize=(6.5, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for i, c in enumerate(curves):
        col = _fid_color(i, len(curves))
        ax.fill_between(c.grid, c.lo, c.hi, color=col, alpha=0.18, lw=0)
        ax.plot(c.grid, c.mean, color=col, ls="-" if c.detectable else "--",
                label=f"{c.fidelity} (n={c.n}): {c.result}")
        ax.scatter(c.x, c.y, s=10, color=col, alpha=0.8, zorder=3)
    if c0.log:
        _log_axis(ax, min(float(c.grid[0]) for c in curves), max(float(c.grid[-1]) for c in curves))
    ax.set_xlabel(param_label(c0.param))
    ax.set_ylabel(metric_label(c0.metric))
    ax.set_title(_wrap(_curves_title(curves), 6.5), fontsize=10)
    ax.legend(fontsize=7, title="GP fit, 95% bootstrap band", title_fontsize=7)
    return fig


def curves_plotly(curves: list[Curve]) -> go.Figure:
    curves = _fid_order(curves)
    c0 = curves[0]
    fig = go.Figure()
    for i, c in enumerate(curves):
        col = _fid_color(i, len(curves))
        name = f"{c.fidelity} (n={c.n})"
        fig.add_trace(go.Scatter(x=np.r_[c.grid, c.grid[::-1]], y=np.r_[c.hi, c.lo[::-1]], fill="toself",
                                 fillcolor=col, opacity=0.2, line={"width": 0}, hoverinfo="skip",
                                 legendgroup=name, showlegend=False))
        fig.add_trace(go.Scatter(x=c.grid, y=c.mean, mode="lines", legendgroup=name, name=f"{name}: {c.result}",
                                 line={"color": col, "dash": "solid" if c.detectable else "dash"}))
        fig.add_trace(go.Scatter(x=c.x, y=c.y, mode="markers", marker={"size": 6, "color": col},
                                 legendgroup=name, showlegend=False, name=f"trials ({c.fidelity})"))
    fig.update_layout(title=f"{_curves_title(curves)}<br><sup>GP fit with 95% bootstrap band, per fidelity (ASHA "
                            "rung epoch, or final = completed trials)</sup>",
                      xaxis_title=param_label(c0.param), yaxis_title=metric_label(c0.metric),
                      template="plotly_white", height=440)
    if c0.log:
        _plotly_log_axis(fig, min(float(c.grid[0]) for c in curves), max(float(c.grid[-1]) for c in curves))
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


__all__ = ["curve_png", "curve_plotly", "tradeoff_png", "tradeoff_plotly", "levels_png",
           "levels_plotly", "levels_drawable", "importance_png", "importance_plotly", "comparison_png",
           "comparison_plotly", "learning_png", "learning_plotly", "STATUS_COLORS", "curves_png", "curves_plotly",
           "differences_png", "differences_plotly", "log_ticks"]


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


# --- designed sweeps ---------------------------------------------------------------------------

BEST_COLOR = "#ff7f0e"


def _sweep_x(s) -> tuple[list, list[str]]:
    """x positions (the values for a numeric option, else level indices) and their tick labels."""
    lv = s.levels
    if s.numeric:
        return lv["value"].astype(float).tolist(), lv["level"].tolist()
    return list(range(len(lv))), lv["level"].tolist()


def _sweep_title(s) -> str:
    return f"{s.experiment}: {metric_label(s.metric)} vs {param_label(s.param)} (designed sweep)"


def sweep_png(s) -> Figure:
    """Per-level mean over seeds with its 95% interval; the search's best configuration in orange."""
    lv = s.levels
    xs, names = _sweep_x(s)
    width = max(6.0, 1.0 * len(names) + 3)
    fig = Figure(figsize=(width, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for x, (_, r) in zip(xs, lv.iterrows()):
        err = [[r["mean"] - r["ci_lo"]], [r["ci_hi"] - r["mean"]]] if np.isfinite(r["ci_lo"]) else None
        color = BEST_COLOR if r["best"] else "C0"
        ax.errorbar([x], [r["mean"]], yerr=err, fmt="s" if r["best"] else "o", capsize=4, color=color,
                    markersize=8 if r["best"] else 6)
        ax.annotate(f"n={r['n']}", (x, r["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.plot(xs, lv["mean"], color="C0", lw=1, alpha=0.4, ls="-" if s.detectable else "--")
    ax.errorbar([], [], fmt="s", color=BEST_COLOR, label="the search's best configuration")
    ax.errorbar([], [], fmt="o", color="C0", label="mean over seeds, 95% CI")
    if s.log:
        _log_axis(ax, min(xs), max(xs))
    if s.numeric and not s.log:
        ax.set_xticks(xs, names)
    if not s.numeric:
        ax.set_xticks(xs, names)
        ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xlabel(param_label(s.param))
    ax.set_ylabel(f"{metric_label(s.metric)}\n(mean over seeds, 95% CI)")
    # the title sits over the axes, narrower than the figure: wrap to the axes' width
    ax.set_title(_wrap(_sweep_title(s), width - 1.5) + "\n" + _wrap(s.result, width - 1.5), fontsize=9)
    ax.legend(fontsize=7)
    return fig


def sweep_plotly(s) -> go.Figure:
    lv = s.levels
    xs, names = _sweep_x(s)
    x = xs if s.numeric else names
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=x, y=lv["mean"], mode="lines+markers", name="mean over seeds, 95% CI",
        line={"color": "#1f77b4", "width": 1, "dash": "solid" if s.detectable else "dash"},
        marker={"size": [12 if b else 8 for b in lv["best"]],
                "symbol": ["square" if b else "circle" for b in lv["best"]],
                "color": [BEST_COLOR if b else "#1f77b4" for b in lv["best"]]},
        error_y={"type": "data", "symmetric": False, "array": (lv["ci_hi"] - lv["mean"]).fillna(0),
                 "arrayminus": (lv["mean"] - lv["ci_lo"]).fillna(0)},
        text=[f"{p}={n}: n={k} seeds" + (" (the search's best)" if b else "")
              for p, n, k, b in zip([s.param] * len(lv), names, lv["n"], lv["best"])]))
    fig.update_layout(title=f"{_sweep_title(s)}<br><sup>{s.result}; orange: the search's best configuration</sup>",
                      xaxis_title=param_label(s.param),
                      yaxis_title=f"{metric_label(s.metric)} (mean over seeds, 95% CI)",
                      template="plotly_white", height=420)
    if s.log:
        _plotly_log_axis(fig, min(xs), max(xs))
    elif s.numeric:
        fig.update_xaxes(tickvals=xs, ticktext=names)
    else:
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=names)
    return fig


__all__ += ["sweep_png", "sweep_plotly"]
