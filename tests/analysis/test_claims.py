"""The claims table on planted effects: a real gain is "reproduced" with an
interval that covers it, a null gain is (almost) never "reproduced", n = 2 is
never a verdict, intervals stay in range and Holm is applied."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.claims import COLUMNS, claims_markdown, claims_table, declared_claims, finish, tuned_vs_tuned
from study.stats.intervals import holm, n_for_power
from study.variants import Claim, Reported

from .conftest import RUNGS, SPEC_YAML, _row, builtin_claims, synthetic_history, synthetic_results, twin_pairs

TWIN = {"quotient": [Claim("q", "quotient beats its twin", "twin")]}
SPEC = {"epochs": 6, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}


def _one(rows, claims=TWIN, history=None, spec=SPEC) -> pd.Series:
    table, _ = claims_table(pd.DataFrame(rows), history, spec, claims=claims)
    assert len(table) == 1
    return table.iloc[0]


def test_planted_gain_is_supported_with_an_interval_covering_it():
    r = _one(twin_pairs("quotient", "resnet", 0.02, seeds=range(5), rng_seed=0))
    assert r["verdict"] == "reproduced" and r["n"] == 5 and r["kind"] == "twin"
    assert r["ci_lo"] <= 0.02 <= r["ci_hi"] and r["ci_lo"] > 0
    # one row, two tests (against 0 and against the 1-point smallest effect): Holm doubles at most
    assert r["p_value"] <= r["p_adj"] <= 2 * r["p_value"]
    assert r["reported"] == 0.01 and r["reported_kind"] == "smallest effect"
    assert "design.smallest_effect" in r["reported_source"]
    assert "paired by seed" in r["basis"] and r["settle"] == ""


def test_planted_loss_is_contradicted():
    r = _one(twin_pairs("quotient", "resnet", -0.03, seeds=range(5), rng_seed=1))
    assert r["verdict"] == "contradicted" and r["ci_hi"] < 0


def test_null_gain_is_not_supported_over_repeated_studies():
    """20 planted null studies (5 seeds each): "reproduced" needs p < 0.05 and
    the claimed sign, so about 2.5% of them by chance; allow at most 2 of 20
    (P(>= 3) < 1.5% under the nominal rate), and the rest must not claim a
    gain either way more often than chance."""
    verdicts = [_one(twin_pairs("quotient", "resnet", 0.0, seeds=range(5), rng_seed=100 + i))["verdict"]
                for i in range(20)]
    assert verdicts.count("reproduced") <= 2, verdicts
    assert verdicts.count("contradicted") <= 2, verdicts
    # a null effect with little noise is ruled out at the 1-point smallest effect of interest
    assert verdicts.count("smaller than reported") >= 14, verdicts
    assert set(verdicts) <= {"reproduced", "contradicted", "open", "smaller than reported"}


def test_two_pairs_are_never_a_verdict_however_large_the_gain():
    r = _one(twin_pairs("quotient", "resnet", 0.3, seeds=[0, 1], noise=1e-4, rng_seed=2))
    assert r["n"] == 2 and r["estimate"] > 0.29
    assert r["verdict"] == "open" and np.isnan(r["p_adj"])
    assert r["settle"] == "needs >= 3 paired seeds (has 2)"


def test_intervals_stay_inside_the_difference_range():
    # three wildly different pairs: the raw t interval spans far beyond [-1, 1]
    rows = []
    for s, (v, t) in enumerate([(0.99, 0.05), (0.1, 0.95), (0.97, 0.2)]):
        rows.append(_row("quotient", f"v{s}", s, "completed", [], phase="repeat", val_acc=v, test_acc=v))
        rows.append(_row("resnet", f"t{s}", s, "completed", [], phase="twin", subject="quotient", arm="twin",
                         val_acc=t, test_acc=t))
    r = _one(rows)
    assert r["ci_lo"] == -1.0 and r["ci_hi"] == 1.0 and r["verdict"] == "open"


def test_holm_turns_a_lone_pass_into_inconclusive():
    """p = 0.03 passes at 0.05 alone, but with two more tests in the table Holm
    multiplies the smallest p by 3: 0.09, no verdict."""
    base = {c: None for c in COLUMNS}
    rows = [{**base, "claim": f"c{i}", "kind": "twin", "n": 5, "estimate": e, "p_value": p, "verdict": "open",
             "settle": "", "null": 0.0, "_sd": 0.01} for i, (e, p) in enumerate([(0.02, 0.03), (0.001, 0.5),
                                                                                  (-0.001, 0.8)])]
    alone = finish(pd.DataFrame(rows[:1]))
    assert alone["verdict"].iloc[0] == "reproduced" and alone["p_adj"].iloc[0] == pytest.approx(0.03)
    table = finish(pd.DataFrame(rows))
    assert table["p_adj"].tolist() == pytest.approx([0.09, 1.0, 1.0])
    assert table["verdict"].tolist() == ["open"] * 3
    assert "for 80% power" in table["settle"].iloc[0]


def test_holm_matches_the_hand_procedure():
    p = [0.01, 0.04, 0.03, np.nan, 0.005]
    # sorted: 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, max(0.06, 0.04)
    assert holm(p)[[4, 0, 2, 1]].tolist() == pytest.approx([0.02, 0.03, 0.06, 0.06])
    assert np.isnan(holm(p)[3])


def test_power_rule_of_thumb():
    # an effect of one standard deviation needs 10 pairs (paired t, alpha 0.05, power 0.8)
    assert n_for_power(0.01, 0.01) == 10
    # two independent groups need about twice as many per group as pairs
    assert 16 <= n_for_power(0.01, 0.01, groups=2) <= 18
    assert n_for_power(0.0, 0.01) is None


def test_noninferiority_verdicts():
    claim = {"epsilon": [Claim("e", "discards blocks at little cost", "noninferior", margin=0.01,
                               gain_metric="discarded_ratio")]}
    ok = _one(twin_pairs("epsilon", "epsilon", -0.002, seeds=range(4), noise=0.001, discarded_ratio=0.3),
              claims=claim)
    assert ok["verdict"] == "reproduced" and ok["ci_lo"] > -0.01 and ok["gain"] == pytest.approx(0.3)
    assert ok["null"] == -0.01
    worse = _one(twin_pairs("epsilon", "epsilon", -0.05, seeds=range(4), noise=0.001, discarded_ratio=0.3),
                 claims=claim)
    assert worse["verdict"] == "contradicted" and worse["ci_hi"] < -0.01
    kept_all = _one(twin_pairs("epsilon", "epsilon", 0.0, seeds=range(4), noise=0.001, discarded_ratio=0.0),
                    claims=claim)
    # no block discarded: the claim was not exercised, whatever the accuracy says
    assert kept_all["verdict"] == "not exercised"
    # what would settle it, from epsilon's declaration: its gain, its swept knob, its objectives
    assert kept_all["settle"] == ("the configuration tested has no discarded ratio above 0: search a wider range of "
                                  "epsilon, or with objectives [val_acc, param_reduction]")


def test_level_claim_is_judged_at_a_rung_when_pruning_left_too_few_completed():
    res = synthetic_results()
    hist = synthetic_history(res)
    import yaml

    table, _ = claims_table(res, hist, yaml.safe_load(SPEC_YAML), claims=builtin_claims())
    mi = table[table["key"] == "sgs_mi"].iloc[0]
    # only 2 MI trials and no branch trial completed: judged at the highest rung with >= 3 a side
    assert mi["basis"].startswith("val_acc at epoch 2") and mi["n"] >= 3
    assert mi["verdict"] == "reproduced" and 2 in RUNGS
    rule = table[table["key"] == "quotient_rule"].iloc[0]
    assert rule["basis"].startswith("final val_acc") and rule["verdict"] == "reproduced"
    # an option the study never varied: no verdict, and it says what to search
    restart = table[table["key"] == "epsilon_restart"].iloc[0]
    assert restart["verdict"] == "open" and restart["settle"].startswith("search adaptive_lr")
    # every interval in range, every verdict one of three, n = 2 never decided
    assert ((table["ci_lo"].dropna() >= -1) & (table["ci_hi"].dropna() <= 1)).all()
    assert set(table["verdict"]) <= {"reproduced", "contradicted", "open", "smaller than reported", "not exercised"}
    assert (table.loc[table["n"] < 3, "verdict"] == "open").all()
    md = claims_markdown(table)
    assert md.splitlines()[1].startswith("|--") and "| reproduced" in md


def test_default_twin_claim_for_a_variant_without_claims(monkeypatch):
    import study.variants as registry

    class Fake:
        claims = ()
        twin = staticmethod(lambda cfg: cfg)

    monkeypatch.setattr(registry, "get_variant", lambda name: Fake())
    claims, notes = declared_claims(["plugin_net"])
    (c,) = claims["plugin_net"]
    assert c.kind == "twin" and c.text == "plugin_net beats its twin" and notes == []


def test_tuned_vs_tuned_is_corrected_and_in_range():
    rows = twin_pairs("quotient", "resnet", 0.02, seeds=range(4), rng_seed=3)
    for s in range(4):  # resnet's own repeat runs, 0.01 below quotient's
        rows.append(_row("resnet", f"res-r{s}", s, "completed", [], phase="repeat", val_acc=0.885,
                         test_acc=0.89 + 0.001 * s))
    t = tuned_vs_tuned(pd.DataFrame(rows))
    (q,) = t.itertuples()
    assert q.subject == "quotient" and q.test == "paired t" and q.n == 4
    assert q.p_adj == pytest.approx(q.p_value) and -1 <= q.ci_lo <= q.ci_hi <= 1
    # the twin rows (variant resnet) are not resnet's tuned runs
    assert q.baseline_mean == pytest.approx(np.mean([0.89 + 0.001 * s for s in range(4)]))


def test_quotient_rule_claim_leaves_out_trials_where_the_rules_are_one_network():
    # At alpha = 2, ln(alpha - 1) = 0 and `unshifted` is the `paper` rule: those trials say
    # nothing about the rules. The declared claim keeps only trials where the two differ.
    from study.models.quotient import rules_differ
    from study.variants import get_variant

    claim = next(c for c in get_variant("quotient").claims if c.key == "quotient_rule")
    assert not rules_differ(2.0) and not rules_differ(2.05) and rules_differ(1.5) and rules_differ(2.5)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        rule = ("paper", "unshifted")[i % 2]
        alpha = 2.0 if i < 6 else 1.5  # half the trials at the alpha where the rules coincide
        gain = 0.03 if (rule == "paper" and alpha != 2.0) else 0.0
        rows.append(_row("quotient", f"q-{i}", 0, "completed", ["quotient_rule", "alpha"], quotient_rule=rule,
                         alpha=alpha, val_acc=0.9 + gain + rng.normal(0, 0.002)))
    r = _one(rows, claims={"quotient": [claim]})
    # 3 paper + 3 unshifted at alpha 1.5; the six at alpha 2 are left out
    assert r["n"] == 3 and "quotient_rule=paper (3) minus quotient_rule=unshifted (3)" in r["basis"]
    assert "6 trial(s) left out" in r["basis"] and "alpha" in r["basis"]
    assert r["estimate"] == pytest.approx(0.03, abs=0.005)
    only_two = _one(rows[:6], claims={"quotient": [claim]})
    assert only_two["verdict"] == "open" and "left out" in only_two["settle"]


# ---------------------------------------------------------------- Holm and n < 3 in every table with verdicts

# Paired differences (variant minus its partner, one per seed) with known p-values (paired t):
# CLOSE alone passes 0.05 but not after Holm over three tests; STRONG passes any correction;
# NULL is noise around 0.
CLOSE = [0.012, 0.006, 0.014, 0.004]  # p = 0.032
STRONG = [0.02, 0.021, 0.019, 0.0205]  # p = 2e-5
NULL = [0.004, -0.006, 0.002, -0.003]  # p = 0.76
TWIN_OF = {"quotient": "resnet", "epsilon": "epsilon", "sgs": "resnet"}
BASE = [0.90, 0.91, 0.92, 0.905, 0.915]  # the partner's accuracy per seed


def _tuned(subject: str, diffs, seeds=None) -> list[dict]:
    """A subject's repeat runs at BASE + diffs, seed by seed (resnet: BASE itself)."""
    seeds = list(range(len(diffs))) if seeds is None else seeds
    return [_row(subject, f"{subject}-r{s}", s, "completed", [], phase="repeat", val_acc=BASE[s] + d,
                 test_acc=BASE[s] + d) for s, d in zip(seeds, diffs)]


