"""Small statistics functions: t intervals and two-sample tests that return NaN
instead of raising when there are too few values."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.tools.sm_exceptions import ConvergenceWarning  # imported here: it registers its own filter


def mean_ci(values, conf: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, lo, hi, n): Student-t interval of the mean; NaN bounds for n < 2."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    m = float(v.mean())
    if n < 2:
        return m, float("nan"), float("nan"), n
    se = float(v.std(ddof=1)) / np.sqrt(n)
    h = float(stats.t.ppf(0.5 + conf / 2, n - 1)) * se
    return m, m - h, m + h, n


@dataclass(frozen=True)
class DiffTest:
    test: str  # "paired t" | "welch t" | "none"
    diff: float  # mean(a) - mean(b)
    lo: float
    hi: float
    p_value: float
    df: float


def diff_test(a, b, *, paired: bool, conf: float = 0.95) -> DiffTest:
    """Difference of means a - b with its t interval and two-sided p-value.

    paired=True pairs a[i] with b[i] (same seed): a one-sample t on the
    differences. Otherwise Welch's unequal-variance t with the
    Welch-Satterthwaite degrees of freedom.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    nan = float("nan")
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"paired test needs equal lengths, got {a.size} and {b.size}")
        ok = np.isfinite(a) & np.isfinite(b)
        d = a[ok] - b[ok]
        m, lo, hi, n = mean_ci(d, conf)
        if n < 2:
            return DiffTest("paired t", m, nan, nan, nan, nan)
        if np.all(d == d[0]):  # zero variance: t undefined
            return DiffTest("paired t", m, m, m, 1.0 if m == 0 else 0.0, n - 1)
        p = float(stats.ttest_rel(a[ok], b[ok]).pvalue)
        return DiffTest("paired t", m, lo, hi, p, n - 1)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return DiffTest("welch t", nan, nan, nan, nan, nan)
    m = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return DiffTest("welch t", m, nan, nan, nan, nan)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se2 = va + vb
    if se2 == 0:
        return DiffTest("welch t", m, m, m, 1.0 if m == 0 else 0.0, float(a.size + b.size - 2))
    dof = se2**2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    h = float(stats.t.ppf(0.5 + conf / 2, dof)) * np.sqrt(se2)
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return DiffTest("welch t", m, m - h, m + h, p, float(dof))


__all__ = ["mean_ci", "DiffTest", "diff_test"]


# --- claims: range-respecting intervals, Holm, power ---------------------------------------

from .sequential import ALPHA  # noqa: E402  (declared with the stopping rule, which needs no statsmodels)

def clip(lo: float, hi: float, bounds: tuple[float, float] | None) -> tuple[float, float]:
    """An interval cut to the metric's range: accuracies live in [0, 1] and
    differences of accuracies in [-1, 1], so a t interval from few noisy
    values must not claim more than the metric can hold."""
    if bounds is None:
        return lo, hi
    return (float(np.clip(lo, *bounds)) if np.isfinite(lo) else lo,
            float(np.clip(hi, *bounds)) if np.isfinite(hi) else hi)


@dataclass(frozen=True)
class Estimate:
    """A mean (difference) against a null value: estimate, clipped t interval,
    two-sided p-value of H0: mean == null, the spread and the n behind it."""

    estimate: float
    lo: float
    hi: float
    p_value: float
    n: int  # pairs, or the smaller group for two groups
    sd: float  # of the differences, or pooled for two groups
    test: str


def one_sample(d, *, null: float = 0.0, conf: float = 0.95,
               bounds: tuple[float, float] | None = (-1.0, 1.0)) -> Estimate:
    """Paired differences d (one per seed) against `null`: Student t."""
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return Estimate(nan, nan, nan, nan, 0, nan, "paired t")
    m = float(d.mean())
    if n < 2:
        return Estimate(m, nan, nan, nan, n, nan, "paired t")
    sd = float(d.std(ddof=1))
    if sd == 0:  # every pair moved by exactly the same amount: no spread, no t
        lo, hi = clip(m, m, bounds)
        return Estimate(m, lo, hi, 1.0 if m == null else 0.0, n, 0.0, "paired t")
    se = sd / np.sqrt(n)
    h = float(stats.t.ppf(0.5 + conf / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(m - null) / se, n - 1))
    lo, hi = clip(m - h, m + h, bounds)
    return Estimate(m, lo, hi, p, n, sd, "paired t")


