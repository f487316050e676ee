import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.compare import best_runs, compare_variants
from study.stats.intervals import diff_test, mean_ci


def _runs(effect: float, *, seeds=range(5), noise=0.004, rng_seed=0, phase="repeat", variant_seeds=None):
    """Baseline and variant over the same seeds; a per-seed offset shared by both
    (same data order/init) plus independent noise."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    seeds = list(seeds)
    shared = rng.normal(0, 0.01, len(seeds))
    for variant, shift, vseeds in (("resnet", 0.0, seeds), ("quotient", effect, variant_seeds or seeds)):
        for k, s in enumerate(vseeds):
            acc = 0.90 + shift + shared[k % len(shared)] + rng.normal(0, noise)
            rows.append({"experiment": f"x-{variant}", "variant": variant, "depth": 20, "phase": phase,
                         "trial_id": f"{variant}-{s}", "seed": s, "status": "completed", "val_acc": acc,
                         "test_acc": acc - 0.003})
    return pd.DataFrame(rows)


def _row(table, variant, metric="val_acc"):
    return table[(table["variant"] == variant) & (table["metric"] == metric)].iloc[0]


def _t_two_sided_p(t: float, dof: float) -> float:
    """Two-sided p of Student's t, by integrating its density written out with
    math.lgamma (Simpson's rule on [|t|, 1e4]): independent of scipy.stats."""
    c = math.exp(math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)) / math.sqrt(dof * math.pi)
    x = np.linspace(abs(t), abs(t) + 60, 600_001)  # tails beyond +60 hold < 1e-9 for dof >= 3
    f = c * (1 + x**2 / dof) ** (-(dof + 1) / 2)
    h = x[1] - x[0]
    tail = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    return 2 * tail


def _paired_p_by_hand(a, b) -> float:
    d = np.asarray(a) - np.asarray(b)
    n = d.size
    t = d.mean() / math.sqrt(((d - d.mean()) ** 2).sum() / (n - 1) / n)
    return _t_two_sided_p(t, n - 1)


