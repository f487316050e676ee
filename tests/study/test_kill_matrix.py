"""The kill matrix: one small real study stopped at every phase boundary and
inside every phase (search start, mid-trial, between experiments, repeat
phase, last trial, after the last trial), each stop followed by `resume`,
in two runs:

- SIGKILL to the driver at the six points, and once more within
  milliseconds of an epoch's report: right after its line in the epoch log,
  before MLflow and Optuna have it;
- an interrupt at the six points: Ctrl-C (SIGINT to the driver's process
  group), SIGTERM to that group (`timeout`, Kubernetes), and once SIGTERM to
  every process of the study, Ray's own included (SLURM's scancel, systemd),
  where Ray's GCS dies before the driver has stopped.

One study per run visits its points in turn (a stop, a resume that runs to the
next stop, ...), so the cases share one study's setup. After each stop:
- every trial trained each epoch exactly once (its raw epoch log, where a
  retrained epoch would show twice);
- trials finished before a stop were not touched by the resume;
- after an interrupt: exit 130, "Resume with: resstudy resume DIR" printed,
  nothing RUNNING in the ledger, MLflow or Optuna.
At the end:
- results rows = the trials the spec asks for, each trial once;
- history, MLflow's metric steps and Optuna's intermediate values hold the
  same epochs with the same values, trial by trial, each once;
- a trial stopped mid-training continued from its checkpoint (its second
  attempt starts after the checkpointed epoch);
- Optuna states = results statuses, nothing RUNNING in Optuna or MLflow, one
  MLflow run per trial.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, importable, record_fault
from study.trainable import checkpoint_epochs
from tests.study.faultplug import command

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1500)]

EPOCHS = 3
SEEDS = [0, 1]
# resnet: 2 search + 2 repeat; quotient: 2 search + 2 repeat + 2 twin (its ResNet twin)
EXPECTED_ROWS = {("resnet", "search"): 2, ("resnet", "repeat"): 2, ("quotient", "search"): 2,
                 ("quotient", "repeat"): 2, ("quotient", "twin"): 2}


def spec(tmp_path: Path, name: str) -> Path:
    data = {"name": name, "dataset": "digits", "image_size": 8, "depth": 8, "epochs": EPOCHS, "trials_per_variant": 2,
            "seeds": SEEDS, "repeat_best": True, "variants": ["resnet", "quotient"],
            "train": {"batch_size": 64, "val_size": 0.15, "limit_train_batches": 4},
            "search": {"algorithm": "random", "seed": 0}, "scheduler": {"type": "asha", "grace_period": 1,
                                                                         "reduction_factor": 2},
            "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 1, "max_failures": 0,
            "storage_path": str(tmp_path / "runs")}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def points(name: str, run: str) -> list[tuple[str, dict]]:
    """(label, fault rule) for each stop, in the order the study meets them."""
    if run == "SIGKILL":
        sigs = ["SIGKILL"] * 6
    else:  # an interrupt: each signal a job or a terminal sends, Ray's processes spared or not
        sigs = ["SIGINT", "SIGTERM", "SIGTERM", "SIGTERM to every process", "SIGINT", "SIGTERM"]
    kill = [{"action": "kill_driver", "signal": s.split()[0], **({"everyone": True} if " " in s else {})}
            for s in sigs]
    stops = [
        ("search start", {"at": "phase_start", "experiment": f"{name}-resnet-d8", "phase": "search", **kill[0]}),
        ("mid-trial (resnet search, 2nd trial, after epoch 2)",
         {"at": "trial", "variant": "resnet", "phase": "search", "index": 1, "epoch": 2, **kill[1]}),
        ("between experiments", {"at": "phase_start", "experiment": f"{name}-quotient-d8", "phase": "search",
                                 **kill[2]}),
        ("repeat phase (quotient, 1st trial, after epoch 1)",
         {"at": "trial", "variant": "quotient", "phase": "repeat", "index": 0, "epoch": 1, **kill[3]}),
        ("last trial (quotient's twin, seed 1, after epoch 2)",
         {"at": "trial", "phase": "twin", "index": 1, "epoch": 2, **kill[4]}),
        ("after the last trial", {"at": "study_end", **kill[5]}),
    ]
    stops = [(f"{label} by {sig}", rule) for (label, rule), sig in zip(stops, sigs)]
    if run == "SIGKILL":  # the first search trial, between its epoch-2 log line and MLflow and Optuna
        stops.insert(1, ("epoch 2 of the 1st resnet search trial in the epoch log only, by SIGKILL",
                         {"at": "epoch_logged", "experiment": f"{name}-resnet-d8", "phase": "search", "epoch": 2,
                          "action": "kill_driver", "signal": "SIGKILL"}))
    return stops


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def plant_pickles(study: Path, marker: Path) -> int:
    """Crafted Tune state pickles in every Tune experiment folder: resume must never load one."""
    n = 0
    for exp in (study / "tune").glob("*"):
        for name in ("searcher-state-2099-01-01_00-00-00.pkl", "tuner.pkl"):
            (exp / name).write_bytes(pickle.dumps(_Evil(marker)))
            n += 1
    return n


def driver(args: list[str], env: dict, log: Path, faults: Path) -> subprocess.Popen:
    """`resstudy ARGS` with the faults plugged into its driver's events (tests/study/faultplug.py)."""
    with open(log, "a") as out:
        return subprocess.Popen(command(faults, *args), cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# ---------------------------------------------------------------- what must hold


def ledger(study: Path) -> dict[str, dict]:
    out = {}
    for line in (study / "ledger.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[rec["rid"]] = rec
    return out


def epoch_log(study: Path, rid: str) -> list[dict]:
    path = study / "epochs" / f"{rid}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def check_trained_once(study: Path) -> None:
    for rid, rec in ledger(study).items():
        epochs = [r["epoch"] for r in epoch_log(study, rid)]
        assert epochs == list(range(1, len(epochs) + 1)), f"{rid}: epochs reported {epochs}"
        if rec["status"] in ("completed", "pruned", "failed", "diverged"):
            assert len(epochs) == rec["row"]["epochs_reached"], (rid, epochs, rec["row"]["epochs_reached"])


def check_nothing_running(study: Path, name: str) -> None:
    """An interrupted study: no trial running in the ledger, no run RUNNING in MLflow, no trial
    RUNNING in Optuna (an interrupted search trial waits there for the resume: WAITING)."""
    running = [rid for rid, rec in ledger(study).items() if rec["status"] == "running"]
    assert not running, f"ledger: {running} still running"
    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], "MLflow: a run left RUNNING"
    storage = optuna.storages.RDBStorage(f"sqlite:///{study / 'optuna.db'}")
    for summary in optuna.get_all_study_summaries(storage):
        states = [t.state.name for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials]
        assert "RUNNING" not in states, (summary.study_name, states)


def check_stores_agree(study: Path, name: str, res: pd.DataFrame) -> None:
    """history, MLflow and Optuna hold the same epochs, each once, with the same values, trial by trial."""
    hist = pd.read_parquet(study / "history.parquet")
    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    storage = f"sqlite:///{study / 'optuna.db'}"
    optuna_trials = {v: optuna.load_study(study_name=f"{name}-{v}-d8", storage=storage).trials
                     for v in ("resnet", "quotient")}
    for row in res.itertuples():
        h = hist[hist.trial_id == row.trial_id].sort_values("epoch")
        history = [(int(e), float(v)) for e, v in zip(h.epoch, h.val_acc)]
        assert [e for e, _ in history] == list(range(1, row.epochs_reached + 1)), (row.trial_id, history)
        steps = [(m.step, m.value) for m in client.get_metric_history(row.mlflow_run_id, "val_acc")]
        assert steps == history, (row.trial_id, "MLflow", steps, "history", history)
        if row.phase == "search":
            values = sorted(optuna_trials[row.subject][int(row.optuna_number)].intermediate_values.items())
            assert values == history, (row.trial_id, "Optuna", values, "history", history)


def check_in_the_log_only(study: Path, name: str, rid: str, epoch: int) -> None:
    rec = ledger(study)[rid]
    assert [r["epoch"] for r in epoch_log(study, rid)][-1] == epoch
    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    assert epoch not in [m.step for m in client.get_metric_history(rec["mlflow_run_id"], "val_acc")]
    trial = optuna.load_study(study_name=rec["experiment"], storage=f"sqlite:///{study / 'optuna.db'}").trials[
        rec["optuna_number"]]
    assert epoch not in trial.intermediate_values


def check_finished(study: Path, name: str) -> pd.DataFrame:
    res = pd.read_parquet(study / "results.parquet")
    counts = res.groupby(["subject", "phase"]).size().to_dict()
    assert counts == EXPECTED_ROWS, counts
    assert res.trial_id.is_unique and set(res.status) <= {"completed", "pruned"}
    twins = res[res.arm == "twin"]
    assert set(twins.variant) == {"resnet"} and set(twins.subject) == {"quotient"}
    check_trained_once(study)

    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], "a run was left RUNNING"
    trials = [r for r in runs if r.data.tags.get("resstudy.level") == "trial"]
    assert len(trials) == len(res), "not one MLflow run per trial"
    assert {r.info.run_id for r in trials} == set(res.mlflow_run_id)
    by_id = res.set_index("mlflow_run_id")
    check_stores_agree(study, name, res)
    for r in trials:
        assert r.data.tags["status"] == by_id.loc[r.info.run_id, "status"]
        assert r.info.status == "FINISHED"  # completed and pruned alike

    storage = f"sqlite:///{study / 'optuna.db'}"
    for variant in ("resnet", "quotient"):
        ostudy = optuna.load_study(study_name=f"{name}-{variant}-d8", storage=storage)
        rows = res[(res.subject == variant) & (res.phase == "search")].set_index("optuna_number")
        assert len(ostudy.trials) == len(rows), "Optuna holds other trials than the results"
        for t in ostudy.trials:
            expected = {"completed": "COMPLETE", "pruned": "PRUNED"}[rows.loc[t.number, "status"]]
            assert t.state.name == expected, (t.number, t.state, rows.loc[t.number, "status"])
            assert t.user_attrs["mlflow_run_id"] == rows.loc[t.number, "mlflow_run_id"]
    return res