def two_sample(a, b, *, null: float = 0.0, conf: float = 0.95,
               bounds: tuple[float, float] | None = (-1.0, 1.0)) -> Estimate:
    """mean(a) - mean(b) against `null`: Welch's t (independent trials)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    nan = float("nan")
    n = int(min(a.size, b.size))
    if n == 0:
        return Estimate(nan, nan, nan, nan, 0, nan, "welch t")
    m = float(a.mean() - b.mean())
    if n < 2:
        return Estimate(m, nan, nan, nan, n, nan, "welch t")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    sd = float(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))
    se2 = va + vb
    if se2 == 0:
        lo, hi = clip(m, m, bounds)
        return Estimate(m, lo, hi, 1.0 if m == null else 0.0, n, 0.0, "welch t")
    dof = se2**2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    se = float(np.sqrt(se2))
    h = float(stats.t.ppf(0.5 + conf / 2, dof)) * se
    p = float(2 * stats.t.sf(abs(m - null) / se, dof))
    lo, hi = clip(m - h, m + h, bounds)
    return Estimate(m, lo, hi, p, n, sd, "welch t")


def paired_bootstrap(d, *, conf: float = 0.95, n_boot: int = 4000, seed: int = 0,
                     bounds: tuple[float, float] | None = (-1.0, 1.0)) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences d (the
    pairs resampled with replacement, a fixed seed so a report is
    reproducible), cut to `bounds`. At 3-5 pairs it is too narrow (a resample
    can only repeat the few values seen); shown beside the t interval, never
    the basis of a verdict. NaN below two differences."""
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, (n_boot, d.size))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - conf), 50 * (1 + conf)])
    return clip(float(lo), float(hi), bounds)


def zero_spread(lo: float, hi: float, n) -> bool:
    """An interval of no width from n >= 2 values: every pair (or value) was
    identical, so there is no spread for a t test to measure against; its
    p-value (0 or 1 by convention) is not evidence and is not shown as such."""
    return bool(n is not None and n >= 2 and np.isfinite(lo) and np.isfinite(hi) and lo == hi)


def holm(p) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (statsmodels' step-down `holm`:
    monotone, capped at 1). NaN entries (no test) stay NaN and do not count
    towards the family size."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def n_for_power(delta: float, sd: float, *, alpha: float = 0.05, power: float = 0.8, groups: int = 1,
                n_max: int = 10_000) -> int | None:
    """Smallest whole n (pairs for groups=1, per group for groups=2), at least
    3, at which a two-sided t test at `alpha` has `power` against a true
    difference `delta` with spread `sd`: statsmodels' solver for the paired
    (one-sample) or the two-sample t test, rounded up. None when delta is 0
    or n would pass n_max."""
    if not (np.isfinite(delta) and np.isfinite(sd)) or delta == 0:
        return None
    if sd == 0:
        return 3
    d = abs(delta) / sd
    solver = TTestPower() if groups == 1 else TTestIndPower()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # handled below
        n = float(solver.solve_power(effect_size=d, alpha=alpha, power=power, alternative="two-sided"))
    if not np.isfinite(n):
        # the root finder gives up only at the extremes: an effect of several
        # spreads (fewer than 3 would do) or a vanishing one (beyond any n_max)
        return 3 if d >= 1 else None
    n = max(3, math.ceil(n))
    return n if n <= n_max else None


__all__ += ["ALPHA", "zero_spread", "clip", "Estimate", "one_sample", "two_sample", "holm", "n_for_power",
            "paired_bootstrap"]
