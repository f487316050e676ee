"""What a variant's method costs in accuracy for what it gains: a report section a
variant declares (study.variants.Variant.report_sections) and fills with its own
facts (`Declared`: the option that turns the method up, the metrics it gains, which
of them is the network's size, the words). For each of the variant's experiments,
over every completed search trial: each gain against the knob (a sensitivity
curve, analysis.sensitivity.fit_curve), and validation accuracy against the size
gain with its Pareto front and the final pick.

The front is drawn on val_acc: choosing among trials on test_acc would make the
test set part of the selection. test_acc appears only for the pick: the front's
trial with the best val_acc."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .labels import metric_label
from .load import InsufficientDataError
from .sensitivity import MIN_POINTS, Curve, experiments, fit_curve, usable
from .spaces import param_info

ACC = "val_acc"


@dataclass(frozen=True)
class Declared:
    """A variant's trade-off, as its declaration states it.

    variant: whose experiments (the subject of an experiment's rows).
    knob: the searched option that turns the method up; gains: the metrics it
    gains, one curve each against the knob, in the figure's order (each a share
    in [0, 1] when `shares`); size: the gain on the Pareto front's x axis (an
    experiment whose results lack it has no trade-off).
    title: the report section's title; what: the gains in a word, to open the
    section ("Compression"); figure: the figures' title after the experiment
    ("epsilon trade-offs") and name: the figure and table file names' stem.
    nothing: what a trial with no gain did not do ("discarded a block");
    toward: which way to search the knob for a gain ("higher"); objectives: the
    search objectives that also maximise a gain (the variant's own)."""

    variant: str
    knob: str
    gains: tuple[str, ...]
    size: str
    title: str
    what: str
    figure: str
    name: str
    nothing: str
    toward: str = "higher"
    objectives: tuple[str, ...] = ()
    shares: bool = True

    def __post_init__(self) -> None:
        if self.size not in self.gains:
            raise ValueError(f"size: {self.size!r} is not one of the gains {list(self.gains)}")


def pareto_front(x, y) -> np.ndarray:
    """Mask of the non-dominated points when maximising both x and y.

    A point is dominated if another is >= in both and > in at least one;
    exact ties are all kept. NaN points are never on the front.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    front = np.zeros(x.size, dtype=bool)
    idx = np.flatnonzero(ok)
    for i in idx:
        ge = (x[idx] >= x[i]) & (y[idx] >= y[i])
        gt = (x[idx] > x[i]) | (y[idx] > y[i])
        front[i] = not np.any(ge & gt)
    return front


@dataclass
class Tradeoff:
    """One experiment's trade-off. points: trial_id, the knob, each gain, acc
    (val_acc), pareto, pick, test_acc (the pick's only); curves: each gain's
    curve against the knob (None: too few trials), in `declared.gains` order."""

    experiment: str
    declared: Declared
    acc_col: str
    points: pd.DataFrame
    curves: dict[str, Curve | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def front(self) -> pd.DataFrame:
        return self.points[self.points["pareto"]].sort_values(self.declared.size)

    def informative(self) -> bool:
        """Whether a figure would show a trade-off: some trial gained something."""
        vals = pd.concat([self.points[g] for g in self.declared.gains]).astype(float)
        return bool(len(self.points) and (vals.fillna(0) != 0).any())


def tradeoffs(df: pd.DataFrame, declared: Declared, *, n_boot: int = 200, seed: int = 0,
              spec: dict | None = None) -> list[Tradeoff]:
    """Per experiment of `declared.variant` whose results carry its size gain: the
    gains against the knob, and val_acc against the size gain with its Pareto front
    over every completed search trial (whether the study searched one objective or
    several: every results row carries val_acc and the gains)."""
    d, out = declared, []
    for exp, subject, g in experiments(df):
        if subject != d.variant or d.size not in g.columns:
            continue
        ok = usable(g, ACC)
        pts = pd.DataFrame({"trial_id": ok["trial_id"].to_numpy(), d.knob: ok[d.knob].astype(float).to_numpy()})
        for gain in d.gains:
            pts[gain] = ok[gain].astype(float).to_numpy() if gain in ok else np.full(len(ok), np.nan)
        pts["acc"] = ok[ACC].astype(float).to_numpy()
        pts["pareto"] = pareto_front(pts[d.size], pts["acc"])
        pts["pick"] = False
        pts["test_acc"] = np.nan
        if pts["pareto"].any():
            i = pts.loc[pts["pareto"], "acc"].idxmax()
            pts.loc[i, "pick"] = True
            if "test_acc" in ok.columns:
                pts.loc[i, "test_acc"] = float(ok["test_acc"].iloc[i])
        res = Tradeoff(exp, d, ACC, pts, dict.fromkeys(d.gains))
        log = param_info(subject, d.knob, g[d.knob], spec).log
        if len(pts) < MIN_POINTS:
            res.notes.append(f"{exp}: {len(pts)} completed search trial(s): too few for {d.knob} trade-off "
                             f"curves (need {MIN_POINTS})")
            out.append(res)
            continue
        for gain in d.gains:
            try:
                res.curves[gain] = fit_curve(pts[d.knob], pts[gain], log=log, n_boot=n_boot, seed=seed,
                                             param=d.knob, metric=gain, experiment=exp, variant=subject,
                                             unit=d.shares or None)
            except InsufficientDataError as e:
                res.notes.append(f"{exp}: no {gain} curve for {e}")
        out.append(res)
    return out


def section(report: Any, declared: Declared) -> None:
    """The declared trade-off of every experiment of the variant as one report
    section, its figures and one table; `report` is an analysis.report.Sections.
    Nothing when the study has no such experiment."""
    from . import plots  # the figures' libraries, only when a report is written

    d = declared
    trades = tradeoffs(report.results, d, n_boot=report.n_boot, seed=report.seed, spec=report.spec)
    if not trades:
        return
    sec = report.section(d.title)
    sec.append(f"<p>{html.escape(d.what)} against {html.escape(d.knob)}, and {metric_label(ACC)} against "
               f"{metric_label(d.size)} over every completed search trial. The Pareto front holds the trials no "
               "other beats on both; it is drawn on validation accuracy so the test set plays no part in choosing. "
               "Test accuracy is shown only for the final pick (the front's best validation accuracy).</p>")
    pts = []
    for t in trades:
        for note in t.notes:
            report.note(note)
        if not len(t.points):
            sec.append(f'<p class="note">{html.escape(t.experiment)}: no completed search trial: no '
                       "trade-off to draw.</p>")
        elif not t.informative():
            k = t.points[d.knob].astype(float)
            also = f", or with objectives [{', '.join([ACC, *d.objectives])}]" if d.objectives else ""
            sec.append(f'<p class="note">{html.escape(t.experiment)}: none of the {len(t.points)} completed '
                       f"search trials ({html.escape(d.knob)} {k.min():.3g} to {k.max():.3g}) "
                       f"{html.escape(d.nothing)}: {metric_label(d.size)} is 0 throughout, so there is no "
                       f"trade-off to draw. Search {html.escape(d.toward)} {html.escape(d.knob)}{also}.</p>")
        else:
            report.figure(sec, f"{d.name}-{t.experiment}", plots.tradeoff_png(t), plots.tradeoff_plotly(t))
            front = report.html_table(t.front(), ["trial_id", d.knob, *d.gains, "acc", "test_acc"])
            sec.append(f"<h3>{html.escape(t.experiment)}: Pareto front</h3>" + front)
        pts.append(t.points.assign(experiment=t.experiment, acc_col=t.acc_col))
    report.table(pd.concat(pts, ignore_index=True), f"{d.name}_tradeoff")


__all__ = ["Declared", "Tradeoff", "tradeoffs", "section", "pareto_front"]
