"""Fault injection: what clusters do to a study, and what the study does about it.

One small real study takes every fault of this module at once (trial errors,
retries that fail, divergence, and its MLflow server going away mid-study and
coming back); each test reads one kind of fault's outcome from it and records a
row (fault, what must happen, what happened) in the table pytest prints at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, importable, record_fault

pytestmark = [pytest.mark.ray, pytest.mark.server, pytest.mark.slow]
SECRET = "hunter2"


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


def faults_file(tmp_path: Path, rules: list[dict]) -> Path:
    """A faults file for tests/study/faultplug.py, plugged into the driver through its events."""
    path = tmp_path / "faults.json"
    path.write_text(json.dumps(rules))
    return path


def epoch_log(study: Path, trial_id: str) -> list[tuple[int, int]]:
    """(attempt, epoch) of every report the driver received for a trial, repeats included."""
    path = study / "epochs" / f"{trial_id}.jsonl"
    return [(r["attempt"], r["epoch"]) for r in map(json.loads, path.read_text().splitlines())]


def mlflow_trials(study_dir: Path, uri: str | None = None) -> list:
    client = MlflowClient(uri or f"sqlite:///{study_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study_dir.name)
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get("resstudy.level") == "trial"]


@dataclass
class FaultStudy:
    study: Path
    uri: str  # the MLflow server's, without the credentials the spec gave
    output: str  # the driver's console
    returncode: int


@pytest.fixture(scope="module")
def fault_study(tmp_path_factory) -> FaultStudy:
    """resnet: one transient error at epoch 2 -> retried from its epoch-2 checkpoint.
    quotient: three errors at epoch 1 with max_failures 1 -> the first trial fails twice
    (FAILED), the second fails once and then completes. epsilon: lr 1e5 -> every trial
    diverges. Meanwhile the MLflow server (whose URI carries a password it ignores) is stopped
    once the first epoch is logged and started again once a trial has failed for good: the
    diverging trials and the failing trial's retries run while it is down."""
    from tests.study.faultplug import command

    tmp_path = tmp_path_factory.mktemp("faults")
    port = _free_port()
    root = tmp_path / "mlflow"
    root.mkdir()
    server = _start_mlflow(port, root)
    spec = small_spec(tmp_path, "faults", mlflow={"tracking_uri": f"http://user:{SECRET}@127.0.0.1:{port}"},
                      variants={"resnet": {}, "quotient": {}, "epsilon": {"space": {"lr": {"value": 1e5}}}})
    faults = faults_file(tmp_path, [{"variant": "resnet", "index": 0, "epoch": 2, "times": 1},
                                    {"variant": "quotient", "epoch": 1, "times": 3}])
    study = tmp_path / "runs" / "faults"
    # the trials unpickle the faults object: they import tests.study.faultplug from here
    env = importable({**os.environ, "PYTHONUNBUFFERED": "1", "RESSTUDY_MLFLOW_FLUSH_WAIT": "120"})
    env.pop("RAY_ADDRESS", None)
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(command(faults, "run", str(spec)), cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_for(lambda: any((study / "epochs").glob("*.jsonl")) or driver.poll() is not None, 300,
                      "the first epoch")
            _stop(server)  # MLflow goes away while trials train
            _wait_for(lambda: _finished(study, "failed") or driver.poll() is not None, 600,
                      "the failing quotient trial to be retried and given up while MLflow is down")
            server = _start_mlflow(port, root)  # ... and comes back
            driver.wait(900)
        finally:
            if driver.poll() is None:
                driver.kill()
            _stop(server)
    server = _start_mlflow(port, root)  # the tests read what the server stored, from a fresh start
    try:
        yield FaultStudy(study, f"http://127.0.0.1:{port}", log_path.read_text(), driver.returncode)
    finally:
        _stop(server)


def test_trial_errors_retry_fail_and_diverge_without_stopping_the_study(fault_study):
    study = fault_study.study
    assert fault_study.returncode == 0, fault_study.output[-3000:]
    res = pd.read_parquet(study / "results.parquet")
    hist = pd.read_parquet(study / "history.parquet")

    resnet = res[res.variant == "resnet"].sort_values("trial_id")
    assert (resnet.status == "completed").all() and len(resnet) == 2
    assert not hist.duplicated(["trial_id", "epoch"]).any()
    # every report the trials made, repeats included: the failed trial's retry went on from
    # its epoch-2 checkpoint (attempt 2 reports epoch 3 only); the other trained once
    logs = [epoch_log(study, t) for t in resnet.trial_id]
    assert logs == [[(1, 1), (1, 2), (2, 3)], [(1, 1), (1, 2), (1, 3)]], logs
    record_fault("trial raises once (transient)", "retried from its last checkpoint, completes",
                 f"resnet statuses {sorted(resnet.status)}; retry reported epoch 3 only (log {logs[0]})")

    quotient = res[res.variant == "quotient"].sort_values("optuna_number")
    assert list(quotient.status) == ["failed", "completed"], list(quotient.status)
    assert "injected fault" in quotient.error.iloc[0]
    # the failed trial: epoch 1, error, retry from epoch 1's checkpoint: epoch 2, error, given up
    assert epoch_log(study, quotient.trial_id.iloc[0]) == [(1, 1), (2, 2)]
    record_fault("trial raises on every retry", "recorded FAILED, study continues",
                 f"quotient statuses {list(quotient.status)}")

    eps = res[res.variant == "epsilon"]
    assert (eps.status == "diverged").all() and len(eps) == 2
    record_fault("loss goes NaN/inf (lr 1e5)", "trial ends as diverged, no crash",
                 f"epsilon statuses {sorted(eps.status)}")

    storage = f"sqlite:///{study / 'optuna.db'}"
    q_states = [t.state for t in optuna.load_study(study_name="faults-quotient-d8", storage=storage).trials]
    assert q_states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    runs = {r.info.run_id: r for r in mlflow_trials(study, fault_study.uri)}
    assert runs[quotient.mlflow_run_id.iloc[0]].info.status == "FAILED"
    assert all(runs[i].info.status == "FAILED" for i in eps.mlflow_run_id)
    assert all(runs[i].info.status == "FINISHED" for i in resnet.mlflow_run_id)
    assert len(runs) == len(res), "a retry opened a second MLflow run"


def test_mlflow_going_away_mid_study_loses_no_metric(fault_study):
    study, output = fault_study.study, fault_study.output
    assert fault_study.returncode == 0, output[-3000:]
    assert "unreachable" in output and "back" in output
    assert SECRET not in output and "View run" not in output
    assert SECRET not in (study / "spec.yaml").read_text() + (study / "study.json").read_text()
    res = pd.read_parquet(study / "results.parquet")
    client = MlflowClient(fault_study.uri)
    trials = mlflow_trials(study, fault_study.uri)
    # one run per trial, a trial retried while the server was down included; ids delivered late reach the rows
    assert len(trials) == len(res) and set(res.mlflow_run_id) == {r.info.run_id for r in trials}
    assert all(r.info.status != "RUNNING" for r in client.search_runs([trials[0].info.experiment_id]))
    status = dict(zip(res.mlflow_run_id, res.status))
    expected = {"completed": "FINISHED", "failed": "FAILED", "diverged": "FAILED"}
    assert all(r.info.status == expected[status[r.info.run_id]] for r in trials)
    epochs = res.set_index("mlflow_run_id").epochs_reached
    for r in trials:  # every epoch's metrics once, those trained while the server was down too
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        if status[r.info.run_id] != "diverged":
            assert steps == list(range(1, int(epochs[r.info.run_id]) + 1)), (r.info.run_name, steps)
    record_fault("MLflow server stopped mid-study, restarted later", "training goes on; metrics delivered on return",
                 f"{len(trials)}/{len(res)} trials' runs ended in MLflow with their status; every epoch's metrics "
                 "there once; password in the URI never printed")


def _finished(study: Path, status: str) -> bool:
    """A trial of the study has ended with `status` (its results file may be mid-write)."""
    try:
        return status in set(pd.read_parquet(study / "results.parquet")["status"])
    except Exception:
        return False


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


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
    try:
        _wait_for(up, 180, "the MLflow server")  # a server start takes minutes on a busy 2-core machine
    except AssertionError:
        _stop(proc)
        raise
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
