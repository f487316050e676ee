"""The per-variant Optuna spaces: ranges, conditionals, overrides, samplers,
and the hand-off to Ray Tune's OptunaSearch."""

from __future__ import annotations

import importlib.util
import math

import optuna
import pytest

from study.config import TrainConfig, config_field_names
from study.spaces import (
    ALGORITHMS, PARAMS, VARIANTS, ConditionalGridSampler, Param, SpaceError, build_space, grid_space,
    make_sampler, space_params,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

MI_ONLY = {"sgs_k", "sgs_interval", "sgs_batches"}


def run(space, sampler, n_trials):
    """An in-memory study whose objective only records the config."""
    configs = []
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: configs.append(space(t)) or 0.0, n_trials=n_trials)
    return study, configs


def in_range(p: Param, v) -> bool:
    if p.kind == "categorical":
        return any(type(v) is type(c) and v == c for c in p.choices)
    if p.kind == "int" and not isinstance(v, int):
        return False
    return p.low <= v <= p.high


def test_params_are_trainconfig_fields_with_sane_ranges():
    fields = set(config_field_names())
    assert VARIANTS == ("resnet", "quotient", "epsilon", "sgs")
    assert [p.name for p in PARAMS["resnet"]] == ["lr", "weight_decay"]
    for variant, params in PARAMS.items():
        assert [p.name for p in params[:2]] == ["lr", "weight_decay"], variant
        seen = set()
        for p in params:
            assert p.name in fields
            if p.numeric:
                assert p.low < p.high and (not p.log or p.low > 0)
            else:
                assert p.choices
            if p.condition:
                assert p.parent()[0] in seen  # parents are suggested first
            seen.add(p.name)
    by_name = {p.name: p for p in PARAMS["sgs"]}
    assert by_name["sgs_k"].log and by_name["sgs_k"].condition == "sgs_mode == 'mi'"
    assert by_name["sgs_k"].is_active({"sgs_mode": "mi"}) and not by_name["sgs_k"].is_active({"sgs_mode": "branches"})
    assert {p.name for p in PARAMS["epsilon"] if p.log} == {"lr", "weight_decay", "epsilon"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_random_study_stays_in_range(variant):
    study, configs = run(build_space(variant), optuna.samplers.RandomSampler(seed=0), 20)
    params = {p.name: p for p in PARAMS[variant]}
    for trial, cfg in zip(study.trials, configs):
        assert cfg["variant"] == variant
        for name, value in trial.params.items():
            assert in_range(params[name], value), (name, value)
            assert cfg[name] == value
        for p in params.values():
            if p.condition is None:
                assert p.name in trial.params
        TrainConfig.from_dict(cfg)  # every key is a TrainConfig field
    if variant == "resnet":
        assert all(set(t.params) == {"lr", "weight_decay"} for t in study.trials)


def test_sgs_conditionals_follow_the_mode():
    study, configs = run(build_space("sgs"), optuna.samplers.RandomSampler(seed=1), 20)
    modes = set()
    for trial, cfg in zip(study.trials, configs):
        mode = trial.params["sgs_mode"]
        modes.add(mode)
        assert cfg["sgs_mode"] == mode != "off"
        if mode == "branches":
            assert trial.params["sgs_branches"] in ("3x3+1x1", "3x3+3x1+1x1", "acb")
            assert not MI_ONLY & set(trial.params) and not MI_ONLY & set(cfg)
        else:
            assert MI_ONLY <= set(trial.params) and "sgs_branches" not in trial.params
    assert modes == {"branches", "mi"}


def test_overrides_narrow_change_and_fix():
    overrides = {
        "alpha": {"low": 1.5, "high": 1.8},
        "quotient_rule": {"choices": ["paper", "exact_one"]},
        "lr": {"value": 0.1},
        "quotient_stem": {"value": False},
        "weight_decay": {"low": 1e-4, "high": 5e-4, "log": False},
    }
    study, configs = run(build_space("quotient", overrides), optuna.samplers.RandomSampler(seed=2), 20)
    for trial, cfg in zip(study.trials, configs):
        assert 1.5 <= trial.params["alpha"] <= 1.8
        assert 1e-4 <= trial.params["weight_decay"] <= 5e-4
        assert trial.params["quotient_rule"] in ("paper", "exact_one")
        assert "lr" not in trial.params and "quotient_stem" not in trial.params
        assert cfg["lr"] == 0.1 and cfg["quotient_stem"] is False
    dists = study.trials[0].distributions
    assert not dists["weight_decay"].log and dists["alpha"].low == 1.5
    names = {p.name: p for p in space_params("quotient", overrides)}
    assert "lr" not in names and names["weight_decay"].log is False
    assert names["quotient_rule"].choices == ("paper", "exact_one")


def test_fixed_constants_and_fixed_space_param():
    space = build_space("epsilon", fixed={"epochs": 3, "epsilon": 2.5})
    study, configs = run(space, optuna.samplers.RandomSampler(seed=0), 5)
    for trial, cfg in zip(study.trials, configs):
        assert "epsilon" not in trial.params
        assert cfg["epsilon"] == 2.5 and cfg["epochs"] == 3


def test_fixed_parent_switches_children_on():
    overrides = {"sgs_mode": {"value": "mi"}}
    study, configs = run(build_space("sgs", overrides), optuna.samplers.RandomSampler(seed=0), 8)
    for trial, cfg in zip(study.trials, configs):
        assert cfg["sgs_mode"] == "mi" and MI_ONLY <= set(trial.params)
        assert "sgs_mode" not in trial.params and "sgs_branches" not in trial.params
    grid = grid_space("sgs", overrides)
    assert "sgs_branches" not in grid and "sgs_mode" not in grid and MI_ONLY <= set(grid)


@pytest.mark.parametrize(
    "variant, overrides, fixed, pattern",
    [
        ("vgg", None, None, r"unknown variant 'vgg'; allowed: resnet, quotient, epsilon, sgs"),
        ("quotient", {"beta": {"low": 1}}, None, r"'beta'.*'quotient' searches: lr, weight_decay"),
        ("quotient", {"alpha": {"low": 3.0, "high": 2.0}}, None, r"'alpha'.*low=3\.0 must be below high=2\.0"),
        ("quotient", {"alpha": {"low": 0.5}}, None, r"'alpha'.*low=0\.5; allowed: a number > 1 and <= 100"),
        ("epsilon", {"epsilon": {"low": 0.0, "high": 1.0}}, None, r"'epsilon'.*log scale needs low > 0.*low=0\.0"),
        ("quotient", {"quotient_rule": {"choices": ["paper", "nope"]}}, None,
         r"'quotient_rule'.*'nope' is not allowed; allowed: \['paper', 'exact_one', 'unshifted', 'linear_clip'\]"),
        ("quotient", {"quotient_stem": {"value": 1}}, None, r"'quotient_stem'.*value=1.*allowed: \[True, False\]"),
        ("sgs", {"sgs_mode": {"value": "off"}}, None, r"'sgs_mode'.*'off'.*allowed: \['branches', 'mi'\]"),
        ("sgs", {"sgs_interval": {"low": 1.5, "high": 4}}, None, r"'sgs_interval'.*low=1\.5; allowed: an integer"),
        ("quotient", {"alpha": {"lo": 1.5}}, None, r"'alpha'.*\['lo'\].*\['low', 'high', 'log', 'value'\]"),
        ("quotient", {"alpha": {"value": 2.0, "low": 1.5}}, None, r"'value' fixes the parameter"),
        ("sgs", {"sgs_mode": {"choices": ["mi"]}, "sgs_branches": {"choices": ["acb"]}}, None,
         r"'sgs_branches' is used only when sgs_mode == 'branches'"),
        ("resnet", None, {"variant": "sgs"}, r"fixed field 'variant' is not allowed"),
        ("resnet", None, {"bogus": 1}, r"fixed field 'bogus'.*options of 'resnet': .*batch_size"),
            ("resnet", None, {"alpha": 2.0}, r"fixed field 'alpha'.*options of 'resnet'"),
            # every branch set the trainer knows is allowed (6), not just the 3 searched by default
            ("sgs", {"sgs_branches": {"choices": ["3x3+1x1", "rep"]}}, None,
             r"'rep' is not allowed; allowed: \['3x3', '3x3\+1x1', '3x3\+3x1\+1x1', 'acb', '3x3\+1x3\+3x1', "
             r"'3x3\+1x3\+3x1\+1x1'\]"),
            ("quotient", {"alpha": {"low": 1.5}}, {"alpha": 2.0}, r"'alpha' is given both as a fixed value"),
    ],
)
def test_bad_space_input_is_named(variant, overrides, fixed, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        build_space(variant, overrides, fixed)
    assert isinstance(info.value, SpaceError) and info.value.variant == variant
    bad = (overrides or {}) | (fixed or {})
    if variant != "vgg":
        assert info.value.param in bad


def test_grid_space_values():
    grid = grid_space("sgs")
    assert grid["lr"][0] == 0.01 and grid["lr"][-1] == 0.4
    assert math.isclose(grid["lr"][1], math.sqrt(0.01 * 0.4), rel_tol=1e-3)  # log-spaced
    assert grid["sgs_interval"] == [1, 5, 30] and grid["sgs_batches"] == [1, 4, 20]
    assert grid["sgs_mode"] == ["branches", "mi"]
    assert grid["sgs_branches"] == ["3x3+1x1", "3x3+3x1+1x1", "acb"]
    assert grid_space("epsilon", points=5)["side_weight"] == [0.0, 0.075, 0.15, 0.225, 0.3]
    assert grid_space("sgs", {"sgs_batches": {"low": 1, "high": 2}}, points=5)["sgs_batches"] == [1, 2]
    assert set(grid_space("resnet")) == {"lr", "weight_decay"}
    assert "lr" not in grid_space("resnet", {"lr": {"value": 0.1}})
    with pytest.raises(ValueError, match=r"grid points: got 1; allowed: an integer >= 2"):
        grid_space("resnet", points=1)


def test_grid_sampler_visits_each_effective_config_once():
    overrides = {"lr": {"value": 0.1}, "weight_decay": {"value": 1e-4}}
    grid = grid_space("sgs", overrides, points=2)
    # branches: 3 sets; mi: 2 k x 2 intervals x 2 batch counts
    sampler = make_sampler("grid", 0, "sgs", overrides, grid_points=2)
    assert isinstance(sampler, ConditionalGridSampler) and sampler.size == 3 + 8
    study, configs = run(build_space("sgs", overrides), sampler, 40)
    assert len(study.trials) == 3 + 8  # the sampler stops the study when the grid is done
    keys = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(keys) == 11
    for t in study.trials:
        assert all(v in grid[k] for k, v in t.params.items())
    # the plain GridSampler also runs the conditional space (with repeats)
    study, _ = run(build_space("sgs", overrides), optuna.samplers.GridSampler(grid, seed=0), 12)
    assert len(study.trials) == 12 and all(set(t.params) <= set(grid) for t in study.trials)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("variant", ["quotient", "sgs"])
def test_every_algorithm_runs_and_repeats_with_its_seed(algorithm, variant):
    if algorithm == "cmaes" and importlib.util.find_spec("cmaes") is None:
        # optuna's CMA-ES needs the optional `cmaes` package: refuse clearly
        with pytest.raises(ImportError, match=r"'cmaes' needs the 'cmaes' package"):
            make_sampler(algorithm, 0, variant)
        return
    params = {p.name: p for p in PARAMS[variant]}
    runs = []
    for _ in range(2):
        study, _ = run(build_space(variant), make_sampler(algorithm, 3, variant, n_startup_trials=2), 5)
        assert len(study.trials) == 5
        for t in study.trials:
            assert all(in_range(params[k], v) for k, v in t.params.items())
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]


def test_make_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"'bayes'; allowed: tpe, random, grid, cmaes, qmc"):
        make_sampler("bayes", 0, "resnet")
    with pytest.raises(ValueError, match=r"unknown variant 'vgg'"):
        make_sampler("tpe", 0, "vgg")
    with pytest.raises(ValueError, match=r"sampler seed: got '0'"):
        make_sampler("tpe", "0", "resnet")
    with pytest.raises(ValueError, match=r"'alpha'.*low=9"):
        make_sampler("random", 0, "quotient", {"alpha": {"low": 9.0}})


