import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.load import InsufficientDataError
from analysis.sensitivity import (at_epoch, categorical_levels, fit_curve, numeric_curves, rung_epochs, sensitivity,
                                  split_params)


def test_planted_epsilon_optimum_found_with_interval(planted_epsilon):
    curves, notes = numeric_curves(planted_epsilon, n_boot=200, seed=0)
    by = {c.param: c for c in curves}
    assert set(by) == {"epsilon", "side_weight"}, notes
    c = by["epsilon"]
    assert c.log and c.n == 40 and c.n_boot > 150
    assert abs(np.log10(c.argmax)) < 0.25
    assert c.argmax_lo <= 1.0 <= c.argmax_hi
    assert c.argmax_lo <= c.argmax <= c.argmax_hi
    # the band brackets the fitted mean and the grid spans the data in original units
    assert np.all(c.lo <= c.mean + 1e-9) and np.all(c.mean <= c.hi + 1e-9)
    assert c.grid.min() == pytest.approx(c.x.min()) and c.grid.max() == pytest.approx(c.x.max())
    # the fitted maximum is close to the planted 0.9
    assert abs(c.mean.max() - 0.9) < 0.02


def test_non_completed_and_repeat_trials_do_not_enter_the_fit(planted_epsilon):
    bad = planted_epsilon.head(6).copy()
    bad["trial_id"] = [f"bad-{i}" for i in range(6)]
    bad["epsilon"] = 1.0
    bad["val_acc"] = 0.1  # would drag the optimum away if used
    bad["status"] = ["pruned", "pruned", "failed", "diverged", "completed", "completed"]
    bad["phase"] = ["search"] * 4 + ["repeat", "repeat"]
    df = pd.concat([planted_epsilon, bad], ignore_index=True)
    c = {c.param: c for c in numeric_curves(df, n_boot=50)[0]}["epsilon"]
    assert c.n == 40
    assert abs(np.log10(c.argmax)) < 0.25


def test_too_few_trials_gives_note_not_crash(planted_epsilon):
    with pytest.raises(InsufficientDataError, match="usable trials"):
        fit_curve([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], param="alpha")
    curves, notes = numeric_curves(planted_epsilon.head(4), n_boot=20)
    assert curves == [] or all(c.n >= 5 for c in curves)
    res = sensitivity(planted_epsilon.head(3), n_boot=20)
    assert res.curves == [] and any("only 3 completed" in n for n in res.notes)


def test_fit_curve_linear_scale_recovers_peak():
    rng = np.random.default_rng(3)
    x = rng.uniform(1.2, 4.0, 35)
    y = 0.85 - 0.03 * (x - 2.5) ** 2 + rng.normal(0, 0.003, 35)
    c = fit_curve(x, y, log=False, n_boot=100, param="alpha")
    assert not c.log and abs(c.argmax - 2.5) < 0.3 and c.argmax_lo <= 2.5 <= c.argmax_hi


def _cat_frame():
    rows = []
    for i, (lvl, st, acc, dead, stem) in enumerate([
        ("a", "completed", 0.80, 0.9, True), ("a", "completed", 0.82, 0.1, False),
        ("a", "completed", 0.84, 0.7, True), ("a", "diverged", np.nan, 0.95, True),
        ("b", "completed", 0.70, np.nan, False), ("b", "pruned", 0.30, np.nan, False),
    ]):
        rows.append({"experiment": "q", "variant": "quotient", "phase": "search", "trial_id": str(i), "seed": 0,
                     "status": st, "val_acc": acc, "quotient_rule": lvl, "quotient_stem": stem,
                     "q_dead_frac": dead, "searched": json.dumps(["quotient_rule", "quotient_stem"])})
    return pd.DataFrame(rows)


def test_categorical_levels_means_intervals_and_rates():
    lv = categorical_levels(_cat_frame())
    a = lv[(lv["param"] == "quotient_rule") & (lv["level"] == "a")].iloc[0]
    assert a["n_trials"] == 4 and a["n_completed"] == 3
    assert a["mean"] == pytest.approx(0.82)
    h = stats.t.ppf(0.975, 2) * 0.02 / np.sqrt(3)
    assert a["ci_lo"] == pytest.approx(0.82 - h) and a["ci_hi"] == pytest.approx(0.82 + h)
    assert a["divergence_rate"] == pytest.approx(0.25) and a["n_diverged"] == 1
    assert a["dead_rate"] == pytest.approx(3 / 4)  # 0.9, 0.7, 0.95 > 0.5 out of 4 reporting
    b = lv[(lv["param"] == "quotient_rule") & (lv["level"] == "b")].iloc[0]
    assert b["n_completed"] == 1 and b["mean"] == pytest.approx(0.70)  # pruned excluded from the mean
    assert np.isnan(b["ci_lo"]) and np.isnan(b["dead_rate"]) and b["divergence_rate"] == 0
    assert set(lv.loc[lv["param"] == "quotient_stem", "level"]) == {"True", "False"}


def test_split_params_few_values_become_levels(planted_epsilon):
    df = planted_epsilon.copy()
    df["sgs_interval"] = np.resize([5, 10, 30], len(df))
    df["searched"] = json.dumps(["epsilon", "side_weight", "sgs_interval", "adaptive_lr"])
    num, cat = split_params(df, "epsilon")
    assert num == ["epsilon", "side_weight"] and cat == ["sgs_interval", "adaptive_lr"]


