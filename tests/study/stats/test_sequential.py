"""The stopping rule (study/stats/sequential.py) over many simulated studies that
look after every seed from 3 to 10, as the driver does: under no effect the
share of false verdicts stays at or under the nominal rate (Gaussian, heavy-
tailed and skewed differences), with a planted effect the claim is supported
and the interval it stops with covers the effect at the nominal rate. Fixed
RNG seeds; a few seconds in all."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study.stats import sequential as seq
from study.stats.sequential import ALPHA, claim_alpha, look, p_beats, seeds_to_settle

N_MAX = 10
SD = 0.005  # half an accuracy point between seeds: differences in accuracy units, inside [-1, 1]
STUDIES = 4000
# one-sided Monte-Carlo tolerance: 3 standard errors of a share at the nominal rate
TOL = 3 * math.sqrt(ALPHA * (1 - ALPHA) / STUDIES)


def run_study(d: np.ndarray, *, n_max: int = N_MAX, **kw) -> seq.Look:
    """What the driver does for one claim: a look after every seed, stop when the rule says so."""
    looks: list[int] = []
    for n in range(seq.MIN_N, n_max + 1):
        lk = look(d[:n], n_max, prior_looks=looks, **kw)
        looks.append(n)
        if lk.stop:
            return lk
    raise AssertionError("the rule never stopped, even at n_max")


def _null(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "gaussian":
        return rng.normal(0, SD, (STUDIES, N_MAX))
    if kind == "heavy":  # Student t with 3 degrees of freedom: occasional far-off seeds
        return rng.standard_t(3, (STUDIES, N_MAX)) * SD
    # skewed: one seed in ten lands in a bad basin (2 spreads lower), mean difference still 0
    bad = rng.random((STUDIES, N_MAX)) < 0.1
    return (rng.normal(0, 1, (STUDIES, N_MAX)) - 2.0 * bad + 0.2) * SD


@pytest.mark.parametrize("kind", ["gaussian", "heavy", "skewed"])
def test_false_verdicts_stay_at_the_nominal_rate_under_no_effect(kind):
    rng = np.random.default_rng({"gaussian": 1, "heavy": 2, "skewed": 3}[kind])
    ends = [run_study(d) for d in _null(kind, rng)]
    false = np.mean([e.settled for e in ends])
    assert false <= ALPHA + TOL, f"{kind}: {false:.4f} of null claims got a verdict (nominal {ALPHA})"
    # no verdict ever from fewer than 3 seeds, every interval inside the difference range
    assert min(e.n for e in ends) >= seq.MIN_N
    assert all(-1 <= e.lo <= e.hi <= 1 for e in ends)
    # hopeless claims stop early: the rule spends fewer than n_max seeds on average
    assert np.mean([e.n for e in ends]) < N_MAX - 2


def test_noninferiority_at_the_margin_keeps_the_rate():
    """A variant exactly `margin` worse than its twin: neither "supported" (no worse
    than the margin) nor "contradicted" (worse than it) beyond the nominal rate."""
    rng = np.random.default_rng(4)
    margin = 0.01
    ends = [run_study(d, margin=margin) for d in rng.normal(-margin, SD, (STUDIES, N_MAX))]
    assert np.mean([e.settled for e in ends]) <= ALPHA + TOL


@pytest.mark.parametrize("effect", [1.0, 1.5])
def test_planted_effect_is_supported_and_covered(effect):
    rng = np.random.default_rng(int(effect * 10))
    delta = effect * SD
    ends = [run_study(d) for d in rng.normal(delta, SD, (STUDIES, N_MAX))]
    supported = np.mean([e.verdict == "supported" for e in ends])
    covered = np.mean([e.lo <= delta <= e.hi for e in ends])
    assert covered >= 1 - ALPHA - TOL, f"the interval it stopped with covered the effect {covered:.4f} of the time"
    assert not any(e.verdict == "contradicted" for e in ends)
    # power of the design (docs/methods.md): about 0.73 at one spread, 0.97 at 1.5 spreads by 10 seeds
    assert supported >= {1.0: 0.68, 1.5: 0.94}[effect], supported
    if effect == 1.5:  # a clear effect settles before the maximum
        assert np.mean([e.n for e in ends]) < 8


def test_holm_across_claims_keeps_the_familywise_rate():
    """Three null claims of one study, each at claim_alpha (alpha / claims not yet
    settled, passed on when one settles): any false verdict among the three at most
    the nominal rate. Bonferroni-free testing of each at 0.05 gives about 14%."""
    rng = np.random.default_rng(5)
    family, studies = 3, 2000
    wrong = 0
    for _ in range(studies):
        d = rng.normal(0, SD, (family, N_MAX))
        looks: list[list[int]] = [[] for _ in range(family)]
        open_ = set(range(family))
        settled = 0
        for n in range(seq.MIN_N, N_MAX + 1):
            for i in sorted(open_):
                lk = look(d[i, :n], N_MAX, alpha=claim_alpha(family, settled), prior_looks=looks[i])
                looks[i].append(n)
                if lk.stop:
                    open_.discard(i)
                    settled += lk.settled
        wrong += settled > 0
    assert wrong / studies <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / studies)


def test_boundaries_depend_only_on_the_looks_before():
    full = seq.boundaries(range(3, 11), 10)
    assert seq.boundaries(range(3, 7), 10) == full[:4]  # a later look never moves an earlier boundary
    assert all(a > b for a, b in zip(full, full[1:]))  # O'Brien-Fleming: strict early, lenient late
    # the last boundary is wider than the fixed-n t's 2.26: the price of looking early
    assert 2.26 < full[-1] < 2.8
    # a higher level (Holm passing alpha on) gives lower boundaries at every look
    assert all(a < b for a, b in zip(seq.boundaries(range(3, 11), 10, 0.1), full))


def test_two_seeds_are_never_a_verdict_and_intervals_stay_in_range():
    lk = look([0.3, 0.3001], 10)
    assert lk.verdict == "open" and lk.n == 2 and math.isnan(lk.lo) and lk.stop is None
    wild = look([0.99, -0.95, 0.97], 3)
    assert wild.lo == -1.0 and wild.hi == 1.0 and wild.stop == "max_seeds" and not wild.can_settle
    same = look([0.01, 0.01, 0.01], 10)  # no spread: no verdict, more seeds will show one
    assert same.verdict == "open" and same.can_settle and same.lo == same.hi == 0.01
    with pytest.raises(ValueError, match="n_max"):
        look([0.01] * 11, 10)
    with pytest.raises(ValueError, match="n_min"):
        look([0.01] * 3, 10, n_min=2)


def test_record_is_plain_json():
    import json

    rec = look([0.01, 0.012, 0.011], 10).record()
    assert json.loads(json.dumps(rec, allow_nan=False)) == rec
    assert rec["verdict"] == "open" and rec["n"] == 3 and rec["alpha"] == ALPHA
    assert look([0.01], 10).record()["lo"] is None


def test_seeds_to_settle_exceeds_the_fixed_n():
    # one spread: a fixed-n paired t needs 10 seeds for 80% power; the design about 12
    assert seeds_to_settle(0.005, 0.005) == 12
    assert seeds_to_settle(0.0, 0.005) is None and seeds_to_settle(1e-7, 0.005) is None
    assert seeds_to_settle(0.01, 0.0) == seq.MIN_N
    # the simulated design reaches 80% at that n_max
    rng = np.random.default_rng(6)
    ends = [run_study(d, n_max=12) for d in rng.normal(0.005, 0.005, (1500, 12))]
    assert np.mean([e.verdict == "supported" for e in ends]) >= 0.75


def test_p_beats_is_the_predictive_share():
    rng = np.random.default_rng(7)
    d = rng.normal(0.005, 0.01, 4000)
    assert p_beats(d) == pytest.approx(0.6915, abs=0.015)  # Phi(0.5)
    # at small n the predictive is less sure than the plug-in Phi(mean / sd)
    small = [0.01, 0.02, 0.015]
    from scipy.stats import norm

    assert 0.5 < p_beats(small) < norm.cdf(np.mean(small) / np.std(small, ddof=1))
    assert math.isnan(p_beats([0.01])) and math.isnan(p_beats([0.01, 0.01, 0.01]))
