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

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from study.variants import DeclaredTradeoff as Declared

from .load import InsufficientDataError
from .sensitivity import MIN_POINTS, Curve, experiments, fit_curve, usable
from .spaces import param_info

ACC = "val_acc"


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


__all__ = ["Declared", "Tradeoff", "tradeoffs", "pareto_front"]
