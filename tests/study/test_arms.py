"""The designed experiments a study runs after each search (study/driver/arms.py),
with Tune played by hand (tests/study/handplayed.py): real ledger, study.json,
Optuna, MLflow and results; no Ray."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.study.handplayed import SPEC, hand_played

# quotient only: a twin claim (with its as-published comparison) and a level claim
DESIGNED = {**SPEC, "variants": ["quotient"], "trials_per_variant": 2, "seeds": [0, 1, 2],
            "design": {"max_seeds": 5, "sweeps": {"levels": 2, "seeds": 1}}}


def _effect(twin_gain: float):
    """Accuracy by config: quotient beats its twin (a ResNet) by `twin_gain`, with a little
    noise by seed and variant; nothing else matters."""
    def accuracy(cfg, epoch):
        noise = 0.002 * ((cfg["seed"] * 7919 + len(cfg["variant"]) * 31) % 5 - 2)
        return 0.6 + 0.01 * epoch + noise + (twin_gain if cfg["variant"] == "quotient" else 0.0)
    return accuracy


def _run(tmp_path, monkeypatch, accuracy, stop_after=None, metrics=None, **spec):
    from study.driver import run_study
    from study.spec import load_spec

    play = hand_played(monkeypatch)
    play.accuracy = accuracy
    play.metrics = metrics
    play.stop_after = stop_after
    s = load_spec({**DESIGNED, **spec, "storage_path": str(tmp_path)})
    try:
        run_study(s)
    except KeyboardInterrupt:
        assert stop_after is not None
    play.stop_after = None  # a resume that follows runs to the end
    return tmp_path / s.name


def _state(d):
    return json.loads((d / "study.json").read_text())


def _differs(a: dict, b: dict) -> set[str]:
    keys = (set(a) | set(b)) - {"seed", "train_epochs"}
    return {k for k in keys if a.get(k) != b.get(k)}


def test_each_claim_gets_arms_paired_by_seed_that_differ_from_the_best_in_what_they_name(tmp_path, monkeypatch):
    d = _run(tmp_path, monkeypatch, _effect(0.05))
    state = _state(d)
    design = state["design"]["s-quotient-d8"]
    trials = {json.loads(line)["rid"]: json.loads(line) for line in (d / "ledger.jsonl").read_text().splitlines()}
    best = trials[design["best_rid"]]["config"]
    claims = design["claims"]
    assert {"quotient_vs_twin", "quotient_rule", "quotient_vs_twin@published"} <= set(claims), list(claims)
    for key, c in claims.items():
        if c["stop"] == "not_exercised":
            continue
        a, b = c["compare"]
        seeds = [[trials[r]["seed"] for r in c["arms"][arm]] for arm in (a, b)]
        assert seeds[0] == seeds[1] == c["seeds"], (key, seeds)  # paired: the same seeds, in order
        for arm in (a, b):
            for rid in c["arms"][arm]:
                assert trials[rid]["status"] == "completed", (key, arm, rid)
                cfg = trials[rid]["config"]
                if c["base"] == "best" and c["kind"] == "level":
                    assert _differs(cfg, best) <= set(c["configs"][arm]), (key, arm, _differs(cfg, best))
                    assert all(cfg[k] == v for k, v in c["configs"][arm].items())
        if c["kind"] == "level":  # the two arms differ in exactly the claim's option
            for ra, rb in zip(c["arms"][a], c["arms"][b]):
                assert _differs(trials[ra]["config"], trials[rb]["config"]) == set(c["configs"][a]), key
    twin = claims["quotient_vs_twin"]
    # the variant arm at the spec's seeds is the repeat itself, the twin arm the twin: each config trains once
    assert [trials[r]["phase"] for r in twin["arms"]["variant"][:3]] == ["repeat"] * 3
    assert [trials[r]["phase"] for r in twin["arms"]["twin"][:3]] == ["twin"] * 3
    configs = [json.dumps({k: v for k, v in r["config"].items() if k != "train_epochs"}, sort_keys=True)
               for r in trials.values() if r["phase"] != "search"]
    assert len(configs) == len(set(configs)), "a configuration trained twice"
    # a large effect with little noise: supported, at an interval inside the difference's range
    last = twin["looks"][-1]
    assert twin["stop"] == "settled" and last["verdict"] == "reproduced", twin["looks"]
    assert 0 < last["lo"] <= 0.05 <= last["hi"] <= 1.0
    pub = claims["quotient_vs_twin@published"]
    assert pub["base"] == "published" and pub["stop"] == "settled"
    # the results carry each designed trial's claim and arm
    res = pd.read_parquet(d / "results.parquet").set_index("trial_id")
    for c in claims.values():
        for arm, rids in c["arms"].items():
            for rid in rids:
                if trials[rid]["phase"] == "arms":
                    assert res.loc[rid, "arm"] == trials[rid]["arm"] and res.loc[rid, "claim"] != ""
    # sweeps: one factor at a time around the best configuration
    sweeps = design["sweeps"]
    assert set(sweeps) == {"alpha", "quotient_rule"}
    for option, sw in sweeps.items():
        assert len(sw["levels"]) >= 2
        for rids in sw["levels"].values():
            for rid in rids:
                differs = _differs(trials[rid]["config"], best)
                assert differs <= {option}, (option, differs)


def test_an_open_claim_gets_more_seeds_one_round_at_a_time_until_settled(tmp_path, monkeypatch):
    """A modest effect: open at the spec's 3 seeds, so the study adds paired seeds, one look per
    round, until the rule settles it (here at the fifth)."""
    d = _run(tmp_path, monkeypatch, _effect(0.015))
    twin = _state(d)["design"]["s-quotient-d8"]["claims"]["quotient_vs_twin"]
    assert twin["seeds"][:3] == [0, 1, 2] and len(twin["seeds"]) > 3, twin["seeds"]
    assert len(set(twin["seeds"])) == len(twin["seeds"]) <= 5
    assert [look["n"] for look in twin["looks"]] == list(range(3, len(twin["seeds"]) + 1))
    assert [look["verdict"] for look in twin["looks"]][:-1] == ["open"] * (len(twin["looks"]) - 1)
    assert twin["stop"] == "settled" and twin["looks"][-1]["verdict"] == "reproduced", twin["looks"]
    assert twin["looks"][-1]["lo"] > 0


def test_a_claim_no_seed_count_could_settle_stops_early_and_says_so(tmp_path, monkeypatch):
    d = _run(tmp_path, monkeypatch, _effect(0.0))
    twin = _state(d)["design"]["s-quotient-d8"]["claims"]["quotient_vs_twin"]
    assert twin["stop"] == "cannot_settle" and len(twin["seeds"]) == 3, (twin["stop"], twin["seeds"])
    assert [look["verdict"] for look in twin["looks"]] == ["open"] and not twin["looks"][-1]["can_settle"]


def test_the_budget_stops_extra_seeds(tmp_path, monkeypatch):
    d = _run(tmp_path, monkeypatch, _effect(0.0), design={"max_seeds": 6, "budget": {"trials": 0}})
    claims = _state(d)["design"]["s-quotient-d8"]["claims"]
    assert {c["stop"] for c in claims.values() if c["stop"] != "not_exercised"} <= {"budget", "cannot_settle"}
    assert any(c["stop"] == "budget" and "design.budget.trials" in c["why"] for c in claims.values())
    assert all(len(c["seeds"]) == 3 for c in claims.values() if c["stop"] != "not_exercised")


def test_an_interrupted_design_resumes_with_its_plan_and_trains_no_configuration_twice(tmp_path, monkeypatch):
    from study.driver import resume_study

    d = _run(tmp_path, monkeypatch, _effect(0.05), stop_after=9)  # Ctrl-C among the designed trials
    before = _state(d)["design"]["s-quotient-d8"]
    resume_study(d)
    after = _state(d)["design"]["s-quotient-d8"]
    assert after["best_rid"] == before["best_rid"]
    for key, c in before["claims"].items():
        for arm, rids in c["arms"].items():
            assert after["claims"][key]["arms"][arm][:len(rids)] == rids
    led = [json.loads(line) for line in (d / "ledger.jsonl").read_text().splitlines()]
    final = {r["rid"]: r for r in led}
    assert {r["status"] for r in final.values()} == {"completed"}
    assert after["claims"]["quotient_vs_twin"]["stop"] == "settled"


@pytest.mark.parametrize("design", [None, {"max_seeds": 3}])
def test_a_study_without_extra_seeds_runs_round_one_only(tmp_path, monkeypatch, design):
    d = _run(tmp_path, monkeypatch, _effect(0.0), design=design)
    state = _state(d)
    if design is None:
        assert "design" not in state
        return
    for c in state["design"]["s-quotient-d8"]["claims"].values():
        assert c["stop"] in ("max_seeds", "not_exercised", "settled", "cannot_settle") and len(c["seeds"]) <= 3


# epsilon alone: a non-inferiority claim exercised by discarding blocks, and a level claim by restarts
EPSILON = {"variants": ["epsilon"], "trials_per_variant": 2, "seeds": [0, 1, 2],
           "design": {"max_seeds": 3, "published": False, "sweeps": {"enabled": False}, "budget": {"trials": 40}},
           "space": None}


def _discards_above(threshold: float):
    """epsilon's metrics: a block discarded (and so a restart) only above `threshold`."""
    def metrics(cfg, epoch):
        if cfg["variant"] != "epsilon" or not cfg.get("epsilon_gate", True):
            return {}
        gone = cfg["epsilon"] > threshold
        return {"discarded_ratio": 1 / 3 if gone else 0.0, "compressed_test_acc": 0.6 + 0.01 * epoch,
                "lr_restarts": 1 if gone and cfg.get("adaptive_lr") else 0}
    return metrics


