"""The study end to end: one tiny real study (tests/conftest.py) and what it leaves."""

from __future__ import annotations


import json
import re

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from study.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from study.variants import get_variant
from tests.conftest import TINY_SPEC, run_cli

# the study runs the toy plugin's variant too: registered here while this module runs
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.usefixtures("tiny_plugins")]
VARIANTS = set(TINY_SPEC["variants"])


@pytest.fixture(scope="module")
def results(tiny_study_dir) -> pd.DataFrame:
    return pd.read_parquet(tiny_study_dir / "results.parquet")


def test_progress_view_and_pointers(tiny_study_run):
    _, proc = tiny_study_run
    # the closing summary: per variant and depth, trials finished out of planned and the best val_acc
    for variant in VARIANTS:
        assert re.search(rf"{variant} d8\s+(\d+)/\1\s+finished .* best val_acc 0\.\d+", proc.stdout), variant
    assert "resstudy ui " in proc.stdout


def test_results_parquet_has_every_variant_and_trial(results):
    search = results[results.phase == "search"]
    assert set(search.variant) == VARIANTS
    assert search.groupby("variant").size().to_dict() == {v: TINY_SPEC["trials_per_variant"] for v in VARIANTS}
    assert set(results.status) <= {"completed", "pruned", "failed", "diverged"}
    for col in ("experiment", "trial_id", "seed", "epochs_reached", "seconds", "node", "mlflow_run_id", "val_acc",
                "best_val_acc", "lr", "weight_decay", "searched"):
        assert col in results.columns, col
    # every option of a trial's own variant is a column with its own name, and a row holds
    # only its own variant's options (another variant's are empty there)
    from study.config import variant_options

    for variant in VARIANTS:
        own = set(variant_options(variant))
        assert own <= set(results.columns), (variant, own - set(results.columns))
        rows = results[results.variant == variant]
        for other in set(results.columns) & (set().union(*(variant_options(v) for v in VARIANTS)) - own):
            assert rows[other].isna().all(), (variant, other)
    completed = results[results.status == "completed"]
    assert len(completed) and completed.test_acc.notna().all()
    assert (completed.epochs_reached == TINY_SPEC["epochs"]).all()
    assert results.trial_id.is_unique


def test_variant_specific_columns(results):
    eps = results[(results.variant == "epsilon") & (results.status == "completed")]
    assert eps.discarded_ratio.between(0, 1).all() and (eps.params_compressed <= eps.params).all()
    assert eps.compressed_test_acc.notna().all()
    q = results[(results.variant == "quotient") & results.status.isin(["completed", "pruned"])]
    assert q.q_mean_stage1.notna().all()
    sgs = results[results.variant == "sgs"]
    assert set(sgs.sgs_mode) <= {"branches", "mi"}
    # searched params are recorded and differ between trials
    searched = json.loads(results[results.variant == "epsilon"].searched.iloc[0])
    assert "epsilon" in searched and "lr" in searched
    assert results[results.variant == "epsilon"].epsilon.nunique() > 1
    # a conditional param is listed only where its condition held
    for _, row in sgs.iterrows():
        names = json.loads(row.searched)
        assert ("sgs_k" in names) == (row.sgs_mode == "mi")
        assert ("sgs_branches" in names) == (row.sgs_mode == "branches")


def test_history_has_one_row_per_trial_epoch(tiny_study_dir, results):
    hist = pd.read_parquet(tiny_study_dir / "history.parquet")
    per_trial = hist.groupby("trial_id").epoch.max()
    joined = results.set_index("trial_id").epochs_reached
    assert (per_trial.reindex(joined.index) == joined).all()
    assert not hist.duplicated(["trial_id", "epoch"]).any()
    assert {"train_loss", "val_acc", "lr", "images_per_s"} <= set(hist.columns)