@pytest.mark.parametrize("sig", ["SIGKILL", "interrupt"])
def test_kill_matrix(tmp_path, sig):
    name = {"SIGKILL": "kmkill", "interrupt": "kmint"}[sig]
    spec_path = spec(tmp_path, name)
    study = tmp_path / "runs" / name
    rules = points(name, sig)
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps([rule for _, rule in rules]))
    env = importable({**os.environ, "PYTHONUNBUFFERED": "1"})
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "driver.log"
    marker = tmp_path / "pwned"
    expected_rc = -signal.SIGKILL if sig == "SIGKILL" else 130

    rc = wait(driver(["run", str(spec_path)], env, log, faults))
    observed, exit_s = [], []
    for i, (label, _) in enumerate(rules):
        fired = sorted(p.name for p in (tmp_path / "faults.fired").glob("*"))
        assert f"rule{i}-0" in fired, f"stop {label!r} never happened; fired {fired}\n" + log.read_text()[-4000:]
        # reported, not asserted: seconds from the signal to the driver's exit
        exit_s.append(time.time() - json.loads((tmp_path / "faults.fired" / f"rule{i}-0").read_text())["time"])
        assert rc == expected_rc, f"after {label!r}: exit {rc}\n" + log.read_text()[-4000:]
        if sig == "interrupt":
            assert log.read_text().count(f"Resume with: resstudy resume {study}") == i + 1, log.read_text()[-2000:]
            check_nothing_running(study, name)
        if "epoch log only" in label:  # the stop came in the window: the other stores lack epoch 2
            check_in_the_log_only(study, name, f"{name}-resnet-d8-s0000", 2)
        before = {rid: rec for rid, rec in ledger(study).items()
                  if rec["status"] in ("completed", "pruned", "failed", "diverged")}
        check_trained_once(study)
        plant_pickles(study, marker)
        rc = wait(driver(["resume", str(study)], env, log, faults))
        after = ledger(study)
        for rid, rec in before.items():  # kept, not re-run: same record, same epoch log
            assert after[rid]["finished"] == rec["finished"] and after[rid]["attempts"] == rec["attempts"], rid
        observed.append(label)
    assert rc == 0, log.read_text()[-4000:]
    assert not marker.exists(), "a planted pickle ran code on resume"

    res = check_finished(study, name)
    # the trial stopped mid-training went on from its epoch-2 checkpoint, not from scratch
    mid = res[(res.subject == "resnet") & (res.phase == "search")].sort_values("trial_id").trial_id.iloc[1]
    attempts = {}
    for row in epoch_log(study, mid):
        attempts.setdefault(row["attempt"], []).append(row["epoch"])
    if sig == "SIGKILL":  # the driver died right after epoch 2: the trial cannot have gone on
        assert len(attempts) == 2 and attempts[max(attempts)][0] == 3, attempts
    elif len(attempts) > 1:  # Ctrl-C stopped it before epoch 3 was reported
        assert attempts[max(attempts)][0] == 3, attempts
    stopped = ("" if sig == "SIGKILL" else f"exit 130 and the resume line {min(exit_s):.0f}-{max(exit_s):.0f} s "
               "after the signal, nothing RUNNING after each stop; ")
    record_fault("driver stopped at: " + ", ".join(observed), "each followed by `resstudy resume`: rows = trials "
                 "asked, each epoch trained once and in every store once, stopped trial continues from its "
                 "checkpoint, nothing RUNNING",
                 f"{stopped}{len(res)} rows; epoch logs without repeats; history = MLflow steps = Optuna intermediate "
                 f"values, trial by trial; Optuna = results; {len(res)} MLflow trial runs, none RUNNING; planted Tune "
                 "pickles never loaded")


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_a_stopped_trial_continues_from_its_latest_checkpoint_at_the_default_policy(tmp_path, sig):
    """The spec's own checkpoint policy (rung epochs and the last; 5 minutes is never reached
    here) and two trials training at once: the driver is stopped while both train, and on
    resume each stopped trial goes on from the newest checkpoint it had on disk, never from
    scratch and never from further back."""
    name = "kmdefault"
    data = yaml.safe_load(spec(tmp_path, name).read_text())
    # two identical trials (every searched knob fixed): equal at ASHA's rungs, so neither is pruned
    # there; whole epochs and 8 of them, so the second still trains when the first reaches epoch 4
    data.update(epochs=8, trials_per_variant=2, repeat_best=False, max_concurrent=2,
                train={"batch_size": 64, "val_size": 0.15},
                variants={"resnet": {"space": {"lr": {"value": 0.05}, "weight_decay": {"value": 5e-4}}}},
                scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 2})  # rungs at 2 and 4
    spec_path = tmp_path / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    study = tmp_path / "runs" / name
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"checkpoint_every_s": None, "rules": [
        {"at": "trial", "variant": "resnet", "phase": "search", "index": 0, "epoch": 4, "action": "kill_driver",
         "signal": sig}]}))
    env = importable({**os.environ, "PYTHONUNBUFFERED": "1"})
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "driver.log"
    rc = wait(driver(["run", str(spec_path)], env, log, faults))
    assert rc == (-signal.SIGKILL if sig == "SIGKILL" else 130), log.read_text()[-4000:]
    stopped = {rid: rec["status"] for rid, rec in ledger(study).items()}
    assert sorted(stopped.values()) == ["interrupted" if sig == "SIGINT" else "running"] * 2, stopped  # both trained
    # after a SIGKILL a trial's worker outlives the driver for up to a few seconds (it ends with its raylet)
    # and may checkpoint again, up to its last epoch: what the resume starts from is what is on disk then
    time.sleep(10)
    held = {rid: checkpoint_epochs(str(study / "checkpoints" / rid)) for rid in stopped}
    assert all(set(c) <= {2, 4, 8} for c in held.values()), held  # the rung epochs and the last only
    assert 4 in held[f"{name}-resnet-d8-s0000"], held
    rc = wait(driver(["resume", str(study)], env, log, faults))
    assert rc == 0, log.read_text()[-4000:]
    for rid, ckpts in held.items():
        attempts: dict[int, list[int]] = {}
        for row in epoch_log(study, rid):
            attempts.setdefault(row["attempt"], []).append(row["epoch"])
        assert ledger(study)[rid]["status"] == "completed", rid
        if ckpts and max(ckpts) == 8:  # it finished on disk after the stop: the resume adopts it, trains nothing
            assert [e for run in attempts.values() for e in run] == list(range(1, 9)), (rid, attempts)
            continue
        resumed = attempts[max(attempts)]
        assert resumed[0] == (max(ckpts) + 1 if ckpts else 1) and resumed[-1] == 8, (rid, ckpts, attempts)
    record_fault(f"{sig} while two trials train, the spec's own checkpoint policy",
                 "each stopped trial goes on from its newest checkpoint on disk",
                 f"{len(held)} trials stopped, each resumed right after its newest checkpoint ({held})")