def test_different_seeds_differ():
    a, _ = run(build_space("epsilon"), make_sampler("random", 0, "epsilon"), 3)
    b, _ = run(build_space("epsilon"), make_sampler("random", 1, "epsilon"), 3)
    assert [t.params for t in a.trials] != [t.params for t in b.trials]


@pytest.mark.parametrize("algorithm", ["tpe", "grid"])
def test_ray_optuna_search_accepts_the_space(algorithm, tmp_path):
    # OptunaSearch.suggest works without ray.init: it only drives an optuna study
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(
        space=build_space("sgs", fixed={"epochs": 2}), metric="val_acc", mode="max",
        sampler=make_sampler(algorithm, 0, "sgs"),
    )
    seen = []
    for i in range(4):
        cfg = searcher.suggest(f"t{i}")
        assert cfg["variant"] == "sgs" and cfg["epochs"] == 2
        assert cfg["sgs_mode"] in ("branches", "mi")
        assert ("sgs_branches" in cfg) == (cfg["sgs_mode"] == "branches")
        assert MI_ONLY <= set(cfg) if cfg["sgs_mode"] == "mi" else not MI_ONLY & set(cfg)
        TrainConfig.from_dict(cfg)
        seen.append(cfg)
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.1 * i, "training_iteration": 1})
    assert len({tuple(sorted(c.items())) for c in seen}) == 4
    # Tune checkpoints the searcher with plain pickle: the space must survive it
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = OptunaSearch(metric="val_acc", mode="max")
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.suggest("t9")["variant"] == "sgs"


def test_the_search_ranges_import_nothing_of_study():
    """The dependency runs one way, study -> search_spaces: the ranges are data that
    study.spaces binds to the options, so importing them loads no part of study."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import pkgutil, importlib, sys, search_spaces\n"
            "for m in pkgutil.iter_modules(search_spaces.__path__):\n"
            "    importlib.import_module('search_spaces.' + m.name)\n"
            "print(sorted(m for m in sys.modules if m == 'study' or m.startswith('study.')))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