def _sgs_frame(n=30, seed=0):
    """sgs_k matters only for sgs_mode == 'mi' (search_spaces condition); branch-mode
    rows carry the default sgs_k = 5 with a much lower accuracy."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        mi = i % 3 != 0
        k = float(10 ** rng.uniform(np.log10(0.25), np.log10(64))) if mi else 5.0
        acc = 0.9 - 0.05 * (np.log10(k) - 1) ** 2 + rng.normal(0, 0.005) if mi else 0.5
        rows.append({"experiment": "s", "variant": "sgs", "phase": "search", "trial_id": str(i), "seed": 0,
                     "status": "completed", "val_acc": acc, "sgs_mode": "mi" if mi else "branches", "sgs_k": k,
                     "searched": json.dumps(["sgs_mode", "sgs_k"])})
    return pd.DataFrame(rows)


def test_conditional_param_uses_only_trials_where_it_was_active():
    from analysis.spaces import space_info

    assert space_info("sgs")["sgs_k"].condition == ("sgs_mode", "mi")  # the project's own space declares it
    df = _sgs_frame()
    (c,) = numeric_curves(df, n_boot=50)[0]
    assert c.param == "sgs_k" and c.n == 20 and c.log
    assert abs(np.log10(c.argmax) - 1) < 0.3
    lv = categorical_levels(df)
    assert set(lv.loc[lv["param"] == "sgs_mode", "level"]) == {"mi", "branches"}


def test_log_scale_inferred_without_search_spaces(monkeypatch, planted_epsilon):
    import analysis.spaces as spaces

    monkeypatch.setattr(spaces, "space_info", lambda variant, spec=None: {})
    info = spaces.param_info("epsilon", "epsilon", planted_epsilon["epsilon"])
    assert info.kind == "float" and info.log
    assert not spaces.param_info("epsilon", "side_weight", planted_epsilon["side_weight"]).log
    assert spaces.param_info("epsilon", "adaptive_lr", planted_epsilon["adaptive_lr"]).kind == "categorical"
    c = {c.param: c for c in numeric_curves(planted_epsilon, n_boot=30)[0]}["epsilon"]
    assert c.log


def test_rung_epochs_follow_the_spec_scheduler():
    assert rung_epochs({"epochs": 6, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}) \
        == [1, 2, 4]
    assert rung_epochs({"epochs": 30, "scheduler": {"grace_period": 3, "reduction_factor": 3}}) == [3, 9, 27]
    assert rung_epochs({"epochs": 6, "scheduler": {"type": "fifo"}}) == []
    assert rung_epochs({"epochs": 1, "scheduler": {"grace_period": 1, "reduction_factor": 2}}) == []


def _pruned_study(n=24, seed=0):
    """Planted optimum lr = 0.1 (log10 = -1); ASHA-like: only the top quarter at
    epoch 2 completes, the rest stop at epoch 1 or 2. val_acc at epoch e =
    final * (0.6 + 0.4 e / 6) keeps the ordering at every epoch."""
    rng = np.random.default_rng(seed)
    rows, hist = [], []
    lrs = 10 ** rng.uniform(-3, 0, n)
    final = 0.9 - 0.08 * (np.log10(lrs) + 1) ** 2 + rng.normal(0, 0.005, n)
    order = np.argsort(-final)
    stop = np.full(n, 1)
    stop[order[: n // 2]] = 2
    stop[order[: 3]] = 6  # 3 completed: too few for a final curve
    for i in range(n):
        st = "completed" if stop[i] == 6 else "pruned"
        rows.append({"experiment": "p", "subject": "resnet", "variant": "resnet", "phase": "search",
                     "trial_id": f"t{i}", "seed": 0, "status": st, "lr": lrs[i], "depth": 8,
                     "val_acc": final[i] if st == "completed" else final[i] * (0.6 + 0.4 * stop[i] / 6),
                     "searched": json.dumps(["lr"])})
        for e in range(1, stop[i] + 1):
            hist.append({"experiment": "p", "trial_id": f"t{i}", "epoch": e, "val_acc": final[i] * (0.6 + 0.4 * e / 6)})
    return pd.DataFrame(rows), pd.DataFrame(hist)


def test_heavy_pruning_still_gives_curves_labelled_by_rung():
    df, hist = _pruned_study()
    spec = {"epochs": 6, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}
    res = sensitivity(df, n_boot=100, spec=spec, history=hist)
    by = {c.fidelity: c for c in res.curves if c.param == "lr"}
    # final: 3 completed trials, no curve (a note instead); rung 1: all 24; rung 2: 12
    assert "final" not in by and any("only 3 completed" in n for n in res.notes)
    assert set(by) == {"epoch 1", "epoch 2"} and by["epoch 1"].n == 24 and by["epoch 2"].n == 12
    c = by["epoch 1"]
    assert c.argmax_lo <= 0.1 <= c.argmax_hi  # the planted optimum
    assert abs(np.log10(c.argmax) + 1) < 0.3
    assert res.summary()["fidelity"].tolist().count("epoch 1") == 1
    # the rung value is the history's at that epoch, not the trial's last report
    at = at_epoch(df, hist, 1)
    assert len(at) == 24 and np.allclose(at["val_acc"], at["trial_id"].map(
        hist[hist["epoch"] == 1].set_index("trial_id")["val_acc"]))
    assert set(at["final_status"]) == {"completed", "pruned"}


def test_accuracy_band_stays_inside_zero_one():
    # accuracies near 1 with a steep slope: an unclipped GP band runs past 1
    x = np.linspace(0, 1, 8)
    y = np.clip(0.6 + 0.45 * x, 0, 1) + np.random.default_rng(0).normal(0, 0.02, 8).clip(-0.02, 0.0)
    c = fit_curve(x, y, n_boot=100, metric="val_acc")
    assert c.hi.max() <= 1.0 and c.lo.min() >= 0.0 and c.mean.max() <= 1.0
    raw = fit_curve(x, y, n_boot=100, metric="score")  # an unbounded metric is not clipped
    assert raw.hi.max() > 1.0
