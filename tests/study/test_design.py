"""The designed experiments' planner (study.driver.design): each claim's arms, the
published configurations, the sweeps, the extra seeds and the budget, and the
spec's `design` section. Pure: no Ray, no training."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from study import variants as registry
from study.config import TrainConfig
from study.driver import design
from study.driver.plan import plan
from study.models import create_model
from study.spec import SpecError, load_spec, validate_spec
from study.variants import DeclarationError, Sweep, get_variant

TOY = Path(__file__).resolve().parents[1] / "plugins" / "toy_variant.py"
SPEC = {"name": "d", "dataset": "digits", "image_size": 12, "depth": [8, 56], "epochs": 3, "seeds": [0, 1, 2],
        "repeat_best": True, "variants": ["resnet", "quotient", "epsilon", "sgs"],
        "train": {"batch_size": 32, "schedule": "cosine"},
        "design": {"max_seeds": 5, "budget": {"trials": 12, "hours": 2.0}, "sweeps": {"levels": 3, "seeds": 2}}}


@pytest.fixture(scope="module")
def spec():
    return validate_spec(SPEC)


def best_of(spec, variant: str, depth: int = 8, **values) -> dict:
    """A best search trial's config: the experiment's base config with searched values."""
    base = {k: v for k, v in spec.trial_base_config(variant, depth).items() if not k.startswith("_")}
    return TrainConfig.from_dict({**base, **values}).to_dict()


def changed(a: dict, b: dict) -> dict:
    """What `b` sets differently from `a` (keys of either)."""
    return {k: b.get(k) for k in {*a, *b} if a.get(k, ...) != b.get(k, ...) or type(a.get(k)) is not type(b.get(k))}


def repeat(best: dict, seed: int) -> dict:
    """The repeat phase's config at `seed`, built as the driver builds it."""
    return TrainConfig.from_dict(best).replace(seed=seed).to_dict()


BESTS = {
    "quotient": {"quotient_rule": "exact_one", "alpha": 1.5, "lr": 0.05, "weight_decay": 3e-4},
    "epsilon": {"epsilon": 1.3, "side_weight": 0.2, "adaptive_lr": False, "lr": 0.2},
    "sgs": {"sgs_mode": "mi", "sgs_k": 2.0, "sgs_interval": 3, "sgs_batches": 2, "lr": 0.03},
}


# ------------------------------------------------------------------ claims' arms

LEVEL_ARMS = {"quotient_rule": ["quotient_rule=paper", "quotient_rule=unshifted"],
              "epsilon_restart": ["adaptive_lr=true", "adaptive_lr=false"],
              "sgs_mi": ["sgs_mode=mi", "sgs_mode=branches"]}


@pytest.mark.parametrize("variant", list(BESTS))
def test_every_level_arm_differs_from_the_best_in_exactly_its_option(spec, variant):
    best = best_of(spec, variant, **BESTS[variant])
    levels = [c for c in get_variant(variant).claims if c.kind == "level"]
    assert levels
    for c in levels:
        entry = design.claims_plan(spec, variant, 8, best)[c.key]
        assert entry["skip"] is None and entry["kind"] == "level"
        assert entry["compare"] == LEVEL_ARMS[c.key]
        trials = design.arm_trials(entry, spec.seeds)
        assert [(t[0], t[1], t[2]["seed"]) for t in trials] == [(c.key, arm, s) for s in spec.seeds
                                                               for arm in entry["compare"]]
        for claim, arm, cfg in trials:
            level = c.better if arm == entry["compare"][0] else c.worse
            expected = {} if best[c.option] == level else {c.option: level}
            assert changed(repeat(best, cfg["seed"]), cfg) == expected, (arm, cfg["seed"])
            assert entry["configs"][arm] == {c.option: level}


def test_an_arm_at_the_best_value_is_the_repeat_and_the_twin_arm_is_the_twin(spec):
    best = best_of(spec, "quotient", quotient_rule="paper", alpha=1.5)
    plan = design.claims_plan(spec, "quotient", 8, best)
    rule = plan["quotient_rule"]
    assert rule["reuse"] == {"quotient_rule=paper": "repeat"}
    twin = plan["quotient_vs_twin"]
    assert twin["compare"] == ["variant", "twin"] and twin["reuse"] == {"variant": "repeat", "twin": "twin"}
    assert twin["partner"] == {"twin": "variant"} and twin["configs"]["twin"] == {"variant": "resnet"}
    for claim, arm, cfg in design.arm_trials(twin, [0, 1, 2, 3]):
        cfg_best = TrainConfig.from_dict(best).replace(seed=cfg["seed"])
        assert cfg == (cfg_best.to_dict() if arm == "variant" else cfg_best.twin().to_dict())
    for claim, arm, cfg in design.arm_trials(rule, [1]):
        if arm == "quotient_rule=paper":
            assert cfg == repeat(best, 1)  # the same config: the driver runs it once