def _twin_rows(subject: str, diffs) -> list[dict]:
    """A subject's repeat runs and its twin's runs, paired by seed, the variant BASE + diffs."""
    rows = []
    for s, d in enumerate(diffs):
        rows.append(_row(subject, f"{subject}-r{s}", s, "completed", [], phase="repeat", val_acc=BASE[s] + d,
                         test_acc=BASE[s] + d))
        rows.append(_row(TWIN_OF[subject], f"{subject}-t{s}", s, "completed", [], phase="twin", subject=subject,
                         arm="twin", val_acc=BASE[s], test_acc=BASE[s]))
    return rows


# A reported effect of 50 points: its "smaller than reported" tests all pass at once and come
# first in Holm's order, so the row tests are adjusted as if alone among themselves.
FAR = (Reported(0.5, "digits", 8, "Far et al., Table 1"),)


def _twin_claims(subjects) -> dict:
    return {s: [Claim(f"{s}_vs_twin", f"{s} beats its twin", "twin", reported=FAR)] for s in subjects}


def test_tuned_vs_tuned_holm_over_several_subjects_turns_a_lone_pass_inconclusive():
    baseline = _tuned("resnet", [0.0] * 4)
    alone = tuned_vs_tuned(pd.DataFrame(baseline + _tuned("quotient", CLOSE)))
    (q,) = alone.itertuples()
    assert q.test == "paired t" and q.p_value < 0.05 and q.verdict == "better"  # alone it passes
    t = tuned_vs_tuned(pd.DataFrame(baseline + _tuned("quotient", CLOSE) + _tuned("sgs", STRONG)
                                    + _tuned("epsilon", NULL))).set_index("subject")
    assert sorted(t.index) == ["epsilon", "quotient", "sgs"] and (t["n"] == 4).all()
    assert t["verdict"].to_dict() == {"epsilon": "inconclusive", "quotient": "inconclusive", "sgs": "better"}
    # Holm, three tests: the smallest p times 3, the second times 2, the largest as is
    assert t.loc["sgs", "p_adj"] == pytest.approx(3 * t.loc["sgs", "p_value"])
    assert t.loc["quotient", "p_adj"] == pytest.approx(2 * t.loc["quotient", "p_value"])
    assert t.loc["quotient", "p_adj"] > 0.05
    assert t.loc["epsilon", "p_adj"] == pytest.approx(t.loc["epsilon", "p_value"])


