"""Tuned against tuned at a stated budget (Dodge et al. 2019, "Show your work").

A variant "beats the baseline" only at a search budget: with n trials, the
expected best validation accuracy of each. From one search of N trials the
expected maximum of n trials is estimated without bias (the U-statistic over
every subset of n of the N trials; Tang et al. 2020 point out that Dodge's
with-replacement formula is biased): with v_(1) <= ... <= v_(N),

    E[max of n] ~= sum_{i=n..N} v_(i) * C(i-1, n-1) / C(N, n),   1 <= n <= N.

The curve is defined up to N, the trials the search ran; beyond it nothing is
claimed. Where two curves cross, the better variant depends on the budget.
"""

from __future__ import annotations

from math import comb
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .declared import baseline as declared_baseline

COLUMNS = ["subject", "depth", "metric", "baseline", "budget", "expected_best", "baseline_expected_best", "diff"]


def expected_max(values: Sequence[float], n: int) -> float:
    """Unbiased estimate of the expected best of `n` trials drawn from the
    distribution the `values` (one search's trials) were drawn from."""
    v = np.sort(np.asarray([x for x in values if np.isfinite(x)], dtype=float))
    big_n = len(v)
    if not 1 <= n <= big_n:
        raise ValueError(f"n: {n!r} is not allowed; allowed: 1..{big_n} (the trials the search ran)")
    weights = np.array([comb(i - 1, n - 1) for i in range(1, big_n + 1)], dtype=float) / comb(big_n, n)
    return float(weights @ v)


def expected_max_curve(values: Iterable[float]) -> np.ndarray:
    """expected_max(values, n) for n = 1..N."""
    finite = [x for x in values if np.isfinite(x)]
    return np.array([expected_max(finite, n) for n in range(1, len(finite) + 1)])


def crossings(a: np.ndarray, b: np.ndarray) -> list[int]:
    """The budgets n (1-based) at which the sign of a - b changes (ties skipped)."""
    d = np.sign(np.asarray(a[: len(b)]) - np.asarray(b[: len(a)]))
    out, last = [], 0.0
    for n, s in enumerate(d, start=1):
        if s != 0:
            if last != 0 and s != last:
                out.append(n)
            last = s
    return out


def best_label(metric: str) -> str:
    """'best validation accuracy' for val_acc and best_val_acc alike."""
    from .labels import metric_label

    label = metric_label(metric)
    return label if label.startswith("best ") else f"best {label}"


def _search_values(results: pd.DataFrame, subject: str, depth, metric: str) -> np.ndarray:
    subj = results["subject"].fillna(results["variant"]) if "subject" in results.columns else results["variant"]
    phase = results["phase"] if "phase" in results.columns else pd.Series("search", index=results.index)
    g = results[(subj == subject) & (results["depth"] == depth) & (phase == "search")]
    # every trial the search ran is one draw of its outcome, pruned ones included (at the best
    # value they reached): dropping them would overstate what a budget of n buys
    g = g[g["status"].isin(["completed", "pruned"])] if "status" in g.columns else g
    if metric not in g.columns:
        return np.array([])
    values = g[metric].astype(float)
    if metric == "best_val_acc" and "val_acc" in g.columns:  # a row that kept only its last value
        values = values.fillna(g["val_acc"].astype(float))
    return values.dropna().to_numpy()


def budget_table(results: pd.DataFrame, *, baseline: str | None = None, metric: str = "best_val_acc"
                 ) -> tuple[pd.DataFrame, list[str]]:
    """(one row per subject, depth and budget n up to the smaller search; notes
    saying where each subject's curve crosses the baseline's)."""
    baseline = baseline or declared_baseline()
    rows, notes = [], []
    subj = results["subject"].fillna(results["variant"]) if "subject" in results.columns else results["variant"]
    for depth in sorted(results["depth"].dropna().unique()):
        base = _search_values(results, baseline, depth, metric)
        if len(base) == 0:
            continue
        b_curve = expected_max_curve(base)
        for s in sorted(set(subj[results["depth"] == depth].dropna()) - {baseline}):
            vals = _search_values(results, s, depth, metric)
            if len(vals) == 0:
                continue
            curve = expected_max_curve(vals)
            n_max = min(len(curve), len(b_curve))
            for n in range(1, n_max + 1):
                rows.append({"subject": s, "depth": int(depth), "metric": metric, "baseline": baseline, "budget": n,
                             "expected_best": curve[n - 1], "baseline_expected_best": b_curve[n - 1],
                             "diff": curve[n - 1] - b_curve[n - 1]})
            cross = crossings(curve[:n_max], b_curve[:n_max])
            lead = "ahead of" if curve[n_max - 1] > b_curve[n_max - 1] else (
                "behind" if curve[n_max - 1] < b_curve[n_max - 1] else "level with")
            where = (f"the curves cross at {', '.join(f'n = {c}' for c in cross)} trials" if cross
                     else "the curves do not cross")
            notes.append(f"{s} (depth {int(depth)}): {lead} {baseline} at n = {n_max} trials per search; {where} "
                         f"(expected {best_label(metric)} of n trials, "
                         f"estimated from {len(vals)} and {len(base)} trials)")
    return pd.DataFrame(rows, columns=COLUMNS), notes


__all__ = ["best_label", "budget_table", "crossings", "expected_max", "expected_max_curve"]