def test_a_level_claim_where_its_levels_are_one_network_is_skipped_with_the_reason(spec):
    at_two = design.claims_plan(spec, "quotient", 8, best_of(spec, "quotient", alpha=2.0))["quotient_rule"]
    assert at_two["compare"] == [] and "alpha outside" in at_two["skip"] and "one network" in at_two["skip"]
    assert design.arm_trials(at_two, [0, 1]) == []
    assert design.claims_plan(spec, "quotient", 8, best_of(spec, "quotient", alpha=2.5))["quotient_rule"]["skip"] \
        is None


def test_switching_a_parent_option_changes_only_it(spec):
    best = best_of(spec, "sgs", sgs_mode="branches", sgs_branches="acb")
    entry = design.claims_plan(spec, "sgs", 8, best)["sgs_mi"]
    for _, arm, cfg in design.arm_trials(entry, [0]):
        assert changed(repeat(best, 0), cfg) == ({"sgs_mode": "mi"} if arm == "sgs_mode=mi" else {})


# ------------------------------------------------------------------ the published configuration

PAPER = {  # the papers' own configurations (docs/methods.md), written out here on purpose
    ("quotient", 56): {"quotient_rule": "paper", "alpha": 1.7, "quotient_stem": True, "quotient_shortcut": True,
                       "block": "post", "shortcut": "conv3x3", "init": "default", "lr": 0.1, "weight_decay": 1e-4},
    ("quotient", 8): {"quotient_rule": "paper", "alpha": 2.0},
    ("epsilon", 56): {"epsilon": 2.5, "side_weight": 0.1, "adaptive_lr": True, "block": "pre", "shortcut": "avgpool",
                      "stem": "conv_bn_relu", "lr": 0.1, "weight_decay": 2e-4, "weight_decay_scope": "conv_fc"},
    ("sgs", 56): {"sgs_mode": "mi", "sgs_k": 5.0, "sgs_interval": 30, "sgs_batches": 20, "sgs_warmup": 0,
                  "sgs_diagonal_removal": False, "lr": 0.1, "weight_decay": 1e-4, "weight_decay_scope": "all"},
}


@pytest.mark.parametrize("variant, depth", list(PAPER))
def test_the_published_arm_is_the_papers_configuration_at_that_depth(spec, variant, depth):
    pub = design.published_config(spec, variant, depth)
    assert {k: pub[k] for k in PAPER[(variant, depth)]} == PAPER[(variant, depth)]
    # the study's protocol stays: dataset, epochs, the spec's `train`
    assert (pub["dataset"], pub["epochs"], pub["batch_size"], pub["schedule"], pub["depth"]) == \
        ("digits", 3, 32, "cosine", depth)
    best = best_of(spec, variant, depth, **BESTS[variant])
    claim = next(c.key for c in get_variant(variant).claims if c.published)
    entry = design.claims_plan(spec, variant, depth, best)[claim + design.PUBLISHED]
    assert entry["compare"] == ["published", "published twin"] and entry["base"] == "published"
    assert entry["source"] == get_variant(variant).published.source
    assert entry["full"]["published"] == pub
    assert entry["configs"]["published"] == {k: pub[k] for k in entry["configs"]["published"]}
    assert set(PAPER[(variant, depth)]) <= set(entry["configs"]["published"])
    for _, arm, cfg in design.arm_trials(entry, [4]):
        assert cfg == ({**pub, "seed": 4} if arm == "published" else TrainConfig.from_dict(pub).replace(seed=4)
                       .twin().to_dict())


def test_sgs_on_cifar100_is_published_with_the_official_cifar100_config():
    spec = validate_spec({**SPEC, "dataset": "cifar100", "data_root": "/data/cifar100", "image_size": None})
    pub = design.published_config(spec, "sgs", 8)
    assert {k: pub[k] for k in ("sgs_interval", "sgs_batches", "weight_decay", "sgs_k")} == \
        {"sgs_interval": 5, "sgs_batches": 2, "weight_decay": 5e-4, "sgs_k": 5.0}