def test_tuned_vs_tuned_never_decides_on_two_runs_however_large_the_gain():
    baseline = _tuned("resnet", [0.0] * 4)
    # quotient ran two seeds (Welch against resnet's four), gaining 8 points with no spread to speak of
    rows = baseline + _tuned("quotient", [0.08, 0.0801]) + _tuned("sgs", STRONG) + _tuned("epsilon", NULL)
    t = tuned_vs_tuned(pd.DataFrame(rows)).set_index("subject")
    q = t.loc["quotient"]
    assert q["n"] == 2 and q["diff"] > 0.07 and q["p_value"] < 0.05  # a test would call it
    assert q["verdict"] == "inconclusive" and np.isnan(q["p_adj"])
    assert t.loc["sgs", "verdict"] == "better"  # the others are still decided
    # a baseline of two runs decides nothing either
    two_base = tuned_vs_tuned(pd.DataFrame(_tuned("resnet", [0.0] * 2) + _tuned("sgs", STRONG[:2])
                                           + _tuned("quotient", [0.08, 0.0801])))
    assert (two_base["verdict"] == "inconclusive").all() and two_base["p_adj"].isna().all(), two_base


def test_claims_table_holm_over_several_subjects_turns_a_lone_pass_inconclusive():
    claims = _twin_claims(["quotient", "sgs", "epsilon"])
    alone, _ = claims_table(pd.DataFrame(_twin_rows("quotient", CLOSE)), None, SPEC,
                            claims={"quotient": claims["quotient"]})
    assert alone["p_value"].iloc[0] < 0.05 and alone["verdict"].iloc[0] == "reproduced"
    rows = _twin_rows("quotient", CLOSE) + _twin_rows("sgs", STRONG) + _twin_rows("epsilon", NULL)
    t = claims_table(pd.DataFrame(rows), None, SPEC, claims=claims)[0].set_index("subject")
    assert (t["n"] == 4).all()
    assert t["verdict"].to_dict() == {"quotient": "smaller than reported", "sgs": "reproduced",
                                      "epsilon": "smaller than reported"}
    assert t.loc["sgs", "verdicts"] == "reproduced; smaller than reported"
    assert t.loc["quotient", "p_adj"] == pytest.approx(2 * t.loc["quotient", "p_value"])
    assert t.loc["quotient", "p_adj"] > 0.05
    assert t.loc["quotient", "settle"] == ""  # a verdict (smaller than reported) needs no settling


def test_claims_table_never_decides_on_two_pairs_among_several_subjects():
    claims = _twin_claims(["quotient", "sgs", "epsilon"])
    rows = _twin_rows("quotient", [0.08, 0.0801]) + _twin_rows("sgs", STRONG) + _twin_rows("epsilon", NULL)
    t = claims_table(pd.DataFrame(rows), None, SPEC, claims=claims)[0].set_index("subject")
    q = t.loc["quotient"]
    assert q["n"] == 2 and q["estimate"] > 0.07 and q["p_value"] < 0.05
    assert q["verdict"] == "open" and np.isnan(q["p_adj"]) and q["settle"] == "needs >= 3 paired seeds (has 2)"
    # the two-pair row is not in Holm's family: sgs is adjusted over the two rows with n >= 3
    assert t.loc["sgs", "verdict"] == "reproduced"
    assert t.loc["sgs", "p_adj"] == pytest.approx(2 * t.loc["sgs", "p_value"])
