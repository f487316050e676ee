"""Fault injection: what clusters do to a study, and what the study does about it.

Each test injects one kind of fault into a small real study and records a row
(fault, what must happen, what happened) in the table pytest prints at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, record_fault, run_cli

pytestmark = pytest.mark.slow


def small_spec(tmp_path: Path, name: str, **overrides) -> Path:
    spec = {
        "name": name, "dataset": "digits", "image_size": 8, "depth": 8, "epochs": 3, "trials_per_variant": 2,
        "variants": ["resnet"], "train": {"batch_size": 64, "val_size": 0.15},
        "search": {"algorithm": "random", "seed": 0}, "scheduler": {"type": "none"},
        "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 1, "max_failures": 1,
        "storage_path": str(tmp_path / "runs"),
    }
    spec.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def faults_file(tmp_path: Path, rules: list[dict]) -> dict[str, str]:
    path = tmp_path / "faults.json"
    path.write_text(json.dumps(rules))
    return {"RESSTUDY_FAULTS": str(path)}


def mlflow_trials(study_dir: Path, uri: str | None = None) -> list:
    client = MlflowClient(uri or f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study_dir.name)
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("resstudy.level") == "trial"]


def test_trial_errors_retry_fail_and_diverge_without_stopping_the_study(tmp_path):
    # resnet: one transient error at epoch 2 -> retried from its epoch-2 checkpoint.
    # quotient: three errors at epoch 1 with max_failures 1 -> the first trial fails twice
    #   (FAILED), the second fails once and then completes.
    # epsilon: lr 1e5 -> every trial diverges.
    spec = small_spec(tmp_path, "errors", variants={"resnet": {}, "quotient": {}, "epsilon": {"space": {"lr": {"value": 1e5}}}})
    env = faults_file(tmp_path, [{"variant": "resnet", "epoch": 2, "times": 1},
                                 {"variant": "quotient", "epoch": 1, "times": 3}])
    proc = run_cli("run", str(spec), env=env)
    study = tmp_path / "runs" / "errors"
    res = pd.read_parquet(study / "results.parquet")
    hist = pd.read_parquet(study / "history.parquet")

    resnet = res[res.variant == "resnet"]
    assert (resnet.status == "completed").all() and len(resnet) == 2
    assert not hist.duplicated(["trial_id", "epoch"]).any()
    epochs = hist[hist.variant == "resnet"].groupby("trial_id").epoch.apply(sorted)
    assert [list(e) for e in epochs] == [[1, 2, 3], [1, 2, 3]]
    record_fault("trial raises once (transient)", "retried from its last checkpoint, completes",
                 f"resnet statuses {sorted(resnet.status)}; epochs per trial 1-3, none twice")

    quotient = res[res.variant == "quotient"].sort_values("optuna_number")
    assert list(quotient.status) == ["failed", "completed"], list(quotient.status)
    assert "injected fault" in quotient.error.iloc[0]
    record_fault("trial raises on every retry", "recorded FAILED, study continues",
                 f"quotient statuses {list(quotient.status)}")

    eps = res[res.variant == "epsilon"]
    assert (eps.status == "diverged").all() and len(eps) == 2
    record_fault("loss goes NaN/inf (lr 1e5)", "trial ends as diverged, no crash", f"epsilon statuses {sorted(eps.status)}")

    storage = f"sqlite:///{study / 'optuna.db'}"
    q_states = [t.state for t in optuna.load_study(study_name="errors-quotient-d8", storage=storage).trials]
    assert q_states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    runs = {r.info.run_id: r for r in mlflow_trials(study)}
    assert runs[quotient.mlflow_run_id.iloc[0]].info.status == "FAILED"
    assert all(runs[i].info.status == "FAILED" for i in eps.mlflow_run_id)
    assert all(runs[i].info.status == "FINISHED" for i in resnet.mlflow_run_id)
    assert proc.returncode == 0


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_driver_killed_mid_study_resumes_without_losing_or_duplicating(tmp_path):
    spec = small_spec(tmp_path, "killed", variants=["resnet", "epsilon"], trials_per_variant=3, epochs=4,
                      max_concurrent=2, search={"algorithm": "tpe", "seed": 0, "n_startup_trials": 2})
    study = tmp_path / "runs" / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(spec)], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def finished_and_running() -> bool:
            path = study / "results.parquet"
            if not path.exists() or driver.poll() is not None:
                return driver.poll() is not None
            done = pd.read_parquet(path)
            epochs = list((study / "epochs").glob("*.jsonl"))
            return len(done) >= 2 and len(epochs) > len(done)
        _wait_for(finished_and_running, 300, "two finished trials and one running")
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        before = pd.read_parquet(study / "results.parquet")
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    time.sleep(3)  # the embedded Ray notices its driver is gone and exits

    proc = run_cli("resume", str(study))
    after = pd.read_parquet(study / "results.parquet")
    assert len(after) == 6 and after.trial_id.is_unique
    kept = after.set_index("trial_id").loc[before.trial_id]
    assert (kept.val_acc.values == before.val_acc.values).all() and (kept.status.values == before.status.values).all()
    trials = mlflow_trials(study)
    assert len(trials) == len(after), "a resumed trial opened a second MLflow run"
    assert {r.info.run_id for r in trials} == set(after.mlflow_run_id)
    assert not [r for r in trials if r.info.status == "RUNNING"]
    storage = f"sqlite:///{study / 'optuna.db'}"
    for s in optuna.get_all_study_summaries(storage):
        states = [t.state for t in optuna.load_study(study_name=s.study_name, storage=storage).trials]
        assert optuna.trial.TrialState.RUNNING not in states and len(states) == 3
    hist = pd.read_parquet(study / "history.parquet")
    per_trial = hist.groupby("trial_id").epoch.nunique()
    assert (per_trial.reindex(after.trial_id).values == after.epochs_reached.values).all()
    assert "resuming" in proc.stdout
    record_fault("driver SIGKILLed mid-study, then `resstudy resume`",
                 "finished trials kept, not re-run; no duplicate or RUNNING MLflow run",
                 f"{len(before)} kept, {len(after) - len(before)} finished after resume; "
                 f"{len(trials)} MLflow trial runs, none RUNNING")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mlflow(port: int, root: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")],
        stdout=open(root / f"mlflow-{time.time():.0f}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False
    _wait_for(up, 60, "the MLflow server")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def test_mlflow_going_away_mid_study_loses_no_metric(tmp_path):
    port = _free_port()
    root = tmp_path / "mlflow"
    root.mkdir()
    uri = f"http://127.0.0.1:{port}"
    server = _start_mlflow(port, root)
    spec = small_spec(tmp_path, "outage", epochs=4, mlflow={"tracking_uri": uri})
    study = tmp_path / "runs" / "outage"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RESSTUDY_MLFLOW_FLUSH_WAIT": "120"}
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(spec)], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: any((study / "epochs").glob("*.jsonl")) or driver.poll() is not None, 300,
                  "the first epoch")
        _stop(server)  # MLflow goes away while trials train
        _wait_for(lambda: (study / "results.parquet").exists() or driver.poll() is not None, 300,
                  "a trial to finish while MLflow is down")
        server = _start_mlflow(port, root)  # ... and comes back
        driver.wait(600)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
        _stop(server)
        server = _start_mlflow(port, root)
    try:
        output = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 0, output[-3000:]
        assert "unreachable" in output and "back" in output
        res = pd.read_parquet(study / "results.parquet")
        assert (res.status == "completed").all() and len(res) == 2
        client = MlflowClient(uri)
        trials = mlflow_trials(study, uri)
        assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
        for r in trials:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
            assert steps == [1, 2, 3, 4], steps
    finally:
        _stop(server)
    record_fault("MLflow server stopped mid-study, restarted later", "training goes on; metrics delivered on return",
                 "2/2 trials completed; every epoch's metrics in MLflow")