def test_repeat_phase_reruns_best_config_over_seeds(results):
    from study.config import variant_options

    for variant in VARIANTS:
        search = results[(results.subject == variant) & (results.phase == "search") & (results.status == "completed")]
        best = search.loc[search.val_acc.idxmax()]
        rows = results[(results.subject == variant) & (results.phase == "repeat")]
        assert sorted(rows.seed) == TINY_SPEC["seeds"]
        options = [o for o in variant_options(variant) if o not in ("seed", "precision", "device")]
        for _, row in rows.iterrows():  # the best search trial's config, only the seed differs
            differ = [o for o in options if not (row[o] == best[o] or (pd.isna(row[o]) and pd.isna(best[o])))]
            assert not differ, (variant, differ)


# The switch that turns a variant's method off in its twin, where the twin is the same
# variant (epsilon) or a variant that also takes the method's options (sgs: any ResNet takes
# SGS's options, and scaling off is sgs_mode "off"); quotient's twin is another network, the
# ResNet, whose config lacks the quotient options altogether (and so is the plugin's toy's).
METHOD_OFF = {"epsilon": {"epsilon_gate": False}, "sgs": {"sgs_mode": "off"}, "quotient": {}, "toy": {}}


def _same(a, b) -> bool:
    missing = lambda x: x is None or (isinstance(x, float) and np.isnan(x))  # noqa: E731
    return (missing(a) and missing(b)) or (not missing(a) and not missing(b) and a == b)


def test_twins_differ_from_their_variant_runs_only_in_the_method(tiny_study_dir, results):
    """Every twin the study ran, against the variant run of its seed: the whole resolved config
    (every option either network takes, as its results row holds it) is the same, except the
    variant's name, the options only one of the two networks has, and the method's switch (off
    in the twin, on in the variant run); and both networks have the same number of parameters."""
    from study.config import TrainConfig, variant_options
    from study.ledger import Ledger
    from study.models import create_model

    twins = results[results.phase == "twin"]
    assert set(twins.subject) == set(METHOD_OFF) and len(twins) == len(METHOD_OFF) * len(TINY_SPEC["seeds"]), \
        twins[["trial_id", "subject", "seed"]]
    assert set(twins.arm) == {"twin"}
    configs = {rid: rec["config"] for rid, rec in Ledger(tiny_study_dir).trials.items()}
    for _, twin in twins.iterrows():
        (variant,) = [r for _, r in results.iterrows() if r.subject == twin.subject and r.phase == "repeat"
                      and r.seed == twin.seed]
        assert variant.status == "completed" and twin.status == "completed", (variant.trial_id, twin.trial_id)
        own_v, own_t = set(variant_options(variant.variant)), set(variant_options(twin.variant))
        off = METHOD_OFF[twin.subject]
        allowed = {"variant"} | (own_v ^ own_t) | set(off)
        if not _same(twin.train_epochs, variant.train_epochs):  # a twin trains the epochs its variant run did
            assert twin.train_epochs == variant.epochs_reached, (twin.trial_id, twin.train_epochs)
            allowed.add("train_epochs")
        differ = {k: (variant[k], twin[k]) for k in (own_v | own_t) - allowed if not _same(variant[k], twin[k])}
        assert not differ, (twin.trial_id, "differs from", variant.trial_id, differ)
        for k, value in off.items():  # the method is on in the variant run, off in its twin
            assert twin[k] == value and variant[k] != value, (twin.trial_id, k, variant[k], twin[k])
        if not off:
            assert twin.variant != variant.variant and own_v - own_t, (twin.variant, variant.variant)
        nets = [create_model(c["variant"], depth=c["depth"], num_classes=10, in_channels=1,
                             **TrainConfig.from_dict(c).model_options())
                for c in (configs[variant.trial_id], configs[twin.trial_id])]
        counts = [sum(p.numel() for p in net.parameters()) for net in nets]
        assert counts[0] == counts[1], (variant.trial_id, twin.trial_id, counts)


def test_a_study_learns(results):
    """Through a study, digits are learnt: the study's best run reaches >= 0.9 validation and
    test accuracy (chance is 0.1), and every variant's best >= 0.6. Measured at this study's 8x8
    images and 3 epochs: best 0.96 validation, 0.975 test; each variant's best 0.90-0.96 (lower
    where ASHA stops a variant's best configuration early: its other trials reach 0.7). The
    README's about 0.98 is the quick preset's (12x12 images, 5 epochs)."""
    done = results[(results.status == "completed") & (results.arm == "variant")]
    assert done.val_acc.max() >= 0.9 and done.test_acc.max() >= 0.9, done[["trial_id", "val_acc", "test_acc"]]
    best = done.groupby("subject").val_acc.max()
    assert set(best.index) == VARIANTS and (best >= 0.6).all(), best