@pytest.mark.parametrize("variant", list(BESTS))
def test_the_published_twin_has_the_same_parameters_and_differs_only_in_the_method(spec, variant):
    pub = design.published_config(spec, variant, 8)
    twin = TrainConfig.from_dict(pub).twin()
    models = [create_model(c.variant, 8, 10, 3, **c.model_options()) for c in (TrainConfig.from_dict(pub), twin)]
    counts = [sum(p.numel() for p in m.parameters()) for m in models]
    assert counts[0] == counts[1] > 0
    own = {o.name for o in get_variant(variant).options} - {o.name for o in get_variant(twin.variant).options}
    method = {"quotient": {"variant"}, "epsilon": {"epsilon_gate"}, "sgs": {"variant", "sgs_mode"}}[variant]
    assert set(changed({k: v for k, v in pub.items() if k not in own}, twin.to_dict())) == method


def test_a_published_config_that_is_the_best_is_the_repeat_and_the_twin():
    # nothing searched: the best is the recipe, which is the paper's
    spec = load_spec(preset="sgs-cifar10", overrides={"depth": [20]})
    best = best_of(spec, "sgs", 20)
    entry = design.claims_plan(spec, "sgs", 20, best)["sgs_vs_twin@published"]
    assert entry["reuse"] == {"published": "repeat", "published twin": "twin"}
    # what is new: branches x 3 seeds, and sgs_k's 5 levels besides the best's 5 x 2 sweep seeds (the mode sweep's
    # branches level is the claim's arm); the published arms add nothing
    assert design.count_new(spec, "sgs", 20, best) == 3 + 5 * 2


def test_the_published_configuration_sets_its_options_over_what_the_spec_fixes():
    spec = validate_spec({**SPEC, "train": {**SPEC["train"], "lr": 0.05, "width": 8},
                          "variants": {"quotient": {"fixed": {"alpha": 3.0, "quotient_rule": "linear_clip"}}}})
    pub = design.published_config(spec, "quotient", 56)
    assert (pub["lr"], pub["alpha"], pub["quotient_rule"]) == (0.1, 1.7, "paper")
    assert pub["width"] == 8  # not one of the paper's options: the study's


def test_only_claims_about_the_method_are_run_as_published(spec):
    for variant in BESTS:
        plan = design.claims_plan(spec, variant, 8, best_of(spec, variant, **BESTS[variant]))
        flagged = [c.key + design.PUBLISHED for c in get_variant(variant).claims if c.published]
        assert len(flagged) == 1 and [k for k in plan if k.endswith(design.PUBLISHED)] == flagged


def test_published_arms_can_be_switched_off(spec):
    off = validate_spec({**SPEC, "design": {**SPEC["design"], "published": False}})
    best = best_of(off, "quotient", **BESTS["quotient"])
    assert not any(k.endswith(design.PUBLISHED) for k in design.claims_plan(off, "quotient", 8, best))
    assert "quotient_vs_twin@published" in design.claims_plan(spec, "quotient", 8, best)


# ------------------------------------------------------------------ sweeps


@pytest.mark.parametrize("variant, option", [("quotient", "alpha"), ("quotient", "quotient_rule"),
                                             ("epsilon", "epsilon"), ("sgs", "sgs_k"), ("sgs", "sgs_mode")])
def test_every_sweep_arm_differs_from_the_best_in_exactly_its_option(spec, variant, option):
    best = best_of(spec, variant, **BESTS[variant])
    entry = design.sweeps_plan(spec, variant, 8, best)[option]
    assert entry["skip"] is None and entry["claim"] == f"sweep:{option}" and entry["seeds"] == [0, 1]
    assert best[option] in entry["levels"] and entry["best_value"] == best[option]
    trials = design.sweep_trials(entry)
    assert len(trials) == len(entry["levels"]) * 2
    for _, arm, cfg in trials:
        value = cfg[option]
        assert arm == design._label(option, value)
        assert changed(repeat(best, cfg["seed"]), cfg) == ({} if value == best[option] else {option: value})
        TrainConfig.from_dict(cfg)  # every level is a value the option allows


