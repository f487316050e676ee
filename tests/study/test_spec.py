"""The study spec: presets, queries, and one clear SpecError per class of bad input."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import optuna
import pytest

from study.config import TrainConfig
from study.driver.design import count_new
from study.driver.plan import plan
from study.spec import SpecError, StudySpec, list_presets, load_spec, parse_overrides, validate_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = {"name": "t", "dataset": "digits", "depth": 8, "epochs": 4}


def spec_error(data: dict) -> str:
    with pytest.raises(SpecError) as info:
        validate_spec(data)
    return str(info.value)


PRESETS = ["quick", "cifar10", "cifar100", "svhn", "sgs-cifar10", "sgs-cifar100"]
# the SGS paper's official CIFAR configs: epochs, weight decay, MI recompute interval, MI batches
SGS_RECIPES = {"sgs-cifar10": (600, 1e-4, 30, 20), "sgs-cifar100": (200, 5e-4, 5, 2)}


def test_presets_are_package_data():
    assert set(list_presets()) == set(PRESETS)
    files = importlib.resources.files("study").joinpath("presets")
    assert all(files.joinpath(f"{p}.yaml").is_file() for p in list_presets())


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads_and_builds(preset):
    spec = load_spec(preset=preset)
    assert spec.name == preset
    everything = {"resnet", "quotient", "epsilon", "sgs"}
    assert set(spec.variants) == ({"resnet", "sgs"} if preset in SGS_RECIPES else everything)
    for variant, depth in spec.experiments():
        cfg = TrainConfig.from_dict(spec.trial_base_config(variant, depth))
        assert (cfg.variant, cfg.depth, cfg.dataset, cfg.epochs) == (variant, depth, spec.dataset, spec.epochs)
    study = optuna.create_study(sampler=spec.make_sampler("sgs"))
    space = spec.build_space("sgs")
    study.optimize(lambda t: float(bool(space(t))), n_trials=3)
    if preset == "quick":
        assert spec.dataset == "digits" and spec.image_size == 12 and spec.depth == [8]
        assert spec.trials_per_variant <= 8 and spec.epochs <= 6 and spec.resources.gpu == 0
        assert all(t.params.get("sgs_interval", 1) <= 6 for t in study.trials)
    elif preset in SGS_RECIPES:
        epochs, wd, interval, batches = SGS_RECIPES[preset]
        assert spec.epochs == epochs and spec.depth == [20, 56, 110] and spec.data_root == f"/data/{spec.dataset}"
        assert all(not t.params for t in study.trials)  # the recipe: nothing searched
        cfg = TrainConfig.from_dict({**spec.trial_base_config("sgs", 20), **space(optuna.create_study().ask())})
        assert (cfg.lr, cfg.batch_size, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.weight_decay_scope,
                cfg.schedule, cfg.cutout) == (0.1, 128, 0.9, False, wd, "all", "cosine", 16)
        assert (cfg.sgs_mode, cfg.sgs_k, cfg.sgs_warmup, cfg.sgs_interval, cfg.sgs_batches) == ("mi", 5.0, 0, interval,
                                                                                              batches)
        twin = cfg.twin()
        assert (twin.variant, twin.sgs_mode) == ("resnet", "off") and twin.replace(variant="sgs", sgs_mode="mi") == cfg
        plain = TrainConfig.from_dict(spec.trial_base_config("resnet", 20)).to_dict()
        recipe = ("epochs", "lr", "batch_size", "momentum", "nesterov", "weight_decay", "schedule", "cutout")
        assert plain["sgs_mode"] == "off" and all(plain[k] == cfg.get(k) for k in recipe)
    else:
        assert spec.depth == [20, 56, 110] and spec.epochs == 182 and spec.seeds == [0, 1, 2]
        assert spec.repeat_best and 0 < spec.resources.gpu <= 1 and spec.data_root == f"/data/{preset}"
        # no schedule set: each variant runs its own (epsilon-ResNet its official steps)
        assert "schedule" not in spec.train and spec.train["batch_size"] == 128
        assert TrainConfig.from_dict(spec.trial_base_config("epsilon", 20)).schedule == "epsilon"
        assert TrainConfig.from_dict(spec.trial_base_config("quotient", 20)).schedule == "step"
        assert (spec.train.get("width", 16) == 32) == (preset == "cifar100")
        # SVHN: the quotient paper's data protocol (67,257 / 6,000 split, crop + flip, ImageNet statistics)
        data = (spec.train["val_size"], spec.train.get("augment"), spec.train.get("normalization"))
        assert data == ((6000, "crop_flip", "imagenet") if preset == "svhn" else (5000, None, None))


def test_queries(tmp_path):
    spec = validate_spec({
        **BASE, "depth": [8, 14], "seeds": [3, 4], "storage_path": str(tmp_path / "runs"),
        "variants": {"resnet": None, "quotient": {"fixed": {"alpha": 1.7}}},
        "train": {"batch_size": 64},
    })
    assert spec.experiments() == [("resnet", 8), ("quotient", 8), ("resnet", 14), ("quotient", 14)]
    base = spec.trial_base_config("quotient", 14)
    assert base == {"dataset": "digits", "data_root": None, "depth": 14, "epochs": 4, "variant": "quotient",
                    "seed": 3, "batch_size": 64, "alpha": 1.7}
    assert spec.study_dir() == tmp_path / "runs" / "t"
    assert spec.tracking_uri() == f"sqlite:///{tmp_path}/runs/t/mlflow.db"
    assert spec.experiment_name() == "t"
    with pytest.raises(ValueError, match=r"variant 'sgs' is not in this study; allowed: resnet, quotient"):
        spec.trial_base_config("sgs", 8)
    with pytest.raises(ValueError, match=r"depth 20 is not in this study; allowed: \[8, 14\]"):
        spec.trial_base_config("resnet", 20)
    # a variant's fixed value stops its search
    cfg = optuna.create_study().ask()
    assert spec.build_space("quotient")(cfg)["alpha"] == 1.7 and "alpha" not in cfg.params


def test_relative_storage_is_resolved_and_remote_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_spec(BASE).study_dir() == tmp_path / "resstudy_runs" / "t"
    remote = validate_spec({**BASE, "storage_path": "s3://bucket/runs/", "mlflow": {"tracking_uri": "http://m:5000"}})
    assert remote.study_dir() == "s3://bucket/runs/t" and remote.tracking_uri() == "http://m:5000"


def test_yaml_round_trip(tmp_path):
    spec = load_spec(preset="quick",
                     overrides={"variants": {"quotient": {"space": {"alpha": {"low": 1.2, "high": 3.0}}}}})
    path = tmp_path / "again.yaml"
    path.write_text(spec.to_yaml())
    assert load_spec(path).model_dump() == spec.model_dump()


def test_scientific_floats_are_floats(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\ndataset: digits\ndepth: 8\ntrain: {weight_decay: 5e-4, lr: 1E-1}\n")
    spec = load_spec(path)
    assert spec.train == {"weight_decay": 5e-4, "lr": 0.1}


def test_train_value_of_searched_param_fixes_it_unless_variant_overrides():
    spec = validate_spec({**BASE, "train": {"weight_decay": 5e-4},
                          "variants": {"resnet": {},
                                       "epsilon": {"space": {"weight_decay": {"low": 1e-4, "high": 1e-3}}}}})
    trial = optuna.create_study().ask()
    assert spec.build_space("resnet")(trial)["weight_decay"] == 5e-4 and "weight_decay" not in trial.params
    trial = optuna.create_study().ask()
    spec.build_space("epsilon")(trial)
    assert 1e-4 <= trial.params["weight_decay"] <= 1e-3


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"scheduler": {"grace_period": 9}}, ["scheduler.grace_period", "9", "1..4"]),
        ({"scheduler": {"grace_period": 0}}, ["scheduler.grace_period", "greater than or equal to 1", "got 0"]),
        ({"foo": 1}, ["foo: unknown key 'foo'", "allowed keys:", "scheduler", "storage_path"]),
        ({"scheduler": {"grace": 1}}, ["scheduler.grace: unknown key 'grace'", "type, grace_period, reduction_factor"]),
        ({"variants": {"sgs": {"spce": {}}}}, ["variants.sgs.spce: unknown key 'spce'", "space, fixed"]),
        ({"depth": 21}, ["depth: 21", "6n+2"]),
        ({"depth": [8, 21]}, ["depth[1]: 21", "6n+2"]),
        ({"dataset": "cifar10"}, ["data_root: required for dataset 'cifar10'", "allowed: a path"]),
        ({"dataset": "mnist"}, ["dataset:", "'digits', 'cifar10', 'cifar100', 'svhn' or 'synthetic'", "'mnist'"]),
        ({"data_root": "/x"}, ["data_root:", "'/x'", "allowed: null"]),
        ({"dataset": "svhn", "data_root": "/d", "image_size": 16}, ["image_size: 16", "allowed: null"]),
        ({"variants": ["resnet", "vgg"]}, ["variants[1]: unknown variant 'vgg'", "resnet, quotient, epsilon, sgs"]),
        ({"variants": {"vgg": {}}}, ["variants.vgg: unknown variant 'vgg'", "resnet, quotient, epsilon, sgs"]),
        ({"variants": {"quotient": {"space": {"alpha": {"low": 5.0, "high": 4.0}}}}},
         ["variants.quotient.space.alpha", "low=5.0", "high=4.0"]),
        ({"variants": {"quotient": {"space": {"beta": {"low": 1.0}}}}},
         ["variants.quotient.space.beta", "'beta'", "searches: lr, weight_decay, quotient_rule"]),
        ({"variants": {"sgs": {"space": {"sgs_branches": {"choices": ["1x1"]}}}}},
         ["variants.sgs.space.sgs_branches", "'1x1'", "'3x3+1x1', '3x3+3x1+1x1', 'acb'"]),
        ({"variants": {"quotient": {"fixed": {"alpha": 0.5}}}}, ["variants.quotient.fixed.alpha", "0.5", "> 1"]),
        ({"variants": {"quotient": {"fixed": {"seed": 3}}}}, ["variants.quotient.fixed.seed", "seeds"]),
        ({"train": {"batch_sz": 1}}, ["train.batch_sz", "'batch_sz'", "batch_size"]),
        ({"train": {"epochs": 1}}, ["train.epochs", "top-level `epochs`"]),
        ({"train": {"schedule": "linear"}}, ["train.schedule", "'linear'", "step, cosine"]),
        ({"train": {"batch_size": "big"}}, ["train.batch_size", "'big'", "int"]),
        ({"train": {"sgs_mode": "off"}, "variants": ["sgs"]}, ["train.sgs_mode", "'off'", "branches, mi"]),
        ({"resources": {"gpu": 1.5}}, ["resources.gpu", "1.5", "a fraction in (0, 1]"]),
        ({"search": {"algorithm": "bayes"}},
         ["search.algorithm", "'bayes'", "'tpe', 'random', 'grid', 'cmaes' or 'qmc'"]),
        ({"epochs": "4"}, ["epochs", "valid integer", "'4'"]),
        ({"name": "bad name"}, ["name:", "'bad name'", "[A-Za-z0-9]"]),
        ({"seeds": [0, 0]}, ["seeds", "[0, 0]", "distinct"]),
        ({"storage_path": "gs://b/r"}, ["mlflow.tracking_uri", "'gs://b/r'", "an MLflow URI"]),
    ],
)
def test_bad_input_names_field_value_and_allowed(change, expected):
    message = spec_error({**BASE, **change})
    for text in expected:
        assert text in message, (text, message)


def test_missing_field_and_several_errors_one_per_line():
    message = spec_error({"name": "t", "depth": 8, "epochs": "x", "max_concurrent": 0})
    lines = message.splitlines()[1:]
    assert any(line.strip().startswith("dataset: required field is missing") for line in lines)
    assert any(line.strip().startswith("epochs:") for line in lines)
    assert any(line.strip().startswith("max_concurrent:") for line in lines)


def test_file_errors(tmp_path):
    with pytest.raises(SpecError, match=r"spec file not found: .*nope\.yaml"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ndataset: digits\ndepth: 8\nscheduler: {type: asha\nepochs: 3\n")
    with pytest.raises(SpecError, match=r"invalid YAML in .*bad\.yaml, line 5"):
        load_spec(bad)
    bad.write_text("name: t\ndataset: digits\nname: u\n")
    with pytest.raises(SpecError, match=r"bad\.yaml, line 3.*duplicate key 'name'"):
        load_spec(bad)
    for text in ("- a\n- b\n", ""):
        bad.write_text(text)
        with pytest.raises(SpecError, match=r"top level of a spec must be a mapping"):
            load_spec(bad)
    bad.write_text("name: t\ndataset: digits\ndepth: 8\nepochs: 2\nsearch: {algoritm: tpe}\n")
    with pytest.raises(SpecError, match=r"bad\.yaml:\n  search\.algoritm: unknown key 'algoritm'"):
        load_spec(bad)


def test_source_or_preset():
    with pytest.raises(SpecError, match="exactly one"):
        load_spec()
    with pytest.raises(SpecError, match="exactly one"):
        load_spec("x.yaml", preset="quick")
    with pytest.raises(SpecError, match=r"unknown preset 'fast'; allowed: cifar10, cifar100, quick, "
                                        r"sgs-cifar10, sgs-cifar100, svhn"):
        load_spec(preset="fast")


def test_overrides_are_merged_and_validated():
    spec = load_spec(preset="quick", overrides={"epochs": 2, "scheduler.grace_period": 2, "variants": ["resnet"]})
    assert spec.epochs == 2 and spec.scheduler.grace_period == 2 and spec.scheduler.reduction_factor == 2
    assert list(spec.variants) == ["resnet"]
    assert spec.train["batch_size"] == 32  # untouched siblings survive
    with pytest.raises(SpecError, match=r"scheduler\.grace_period: 3 exceeds epochs=2"):
        load_spec(preset="quick", overrides={"epochs": 2, "scheduler": {"grace_period": 3}})
    with pytest.raises(SpecError, match=r"variants\.epsilon\.space\.epsilon.*log scale"):
        load_spec(preset="quick", overrides={"variants.epsilon.space.epsilon": {"low": 0.0}})
    assert parse_overrides(["epochs=3", "depth=[8, 14]", "train.lr=1e-2"]) == {
        "epochs": 3, "depth": [8, 14], "train.lr": 0.01}
    with pytest.raises(SpecError, match=r"'epochs' is not KEY=VALUE"):
        parse_overrides(["epochs"])


def test_model_is_strict_about_structure():
    assert StudySpec.model_config["extra"] == "forbid"
    spec = validate_spec({**BASE, "variants": ["sgs", "resnet"]})
    assert list(spec.variants) == ["sgs", "resnet"] and spec.depth == [8]
    assert Path(spec.storage_path).is_absolute()


def test_every_unknown_key_and_bad_value_at_every_level_comes_in_one_error():
    message = spec_error({
        **BASE, "epoch": 3, "depth": [8, 9, 10], "scheduler": {"grace": 2, "reduction_factor": 0},
        "search": {"algoritm": "tpe"},
        "variants": {"quotient": {"spce": {}, "fixed": {"alpha": 0.5, "lrr": 1},
                                  "space": {"alpha": {"low": 5.0, "high": 4.0}}},
                     "epsilon": {"space": {"epsilon": {"low": 0.0}}}},
        "train": {"batch_sz": 1, "lr": -1.0}})
    fields = [line.split(": ")[0].strip() for line in message.splitlines()[1:]]
    assert sorted(fields) == sorted([
        "epoch", "depth[1]", "depth[2]", "scheduler.grace", "scheduler.reduction_factor", "search.algoritm",
        "variants.quotient.spce", "variants.quotient.fixed.alpha", "variants.quotient.fixed.lrr",
        "train.batch_sz", "train.lr"]), message
    # the search spaces are built beside the other fields once `train` and `variants` hold
    message = spec_error({**BASE, "epoch": 3, "scheduler": {"grace": 2},
                          "variants": {"quotient": {"space": {"alpha": {"low": 5.0, "high": 4.0}}},
                                       "epsilon": {"space": {"epsilon": {"low": 0.0}}}}})
    fields = [line.split(": ")[0].strip() for line in message.splitlines()[1:]]
    assert sorted(fields) == ["epoch", "scheduler.grace", "variants.epsilon.space.epsilon",
                              "variants.quotient.space.alpha"], message
    # rules across fields: all of them, once the fields themselves are valid
    message = spec_error({**BASE, "dataset": "cifar10", "image_size": 8, "scheduler": {"grace_period": 9}})
    assert [line.split(": ")[0].strip() for line in message.splitlines()[1:]] == [
        "data_root", "image_size", "scheduler.grace_period"], message


def test_a_key_that_is_not_text_is_named_once():
    message = spec_error({**BASE, "variants": {"quotient": {"fixed": {5: 1}}}, "train": {7: 1}})
    assert message.splitlines()[1:] == ["  variants.quotient.fixed.5: unknown key '5'; allowed: a name",
                                        "  train.7: unknown key '7'; allowed: a name"], message


def test_plan_counts_trials_per_experiment_and_arm():
    spec = load_spec(preset="quick")
    planned = plan(spec)
    # what the README says the quick study runs before its designed arms
    assert sum(arms["search"] + arms["repeat"] + arms["twin"] for arms in planned.values()) == 45
    assert planned[("resnet", 8)] == {"search": 6, "repeat": 3, "twin": 0, "arms": 0}  # the baseline has no claims
    assert planned[("quotient", 8)] == {"search": 6, "repeat": 3, "twin": 3, "arms": count_new(spec, "quotient", 8)}
    assert planned[("quotient", 8)]["arms"] > 0
    assert "arms" not in plan(load_spec(preset="quick", overrides={"design": None}))[("quotient", 8)]
    grid = plan(validate_spec({**BASE, "variants": ["resnet"], "trials_per_variant": 1000,
                               "search": {"algorithm": "grid", "grid_points": 2}}))
    assert grid[("resnet", 8)]["search"] == 4  # two searched knobs at two points: the grid, not 1000
    assert plan(validate_spec({**BASE, "depth": [8, 14]}))[("sgs", 14)] == {"search": 8, "repeat": 0, "twin": 0}