def test_optuna_db_records_asha_stops_as_pruned(tiny_study_dir, results):
    storage = f"sqlite:///{tiny_study_dir / 'optuna.db'}"
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    pruned_total = 0
    for variant in VARIANTS:
        name = f"tiny-{variant}-d8"
        assert name in summaries
        study = optuna.load_study(study_name=name, storage=storage)
        by_ray_id = {t.user_attrs.get("rid"): t for t in study.trials}
        rows = results[(results.experiment == name) & (results.phase == "search")]
        assert len(study.trials) == len(rows)
        assert study.metric_names == ["val_acc"]
        for _, row in rows.iterrows():
            t = by_ray_id[row.trial_id]
            expected = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}.get(
                row.status, optuna.trial.TrialState.FAIL)
            assert t.state == expected, (row.trial_id, row.status, t.state)
            if t.state == optuna.trial.TrialState.PRUNED:
                pruned_total += 1
                # pruned at the epoch it reached, before the last one
                assert max(t.intermediate_values) == row.epochs_reached < TINY_SPEC["epochs"]
            if t.state == optuna.trial.TrialState.COMPLETE:
                assert t.value == pytest.approx(row.val_acc)
            assert t.user_attrs["seed"] == row.seed and t.user_attrs["mlflow_run_id"] == row.mlflow_run_id
    assert pruned_total >= 1, "ASHA stopped no trial: the tiny study no longer exercises pruning"


def test_mlflow_runs_nested_study_variant_trial(tiny_study_dir, results):
    state = json.loads((tiny_study_dir / "study.json").read_text())
    client = MlflowClient(f"sqlite:///{tiny_study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_level = {}
    for r in runs:
        by_level.setdefault(r.data.tags.get("resstudy.level"), []).append(r)
    (parent,) = by_level["study"]
    assert parent.info.run_id == state["mlflow_parent_run_id"] and parent.info.status == "FINISHED"
    variants = by_level["variant"]
    assert {r.data.tags["variant"] for r in variants} == VARIANTS
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in variants)
    variant_ids = {r.info.run_id for r in variants}
    trials = by_level["trial"]
    assert len(trials) == len(results)
    assert not [r for r in runs if r.info.status == "RUNNING"], "a run was left RUNNING"
    assert all("best_val_acc" in r.data.metrics for r in variants) and "best_val_acc" in parent.data.metrics
    assert {r.info.run_id for r in trials} == set(results.mlflow_run_id)
    status = dict(zip(results.mlflow_run_id, results.status))
    expected = {"completed": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "failed": "FAILED"}
    for r in trials:
        assert r.data.tags["mlflow.parentRunId"] in variant_ids
        assert r.info.status == expected[status[r.info.run_id]]
        assert r.data.tags["status"] == status[r.info.run_id]
        assert {"lr", "weight_decay", "seed", "variant", "depth"} <= set(r.data.params)
        # its own variant's options only, and a name that says what it tried
        from study.config import variant_options

        assert set(r.data.params) == {"variant", *variant_options(r.data.params["variant"])}, r.info.run_name
        assert r.info.run_name.startswith(r.data.params["variant"] + " ")
        history = client.get_metric_history(r.info.run_id, "val_acc")
        assert [m.step for m in history] == list(range(1, len(history) + 1))


def test_mlflow_artifacts_per_variant(tiny_study_dir, results):
    client = MlflowClient(f"sqlite:///{tiny_study_dir / 'mlflow.db'}")
    done = results[results.status == "completed"]
    expected = {"epsilon": "epsilon_discarded_blocks.json", "sgs": "sgs_scalings.png",
                "quotient": "quotient_stats.json"}
    for variant, name in expected.items():
        run_id = done[done.variant == variant].mlflow_run_id.iloc[0]
        assert name in {a.path for a in client.list_artifacts(run_id)}, (variant, name)


