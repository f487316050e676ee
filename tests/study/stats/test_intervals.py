"""Holm and the power search come from statsmodels; these pin them to the
procedures they replaced, written out by hand here as the reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from study.stats.intervals import holm, n_for_power


def hand_holm(p) -> np.ndarray:
    """Holm's step-down procedure as the textbook states it: sort the m tested
    p-values, multiply the k-th smallest by m - k + 1, keep the running maximum,
    cap at 1; untested (NaN) entries stay NaN and do not count in m."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (ok.size - rank) * p[i]))
        out[i] = running
    return out


@settings(max_examples=100, deadline=None)  # statsmodels collects garbage on every call: ~20 ms each
@given(st.lists(st.one_of(st.floats(0, 1), st.just(float("nan"))), min_size=0, max_size=12))
def test_statsmodels_holm_equals_the_hand_procedure(p):
    np.testing.assert_allclose(holm(p), hand_holm(p), rtol=0, atol=1e-12, equal_nan=True)


def hand_power_n(delta: float, sd: float, alpha: float, groups: int, power: float = 0.8) -> int:
    """Smallest n >= 3 whose two-sided t test has `power`, by walking n up the
    noncentral t distribution (the search the library call replaced)."""
    n = 3
    while True:
        df = n - 1 if groups == 1 else 2 * n - 2
        nc = abs(delta) / (sd / np.sqrt(n) if groups == 1 else sd * np.sqrt(2.0 / n))
        crit = stats.t.ppf(1 - alpha / 2, df)
        if stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) >= power:
            return n
        n += 1


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("alpha", [0.05, 0.0167, 0.005])
@pytest.mark.parametrize("effect", [0.15, 0.3, 0.5, 0.8, 1.0, 1.5, 2.5])
def test_power_n_equals_the_hand_search(effect, alpha, groups):
    assert n_for_power(0.01 * effect, 0.01, alpha=alpha, groups=groups) == hand_power_n(0.01 * effect, 0.01, alpha,
                                                                                         groups)


def test_power_edges():
    assert n_for_power(0.0, 0.01) is None  # no difference: no n decides it
    assert n_for_power(0.01, 0.0) == 3  # no spread: the smallest n that is ever a verdict
    assert n_for_power(1e-5, 0.01) is None  # beyond n_max
    assert n_for_power(0.08, 0.01, groups=2) == 3  # eight spreads apart: the solver's edge, still 3
