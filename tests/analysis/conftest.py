"""Synthetic study directories in the study output schema, with planted effects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study.config import TrainConfig

DEPTH = 8
EPOCHS = 6
SEEDS = [0, 1, 2]
STUDY = "syn"


def _row(variant: str, trial_id: str, seed: int, status: str, searched: list[str], phase: str = "search",
         **values) -> dict:
    cfg = TrainConfig(variant=variant, depth=DEPTH, epochs=EPOCHS, seed=seed).to_dict()
    metrics = {k: values.pop(k) for k in list(values) if k not in cfg}
    cfg.update(values)
    row = {"study": STUDY, "experiment": f"{STUDY}-{variant}-d{DEPTH}", "variant": variant, "depth": DEPTH,
           "phase": phase, "trial_id": trial_id, "optuna_number": None, "seed": seed, "status": status,
           "epochs_reached": EPOCHS, "seconds": 1.0, "node": "local", "mlflow_run_id": "",
           "searched": json.dumps(searched), **cfg}
    row.update({"val_acc": np.nan, "val_loss": np.nan, "train_acc": np.nan, "train_loss": np.nan,
                "best_val_acc": np.nan, "best_epoch": EPOCHS, "test_acc": np.nan, "test_loss": np.nan})
    row.update(metrics)
    return row


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
    rows.append(_row("epsilon", "eps-p0", 0, "pruned", ["epsilon", "side_weight"], epsilon=1.0, val_acc=0.3))
    rows.append(_row("epsilon", "eps-f0", 0, "failed", ["epsilon", "side_weight"], epsilon=0.2))
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
                         test_acc=acc - 0.01, q_dead_frac=dead, q_nonpos_frac=0.0))
    for s in SEEDS:
        acc = 0.87 + 0.004 * s + 0.02
        rows.append(_row("quotient", f"q-r{s}", s, "completed", ["lr", "quotient_rule", "alpha", "quotient_stem"],
                         phase="repeat", quotient_rule="exact_one", val_acc=acc, test_acc=acc - 0.01,
                         q_dead_frac=0.01))
    # sgs: too few trials for curves or importance
    for i in range(3):
        rows.append(_row("sgs", f"sgs-{i}", i, "completed", ["sgs_mode", "sgs_k"], sgs_mode="mi",
                         sgs_k=float(2 ** (i + 1)), val_acc=0.85 + 0.01 * i, test_acc=0.84 + 0.01 * i))
    return pd.DataFrame(rows)


def synthetic_history(results: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in results.iterrows():
        final = r["val_acc"] if np.isfinite(r["val_acc"]) else 0.1
        last = 2 if r["status"] in ("pruned", "failed", "diverged") else EPOCHS
        for e in range(1, last + 1):
            rows.append({"study": STUDY, "experiment": r["experiment"], "variant": r["variant"], "depth": DEPTH,
                         "phase": r["phase"], "trial_id": r["trial_id"], "seed": r["seed"], "epoch": e,
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


def make_study_dir(root: Path, *, seed: int = 0, optuna_db: bool = True) -> Path:
    d = root / STUDY
    d.mkdir(parents=True, exist_ok=True)
    res = synthetic_results(seed)
    res.to_parquet(d / "results.parquet", index=False)
    synthetic_history(res).to_parquet(d / "history.parquet", index=False)
    (d / "spec.yaml").write_text(f"name: {STUDY}\ndataset: synthetic\ndepth: {DEPTH}\nepochs: {EPOCHS}\n"
                                 f"variants: [resnet, quotient, epsilon, sgs]\nseeds: {SEEDS}\n")
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
                   n_boot=100)


@pytest.fixture
def sparse_study_dir(tmp_path) -> Path:
    """One trial per variant; no history, no Optuna DB: the too-few-trials path."""
    d = make_study_dir(tmp_path, optuna_db=False)
    df = pd.read_parquet(d / "results.parquet")
    df.groupby("variant").head(1).to_parquet(d / "results.parquet")
    (d / "history.parquet").unlink()
    return d
