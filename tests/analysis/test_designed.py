"""Claims answered by designed arms (study.json "design"): the claims table reads
the driver's looks and never re-decides them, reports what the issue asks of a
claim row, sets "as published" beside "as tuned", says what would settle an
open claim in seeds and time; the designed sweeps; the report opens with them."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.claims import (DESIGNED, NOT_CONTROLLED, claims_table, designed_rows, load_design,
                             stop_words, variance_sources)
from analysis.load import StudyFileError
from analysis.report import _claims_html, _side_by_side, conclusion, settle_cost
from analysis.sensitivity import level_effect, sweeps
from study.stats.sequential import look
from study.stats.intervals import paired_bootstrap

from .conftest import SPEC_YAML, _row, builtin_claims
from .designed import SECONDS, designed_study, make_designed_study_dir

SPEC = yaml.safe_load(SPEC_YAML)


@pytest.fixture(scope="module")
def study():
    return designed_study()


@pytest.fixture(scope="module")
def table(study):
    results, design = study
    t, notes = claims_table(results, None, SPEC, claims=builtin_claims(), design=design)
    assert notes == []
    return t.set_index("key", drop=False)


def _entry(design: dict, key: str) -> dict:
    return next(x["claims"][key] for x in design.values() if key in x["claims"])


def test_designed_rows_carry_the_drivers_verdicts_and_what_a_row_reports(study, table):
    results, design = study
    keys = [k for x in design.values() for k in x["claims"]]
    d = table[table["control"] == DESIGNED]
    assert sorted(d["key"]) == sorted(keys)
    for key in keys:
        r, last = d.loc[key], _entry(design, key)["looks"][-1]
        want = last["verdict"]
        assert r["verdict"] == want and r["stop"] == _entry(design, key)["stop"]
        assert (r["ci_lo"], r["ci_hi"], r["alpha"]) == (pytest.approx(last["lo"]), pytest.approx(last["hi"]),
                                                        last["alpha"])
        assert r["n"] == last["n"] and r["estimate"] == pytest.approx(last["estimate"])
        for lo, hi in (("ci_lo", "ci_hi"), ("t_lo", "t_hi"), ("boot_lo", "boot_hi")):
            assert -1 <= r[lo] <= r["estimate"] <= r[hi] <= 1, (key, lo)
        assert 0 < r["p_beat"] < 1
        assert r["sources"] == ("weight init, data order, augmentation (crop, flip); the train/validation split "
                                "and the test set are the same at every seed")
        assert "Bonferroni across the study's 5 designed claims" in r["correction"]
        assert r["basis"].endswith("paired by seed") and r["test"].startswith("group-sequential")
        # the reported effect it was judged against, with its source, and every verdict it gave
        assert r["reported"] == pytest.approx(_entry(design, key)["reported"]["value"])
        assert r["reported_source"].startswith("Synthetic et al., Table") and r["reported_kind"] == "reported"
        assert r["verdicts"] == "; ".join(last["verdicts"])
        # and why, in one sentence: each verdict's end of the interval against its line
        assert r["reason"].startswith(f"interval [{100 * r['ci_lo']:+.2f}, {100 * r['ci_hi']:+.2f}] points"), key
        for v in last["verdicts"]:
            assert {"reproduced": "reproduced: its lower end is above the null",
                    "smaller than reported": "smaller than reported: its upper end is below the reported",
                    "contradicted": "contradicted: its upper end is below the null",
                    "open": "open: it holds the null"}[v] in r["reason"], (key, r["reason"])
    # the planted effects: quotient's gain and the rule reproduce, epsilon is within its margin, sgs stays
    # open, quotient as published is ruled out at the 1 point its "paper" reports
    assert d.loc["quotient_twin", "verdict"] == "reproduced" and d.loc["quotient_twin", "ci_lo"] > 0
    assert d.loc["quotient_rule", "verdict"] == "reproduced"
    assert d.loc["epsilon_discard", "verdict"] == "reproduced" and d.loc["epsilon_discard", "ci_lo"] > -0.01
    assert d.loc["epsilon_discard", "gain"] == pytest.approx(0.3)
    assert d.loc["sgs_twin", "verdict"] == "open"
    assert d.loc["quotient_twin@published", "verdict"] == "smaller than reported"
    # a claim the design does not answer keeps the old basis, labelled as such; none is answered twice
    old = table[table["control"] == NOT_CONTROLLED]
    assert set(old["key"]) == {"epsilon_restart", "sgs_mi"}


def _one_claim(diffs, looks, stop, *, kind="twin", n_max=8, gain=None) -> tuple[pd.DataFrame, dict]:
    rows, arms = [], {"variant": [], "twin": []}
    for s, d in enumerate(diffs):
        for arm, v in (("variant", 0.9 + d), ("twin", 0.9)):
            tid = f"{arm}-{s}"
            extra = {"discarded_ratio": gain} if gain is not None and arm == "variant" else {}
            rows.append(_row("quotient" if arm == "variant" else "resnet", tid, s, "completed", [],
                             phase="repeat" if arm == "variant" else "twin", subject="quotient", arm=arm,
                             val_acc=v, test_acc=v, seconds=300.0, **extra))
            arms[arm].append(tid)
    entry = {"kind": kind, "metric": "test_acc", "margin": 0.01 if kind == "noninferior" else None,
             "gain_metric": "discarded_ratio" if kind == "noninferior" else None, "compare": ["variant", "twin"],
             "arms": arms, "looks": looks, "stop": stop, "seeds": list(range(len(diffs)))}
    return pd.DataFrame(rows), {"syn-quotient-d8": {"claims": {"q": entry}, "sweeps": {}}}


def _designed(diffs, looks, stop, **kw) -> pd.Series:
    res, design = _one_claim(diffs, looks, stop, **kw)
    rows, _ = designed_rows(res, design, {"quotient": builtin_claims()["quotient"]})
    table, _ = claims_table(res, None, SPEC, claims={"quotient": []}, design=design)
    assert len(rows) == len(table) == 1
    return table.iloc[0]


def test_a_clear_fixed_n_result_is_not_a_verdict_the_looks_did_not_give():
    """Three pairs 2 points apart: a fixed-n t interval excludes 0, but the first look of a
    design that may go to 8 seeds does not; the study stopped there (budget)."""
    diffs = [0.02, 0.024, 0.016]
    lk = look(diffs, 8)
    assert lk.verdict == "open"
    r = _designed(diffs, [lk.record()], "budget")
    assert r["t_lo"] > 0 and r["boot_lo"] > 0  # what re-deciding from the display statistics would call
    assert r["verdict"] == "open" and r["ci_lo"] < 0 < r["ci_hi"]
    assert r["ci_lo"] == pytest.approx(lk.lo) and stop_words(r) == "the study's budget ran out"


def test_a_recorded_verdict_from_two_pairs_is_not_taken():
    r = _designed([0.05, 0.051], [{"n": 2, "lo": 0.01, "hi": 0.09, "verdict": "supported", "alpha": 0.05}],
                  "settled")
    assert r["n"] == 2 and r["verdict"] == "open" and "not taken" in r["basis"]
    assert r["settle"] == "needs >= 3 paired seeds (has 2)"


def test_noninferiority_needs_the_gain_it_trades_for():
    diffs = [-0.001, -0.002, -0.0015, -0.001]
    lk = look(diffs, 4, margin=0.01)
    assert lk.verdict == "reproduced"
    r = _designed(diffs, [lk.record()], "settled", kind="noninferior", n_max=4, gain=0.0)
    assert r["verdict"] == "not exercised" and "not exercised" in r["settle"]
    assert r["reason"] == f"not exercised: {r['settle']}" and "discarded ratio above 0" in r["reason"]


def test_published_and_tuned_sit_side_by_side(table):
    keys = list(table["key"])
    at = keys.index("quotient_twin")
    assert keys[at + 1] == "quotient_twin@published"  # adjacent, tuned first
    assert list(table["setting"][at:at + 2]) == ["as tuned", "as published"]
    side = _side_by_side(table.reset_index(drop=True))
    (row,) = side.to_dict("records")
    assert row["as tuned: verdict"] == "reproduced" and row["as published: verdict"] == "smaller than reported"
    assert row["as published: seeds"] == table.loc["quotient_twin@published", "n"]
    html = _claims_html(table.reset_index(drop=True))
    assert "As published and as tuned" in html and "Claims not controlled" in html
    # raw option names and fractions do not reach the reader: arm labels and differences in words and points
    assert "quotient_rule=paper" not in html and "(points)" in html


def test_an_open_claim_says_what_would_settle_it_in_seeds_and_time(table, study):
    results, _ = study
    r = table.loc["sgs_twin"]
    assert r["stop"] == "cannot_settle" and r["n_needed"] > r["n"]
    assert f"about {int(r['n_needed'])} paired seeds ({int(r['n_needed'] - r['n'])} more)" in r["settle"]
    more = int(r["n_needed"] - r["n"])
    cost = settle_cost(r, results)
    hours = more * 2 * SECONDS / 3600
    assert cost.startswith(f"{more} more seeds, a run of each arm each: {2 * more} runs, about ")
    assert f"{hours:.1f} h" in cost or f"{hours:.0f} h" in cost, cost
    assert f"median of {SECONDS:.0f} s a run" in cost


def test_conclusion_opens_with_supported_contradicted_open_and_the_cost(table, study):
    results, design = study
    sws, _ = sweeps(results, design)
    _, md = conclusion(table.reset_index(drop=True), pd.DataFrame(), [], results, SPEC, "syn", sws)
    lead = md.split("\n\n")[1]
    assert re.match(r"Study syn \(.*\): of 7 claims, 3 reproduced, 1 smaller than reported, 0 contradicted, 3 open, "
                    r"0 not exercised\. 5 of them were answered by designed arms", lead), lead
    smaller = md.split("**Smaller than reported**")[1].split("**Contradicted**")[0]
    assert re.search(r"reported \+1\.00 points \(Synthetic et al\., Table 8: digits, depth 8\), measured [+-]\d\.\d\d "
                     r"\[[+-]\d\.\d\d, [+-]\d\.\d\d\] points at this scale: smaller than reported", smaller), smaller
    open_part = md.split("**Open**")[1].split("**Sweeps**")[0]
    sgs = next(line for line in open_part.splitlines() if "sgs beats its twin" in line)
    assert "as tuned" in sgs and "stopped early: no verdict was plausible within 6 seeds" in sgs
    assert re.search(r"To settle: about \d+ seed pairs in all \(\d+ more seeds, .* h of training", sgs), sgs
    assert "0.0" not in sgs.split("To settle")[0].replace("0.05", "")  # points, not fractions of one
    assert "no detectable effect in {false, true}" in md.split("**Sweeps**")[1]


def test_sweeps_per_level_means_and_whether_the_levels_differ(study):
    results, design = study
    by = {s.param: s for s in sweeps(results, design)[0]}
    a = by["alpha"]
    assert a.numeric and list(a.levels["level"]) == ["1.5", "2", "2.5"] and (a.levels["n"] == 4).all()
    # each level's mean is the mean over its seeds of its own runs
    runs = results[results["claim"] == "sweep:alpha"]
    for _, lv in a.levels.iterrows():
        assert lv["mean"] == pytest.approx(runs.loc[runs["alpha"] == lv["value"], "val_acc"].mean())
        assert 0 <= lv["ci_lo"] < lv["mean"] < lv["ci_hi"] <= 1
    assert list(a.levels["best"]) == [False, True, False]
    assert a.detectable and a.result.startswith("best at 2 ") and a.result.endswith("the search chose it")
    stem = by["quotient_stem"]
    assert not stem.numeric and not stem.detectable
    assert stem.result == "no detectable effect in {false, true}"
    assert list(stem.levels["best"]) == [False, True]


def test_level_effect_pairs_levels_by_seed():
    """Levels 0.3 points apart, seeds 1 point apart: only the blocked test sees the levels differ."""
    seeds = np.array([0.0, 0.01, 0.02, 0.03])
    t = pd.DataFrame([0.9 + seeds, 0.903 + seeds + np.array([0.0002, -0.0001, 0.0001, -0.0002])],
                     index=["a", "b"], columns=range(4))
    p, test = level_effect(t)
    assert p < 0.01 and test == "F test, seeds as blocks"
    # a seed missing at one level: only the seeds every level ran are blocks
    t.loc["b", 3] = np.nan
    assert level_effect(t)[0] < 0.01
    # no seed at every level: one-way ANOVA, which the seed spread swamps
    p1, test1 = level_effect(pd.DataFrame({0: [0.9, np.nan], 1: [0.91, np.nan], 2: [np.nan, 0.903],
                                           3: [np.nan, 0.913]}, index=["a", "b"]))
    assert test1 == "one-way ANOVA" and p1 > 0.05


def test_variance_sources_follow_the_runs_options():
    rows = pd.DataFrame({"augment": ["none", "none"], "cutout": [0, 0]})
    assert variance_sources(rows).startswith("weight init, data order; ")
    rows = pd.DataFrame({"augment": ["crop", "crop"], "cutout": [16, 16]})
    assert variance_sources(rows).startswith("weight init, data order, augmentation (crop, cutout); ")


def test_paired_bootstrap_is_reproducible_and_in_range():
    d = [0.01, 0.03, 0.02, 0.025]
    lo, hi = paired_bootstrap(d)
    assert (lo, hi) == paired_bootstrap(d) and min(d) <= lo < np.mean(d) < hi <= max(d)
    assert np.isnan(paired_bootstrap([0.01])[0])


def test_load_design(tmp_path):
    assert load_design(tmp_path) is None  # no study.json: an old study
    (tmp_path / "study.json").write_text(json.dumps({"name": "x"}))
    assert load_design(tmp_path) is None
    (tmp_path / "study.json").write_text(json.dumps({"design": ["not", "an", "object"]}))
    with pytest.raises(StudyFileError, match="'design' holds list"):
        load_design(tmp_path)


def test_report_of_a_designed_study(tmp_path):
    from analysis.report import analyze

    d = make_designed_study_dir(tmp_path)
    path = analyze(d, out_dir=tmp_path / "out", log_to_mlflow=False, n_boot=20, claims=builtin_claims())
    page = path.read_text()
    titles = re.findall(r'<h2 id="s\d+">([^<]*)</h2>', page)
    assert titles.index("Sensitivity: designed sweeps") + 1 == titles.index(
        "Sensitivity landscape over search trials: numeric parameters")
    assert page.index("Conclusion") < page.index("designed arms") < page.index('id="s0">Claims')
    assert (tmp_path / "out" / "plots" / "sweep-syn-quotient-d8-alpha.png").is_file()
    claims = pd.read_csv(tmp_path / "out" / "claims.csv")
    assert (claims["control"] == DESIGNED).sum() == 5
    md = (tmp_path / "out" / "claims.md").read_text()
    assert "as published" in md and "level 0.01" in md and "valid under" in md
