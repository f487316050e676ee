"""A variant's declared trade-off (study.variants.DeclaredTradeoff) as one report
section: for each of its experiments the gains against the knob, accuracy against
the size gain with its Pareto front and the pick (analysis.tradeoffs), drawn."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from .. import plots
from ..labels import metric_label
from ..tradeoffs import ACC, Declared, tradeoffs


def section(report: Any, declared: Declared) -> None:
    """The declared trade-off of every experiment of the variant as one report
    section, its figures and one table; `report` is an analysis.report.Sections.
    Nothing when the study has no such experiment."""


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


