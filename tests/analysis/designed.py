"""A synthetic study with designed arms: results rows in the study output schema
(phase "arms", a `claim` column, free-text arm labels) and the study.json
"design" record the driver keeps, its looks made by the real stopping rule
round by round (study.stats.sequential), as the driver makes them. No training, no Ray.

Planted: quotient beats its twin by 2 points as tuned (reproduced), not at all as
published (smaller than its reported 1 point); the paper rule beats unshifted by
1 point; epsilon loses 0.2 points against a 1-point margin while discarding
blocks; sgs gains 0.1 points against a spread of 0.4 and a reported 0.4 points
(open: no verdict plausible within its 6 seeds). Sweeps: quotient's
alpha with an optimum at 2 (the searched best), quotient_stem without effect.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from study.stats.sequential import claim_alpha, look

from .conftest import SPEC_YAML, _row, synthetic_history, synthetic_results, write_optuna_db

SECONDS = 600.0  # one designed run
PLAN = {  # (experiment subject, claim key): kind, metric, arms A and B, planted mean difference, its spread, n_max
    ("quotient", "quotient_twin"): ("twin", "test_acc", ("variant", "twin"), 0.02, 0.004, 8),
    ("quotient", "quotient_twin@published"): ("twin", "test_acc", ("published", "published twin"), 0.0, 0.004, 8),
    ("quotient", "quotient_rule"): ("level", "val_acc", ("quotient_rule=paper", "quotient_rule=unshifted"), 0.01,
                                    0.003, 8),
    ("epsilon", "epsilon_discard"): ("noninferior", "compressed_test_acc", ("variant", "twin"), -0.002, 0.002, 8),
    ("sgs", "sgs_twin"): ("twin", "test_acc", ("variant", "twin"), 0.001, 0.004, 6),
}
# the effect each claim's "paper" reports: sgs's far above what it gains (smaller than reported)
REPORTED = {"quotient_twin": 0.01, "quotient_twin@published": 0.01, "quotient_rule": 0.01, "epsilon_discard": 0.0,
            "sgs_twin": 0.004}
TWIN_VARIANT = {"quotient": "resnet", "epsilon": "epsilon", "sgs": "sgs"}
# the best value as the configuration holds it (2, an int) while the levels were written as floats (2.0)
SWEEPS = {"alpha": ({1.5: -0.006, 2.0: 0.0, 2.5: -0.004}, 2), "quotient_stem": ({True: 0.0, False: 0.0}, True)}
SWEEP_SEEDS = [0, 1, 2, 3]


def _exp(subject: str) -> str:
    return f"syn-{subject}-d8"


def _arm_row(subject: str, key: str, arm: str, seed: int, value: float, metric: str, kind: str) -> dict:
    """One designed run: the tuned twin claim's arms are the repeat and twin phases, the rest phase "arms"."""
    tuned_twin = arm in ("variant", "twin") and not key.endswith("@published")
    phase = {"variant": "repeat", "twin": "twin"}[arm] if tuned_twin else "arms"
    variant = TWIN_VARIANT[subject] if arm.endswith("twin") else subject
    extra = {}
    if subject == "epsilon":
        extra = {"discarded_ratio": 0.3 if arm == "variant" else 0.0, "compressed_test_acc": value}
    if kind == "level":
        extra["quotient_rule"] = arm.split("=")[1]
    tid = f"{subject}-{key}-{arm}-{seed}".replace(" ", "_").replace("=", "_").replace("@", "_")
    r = _row(variant, tid, seed, "completed", [], phase=phase, subject=subject, arm=arm, seconds=SECONDS,
             val_acc=value, test_acc=value, augment="crop_flip", claim="" if tuned_twin else key, **extra)
    r[metric] = value
    return r


def designed_study(seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """(results, design): the synthetic study's search trials, plus designed arms run
    round by round until the stopping rule stops each claim."""
    rng = np.random.default_rng(seed)
    base = synthetic_results(seed)
    # quotient's search only (the landscape view beside its sweeps); designed runs replace repeat and twin
    base = base[(base["phase"] == "search") & (base["subject"] == "quotient")].assign(claim="")
    rows: list[dict] = []
    design: dict = {}
    family = len(PLAN)
    state = {}
    for (subject, key), (kind, metric, (a, b), delta, sd, n_max) in PLAN.items():
        shared = rng.normal(0, 0.01, n_max)  # what a seed does to both arms alike
        d = rng.normal(delta, sd, n_max)
        entry = {"kind": kind, "metric": metric, "margin": 0.01 if kind == "noninferior" else None,
                 "gain_metric": "discarded_ratio" if kind == "noninferior" else None, "compare": [a, b],
                 "arms": {a: [], b: []}, "configs": {a: {}, b: {}}, "looks": [], "stop": "running", "seeds": [],
                 "reported": {"value": REPORTED[key], "kind": "reported", "source": f"Synthetic et al., Table {n_max}",
                              "dataset": "digits", "depth": 8, "arms": "", "metric": "test accuracy",
                              "match": "the study's dataset and depth"}}
        design.setdefault(_exp(subject), {"best_rid": f"{subject}-best", "claims": {}, "sweeps": {}})
        design[_exp(subject)]["claims"][key] = entry
        state[(subject, key)] = (entry, 0.88 + shared, d, n_max, metric, kind)
    for n in range(1, max(p[-1] for p in PLAN.values()) + 1):  # one seed per round for every open claim
        for (subject, key), (entry, base_acc, d, n_max, metric, kind) in state.items():
            if entry["stop"] != "running" or n > n_max:
                continue
            s = n - 1
            a, b = entry["compare"]
            for arm, value in ((a, base_acc[s] + d[s]), (b, base_acc[s])):
                r = _arm_row(subject, key, arm, s, float(value), metric, kind)
                rows.append(r)
                entry["arms"][arm].append(r["trial_id"])
            entry["seeds"].append(s)
            if n < 3:
                continue
            margin = entry["margin"] or 0.0
            lk = look(d[:n], n_max, alpha=claim_alpha(family), margin=margin, reported=entry["reported"]["value"],
                      prior_looks=[x["n"] for x in entry["looks"]])
            entry["looks"].append({**lk.record(), "time": 1000.0 + n})
            if lk.stop:
                entry["stop"] = lk.stop
    for option, (effects, best) in SWEEPS.items():
        levels = {}
        for value, effect in effects.items():
            rids = []
            for s in SWEEP_SEEDS:
                acc = 0.9 + effect + rng.normal(0, 0.001) + 0.002 * s
                tid = f"quotient-sweep-{option}-{value}-{s}"
                rows.append(_row("quotient", tid, s, "completed", [], phase="arms", arm=f"{option}={value}",
                                 seconds=SECONDS, val_acc=acc, test_acc=acc, claim=f"sweep:{option}",
                                 **{option: value}))
                rids.append(tid)
            levels[json.dumps(value)] = rids
        design[_exp("quotient")]["sweeps"][option] = {"levels": levels, "best_value": best, "seeds": SWEEP_SEEDS}
    results = pd.concat([base, pd.DataFrame(rows)], ignore_index=True)
    return results, design


def make_designed_study_dir(root: Path, seed: int = 0) -> Path:
    d = root / "syn-designed"
    d.mkdir(parents=True, exist_ok=True)
    res, design = designed_study(seed)
    res.to_parquet(d / "results.parquet", index=False)
    synthetic_history(res).to_parquet(d / "history.parquet", index=False)
    (d / "spec.yaml").write_text(SPEC_YAML)
    (d / "study.json").write_text(json.dumps({"name": "syn", "design": design}))
    write_optuna_db(d / "optuna.db", res)
    return d
