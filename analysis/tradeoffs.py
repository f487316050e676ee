"""epsilon-ResNet's own report section: what its compression costs. Declared by
the variant (study.models.epsilon, `report_sections`); `resstudy analyze`
adds it to the report of a study that ran epsilon."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from . import plots
from .sensitivity import epsilon_tradeoffs


def epsilon_section(report: Any) -> None:
    """Compression against epsilon, and accuracy against parameter reduction with its
    Pareto front, per epsilon experiment; `report` is an analysis.report.Sections."""
    trades = epsilon_tradeoffs(report.results, n_boot=report.n_boot, seed=report.seed, spec=report.spec)
    if not trades:
        return
    sec = report.section("epsilon-ResNet trade-offs")
    sec.append("<p>Compression against epsilon, and validation accuracy against parameter reduction over "
               "every completed search trial. The Pareto front holds the trials no other beats on both; it "
               "is drawn on validation accuracy so the test set plays no part in choosing. Test accuracy is "
               "shown only for the final pick (the front's best validation accuracy).</p>")
    pts = []
    for t in trades:
        for note in t.notes:
            report.note(note)
        if not len(t.points):
            sec.append(f'<p class="note">{html.escape(t.experiment)}: no completed search trial: no '
                       "trade-off to draw.</p>")
        elif not plots.tradeoff_informative(t):
            eps = t.points["epsilon"].astype(float)
            sec.append(f'<p class="note">{html.escape(t.experiment)}: none of the {len(t.points)} completed '
                       f"search trials (epsilon {eps.min():.3g} to {eps.max():.3g}) discarded a block: "
                       "parameter reduction is 0 throughout, so there is no trade-off to draw. Search higher "
                       "epsilon, or with objectives [val_acc, param_reduction].</p>")
        else:
            report.figure(sec, f"epsilon-{t.experiment}", plots.tradeoff_png(t), plots.tradeoff_plotly(t))
            front = report.html_table(t.front(), ["trial_id", "epsilon", "discarded_ratio", "param_reduction",
                                                  "acc", "test_acc"])
            sec.append(f"<h3>{html.escape(t.experiment)}: Pareto front</h3>" + front)
        pts.append(t.points.assign(experiment=t.experiment, acc_col=t.acc_col))
    report.table(pd.concat(pts, ignore_index=True), "epsilon_tradeoff")


__all__ = ["epsilon_section"]
