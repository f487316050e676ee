"""Figures: each plot as a matplotlib Figure (PNG) and a plotly Figure (HTML).

Matplotlib figures are built with the object API (matplotlib.figure.Figure),
which renders through the Agg canvas without touching pyplot's global
backend or figure registry: safe in servers, tests and notebooks alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from .sensitivity import Curve, EpsilonTradeoff

STATUS_COLORS = {"completed": "#1f77b4", "pruned": "#b0b0b0", "diverged": "#d62728", "failed": "#ff7f0e"}
BAND = "rgba(31,119,180,0.2)"


def _label(c: Curve) -> str:
    return f"{c.experiment}: {c.metric} vs {c.param}" if c.experiment else f"{c.metric} vs {c.param}"


# --- sensitivity curve --------------------------------------------------------------------

def _mpl_curve(ax, c: Curve, *, argmax: bool = True) -> None:
    ax.fill_between(c.grid, c.lo, c.hi, color="C0", alpha=0.2, lw=0, label="95% bootstrap band")
    ax.plot(c.grid, c.mean, color="C0", label=f"GP fit (n={c.n})")
    ax.scatter(c.x, c.y, s=12, color="k", alpha=0.7, zorder=3, label="trials")
    if argmax:
        ax.axvspan(c.argmax_lo, c.argmax_hi, color="C3", alpha=0.1, lw=0)
        ax.axvline(c.argmax, color="C3", ls="--", lw=1,
                   label=f"argmax {c.argmax:.3g} [{c.argmax_lo:.3g}, {c.argmax_hi:.3g}]")
    if c.log:
        ax.set_xscale("log")
    ax.set_xlabel(c.param)
    ax.set_ylabel(c.metric)


def curve_png(c: Curve) -> Figure:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    _mpl_curve(ax, c)
    ax.set_title(_label(c), fontsize=10)
    ax.legend(fontsize=7)
    return fig


def _plotly_curve(fig: go.Figure, c: Curve, *, argmax: bool = True, **rc) -> None:
    fig.add_trace(go.Scatter(x=np.r_[c.grid, c.grid[::-1]], y=np.r_[c.hi, c.lo[::-1]], fill="toself",
                             fillcolor=BAND, line={"width": 0}, hoverinfo="skip", name="95% band",
                             showlegend=False), **rc)
    fig.add_trace(go.Scatter(x=c.grid, y=c.mean, mode="lines", line={"color": "#1f77b4"},
                             name=f"GP fit (n={c.n})", showlegend=False), **rc)
    fig.add_trace(go.Scatter(x=c.x, y=c.y, mode="markers", marker={"size": 6, "color": "black", "opacity": 0.7},
                             name="trials", showlegend=False), **rc)
    if argmax:
        fig.add_vrect(x0=c.argmax_lo, x1=c.argmax_hi, fillcolor="red", opacity=0.08, line_width=0, **rc)
        fig.add_vline(x=c.argmax, line={"color": "red", "dash": "dash", "width": 1}, **rc)


def curve_plotly(c: Curve) -> go.Figure:
    fig = go.Figure()
    _plotly_curve(fig, c)
    fig.update_layout(title=f"{_label(c)}<br><sup>argmax {c.argmax:.3g} "
                            f"[95%: {c.argmax_lo:.3g}, {c.argmax_hi:.3g}], n={c.n}</sup>",
                      xaxis_title=c.param, yaxis_title=c.metric, template="plotly_white", height=420)
    if c.log:
        fig.update_xaxes(type="log")
    return fig


# --- epsilon trade-offs -------------------------------------------------------------------

def tradeoff_png(t: EpsilonTradeoff) -> Figure:
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    pts, front = t.points, t.front()
    for ax, curve, col in ((axes[0], t.discarded, "discarded_ratio"), (axes[1], t.reduction, "param_reduction")):
        if curve is not None:
            _mpl_curve(ax, curve, argmax=False)
        else:
            ax.scatter(pts["epsilon"], pts[col], s=12, color="k")
            ax.set_xscale("log")
            ax.set_xlabel("epsilon")
            ax.set_ylabel(col)
        ax.set_title(f"{col} vs epsilon", fontsize=10)
    ax = axes[2]
    ax.scatter(pts["param_reduction"], pts["acc"], s=14, color="0.5", label="trials")
    ax.plot(front["param_reduction"], front["acc"], "o-", color="C3", label="Pareto front")
    ax.set_xlabel("param_reduction")
    ax.set_ylabel(t.acc_col)
    ax.set_title(f"{t.acc_col} vs param_reduction", fontsize=10)
    ax.legend(fontsize=7)
    fig.suptitle(f"{t.experiment}: epsilon trade-offs", fontsize=11)
    return fig


def tradeoff_plotly(t: EpsilonTradeoff) -> go.Figure:
    pts, front = t.points, t.front()
    fig = make_subplots(rows=1, cols=3, subplot_titles=("discarded_ratio vs epsilon", "param_reduction vs epsilon",
                                                        f"{t.acc_col} vs param_reduction"))
    for col_i, (curve, col) in enumerate(((t.discarded, "discarded_ratio"), (t.reduction, "param_reduction")), 1):
        if curve is not None:
            _plotly_curve(fig, curve, argmax=False, row=1, col=col_i)
        else:
            fig.add_trace(go.Scatter(x=pts["epsilon"], y=pts[col], mode="markers", showlegend=False,
                                     marker={"color": "black"}), row=1, col=col_i)
        fig.update_xaxes(type="log", title_text="epsilon", row=1, col=col_i)
        fig.update_yaxes(title_text=col, row=1, col=col_i)
    fig.add_trace(go.Scatter(x=pts["param_reduction"], y=pts["acc"], mode="markers", name="trials",
                             text=pts["epsilon"].map(lambda e: f"epsilon={e:.3g}"), marker={"color": "gray"}),
                  row=1, col=3)
    fig.add_trace(go.Scatter(x=front["param_reduction"], y=front["acc"], mode="lines+markers", name="Pareto front",
                             text=front["epsilon"].map(lambda e: f"epsilon={e:.3g}"),
                             line={"color": "red"}), row=1, col=3)
    fig.update_xaxes(title_text="param_reduction", row=1, col=3)
    fig.update_yaxes(title_text=t.acc_col, row=1, col=3)
    fig.update_layout(title=f"{t.experiment}: epsilon trade-offs", template="plotly_white", height=430)
    return fig


# --- categorical levels -------------------------------------------------------------------

def _level_groups(levels: pd.DataFrame):
    for (exp, param), g in levels.groupby(["experiment", "param"], sort=True):
        yield str(exp), str(param), g.reset_index(drop=True)


def _fidelities(g: pd.DataFrame) -> list[str]:
    if "fidelity" not in g.columns:
        return ["final"]
    f = [x for x in g["fidelity"].unique() if x != "final"]
    return sorted(f, key=lambda x: int(str(x).split()[-1])) + (["final"] if (g["fidelity"] == "final").any() else [])


def _sel(levels: pd.DataFrame, experiment: str, param: str) -> pd.DataFrame:
    g = levels[(levels["experiment"] == experiment) & (levels["param"] == param)].reset_index(drop=True)
    if "fidelity" not in g.columns:
        g = g.assign(fidelity="final")
    return g


def levels_drawable(levels: pd.DataFrame, experiment: str, param: str) -> bool:
    """Whether a levels figure would show anything (a finite mean somewhere)."""
    return bool(np.isfinite(_sel(levels, experiment, param)["mean"].astype(float)).any())


def levels_png(levels: pd.DataFrame, experiment: str, param: str) -> Figure:
    g = _sel(levels, experiment, param)
    names = list(dict.fromkeys(g["level"].astype(str)))
    xs0 = {n: i for i, n in enumerate(names)}
    fids = _fidelities(g)
    fig = Figure(figsize=(max(5.0, 1.2 * len(names) + 2), 5.5), layout="constrained")
    ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.4])
    for j, f in enumerate(fids):
        gf = g[g["fidelity"] == f]
        xs = np.array([xs0[str(v)] for v in gf["level"]]) + 0.12 * (j - (len(fids) - 1) / 2)
        err = np.vstack([gf["mean"] - gf["ci_lo"], gf["ci_hi"] - gf["mean"]])
        ax.errorbar(xs, gf["mean"], yerr=np.nan_to_num(err), fmt="o", capsize=4,
                    color=_fid_color(j, len(fids)), label=f)
        for x, m, n in zip(xs, gf["mean"], gf["n_completed"]):
            if np.isfinite(m):
                ax.annotate(f"n={n}", (x, m), textcoords="offset points", xytext=(4, 3), fontsize=6)
    ax.set_ylabel("mean val_acc (95% CI)")
    ax.set_title(f"{experiment}: {param} (per fidelity: ASHA rung epoch or final)", fontsize=10)
    ax.legend(fontsize=7)
    fin = g[g["fidelity"] == "final"]
    xs = np.array([xs0[str(v)] for v in fin["level"]])
    w = 0.38
    ax2.bar(xs - w / 2, fin["divergence_rate"].astype(float).fillna(0), w, color="C3", label="divergence rate")
    if fin["dead_rate"].notna().any():
        ax2.bar(xs + w / 2, fin["dead_rate"].astype(float).fillna(0), w, color="C7", label="dead-signal rate")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("rate")
    ax2.legend(fontsize=7)
    ax2.set_xticks(range(len(names)), names)
    ax2.set_xlabel(param)
    return fig


def levels_plotly(levels: pd.DataFrame, experiment: str, param: str) -> go.Figure:
    g = _sel(levels, experiment, param)
    fids = _fidelities(g)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.06)
    for j, f in enumerate(fids):
        gf = g[g["fidelity"] == f]
        fig.add_trace(go.Scatter(x=gf["level"].astype(str), y=gf["mean"], mode="markers", name=f"val_acc ({f})",
                                 marker={"color": _fid_color(j, len(fids)), "size": 9},
                                 error_y={"type": "data", "symmetric": False,
                                          "array": (gf["ci_hi"] - gf["mean"]).fillna(0),
                                          "arrayminus": (gf["mean"] - gf["ci_lo"]).fillna(0)},
                                 text=[f"{f}: n completed {a} of {b}" for a, b in
                                       zip(gf["n_completed"], gf["n_trials"])]), row=1, col=1)
    fin = g[g["fidelity"] == "final"]
    lv = fin["level"].astype(str)
    fig.add_trace(go.Bar(x=lv, y=fin["divergence_rate"], name="divergence rate", marker_color="#d62728"), row=2, col=1)
    if fin["dead_rate"].notna().any():
        fig.add_trace(go.Bar(x=lv, y=fin["dead_rate"], name="dead-signal rate", marker_color="#7f7f7f"), row=2, col=1)
    fig.update_yaxes(title_text="mean val_acc (95% CI)", row=1, col=1)
    fig.update_yaxes(title_text="rate (final)", range=[0, 1], row=2, col=1)
    fig.update_xaxes(title_text=param, type="category", row=2, col=1)
    fig.update_layout(title=f"{experiment}: {param}", template="plotly_white", height=480, barmode="group")
    return fig


# --- importances --------------------------------------------------------------------------

def importance_png(table: pd.DataFrame, title: str) -> Figure:
    fig = Figure(figsize=(6, 0.45 * len(table) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    ys = np.arange(len(table))
    h = 0.38
    ax.barh(ys - h / 2, table["fanova"], h, label="fANOVA")
    ax.barh(ys + h / 2, table["ped_anova"], h, label="PED-ANOVA")
    ax.set_yticks(ys, table["param"])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("importance (normalised)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return fig


def importance_plotly(table: pd.DataFrame, title: str) -> go.Figure:
    fig = go.Figure([go.Bar(y=table["param"], x=table["fanova"], orientation="h", name="fANOVA"),
                     go.Bar(y=table["param"], x=table["ped_anova"], orientation="h", name="PED-ANOVA")])
    fig.update_layout(title=title, barmode="group", template="plotly_white", xaxis={"range": [0, 1],
                      "title": "importance (normalised)"}, yaxis={"autorange": "reversed"},
                      height=140 + 45 * len(table))
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
            ax.annotate(f"n={r['n']} ({r['source']})\n{_p_text(r)}", (i, r["mean"]), textcoords="offset points", xytext=(7, -4),
                        fontsize=7)
        ax.set_xticks(xs, g["variant"])
        ax.set_xlim(-0.5, len(g) - 0.2)
        ax.set_ylabel(f"{metric} (mean, 95% CI)")
        ax.set_title(f"depth {depth}: {metric}", fontsize=10)
    return fig


def comparison_plotly(table: pd.DataFrame) -> go.Figure:
    keys = _panels(table)
    fig = make_subplots(rows=1, cols=max(1, len(keys)),
                        subplot_titles=[f"depth {d}: {m}" for d, m in keys] or [""])
    for i, (depth, metric) in enumerate(keys, 1):
        g = table[(table["depth"] == depth) & (table["metric"] == metric)]
        fig.add_trace(go.Scatter(
            x=g["variant"], y=g["mean"], mode="markers", showlegend=False, marker={"size": 9},
            error_y={"type": "data", "symmetric": False, "array": (g["ci_hi"] - g["mean"]).fillna(0),
                     "arrayminus": (g["mean"] - g["ci_lo"]).fillna(0)},
            text=[f"n={r['n']} ({r['source']}); diff vs {r['baseline']}: {_p_text(r)}" for _, r in g.iterrows()]),
            row=1, col=i)
        fig.update_yaxes(title_text=f"{metric} (mean, 95% CI)", row=1, col=i)
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
    ax.set_ylabel(metric)
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
    fig.update_layout(title=f"{experiment}: learning curves", xaxis_title="epoch", yaxis_title=metric,
                      template="plotly_white", height=420)
    return fig


# --- sensitivity at every fidelity ---------------------------------------------------------

FIDELITY_COLORS = ["#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b"]


def _fid_order(curves: list[Curve]) -> list[Curve]:
    # rungs by epoch, the final (completed-trial) fit last and darkest
    return sorted(curves, key=lambda c: (c.epoch is None, c.epoch or 0))


def _fid_color(i: int, n: int) -> str:
    return FIDELITY_COLORS[-1] if i == n - 1 else FIDELITY_COLORS[min(i, len(FIDELITY_COLORS) - 2)]


def curves_png(curves: list[Curve]) -> Figure:
    """One parameter's fits at every fidelity (rung epochs and final), overlaid."""
    curves = _fid_order(curves)
    c0 = curves[0]
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, c in enumerate(curves):
        col = _fid_color(i, len(curves))
        ax.fill_between(c.grid, c.lo, c.hi, color=col, alpha=0.18, lw=0)
        ax.plot(c.grid, c.mean, color=col, label=f"{c.fidelity} (n={c.n}): argmax {c.argmax:.3g} "
                                                 f"[{c.argmax_lo:.3g}, {c.argmax_hi:.3g}]")
        ax.scatter(c.x, c.y, s=10, color=col, alpha=0.8, zorder=3)
    if c0.log:
        ax.set_xscale("log")
    ax.set_xlabel(c0.param)
    ax.set_ylabel(c0.metric)
    ax.set_title(f"{c0.experiment}: {c0.metric} vs {c0.param} (GP fit, 95% bootstrap band)", fontsize=10)
    ax.legend(fontsize=7)
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
        fig.add_trace(go.Scatter(x=c.grid, y=c.mean, mode="lines", line={"color": col}, legendgroup=name,
                                 name=f"{name}: argmax {c.argmax:.3g} [{c.argmax_lo:.3g}, {c.argmax_hi:.3g}]"))
        fig.add_trace(go.Scatter(x=c.x, y=c.y, mode="markers", marker={"size": 6, "color": col},
                                 legendgroup=name, showlegend=False, name=f"trials ({c.fidelity})"))
    fig.update_layout(title=f"{c0.experiment}: {c0.metric} vs {c0.param}<br><sup>GP fit with 95% bootstrap band, "
                            "per fidelity (ASHA rung epoch, or final = completed trials)</sup>",
                      xaxis_title=c0.param, yaxis_title=c0.metric, template="plotly_white", height=440)
    if c0.log:
        fig.update_xaxes(type="log")
    return fig