def test_numeric_levels_span_the_search_range_log_spaced_where_the_search_is(spec):
    best = best_of(spec, "epsilon", **BESTS["epsilon"])
    levels = design.sweeps_plan(spec, "epsilon", 8, best)["epsilon"]["levels"]
    assert levels == [0.1, 0.7071, 1.3, 5.0]  # 0.1-5 on a log scale, 3 points, and the best's 1.3
    assert list(design.sweeps_plan(spec, "epsilon", 8, best)["epsilon"]["labels"].values()) == [
        "epsilon=0.1", "epsilon=0.7071", "epsilon=1.3", "epsilon=5"]
    alpha = design.sweeps_plan(spec, "quotient", 8, best_of(spec, "quotient", alpha=2.6))["alpha"]["levels"]
    assert alpha == [1.2, 2.6, 4.0]  # linear; the best is the middle point: no extra level
    narrowed = validate_spec({**SPEC, "variants": {"quotient": {"space": {"alpha": {"low": 1.5, "high": 2.5}}}}})
    assert design.sweeps_plan(narrowed, "quotient", 8, best_of(narrowed, "quotient", alpha=2.5))["alpha"]["levels"] \
        == [1.5, 2.0, 2.5]  # the study's range, not the default one
    five = validate_spec({**SPEC, "design": {"sweeps": {"levels": 5}}})
    k = design.sweeps_plan(five, "sgs", 8, best_of(five, "sgs", sgs_mode="mi", sgs_k=4.0))["sgs_k"]["levels"]
    assert len(k) == 5 and k[0] == 0.25 and k[-1] == 64.0
    ratios = [b / a for a, b in zip(k, k[1:])]
    assert max(ratios) / min(ratios) < 1.01


def test_a_sweep_of_an_option_its_best_does_not_use_is_skipped(spec):
    best = best_of(spec, "sgs", sgs_mode="branches")
    entry = design.sweeps_plan(spec, "sgs", 8, best)["sgs_k"]
    assert entry["levels"] == [] and design.sweep_trials(entry) == []
    assert entry["skip"] == "sgs_k is used only when sgs_mode == 'mi'; the configuration has sgs_mode = 'branches'"
    assert design.sweeps_plan(spec, "sgs", 8, best)["sgs_mode"]["skip"] is None


def test_sweeps_can_be_switched_off(spec):
    off = validate_spec({**SPEC, "design": {"sweeps": {"enabled": False}}})
    assert design.sweeps_plan(off, "quotient", 8, best_of(off, "quotient")) == {}


# ------------------------------------------------------------------ round one and the plan


def test_round_one_counts_the_distinct_trials_beyond_the_repeat_and_twin(spec):
    best = best_of(spec, "quotient", quotient_rule="paper", alpha=2.6)
    trials = design.designed_trials(spec, "quotient", 8, best)
    fixed = {repr(sorted(repeat(best, s).items())) for s in spec.seeds} | {
        repr(sorted(TrainConfig.from_dict(best).replace(seed=s).twin().to_dict().items())) for s in spec.seeds}
    distinct = {repr(sorted(t[2].items())) for t in trials} - fixed
    # rule claim: unshifted x 3 seeds; published x 3 (its twin is the twin: this best has the paper's recipe, and
    # the ResNet twin drops alpha); alpha 1.2, 4 x 2 sweep seeds; the other three rules x 2, less unshifted at
    # seeds 0 and 1, which the rule claim runs already
    assert len(distinct) == design.count_new(spec, "quotient", 8, best) == 3 + 3 + 4 + 6 - 2
    assert design.claims_plan(spec, "quotient", 8, best)["quotient_vs_twin@published"]["reuse"] == \
        {"published twin": "twin"}
    assert design.count_new(validate_spec({**SPEC, "design": None}), "quotient", 8, best) == 0
    assert plan(spec)[("quotient", 8)]["arms"] == design.count_new(spec, "quotient", 8)  # the estimate
    assert plan(spec)[("resnet", 8)]["arms"] == 0  # the baseline declares nothing


def test_a_plugin_variant_that_declares_nothing_still_plans():
    spec = validate_spec({**SPEC, "plugins": [str(TOY)], "variants": {"toy": {}}, "depth": 8})
    best = best_of(spec, "toy", gamma0=0.3)
    plan = design.claims_plan(spec, "toy", 8, best)
    assert list(plan) == ["toy_vs_twin"] and plan["toy_vs_twin"]["reuse"] == {"variant": "repeat", "twin": "twin"}
    assert design.published_config(spec, "toy", 8) is None
    assert design.sweeps_plan(spec, "toy", 8, best) == {}
    assert design.count_new(spec, "toy", 8, best) == 0