def _epsilon_claims(tmp_path, monkeypatch, threshold):
    d = _run(tmp_path, monkeypatch, _effect(0.0), metrics=_discards_above(threshold),
             **{k: v for k, v in EPSILON.items() if k != "space"})
    state = _state(d)
    trials = {json.loads(line)["rid"]: json.loads(line) for line in (d / "ledger.jsonl").read_text().splitlines()}
    return state["design"]["s-epsilon-d8"]["claims"], trials


def test_a_claim_not_exercised_moves_its_knob_up_its_range_and_runs_its_arms_there(tmp_path, monkeypatch):
    """Nothing is discarded at the searched epsilon: the design raises epsilon along its
    searched range (a probe run first), and judges the claim on arms that discarded."""
    claims, trials = _epsilon_claims(tmp_path, monkeypatch, threshold=4.9)
    c = claims["epsilon_discards"]
    assert c["acted"], c
    assert all(a["option"] == "epsilon" and a["to"] > a["from"] for a in c["acted"])
    assert c["acted"][-1]["to"] == 5.0  # the searched range's top (search_spaces/epsilon.py)
    assert "discarded block did not happen" in c["acted"][0]["why"]
    assert c["exercised"] is True and c["stop"] != "not_exercised", c["why"]
    for arm in c["compare"]:  # every arm ran at the raised epsilon, at every seed
        assert [trials[r]["config"]["seed"] for r in c["arms"][arm]] == [0, 1, 2]
        assert {trials[r]["config"]["epsilon"] for r in c["arms"][arm]} == {5.0}
    assert all(trials[r]["row"]["discarded_ratio"] > 0 for r in c["arms"]["variant"])
    assert c["looks"] and c["looks"][-1]["reported"] is not None
    # the level claim is exercised the same way, both levels moved
    r = claims["epsilon_restart"]
    assert r["acted"] and r["exercised"] is True
    assert {trials[x]["config"]["epsilon"] for arm in r["compare"] for x in r["arms"][arm]} == {5.0}


def test_a_claim_that_cannot_be_exercised_is_not_judged_and_says_why(tmp_path, monkeypatch):
    claims, trials = _epsilon_claims(tmp_path, monkeypatch, threshold=100.0)
    c = claims["epsilon_discards"]
    assert c["stop"] == "not_exercised" and c["exercised"] is False and not c["looks"]
    assert "discarded_ratio averaged 0" in c["why"] and "epsilon" in c["why"], c["why"]
    assert len(c["acted"]) == 2  # the declared steps, each probed by one run
