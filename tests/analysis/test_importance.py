import json

import numpy as np
import optuna
import pytest
import pandas as pd
from optuna.distributions import FloatDistribution

from analysis.importance import (MIN_TRIALS, complete_only, importance_frame, importances_from_results,
                                 param_importances, study_from_frame, study_importances)
from analysis.load import load_optuna_studies


def test_planted_irrelevant_param_has_low_importance(planted_epsilon):
    study, dropped = study_from_frame(planted_epsilon)
    assert dropped == []
    assert len(study.trials) == 40 and study.direction == optuna.study.StudyDirection.MAXIMIZE
    dist = study.trials[0].distributions["epsilon"]
    assert isinstance(dist, FloatDistribution) and dist.log
    table, note = param_importances(study, seed=0)
    assert note is None
    t = table.set_index("param")
    for col in ("fanova", "ped_anova"):
        assert t.loc["side_weight", col] < t.loc["epsilon", col], col
        assert t.loc["side_weight", col] < 0.2, col
        assert abs(t[col].sum() - 1) < 1e-6


def test_too_few_trials_is_an_empty_result_with_a_note(planted_epsilon):
    study, _ = study_from_frame(planted_epsilon.head(MIN_TRIALS - 1))
    table, note = param_importances(study)
    assert table.empty and list(table.columns) == ["param", "fanova", "ped_anova"]
    assert f"{MIN_TRIALS - 1} complete trial(s)" in note
    empty, _ = study_from_frame(planted_epsilon.head(0))
    assert param_importances(empty)[0].empty


def test_conditional_param_is_left_out_and_reported(planted_epsilon):
    df = planted_epsilon.copy()
    extra = df.index[:10]
    df.loc[extra, "searched"] = json.dumps(["epsilon", "side_weight", "adaptive_lr"])
    (res,) = importances_from_results(df)
    assert res.dropped == ["adaptive_lr"] and "adaptive_lr" in res.note
    assert set(res.table["param"]) == {"epsilon", "side_weight"} and res.n == 40


def test_pruned_and_failed_trials_are_excluded():
    study = optuna.create_study(direction="maximize")
    d = {"x": FloatDistribution(0, 1), "y": FloatDistribution(0, 1)}
    for i in range(12):
        study.add_trial(optuna.trial.create_trial(value=i / 12, params={"x": i / 12, "y": (i * 7 % 12) / 12},
                                                  distributions=d))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"x": 0.5, "z": 1.0},
                                              distributions={"x": d["x"], "z": FloatDistribution(0, 2)},
                                              intermediate_values={1: 0.0}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={}, distributions={}))
    copy, dropped = complete_only(study)
    assert len(copy.trials) == 12 and dropped == []
    table, note = param_importances(copy)
    assert note is None and table.iloc[0]["param"] == "x"


def test_importance_from_the_optuna_db(synthetic_study_dir):
    studies = load_optuna_studies(synthetic_study_dir)
    assert set(studies) == {"syn-epsilon-d8", "syn-quotient-d8", "syn-resnet-d8", "syn-sgs-d8"}
    imps, why = study_importances(synthetic_study_dir)
    assert why is None
    by = {r.experiment: r for r in imps}
    assert by["syn-epsilon-d8"].source == "optuna.db"
    assert by["syn-epsilon-d8"].n == 40  # the pruned and failed trials in the DB are not counted
    eps = by["syn-epsilon-d8"].table.set_index("param")
    assert eps.loc["epsilon", "fanova"] > eps.loc["side_weight", "fanova"]
    assert by["syn-sgs-d8"].table.empty and "complete trial(s)" in by["syn-sgs-d8"].note
    assert by["syn-quotient-d8"].variant == "quotient"
    frame = importance_frame(imps)
    assert set(frame["experiment"]) == {"syn-epsilon-d8", "syn-quotient-d8", "syn-resnet-d8"}


def test_falls_back_to_results_without_db(study_dir_factory, tmp_path):
    d = study_dir_factory(tmp_path, optuna_db=False)
    imps, why = study_importances(d)
    assert "optuna.db not found" in why
    assert {r.source for r in imps} == {"results"}
    assert isinstance(importance_frame(imps), pd.DataFrame)


def test_inactive_conditional_param_is_not_given_to_the_evaluators():
    from tests.analysis.test_sensitivity import _sgs_frame

    from analysis.spaces import space_info

    assert space_info("sgs")["sgs_k"].condition == ("sgs_mode", "mi")  # the project's own space declares it
    study, dropped = study_from_frame(_sgs_frame())
    assert dropped == ["sgs_k"]
    assert all(set(t.params) == {"sgs_mode"} for t in study.trials)


def test_two_objective_study_scores_the_accuracy_objective():
    """epsilon searched with objectives [val_acc, param_reduction]: importance is of
    val_acc (values[0]); PED-ANOVA must look at the TOP accuracies, not the bottom."""
    import optuna
    from optuna.distributions import FloatDistribution

    from analysis.importance import complete_only, param_importances

    rng = np.random.default_rng(0)
    study = optuna.create_study(directions=["maximize", "maximize"])
    dists = {"epsilon": FloatDistribution(0.1, 5, log=True), "side_weight": FloatDistribution(0, 1)}
    for _ in range(40):
        e, w = float(10 ** rng.uniform(-1, np.log10(5))), float(rng.uniform(0, 1))
        # accuracy peaks at epsilon = 1 and falls off on both sides; reduction grows with epsilon
        acc = 0.9 - 0.2 * np.log10(e) ** 2 + rng.normal(0, 0.005)
        study.add_trial(optuna.trial.create_trial(values=[acc, e / 5], params={"epsilon": e, "side_weight": w},
                                                  distributions=dists))
    copy, dropped = complete_only(study)
    table, note = param_importances(copy)
    assert note is None and dropped == []
    imp = table.set_index("param")
    assert imp.loc["epsilon", "fanova"] > 0.8 and imp.loc["epsilon", "ped_anova"] > 0.6
    # the same trials as a single-objective (maximize val_acc) study give the same
    # importances: PED-ANOVA looked at the top accuracies, as it does there
    single = optuna.create_study(direction="maximize")
    single.add_trials([optuna.trial.create_trial(value=t.values[0], params=t.params, distributions=t.distributions)
                       for t in copy.get_trials()])
    one = param_importances(single)[0].set_index("param")
    assert imp["ped_anova"].to_dict() == pytest.approx(one["ped_anova"].to_dict(), abs=1e-9)
    assert imp["fanova"].to_dict() == pytest.approx(one["fanova"].to_dict(), abs=1e-9)
