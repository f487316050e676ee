"""Sensitivity figures: a curve, a parameter's curves at every fidelity, a categorical
parameter's levels and a designed sweep."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from ..declared import level_rates
from ..labels import fidelity_label, metric_label, param_label
from ..sensitivity import Curve, level_order
from .axes import BAND, _label, _log_axis, _plotly_log_axis, _wrap

if TYPE_CHECKING:
    pass


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