# --- differences from the twin / baseline --------------------------------------------------

def _diff_rows(claims: pd.DataFrame, tuned: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(panel title, rows with label/est/lo/hi/ref/verdict) for panels that have an estimate."""
    panels = []
    c = claims[np.isfinite(claims["estimate"].astype(float))] if len(claims) else claims
    if len(c):
        panels.append(("claims: difference (variant - twin, or better - worse level)", pd.DataFrame({
            "label": [f"{r['claim']} (d{r['depth']}, n={r['n']})" for _, r in c.iterrows()],
            "est": c["estimate"].astype(float), "lo": c["ci_lo"].astype(float), "hi": c["ci_hi"].astype(float),
            "ref": c["null"].astype(float), "verdict": c["verdict"]})))
    t = tuned[np.isfinite(tuned["diff"].astype(float))] if len(tuned) else tuned
    if len(t):
        panels.append((f"tuned vs tuned: {t['metric'].iloc[0]} minus {t['baseline'].iloc[0]}", pd.DataFrame({
            "label": [f"{r['subject']} (d{r['depth']}, n={r['n']}/{r['n_baseline']})" for _, r in t.iterrows()],
            "est": t["diff"].astype(float), "lo": t["ci_lo"].astype(float), "hi": t["ci_hi"].astype(float),
            "ref": 0.0, "verdict": t["verdict"]})))
    return panels


VERDICT_COLORS = {"supported": "#2ca02c", "better": "#2ca02c", "contradicted": "#d62728", "worse": "#d62728",
                  "inconclusive": "#7f7f7f"}


def differences_png(claims: pd.DataFrame, tuned: pd.DataFrame) -> Figure | None:
    """Differences with 95% intervals and a zero line; None when nothing has an estimate."""
    panels = _diff_rows(claims, tuned)
    if not panels:
        return None
    h = max(2.5, 0.45 * sum(len(p) for _, p in panels) + 1.2 * len(panels))
    fig = Figure(figsize=(8, h), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(panels), 1, height_ratios=[len(p) + 1 for _, p in panels]))
    for ax, (title, p) in zip(axes, panels):
        ys = np.arange(len(p))
        for y, (_, r) in zip(ys, p.iterrows()):
            err = [[r["est"] - r["lo"]], [r["hi"] - r["est"]]] if np.isfinite(r["lo"]) else None
            ax.errorbar([r["est"]], [y], xerr=err, fmt="o", capsize=4, color=VERDICT_COLORS.get(r["verdict"], "k"))
            if r["ref"] != 0:
                ax.plot([r["ref"]] * 2, [y - 0.35, y + 0.35], color="C1", lw=1.5)
        ax.axvline(0, color="k", lw=1)
        ax.set_yticks(ys, p["label"], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("difference (95% CI; orange tick: non-inferiority margin)", fontsize=8)
    return fig


def differences_plotly(claims: pd.DataFrame, tuned: pd.DataFrame) -> go.Figure | None:
    panels = _diff_rows(claims, tuned)
    if not panels:
        return None
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[t for t, _ in panels], vertical_spacing=0.18,
                        row_heights=[len(p) + 1 for _, p in panels])
    for i, (_, p) in enumerate(panels, 1):
        fig.add_trace(go.Scatter(
            x=p["est"], y=p["label"], mode="markers", showlegend=False,
            marker={"size": 10, "color": [VERDICT_COLORS.get(v, "black") for v in p["verdict"]]},
            error_x={"type": "data", "symmetric": False, "array": (p["hi"] - p["est"]).fillna(0),
                     "arrayminus": (p["est"] - p["lo"]).fillna(0)},
            text=[f"{v}: {e:+.4f} [{lo:+.4f}, {hi:+.4f}]" for v, e, lo, hi in
                  zip(p["verdict"], p["est"], p["lo"], p["hi"])]), row=i, col=1)
        margins = p[p["ref"] != 0]
        if len(margins):
            fig.add_trace(go.Scatter(x=margins["ref"], y=margins["label"], mode="markers", name="margin",
                                     marker={"symbol": "line-ns-open", "size": 18, "color": "orange"},
                                     showlegend=False), row=i, col=1)
        fig.add_vline(x=0, line={"color": "black", "width": 1}, row=i, col=1)
        fig.update_yaxes(type="category", autorange="reversed", row=i, col=1)
        fig.update_xaxes(title_text="difference (95% CI)", row=i, col=1)
    fig.update_layout(title="Differences from the twin / baseline (zero line; green supported, red contradicted, "
                            "grey inconclusive)", template="plotly_white",
                      height=180 + 40 * sum(len(p) for _, p in panels) + 60 * len(panels))
    return fig


__all__ = ["curve_png", "curve_plotly", "tradeoff_png", "tradeoff_plotly", "levels_png", "levels_plotly", "levels_drawable",
           "importance_png", "importance_plotly", "comparison_png", "comparison_plotly", "learning_png",
           "learning_plotly", "STATUS_COLORS", "curves_png", "curves_plotly", "differences_png",
           "differences_plotly"]
