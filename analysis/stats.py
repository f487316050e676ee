"""Small statistics helpers: t intervals and two-sample tests that return NaN
instead of raising when there are too few values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


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