def test_a_declaration_naming_an_option_the_variant_lacks_is_refused(monkeypatch):
    assert all(design.check_declarations(v) for v in ("resnet", "quotient", "epsilon", "sgs"))
    bad = dataclasses.replace(get_variant("quotient"), sweeps=(Sweep("epsilon"),))
    monkeypatch.setitem(registry._VARIANTS, "quotient", bad)
    with pytest.raises(DeclarationError, match=r"variant 'quotient': sweep of 'epsilon', which it does not take"):
        design.check_declarations("quotient")
    monkeypatch.setitem(registry._VARIANTS, "quotient", dataclasses.replace(bad, sweeps=(Sweep("alpha", (0.5,)),)))
    with pytest.raises(Exception, match=r"alpha: 0.5 is not allowed; allowed: a number > 1"):
        design.check_declarations("quotient")


# ------------------------------------------------------------------ seeds and budget


def test_extra_seeds_are_deterministic_new_and_stop_at_the_maximum(spec):
    used, seen = list(spec.seeds), []
    while more := design.extra_seeds(spec, used):
        assert more == design.extra_seeds(spec, list(used))  # the same answer every time
        assert len(more) == 1 and more[0] not in used
        used += more
        seen += more
    assert seen == [3, 4] and len(used) == design.max_seeds(spec) == 5
    assert design.extra_seeds(spec, [0, 1, 2], n=5) == [3, 4]  # never past max_seeds
    odd = validate_spec({**SPEC, "seeds": [9, 5]})
    assert design.seed_sequence(odd) == [9, 5, 10, 11, 12]
    top = validate_spec({**SPEC, "seeds": [0, 2**32 - 1]})
    assert design.seed_sequence(top) == [0, 2**32 - 1, 1, 2, 3]  # past the seed's range: the smallest unused
    assert design.seed_sequence(validate_spec({**SPEC, "design": {}})) == [0, 1, 2]  # no max_seeds: no extras


def test_the_budget_stops_extra_seeds_by_trials_and_by_hours(spec):
    assert design.budget_stop(spec, trials_used=10, hours_used=0.5, next_trials=2) is None
    stop = design.budget_stop(spec, trials_used=10, hours_used=0.5, next_trials=3)
    assert stop is not None and "design.budget.trials" in stop and "10 of the 12" in stop
    stop = design.budget_stop(spec, trials_used=0, hours_used=2.0)
    assert stop is not None and "design.budget.hours" in stop
    free = validate_spec({**SPEC, "design": {"max_seeds": 10}})
    assert design.budget_stop(free, trials_used=10**6, hours_used=math.inf) is None


# ------------------------------------------------------------------ the spec's design section


def spec_error(data: dict) -> str:
    with pytest.raises(SpecError) as info:
        validate_spec(data)
    return str(info.value)


@pytest.mark.parametrize("change, expected", [
    ({"repeat_best": False}, "design: given while repeat_best is false; allowed: repeat_best: true"),
    ({"design": {"max_seeds": 2}}, "design.max_seeds: 2 is fewer than the 3 seeds of `seeds` (every claim's "
                                   "minimum); allowed: an integer from 3 to 1000"),
    ({"design": {"sweeps": {"seeds": 4}}}, "design.sweeps.seeds: 4 exceeds the 3 seeds of `seeds`; allowed: 1..3"),
    ({"design": {"alpha": 0.9}}, "design.alpha: Input should be less than or equal to 0.5 (got 0.9)"),
    ({"design": {"budget": {"trials": -1}}}, "design.budget.trials: Input should be greater than or equal to 0 "
                                             "(got -1)"),
    ({"design": {"sweeps": {"levels": 1}}}, "design.sweeps.levels: Input should be greater than or equal to 2"),
    ({"design": {"max_seed": 4}}, "design.max_seed: unknown key 'max_seed'; allowed keys: max_seeds, budget, alpha, "
                                  "smallest_effect, published, sweeps"),
    ({"design": {"sweeps": {"level": 4}}}, "design.sweeps.level: unknown key 'level'; allowed keys: enabled, levels, "
                                           "seeds"),
])
def test_a_bad_design_names_the_field_the_value_and_what_is_allowed(change, expected):
    assert expected in spec_error({**SPEC, **change})


def test_every_preset_designs_within_its_stated_size():
    quick = load_spec(preset="quick")
    assert design.max_seeds(quick) <= 5 and quick.design.budget.trials is not None
    extra = sum(a["arms"] for a in plan(quick).values()) + quick.design.budget.trials
    assert extra <= 60  # what the demo's 5 minutes on 2 cores leave for designed trials
    for name in ("cifar10", "cifar100", "svhn", "sgs-cifar10", "sgs-cifar100"):
        s = load_spec(preset=name)
        assert design.max_seeds(s) == 10 and s.design.budget.trials and s.design.budget.hours