def test_status_and_export_commands(tiny_study_dir):
    out = run_cli("status", str(tiny_study_dir)).stdout
    assert "not finished" not in out and "tiny-epsilon-d8" in out
    exported = run_cli("export", str(tiny_study_dir), "--out", str(tiny_study_dir / "exp")).stdout
    assert "results.csv" in exported
    assert len(pd.read_csv(tiny_study_dir / "exp" / "results.csv")) > 0


def test_unknown_study_name_is_a_clear_error(tmp_path):
    proc = run_cli("status", "nope", "--storage-path", str(tmp_path), check=False)
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_the_designed_arms_ran_through_the_real_backend(tiny_study_dir, results):
    """Every claim's arms at the spec's seeds (the same seeds for both arms), each level arm differing
    from the best configuration in exactly its option; quotient's as-published comparison; epsilon's
    non-inferiority judged on the compressed network; sweeps of each variant's own knobs; the seeds
    each claim got and why it stopped."""
    state = json.loads((tiny_study_dir / "study.json").read_text())
    design = state["design"]
    by_id = results.set_index("trial_id")
    ledger = {json.loads(line)["rid"]: json.loads(line) for line in
              (tiny_study_dir / "ledger.jsonl").read_text().splitlines()}
    assert set(design) == {f"tiny-{v}-d8" for v in VARIANTS}, list(design)
    assert design["tiny-resnet-d8"]["claims"] == {}  # the baseline declares no claim
    for exp, d in design.items():
        best = ledger[d["best_rid"]]["config"]
        for key, c in d["claims"].items():
            # 2 seeds: no verdict, no more seeds; a claim whose arms did not differ in what it is about
            # stops as not exercised, with the reason and each move of its knob the design made
            assert c["stop"] in ("max_seeds", "skipped", "not_exercised"), (key, c["stop"])
            if c["stop"] in ("skipped", "not_exercised"):
                assert c["why"], key
                assert all({"option", "from", "to", "why"} <= set(a) for a in c["acted"]), key
                continue
            assert c["seeds"] == TINY_SPEC["seeds"] and len(c["looks"]) == 1 and c["looks"][0]["verdict"] == "open"
            a, b = c["compare"]
            for arm in (a, b):
                assert [by_id.loc[r, "seed"] for r in c["arms"][arm]] == c["seeds"], (key, arm)
                assert all(by_id.loc[r, "status"] in ("completed", "pruned", "failed", "diverged")
                           for r in c["arms"][arm])
            if c["kind"] == "level" and c["base"] == "best":
                for ra, rb in zip(c["arms"][a], c["arms"][b]):
                    ca, cb = ledger[ra]["config"], ledger[rb]["config"]
                    differ = {k for k in ca if ca[k] != cb.get(k) and k != "train_epochs"}
                    assert differ == set(c["configs"][a]), (key, differ)
                    assert {k for k in ca if ca[k] != best.get(k) and k not in ("seed", "train_epochs")} \
                        <= set(c["configs"][a]), key
        variant = exp.removeprefix("tiny-").removesuffix("-d8")
        assert bool(d["sweeps"]) == bool(get_variant(variant).sweeps), exp  # each variant its declared sweeps
        for option, sw in d["sweeps"].items():
            if sw["skip"]:
                continue
            for rids in sw["levels"].values():
                for rid in rids:
                    cfg = ledger[rid]["config"]
                    assert {k for k in cfg if cfg[k] != best.get(k) and k not in ("seed", "train_epochs")} \
                        <= {option}, (exp, option)
    assert "quotient_vs_twin@published" in design["tiny-quotient-d8"]["claims"]
    eps = design["tiny-epsilon-d8"]["claims"]["epsilon_discards"]
    assert eps["metric"] == "compressed_test_acc" and eps["gain_metric"] == "discarded_ratio"
    arms = results[results.phase == "arms"]
    assert len(arms) and (arms.claim != "").all() and arms.arm.notna().all()
