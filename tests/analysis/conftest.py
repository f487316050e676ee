"""Synthetic study directories in the study output schema, with planted effects.

Written directly (no training, no registry): results rows carry the identity
columns (study, experiment, subject, variant, arm, phase, ...), the trial's
own variant's options and its final metrics; history rows one per epoch,
pruned trials up to the epoch they stopped at.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DEPTH = 8
EPOCHS = 6
SEEDS = [0, 1, 2]
STUDY = "syn"
RUNGS = [1, 2, 4]  # grace_period 1, reduction_factor 2, 6 epochs

# the resolved options a trial of each variant carries (only its own)
_CORE = {"lr": 0.1, "weight_decay": 5e-4, "momentum": 0.9, "batch_size": 128, "schedule": "cosine",
         "precision": "fp32"}
_OWN = {"resnet": {}, "quotient": {"quotient_rule": "paper", "alpha": 2.0, "quotient_stem": True},
        "epsilon": {"epsilon": 1.0, "side_weight": 0.5, "adaptive_lr": True},
        "sgs": {"sgs_mode": "mi", "sgs_k": 4.0}}


def _row(variant: str, trial_id: str, seed: int, status: str, searched: list[str], phase: str = "search",
         subject: str | None = None, arm: str = "variant", epochs_reached: int | None = None, **values) -> dict:
    subject = subject or variant
    cfg = {"variant": variant, "depth": DEPTH, "epochs": EPOCHS, "seed": seed, **_CORE, **_OWN[variant]}
    row = {"study": STUDY, "experiment": f"{STUDY}-{subject}-d{DEPTH}", "subject": subject, "variant": variant,
           "arm": arm, "depth": DEPTH, "phase": phase, "trial_id": trial_id, "optuna_number": None, "seed": seed,
           "status": status, "epochs_reached": epochs_reached or EPOCHS, "seconds": 1.0, "node": "local",
           "mlflow_run_id": "", "searched": json.dumps(searched), "error": None, **cfg}
    row.update({"val_acc": np.nan, "val_loss": np.nan, "train_acc": np.nan, "train_loss": np.nan,
                "best_val_acc": np.nan, "best_epoch": EPOCHS, "test_acc": np.nan, "test_loss": np.nan})
    row.update(values)
    return row


def twin_pairs(subject: str, twin_variant: str, gain: float, *, seeds=SEEDS, noise: float = 0.003,
               rng_seed: int = 0, base: float = 0.88, searched=(), **variant_values) -> list[dict]:
    """Repeat rows (arm variant) and twin rows (arm twin) at the same seeds:
    a per-seed offset both arms share (same data order) plus independent
    noise; the variant arm gains `gain` on test_acc and val_acc."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for s in seeds:
        shared = rng.normal(0, 0.01)
        tv = base + shared + rng.normal(0, noise)
        vv = base + gain + shared + rng.normal(0, noise)
        rows.append(_row(subject, f"{subject}-r{s}", s, "completed", list(searched), phase="repeat",
                         val_acc=vv, test_acc=vv - 0.002, **variant_values))
        rows.append(_row(twin_variant, f"{subject}-t{s}", s, "completed", list(searched), phase="twin",
                         subject=subject, arm="twin", val_acc=tv, test_acc=tv - 0.002))
    return rows