def _welch_p_by_hand(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return _t_two_sided_p((a.mean() - b.mean()) / math.sqrt(va + vb), dof)


def _sign_flip_p(d) -> float:
    """Exact paired permutation test (every sign flip of the differences)."""
    d = np.asarray(d)
    obs = abs(d.mean())
    flips = [abs((d * np.array(s)).mean()) for s in itertools.product([1, -1], repeat=d.size)]
    return float(np.mean([f >= obs - 1e-15 for f in flips]))


def test_planted_two_percent_effect_is_detected():
    table = compare_variants(_runs(0.02))
    q = _row(table, "quotient")
    assert q["test"] == "paired t" and q["n"] == 5 and q["source"] == "repeat"
    assert q["p_value"] < 0.05
    assert q["diff_lo"] < 0.02 < q["diff_hi"] and q["diff_lo"] > 0
    assert _row(table, "resnet")["test"] == "baseline"
    assert _row(table, "quotient", "test_acc")["p_value"] < 0.05
    # the p-value against a hand computation (t statistic, density integrated),
    # and in line with an exact sign-flip permutation test of the same pairs
    df = _runs(0.02)
    a = df[df["variant"] == "quotient"].sort_values("seed")["val_acc"].to_numpy()
    b = df[df["variant"] == "resnet"].sort_values("seed")["val_acc"].to_numpy()
    assert q["diff"] == pytest.approx((a - b).mean(), abs=1e-12)
    assert q["p_value"] == pytest.approx(_paired_p_by_hand(a, b), rel=1e-4)
    # n = 5: the smallest sign-flip p is 2/32; every difference positive reaches it
    assert (a - b > 0).all() and _sign_flip_p(a - b) == pytest.approx(2 / 32)


def test_null_effect_is_not_significant():
    q = _row(compare_variants(_runs(0.0)), "quotient")
    assert q["p_value"] > 0.05 and q["diff_lo"] < 0 < q["diff_hi"]


def test_welch_when_seeds_differ_and_planted_effect_still_found():
    df = _runs(0.02, noise=0.003, variant_seeds=[10, 11, 12, 13, 14])
    df.loc[df["variant"] == "quotient", "val_acc"] = 0.92 + np.random.default_rng(1).normal(0, 0.003, 5)
    df.loc[df["variant"] == "resnet", "val_acc"] = 0.90 + np.random.default_rng(2).normal(0, 0.003, 5)
    q = _row(compare_variants(df), "quotient")
    assert q["test"] == "welch t" and q["p_value"] < 0.05
    a = df.loc[df["variant"] == "quotient", "val_acc"].to_numpy()
    b = df.loc[df["variant"] == "resnet", "val_acc"].to_numpy()
    assert q["diff"] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    assert q["p_value"] == pytest.approx(_welch_p_by_hand(a, b), rel=1e-4)


def test_single_seed_gives_nan_not_crash():
    table = compare_variants(_runs(0.02, seeds=[0]))
    q = _row(table, "quotient")
    assert q["n"] == 1 and np.isnan(q["p_value"]) and np.isnan(q["ci_lo"]) and np.isnan(q["diff_lo"])
    df = _runs(0.02, seeds=[0])
    one = df.set_index("variant")["val_acc"]
    # the single pair's own difference (shared seed offset cancels): 0.02 plus noise, never zero
    assert q["diff"] == pytest.approx(one["quotient"] - one["resnet"], abs=1e-12)
    assert abs(q["diff"] - 0.02) < 3 * 0.004 * np.sqrt(2)


def test_missing_baseline_and_top_search_fallback():
    df = _runs(0.01, phase="search")
    df = pd.concat([df, df.assign(trial_id=df["trial_id"] + "b", val_acc=df["val_acc"] - 0.1)], ignore_index=True)
    runs, source, _ = best_runs(df[df["variant"] == "quotient"], top_k=3)
    assert source == "top-search" and len(runs) == 3
    assert runs["val_acc"].min() >= df.loc[df["variant"] == "quotient", "val_acc"].nlargest(3).min()
    only = compare_variants(df[df["variant"] == "quotient"], top_k=3)
    assert (only["test"] == "none").all() and only["p_value"].isna().all()


def test_diverged_repeats_are_counted_not_averaged():
    df = _runs(0.02)
    df.loc[df.index[-1], ["status", "val_acc"]] = ["diverged", np.nan]
    q = _row(compare_variants(df), "quotient")
    assert q["n"] == 4 and q["n_diverged"] == 1 and q["test"] == "welch t"


def test_intervals_stay_inside_the_metric_range():
    """Two noisy seeds give a t interval with one degree of freedom (x12.7 the
    standard error): it must be cut to [0, 1] for accuracies, [-1, 1] for differences."""
    rows = []
    for v, accs in (("resnet", [0.2, 0.98]), ("quotient", [0.99, 0.15])):
        for s, acc in zip([0, 1], accs):
            rows.append({"experiment": v, "variant": v, "depth": 8, "phase": "repeat", "trial_id": f"{v}{s}",
                         "seed": s, "status": "completed", "val_acc": acc, "test_acc": acc})
    t = compare_variants(pd.DataFrame(rows))
    assert (t["ci_lo"] >= 0).all() and (t["ci_hi"] <= 1).all()
    q = _row(t, "quotient")
    assert q["diff_lo"] >= -1 and q["diff_hi"] <= 1
    assert q["ci_lo"] == 0.0 and q["ci_hi"] == 1.0  # the raw interval left both ends


def test_stats_functions_agree_with_scipy():
    m, lo, hi, n = mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and hi - m == pytest.approx(stats.t.ppf(0.975, 2) / np.sqrt(3))
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 8), rng.normal(0.5, 2, 6)
    t = diff_test(a, b, paired=False)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert t.p_value == pytest.approx(res.pvalue) and (t.lo, t.hi) == pytest.approx((ci.low, ci.high))
    assert np.isnan(diff_test([1.0], [2.0, 3.0], paired=False).p_value)
    with pytest.raises(ValueError, match="equal lengths"):
        diff_test([1.0, 2.0], [1.0], paired=True)


def test_p_values_are_holm_adjusted_within_each_metric():
    df = _runs(0.02)
    extra = df[df["variant"] == "quotient"].assign(variant="epsilon", experiment="x-epsilon",
                                                    trial_id=lambda d: "e" + d["trial_id"])
    table = compare_variants(pd.concat([df, extra], ignore_index=True))
    for metric in ("val_acc", "test_acc"):
        t = table[(table["metric"] == metric) & table["p_value"].notna()]
        assert len(t) == 2
        # two tests with identical p: Holm multiplies the smaller by 2, keeps monotone
        assert t["p_adj"].tolist() == pytest.approx([min(1.0, 2 * t["p_value"].min())] * 2)
