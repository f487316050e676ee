"""Expected best of n trials (Dodge et al. 2019) with the unbiased estimator."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from analysis.budget import budget_table, crossings, expected_max, expected_max_curve


def test_the_estimator_is_the_mean_of_the_best_over_every_subset():
    rng = np.random.default_rng(0)
    v = rng.normal(0.9, 0.02, size=7)
    for n in range(1, 8):
        brute = np.mean([max(c) for c in combinations(v, n)])
        assert expected_max(v, n) == pytest.approx(brute, abs=1e-12)
    assert expected_max(v, 1) == pytest.approx(v.mean()) and expected_max(v, 7) == pytest.approx(v.max())
    curve = expected_max_curve(v)
    assert np.all(np.diff(curve) >= 0)  # more trials never lower the expected best


def test_the_estimator_is_unbiased_where_with_replacement_is_not():
    # population: uniform on [0, 1]; E[max of n] = n / (n + 1)
    rng = np.random.default_rng(1)
    n, big_n, reps = 4, 8, 20000
    est, dodge = [], []
    for _ in range(reps):
        v = np.sort(rng.uniform(size=big_n))
        est.append(expected_max(v, n))
        i = np.arange(1, big_n + 1)
        dodge.append(float(v @ ((i / big_n) ** n - ((i - 1) / big_n) ** n)))
    truth = n / (n + 1)
    se = np.std(est) / np.sqrt(reps)
    assert abs(np.mean(est) - truth) < 4 * se
    assert np.mean(dodge) < truth - 10 * se  # with replacement repeats trials: biased low


def test_budget_is_bounded_by_the_trials_run():
    with pytest.raises(ValueError, match="n: 5 is not allowed; allowed: 1..4"):
        expected_max([0.1, 0.2, 0.3, 0.4], 5)


def test_crossings_and_the_table_name_the_budget():
    assert crossings(np.array([0.1, 0.2, 0.5]), np.array([0.2, 0.2, 0.3])) == [3]
    assert crossings(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == []
    # the variant is worse on average but has a better tail: behind at n = 1, ahead at n = 6
    variant = [0.80, 0.81, 0.82, 0.83, 0.84, 0.99]
    base = [0.86, 0.86, 0.87, 0.87, 0.88, 0.88]
    rows = [{"subject": "quotient", "variant": "quotient", "depth": 8, "phase": "search", "status": "completed",
             "best_val_acc": x} for x in variant]
    rows += [{"subject": "resnet", "variant": "resnet", "depth": 8, "phase": "search", "status": "completed",
              "best_val_acc": x} for x in base]
    rows += [{"subject": "resnet", "variant": "resnet", "depth": 8, "phase": "repeat", "status": "completed",
              "best_val_acc": 0.1}]  # repeat runs are not search draws
    table, notes = budget_table(pd.DataFrame(rows))
    assert list(table["budget"]) == [1, 2, 3, 4, 5, 6]
    assert table["diff"].iloc[0] < 0 < table["diff"].iloc[-1]
    assert table["baseline_expected_best"].iloc[0] == pytest.approx(np.mean(base))
    assert len(notes) == 1 and "ahead of resnet at n = 6" in notes[0] and "cross at n =" in notes[0]