def planted_epsilon_rows(n: int = 40, seed: int = 0) -> list[dict]:
    """val_acc = 0.9 - 0.2 log10(eps)^2 + N(0, 0.01); side_weight irrelevant."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        eps = float(10 ** rng.uniform(-1, np.log10(5)))
        sw = float(rng.uniform(0.0, 1.0))
        acc = 0.9 - 0.2 * np.log10(eps) ** 2 + rng.normal(0, 0.01)
        red = float(np.clip(0.6 * np.log10(eps / 0.1) / np.log10(50) + rng.normal(0, 0.02), 0, 1))
        rows.append(_row("epsilon", f"eps-{i}", int(rng.integers(0, 3)), "completed",
                         ["epsilon", "side_weight"], epsilon=eps, side_weight=sw, val_acc=acc,
                         test_acc=acc - 0.005, discarded_ratio=red * 1.2, params=10000,
                         params_compressed=int(10000 * (1 - red)), param_reduction=red,
                         compressed_test_acc=acc - 0.005, discarded_blocks=int(red * 9)))
    return rows


def synthetic_results(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = planted_epsilon_rows(40, seed)
    # a few non-completed epsilon trials: must be excluded from the fits
    rows.append(_row("epsilon", "eps-p0", 0, "pruned", ["epsilon", "side_weight"], epsilon=1.0, val_acc=0.3,
                     epochs_reached=2))
    rows.append(_row("epsilon", "eps-f0", 0, "failed", ["epsilon", "side_weight"], epsilon=0.2,
                     epochs_reached=2))
    # epsilon vs its twin (same net, gate off): loses ~0.002, discards blocks: non-inferior at margin 0.01
    rows += twin_pairs("epsilon", "epsilon", -0.002, noise=0.001, rng_seed=seed + 1, epsilon=1.0,
                       discarded_ratio=0.3, param_reduction=0.25, params=10000, params_compressed=7500)
    # resnet baseline: lr searched, then the best config repeated over SEEDS
    for i in range(12):
        lr = float(10 ** rng.uniform(-2, 0))
        acc = 0.85 - 0.1 * (np.log10(lr) + 1) ** 2 + rng.normal(0, 0.01)
        rows.append(_row("resnet", f"res-{i}", int(rng.integers(0, 3)), "completed", ["lr", "weight_decay"],
                         lr=lr, weight_decay=float(10 ** rng.uniform(-5, -3)), val_acc=acc, test_acc=acc - 0.01))
    for s in SEEDS:
        acc = 0.85 + 0.004 * s
        rows.append(_row("resnet", f"res-r{s}", s, "completed", ["lr", "weight_decay"], phase="repeat",
                         lr=0.1, val_acc=acc, test_acc=acc - 0.01))
    # quotient: one rule diverges half the time, another kills the signal
    rules = ["paper", "exact_one", "unshifted", "linear_clip"]
    for i in range(24):
        rule = rules[i % 4]
        alpha = float(rng.uniform(1.2, 4.0))
        status = "diverged" if rule == "unshifted" and i % 8 == 2 else "completed"
        base = {"paper": 0.86, "exact_one": 0.87, "unshifted": 0.75, "linear_clip": 0.84}[rule]
        acc = base - 0.02 * (alpha - 2) ** 2 + rng.normal(0, 0.01) if status == "completed" else np.nan
        dead = 0.8 if rule == "linear_clip" and i % 2 == 1 else 0.05
        rows.append(_row("quotient", f"q-{i}", int(rng.integers(0, 3)), status,
                         ["lr", "quotient_rule", "alpha", "quotient_stem"], quotient_rule=rule, alpha=alpha,
                         lr=float(10 ** rng.uniform(-2, 0)), quotient_stem=bool(i % 3), val_acc=acc,
                         test_acc=acc - 0.01, q_dead_frac=dead, q_nonpos_frac=0.0,
                         epochs_reached=EPOCHS if status == "completed" else 3))
    # quotient vs its ResNet twin: a planted +0.02 gain
    rows += twin_pairs("quotient", "resnet", 0.02, rng_seed=seed + 2, quotient_rule="exact_one", q_dead_frac=0.01)
    # sgs: heavy pruning (2 of 9 MI trials complete), so only rung fits can draw
    # the sgs_k curve; planted optimum at k = 4
    ks = [0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0]
    stop = [1, 1, 2, 6, 4, 2, 6, 1, 1]
    for i, (k, e) in enumerate(zip(ks, stop)):
        acc = 0.9 - 0.05 * (np.log2(k) - 2) ** 2
        rows.append(_row("sgs", f"sgs-{i}", i % 3, "completed" if e == EPOCHS else "pruned",
                         ["sgs_mode", "sgs_k"], sgs_mode="mi", sgs_k=k, val_acc=acc,
                         test_acc=acc - 0.01 if e == EPOCHS else np.nan, epochs_reached=e, sgs_center=0.0))
    # branch-equivalent trials: worse, all pruned early (MI-vs-branches is judged at a rung)
    for i, e in enumerate([1, 2, 2, 4, 1, 2]):
        acc = 0.6 + 0.01 * i
        rows.append(_row("sgs", f"sgs-b{i}", i % 3, "pruned", ["sgs_mode"], sgs_mode="branches",
                         val_acc=acc, epochs_reached=e, sgs_center=0.0))
    # sgs vs its twin at two seeds only: never a verdict
    rows += twin_pairs("sgs", "sgs", 0.03, seeds=[0, 1], rng_seed=seed + 3, sgs_mode="mi")
    return pd.DataFrame(rows)


def synthetic_history(results: pd.DataFrame) -> pd.DataFrame:
    """Per epoch: val_acc rises to the trial's final value (0.1 for one
    without), so every epoch keeps the planted ordering between trials."""
    rows = []
    for _, r in results.iterrows():
        final = r["val_acc"] if np.isfinite(r["val_acc"]) else 0.1
        for e in range(1, int(r["epochs_reached"]) + 1):
            rows.append({"study": STUDY, "experiment": r["experiment"], "subject": r["subject"],
                         "variant": r["variant"], "arm": r["arm"], "depth": DEPTH, "phase": r["phase"],
                         "trial_id": r["trial_id"], "seed": r["seed"], "epoch": e,
                         "train_loss": 2.0 / e, "train_acc": final * e / EPOCHS, "val_loss": 2.2 / e,
                         "val_acc": final * (0.5 + 0.5 * e / EPOCHS), "lr": 0.1, "epoch_seconds": 0.5,
                         "images_per_s": 1000.0})
    return pd.DataFrame(rows)


def write_optuna_db(path: Path, results: pd.DataFrame) -> None:
    """One Optuna study per experiment, like the runner: COMPLETE/PRUNED/FAIL trials."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dists = {"lr": FloatDistribution(1e-3, 1.0, log=True), "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
             "epsilon": FloatDistribution(0.1, 5.0, log=True), "side_weight": FloatDistribution(0.0, 1.0),
             "alpha": FloatDistribution(1.2, 4.0),
             "quotient_rule": CategoricalDistribution(["paper", "exact_one", "unshifted", "linear_clip"]),
             "quotient_stem": CategoricalDistribution([True, False]),
             "sgs_mode": CategoricalDistribution(["branches", "mi"]), "sgs_k": FloatDistribution(0.25, 64, log=True)}
    state = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
             "failed": optuna.trial.TrialState.FAIL, "diverged": optuna.trial.TrialState.FAIL}
    storage = f"sqlite:///{path}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for exp, g in results[results["phase"] == "search"].groupby("experiment"):
        st = optuna.create_study(study_name=str(exp), storage=storage, direction="maximize")
        trials = []
        for _, r in g.iterrows():
            names = json.loads(r["searched"])
            params = {n: (r[n].item() if hasattr(r[n], "item") else r[n]) for n in names}
            done = r["status"] == "completed"
            trials.append(optuna.trial.create_trial(
                state=state[r["status"]], value=float(r["val_acc"]) if done else None, params=params,
                distributions={n: dists[n] for n in names},
                intermediate_values={1: 0.2} if r["status"] == "pruned" else None,
                user_attrs={"seed": int(r["seed"]), "status": r["status"]}))
        st.add_trials(trials)


