"""The stopping rule for a claim answered by paired seeds, looked at after every round.

A claim compares two arms run at the same seeds; d_s = metric(A) - metric(B) at
seed s. After each round the driver calls `look` with every difference so far;
the claim stops once it reaches a verdict, once more seeds up to `n_max` cannot
plausibly give one (futility), or at `n_max`.

The verdicts are statements about one interval, each against a line fixed before
any data: the null (0, or -margin for a non-inferiority claim) and the effect the
claim's paper reports (or the spec's smallest effect of interest):

    reproduced             lo > null: the claimed direction holds
    smaller than reported  hi < reported: the paper's effect is ruled out at this scale
    contradicted           hi < null: the other direction holds
    open                   none of these

One interval can give two (lo > null and hi < reported): both are said.

The interval is a repeated confidence interval (Jennison and Turnbull 1989) of a
group-sequential paired t test with Lan-DeMets alpha spending of the
O'Brien-Fleming type, alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)), at
information t = n / n_max: mean +- c_k * sd / sqrt(n), with c_k calibrated so
that the chance of crossing it at look k, and at no earlier one, under no effect
is the alpha spent there. At n <= 10 the t statistic is far from normal, so the
boundaries are computed by simulation of Gaussian paired differences (the paired
t statistics of a path are free of the mean and spread, so one simulation serves
every claim), with a fixed seed, so the driver and the analysis get the same
numbers. With probability 1 - alpha the interval covers the true mean difference
at every look at once, so a verdict is wrong with probability at most alpha,
whichever of the lines it is drawn against and whenever the claim stops. It is
cut to [-1, 1], the range of a difference of accuracies.

Across a study's claims: Bonferroni (claim_alpha). docs/methods.md gives the
error rates measured in simulation (tests/study/stats/test_sequential.py).

Importable with numpy and scipy alone: the driver calls it after every round.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import special

ALPHA = 0.05  # every test the report makes: claims, comparisons, sensitivity trends
MIN_N = 3  # below this no verdict: n = 2 leaves a t statistic with 1 degree of freedom
DIFF_RANGE = (-1.0, 1.0)  # a difference of two accuracies (or of two shares) cannot leave it
# A claim whose chance of reaching any verdict by n_max (predictive, see `look`) is below
# this is not given more seeds: stopping for futility never adds a false verdict.
FUTILITY = 0.10
# Seeds for a fixed-n paired t test, times this, are about what the sequential design
# needs for the same power (measured 1.10-1.23 for effects of 1.5 to 0.4 spreads with
# looks at every seed from 3; docs/methods.md).
SEQUENTIAL_INFLATION = 1.2
REPRODUCED, SMALLER, CONTRADICTED, OPEN = "reproduced", "smaller than reported", "contradicted", "open"
VERDICTS = (REPRODUCED, SMALLER, CONTRADICTED, OPEN)
NOT_EXERCISED = "not exercised"  # the arms did not differ in what the claim is about: never judged

_PATHS = 200_000  # simulated null paths per calibration: the spent alpha to about +-0.0005
_CALIBRATION_SEED = 20240601


def spent(t: float, alpha: float = ALPHA) -> float:
    """Alpha spent by information fraction t (O'Brien-Fleming-type Lan-DeMets):
    almost nothing early, all of alpha at t = 1."""
    if t <= 0:
        return 0.0
    t = min(t, 1.0)
    z = -special.ndtri(alpha / 2)
    return float(2.0 - 2.0 * special.ndtr(z / math.sqrt(t)))


@functools.lru_cache(maxsize=256)
def _boundaries(looks: tuple[int, ...], n_max: int, alpha: float) -> tuple[float, ...]:
    rng = np.random.default_rng(_CALIBRATION_SEED)
    n_last = looks[-1]
    s1 = np.zeros(_PATHS)
    s2 = np.zeros(_PATHS)
    stats = {}
    for n in range(1, n_last + 1):  # column by column: a path's first values never depend on n_last
        x = rng.standard_normal(_PATHS)
        s1 += x
        s2 += x * x
        if n in looks:
            m = s1 / n
            sd = np.sqrt(np.maximum(s2 - n * m * m, 0.0) / (n - 1))
            stats[n] = np.abs(m) / (sd / math.sqrt(n))
    alive = np.ones(_PATHS, dtype=bool)
    out, before = [], 0.0
    for n in looks:
        now = spent(n / n_max, alpha)
        r = (now - before) * _PATHS  # paths allowed to cross here for the first time
        before = now
        t = stats[n][alive]
        if r < 1 or t.size == 0:
            c = math.inf
        else:
            top = np.sort(t)[::-1]
            k = min(int(r), top.size - 1)
            c = float(top[k])  # k paths lie strictly above c
        out.append(c)
        alive &= stats[n] <= c
    return tuple(out)


def boundaries(looks: Sequence[int], n_max: int, alpha: float = ALPHA) -> tuple[float, ...]:
    """Critical |t| at each look of a schedule (the n of each look, increasing,
    each >= MIN_N and <= n_max); math.inf where the alpha spent there is too
    small for the simulation to place (early looks of a long design)."""
    looks = tuple(int(n) for n in looks)
    if not looks or any(b <= a for a, b in zip(looks, looks[1:])):
        raise ValueError(f"looks must be increasing seed counts, got {list(looks)}")
    if looks[0] < MIN_N or looks[-1] > n_max:
        raise ValueError(f"looks must lie in [{MIN_N}, n_max={n_max}], got {list(looks)}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return _boundaries(looks, int(n_max), float(alpha))


def verdicts(lo: float, hi: float, null: float, reported: float | None) -> tuple[str, ...]:
    """Every verdict an interval [lo, hi] gives against the null and the reported effect
    (reported > null; None: no reported line), strongest first; ("open",) for none."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return (OPEN,)
    if hi < null:
        return (CONTRADICTED,)  # below the null is below the reported effect too: one statement
    out = [REPRODUCED] if lo > null else []
    if reported is not None and hi < reported:
        out.append(SMALLER)
    return tuple(out) or (OPEN,)


@dataclass(frozen=True)
class Look:
    """The rule's answer after one round.

    lo, hi: the interval valid under repeated looks (NaN before the first
    look at n_min), cut to the metric difference's range. verdicts: what the
    interval says against the null (-margin) and the reported effect
    (`verdicts`); verdict: the first of them. can_settle: whether more seeds
    up to n_max can plausibly reach a verdict (predictive chance >= FUTILITY);
    False once n reaches n_max. boundary: the critical |t| used at this look.
    alpha: the level the claim was tested at (see claim_alpha)."""

    n: int
    n_max: int
    estimate: float
    sd: float
    lo: float
    hi: float
    verdict: str
    can_settle: bool
    alpha: float
    margin: float
    boundary: float
    reported: float | None = None
    all_verdicts: tuple[str, ...] = (OPEN,)

    @property
    def settled(self) -> bool:
        return self.verdict != OPEN

    @property
    def stop(self) -> str | None:
        """Why the claim stops now ("settled", "max_seeds", "cannot_settle"), or None: give it more seeds."""
        if self.settled:
            return "settled"
        if self.n >= self.n_max:
            return "max_seeds"
        if not self.can_settle:
            return "cannot_settle"
        return None

    def record(self) -> dict:
        """The look as study.json keeps it (plain JSON: None for what is not a finite number)."""
        def num(v: float | None) -> float | None:
            return float(v) if v is not None and math.isfinite(v) else None

        return {"n": self.n, "n_max": self.n_max, "estimate": num(self.estimate), "sd": num(self.sd),
                "lo": num(self.lo), "hi": num(self.hi), "verdict": self.verdict,
                "verdicts": list(self.all_verdicts), "can_settle": self.can_settle, "alpha": self.alpha,
                "margin": self.margin, "reported": num(self.reported), "boundary": num(self.boundary)}


def _schedule(prior_looks: Sequence[int] | None, n: int, n_min: int) -> tuple[int, ...]:
    if prior_looks is None:
        return tuple(range(n_min, n + 1))
    prior = sorted({int(k) for k in prior_looks if n_min <= int(k) < n})
    late = [int(k) for k in prior_looks if int(k) > n]
    if late:
        raise ValueError(f"an earlier look saw {max(late)} seeds, more than the {n} differences given now")
    return (*prior, n)


def _clip(v: float, bounds: tuple[float, float] | None) -> float:
    # an infinite end (a boundary the simulation could not place) is cut to the range too
    return v if bounds is None or math.isnan(v) else float(min(max(v, bounds[0]), bounds[1]))


def look(diffs: Sequence[float], n_max: int, *, alpha: float = ALPHA, margin: float = 0.0,
         reported: float | None = None, prior_looks: Sequence[int] | None = None, n_min: int = MIN_N,
         bounds: tuple[float, float] | None = DIFF_RANGE) -> Look:
    """Judge a claim from its paired differences so far (A minus B, one per seed;
    non-finite ones are dropped).

    n_max: the most seeds the claim may get. margin: 0 for "A beats B";
    m > 0 for "A is at most m worse than B" (non-inferiority). reported: the
    difference the claim's paper reports (or the smallest effect of interest),
    above -margin; None: no "smaller than reported" verdict. prior_looks: the
    n of every earlier look of this claim (None: one at every n from n_min);
    looks below n_min spent nothing. The boundary at this look depends on that
    schedule and on alpha only, never on the data."""
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n_min < MIN_N:
        raise ValueError(f"n_min must be >= {MIN_N}, got {n_min}")
    if n_max < n_min:
        raise ValueError(f"n_max must be >= n_min={n_min}, got {n_max}")
    if n > n_max:
        raise ValueError(f"{n} differences given, more than n_max={n_max}")
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    null = -margin
    if reported is not None and not (math.isfinite(reported) and reported > null):
        raise ValueError(f"reported must be a finite number above the null {null:g}, got {reported}")
    nan = math.nan
    est = float(d.mean()) if n else nan
    sd = float(d.std(ddof=1)) if n >= 2 else nan
    if n < n_min:
        return Look(n, n_max, est, sd, nan, nan, OPEN, True, alpha, margin, math.inf, reported)
    looks = _schedule(prior_looks, n, n_min)
    c = boundaries(looks, n_max, alpha)[-1]
    if sd == 0:  # every pair moved alike: no spread to judge against, more seeds will show one
        return Look(n, n_max, est, sd, _clip(est, bounds), _clip(est, bounds), OPEN, n < n_max, alpha, margin, c,
                    reported)
    half = c * sd / math.sqrt(n)
    lo, hi = _clip(est - half, bounds), _clip(est + half, bounds)
    said = verdicts(lo, hi, null, reported)
    can = (said == (OPEN,) and n < n_max
           and settle_chance(est, sd, n, n_max, alpha, looks, n_min, null=null, reported=reported) >= FUTILITY)
    return Look(n, n_max, est, sd, lo, hi, said[0], can, alpha, margin, c, reported, said)


def settle_chance(estimate: float, sd: float, n: int, n_max: int, alpha: float, looks: Sequence[int],
                  n_min: int = MIN_N, *, null: float = 0.0, reported: float | None = None) -> float:
    """Predictive chance that the look at n_max reaches any verdict, for a claim now at n
    seeds with mean difference `estimate` and spread `sd`: the final mean drawn from
    its predictive distribution (flat prior on the mean, Student t with n - 1 degrees
    of freedom, the spread held), judged on the final boundary of a schedule that
    looks at every seed from here. A verdict at n_max needs the final mean above
    null + h (reproduced), below reported - h (smaller than reported) or below
    null - h (contradicted), h the final half-width: where 2h is under the distance
    from the null to the reported effect, every final mean gives one. Crossings at
    the looks between are left out, so this understates the chance a little."""
    if n >= n_max:
        return 0.0
    full = (*looks, *range(n + 1, n_max + 1))
    c = boundaries(tuple(k for k in full if k >= n_min), n_max, alpha)[-1]
    if not math.isfinite(c):
        return 0.0
    m = n_max - n
    spread = sd * math.sqrt(m / (n_max * n))  # sd of the final mean given the n seen
    h = c * sd / math.sqrt(n_max)
    top = reported if reported is not None else null  # below this less h: smaller (or contradicted)
    if top - h >= null + h:
        return 1.0
    above = special.stdtr(n - 1, (estimate - (null + h)) / spread)
    below = special.stdtr(n - 1, ((top - h) - estimate) / spread)
    return float(min(1.0, above + below))


def claim_alpha(family: int, alpha: float = ALPHA) -> float:
    """Bonferroni across a study's `family` claims: each claim is tested at alpha / family,
    so the chance that any verdict of the study is wrong is at most alpha. (Holm's
    passing of a settled claim's level to the open ones is not used: every claim
    holds a true null among "no better" and "no worse", so a correct verdict does not
    free its level as Holm's argument needs.)"""
    if family < 1:
        raise ValueError(f"need family >= 1, got family={family}")
    return alpha / family


def seeds_to_settle(delta: float, sd: float, *, alpha: float = ALPHA, power: float = 0.8,
                    n_cap: int = 10_000) -> int | None:
    """About how many paired seeds a sequential design needs to settle a true
    difference `delta` (from the null) with spread `sd` with chance `power`:
    the fixed-n paired t test's n (noncentral t), times SEQUENTIAL_INFLATION,
    at least MIN_N. None when delta is 0 or the n passes n_cap."""
    if not (math.isfinite(delta) and math.isfinite(sd)) or delta == 0:
        return None
    if sd == 0:
        return MIN_N
    from scipy import stats

    e = abs(delta) / sd

    def pw(n: int) -> float:
        crit = stats.t.ppf(1 - alpha / 2, n - 1)
        return float(stats.nct.sf(crit, n - 1, e * math.sqrt(n)) + stats.nct.cdf(-crit, n - 1, e * math.sqrt(n)))

    lo, hi = 2, MIN_N
    while pw(hi) < power:  # exponential search, then bisection on the monotone power
        lo, hi = hi, hi * 2
        if lo > n_cap:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pw(mid) >= power else (mid, hi)
    n = max(MIN_N, math.ceil(hi * SEQUENTIAL_INFLATION))
    return n if n <= n_cap else None


def seeds_for_a_verdict(sd: float, null: float, reported: float | None, *, alpha: float = ALPHA,
                        n_cap: int = 10_000) -> int | None:
    """About how many paired seeds make the interval narrower than the distance from the
    null to the reported effect, so that it must reach a verdict whatever the true
    difference: the fixed-n t interval's n at spread `sd`, times SEQUENTIAL_INFLATION.
    None without a reported effect, or past n_cap."""
    if reported is None or not (math.isfinite(sd) and reported > null):
        return None
    if sd == 0:
        return MIN_N
    from scipy import stats

    gap = reported - null
    n = MIN_N
    while 2 * stats.t.ppf(1 - alpha / 2, n - 1) * sd * math.sqrt(SEQUENTIAL_INFLATION / n) >= gap:
        n = n * 2 if n < 64 else int(n * 1.25)
        if n > n_cap:
            return None
    lo = max(MIN_N, n // 2)  # bisection on the monotone width
    while lo < n:
        mid = (lo + n) // 2
        if 2 * stats.t.ppf(1 - alpha / 2, mid - 1) * sd * math.sqrt(SEQUENTIAL_INFLATION / mid) < gap:
            n = mid
        else:
            lo = mid + 1
    return n


def p_beats(diffs: Sequence[float]) -> float:
    """Posterior predictive chance that A beats B on a new seed: a new
    difference ~ mean + sd * sqrt(1 + 1/n) * t(n - 1) (flat prior on mean and
    log spread). NaN below two differences or with no spread."""
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    n = d.size
    if n < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    if sd == 0:
        return math.nan
    return float(special.stdtr(n - 1, float(d.mean()) / (sd * math.sqrt(1 + 1 / n))))


__all__ = ["ALPHA", "MIN_N", "DIFF_RANGE", "FUTILITY", "SEQUENTIAL_INFLATION", "VERDICTS", "REPRODUCED", "SMALLER",
           "CONTRADICTED", "OPEN", "NOT_EXERCISED", "Look", "look", "verdicts", "boundaries", "spent",
           "settle_chance", "claim_alpha", "seeds_to_settle", "seeds_for_a_verdict", "p_beats"]