SPEC_YAML = f"""name: {STUDY}
dataset: synthetic
depth: {DEPTH}
epochs: {EPOCHS}
seeds: {SEEDS}
variants:
  resnet: {{}}
  quotient: {{}}
  epsilon: {{}}
  sgs:
    space:
      sgs_k: {{low: 0.5, high: 32}}
scheduler: {{type: asha, grace_period: 1, reduction_factor: 2}}
"""

# the built-ins' claims as the contract declares them; the claims tests pass
# these explicitly so their planted numbers do not depend on the wording or
# margins a variant module chooses (the report fixture uses the registry's)
def builtin_claims() -> dict:
    from study.variants import Claim

    return {
        "quotient": [Claim("quotient_twin", "quotient beats its twin", "twin"),
                     Claim("quotient_rule", "paper rule beats unshifted", "level", metric="val_acc",
                           option="quotient_rule", better="paper", worse="unshifted")],
        "epsilon": [Claim("epsilon_discard", "discards blocks at little accuracy cost", "noninferior", margin=0.01,
                          gain_metric="discarded_ratio"),
                    Claim("epsilon_restart", "adaptive restart matters", "level", metric="val_acc",
                          option="adaptive_lr", better=True, worse=False)],
        "sgs": [Claim("sgs_twin", "sgs beats its twin", "twin"),
                Claim("sgs_mi", "MI scaling beats branch-equivalent", "level", metric="val_acc", option="sgs_mode",
                      better="mi", worse="branches")],
    }


def make_study_dir(root: Path, *, seed: int = 0, optuna_db: bool = True) -> Path:
    d = root / STUDY
    d.mkdir(parents=True, exist_ok=True)
    res = synthetic_results(seed)
    res.to_parquet(d / "results.parquet", index=False)
    synthetic_history(res).to_parquet(d / "history.parquet", index=False)
    (d / "spec.yaml").write_text(SPEC_YAML)
    if optuna_db:
        write_optuna_db(d / "optuna.db", res)
    return d


@pytest.fixture(scope="session")
def synthetic_study_dir(tmp_path_factory) -> Path:
    return make_study_dir(tmp_path_factory.mktemp("study"))


@pytest.fixture
def study_dir_factory():
    """make_study_dir(root, seed=..., optuna_db=...) for tests that need a fresh one."""
    return make_study_dir


@pytest.fixture
def planted_epsilon() -> pd.DataFrame:
    """40 completed epsilon trials with the planted optimum at epsilon = 1."""
    return pd.DataFrame(planted_epsilon_rows(40, seed=0))


@pytest.fixture(scope="session")
def analyzed_report(synthetic_study_dir, tmp_path_factory) -> Path:
    """report.html of the synthetic study (analysed once per session, no MLflow)."""
    from analysis.report import analyze

    return analyze(synthetic_study_dir, out_dir=tmp_path_factory.mktemp("analysis"), log_to_mlflow=False,
                   n_boot=50)


@pytest.fixture
def sparse_study_dir(tmp_path) -> Path:
    """One trial per variant; no history, no Optuna DB: the too-few-trials path."""
    d = make_study_dir(tmp_path, optuna_db=False)
    df = pd.read_parquet(d / "results.parquet")
    df.groupby("variant").head(1).to_parquet(d / "results.parquet")
    (d / "history.parquet").unlink()
    return d
