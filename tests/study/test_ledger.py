"""The study's own state, without Ray: the ledger, the lock, the spec
fingerprint, ASHA's records, trial checkpoints, and the errors a damaged or
misplaced study gives before anything starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from study import ledger as ledger_lib
from study.ledger import Ledger, SpecChanged, StateError, StudyLock, StudyLocked, spec_diff
from study.searcher import Rungs
from study.trainable import CheckpointPolicy, _write_checkpoint, checkpoint_epochs, read_reports
from tests.conftest import ROOT

# ---------------------------------------------------------------- the ledger


def _rec(rid: str, **kw) -> dict:
    return {"rid": rid, "experiment": "s-resnet-d8", "phase": "search", "status": "pending", **kw}


def test_ledger_keeps_the_latest_line_per_trial_across_reopen_and_compaction(tmp_path):
    led = Ledger(tmp_path)
    led.put(_rec("a"))
    led.put(_rec("b"))
    led.update("a", status="completed", row={"val_acc": 0.9})
    led.close()
    assert len((tmp_path / "ledger.jsonl").read_text().splitlines()) == 3  # appended, not rewritten
    again = Ledger(tmp_path)
    assert again.trials["a"]["status"] == "completed" and again.trials["b"]["status"] == "pending"
    again.compact()
    assert len((tmp_path / "ledger.jsonl").read_text().splitlines()) == 2
    assert Ledger(tmp_path).trials["a"]["row"] == {"val_acc": 0.9}


def test_a_line_cut_short_by_a_kill_is_dropped(tmp_path):
    led = Ledger(tmp_path)
    led.put(_rec("a"))
    led.close()
    with open(tmp_path / "ledger.jsonl", "a") as f:
        f.write('{"rid": "b", "experiment": "s-resn')  # the kill came mid-write
    assert set(Ledger(tmp_path).trials) == {"a"}


def test_a_damaged_line_inside_the_ledger_is_a_named_error(tmp_path):
    led = Ledger(tmp_path)
    led.put(_rec("a"))
    led.close()
    text = (tmp_path / "ledger.jsonl").read_text()
    (tmp_path / "ledger.jsonl").write_text("garbage{\n" + text + json.dumps(_rec("b")) + "\n")
    with pytest.raises(StateError) as info:
        Ledger(tmp_path)
    assert str(tmp_path / "ledger.jsonl") in str(info.value) and "line 1" in str(info.value)


@pytest.mark.parametrize("content", ['{"name": "x", "trunc', "[1, 2]", "\x00\x01"])
def test_a_damaged_study_json_is_a_named_error_with_what_to_do(tmp_path, content):
    (tmp_path / "study.json").write_text(content)
    with pytest.raises(StateError) as info:
        Ledger(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "study.json") in message and "move the study directory away" in message


# ---------------------------------------------------------------- the lock

_HOLD = """
import sys, time
from study.ledger import StudyLock
StudyLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_second_driver_is_refused_with_the_holders_pid_and_host_until_it_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StudyLocked) as info:
            StudyLock(tmp_path).acquire()
        assert f"pid {holder.pid}" in str(info.value) and socket.gethostname() in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    # a killed driver leaves no stale lock: the kernel dropped it
    lock = StudyLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


# ---------------------------------------------------------------- the spec fingerprint


def test_spec_diff_names_changed_fields_and_ignores_where_the_study_runs():
    old = {"name": "s", "epochs": 3, "train": {"schedule": "cosine", "lr": 0.1}, "storage_path": "/a",
           "max_concurrent": 1, "mlflow": {"tracking_uri": None}}
    new = {**old, "epochs": 4, "train": {"schedule": "step", "lr": 0.1}, "storage_path": "/b", "max_concurrent": 4,
           "mlflow": {"tracking_uri": "http://x"}}
    diff = spec_diff(old, new)
    assert diff == ['epochs (3 -> 4)', 'train.schedule ("cosine" -> "step")']
    assert ledger_lib.fingerprint(old) != ledger_lib.fingerprint(new)
    runtime_only = {**old, "storage_path": "/b", "max_concurrent": 8}
    assert ledger_lib.fingerprint(old) == ledger_lib.fingerprint(runtime_only) and not spec_diff(old, runtime_only)


# ---------------------------------------------------------------- ASHA from the ledger


@settings(max_examples=60, deadline=None)
@given(data=st.data(), max_t=st.integers(2, 9), grace=st.integers(1, 3), rf=st.sampled_from([2, 3, 4]))
def test_rungs_decide_exactly_as_rays_asha(data, max_t, grace, rf):
    from ray.tune.schedulers.async_hyperband import _Bracket

    if grace > max_t:
        return
    ours, ray_bracket = Rungs(max_t, grace, rf), _Bracket(grace, max_t, rf, 0)
    n = data.draw(st.integers(1, 8))
    values = data.draw(st.lists(st.lists(st.floats(0, 1), min_size=max_t, max_size=max_t), min_size=n, max_size=n))
    alive = {i: 1 for i in range(n)}
    while alive:  # trials interleave in a drawn order, one epoch at a time
        i = data.draw(st.sampled_from(sorted(alive)))
        epoch = alive[i]

        class T:
            trial_id = f"t{i}"
        theirs = ray_bracket.on_result(T, epoch, values[i][epoch - 1])
        mine = ours.decide(f"t{i}", epoch, values[i][epoch - 1])
        if epoch < max_t:
            assert (mine == "stop") == (theirs == "STOP"), (i, epoch)
        if mine == "stop" or epoch >= max_t:
            del alive[i]
        else:
            alive[i] += 1


def test_rungs_rebuilt_from_epoch_logs_decide_as_the_unbroken_run():
    rng = np.random.default_rng(0)
    values = {f"t{i}": list(rng.random(8)) for i in range(6)}
    unbroken = Rungs(8, 1, 2)
    decisions = {}
    for rid, vals in values.items():  # trial by trial (max_concurrent 1)
        for e in range(1, 9):
            if unbroken.decide(rid, e, vals[e - 1]) == "stop" or e == 8:
                decisions[rid] = e
                break
    # a driver killed after the first three trials rebuilds the records from their logs
    resumed = Rungs(8, 1, 2)
    for rid in list(values)[:3]:
        resumed.seed(rid, {e: values[rid][e - 1] for e in range(1, decisions[rid] + 1)})
    for rid in list(values)[3:]:
        for e in range(1, 9):
            if resumed.decide(rid, e, values[rid][e - 1]) == "stop" or e == 8:
                assert decisions[rid] == e, rid
                break
    assert any(e < 8 for e in decisions.values()), "nothing was pruned: the check above proves nothing"


# ---------------------------------------------------------------- trial checkpoints


def _save(epoch):
    def save(d):
        Path(d, "state.pt").write_text(f"epoch {epoch}")
    return save


def test_checkpoints_are_complete_or_absent_and_the_last_two_are_kept(tmp_path):
    root = str(tmp_path / "ck")
    assert checkpoint_epochs(root) == []
    reports = []
    for e in (1, 2, 3):
        reports.append({"epoch": e, "val_acc": e / 10})
        _write_checkpoint(root, e, _save(e), reports)
    assert checkpoint_epochs(root) == [2, 3]
    assert [r["epoch"] for r in read_reports(root, 3)] == [1, 2, 3]
    # a checkpoint without its done mark (killed mid-copy on an object store) does not count
    (tmp_path / "ck" / "epoch-0004").mkdir()
    (tmp_path / "ck" / "epoch-0004" / "state.pt").write_text("half")
    assert checkpoint_epochs(root) == [2, 3]


def test_checkpoint_policy_rungs_interval_and_last_epoch():
    policy = CheckpointPolicy(epochs=[1, 2, 4], every_s=3600, last=10)
    assert [e for e in range(1, 11) if policy.due(e)] == [1, 2, 4, 10]
    assert all(CheckpointPolicy(every_s=0, last=10).due(e) for e in range(1, 11))


def test_a_trial_resumes_from_its_checkpoint_bit_exactly_not_from_scratch(tmp_path, monkeypatch):
    """The trainable outside Ray: fail after epoch 2, call it again, and it reports epoch 3 only,
    with the numbers an unbroken run gives."""
    from ray import tune

    from study import trainable as trainable_lib
    from study.config import TrainConfig

    cfg = TrainConfig.from_dict({"variant": "resnet", "dataset": "digits", "image_size": 8, "depth": 8, "epochs": 3,
                                 "batch_size": 64, "seed": 0, "threads": 1}).to_dict()
    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append(metrics))

    def run(name: str, fail_after: int | None = None) -> None:
        def hook(config, epoch):
            if fail_after is not None and epoch == fail_after:
                raise RuntimeError("boom")
        monkeypatch.setattr(trainable_lib, "_hook", lambda: hook)
        config = {**cfg, "_rid": name, "_ckpt": str(tmp_path / name), "_ckpt_epochs": [], "_ckpt_every_s": 0}
        trainable_lib.trainable(config)

    run("unbroken")
    unbroken = list(reports)
    reports.clear()
    with pytest.raises(RuntimeError, match="boom"):
        run("broken", fail_after=2)
    assert [r["epoch"] for r in reports] == [1, 2]
    reports.clear()
    run("broken")
    assert [r["epoch"] for r in reports] == [3] and reports[0]["start_epoch"] == 2
    for key in ("train_loss", "val_acc", "val_loss", "test_acc"):
        assert reports[0][key] == unbroken[2][key], key


# ---------------------------------------------------------------- refused before anything starts


def _spec(tmp_path: Path, **overrides):
    from study.spec import load_spec

    data = {"name": "s", "dataset": "digits", "image_size": 8, "depth": 8, "epochs": 2, "trials_per_variant": 1,
            "variants": ["resnet"], "storage_path": str(tmp_path / "runs"), **overrides}
    return load_spec(data)


def _run(spec):
    from study.runner import StudyRunner

    return StudyRunner(spec).run()


def test_storage_that_is_a_file_or_not_a_study_is_refused(tmp_path):
    from study.runner import StorageError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageError, match="is a file"):
        _run(_spec(tmp_path, storage_path=str(tmp_path / "afile")))
    with pytest.raises(StorageError, match="is a file"):
        _run(_spec(tmp_path, storage_path=str(tmp_path / "afile" / "below")))
    other = tmp_path / "runs" / "s"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StorageError, match="not a resstudy study directory"):
        _run(_spec(tmp_path))
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_resume_refuses_what_is_not_a_study(tmp_path):
    from study.runner import StorageError, resume_study

    for target in (tmp_path / "missing", tmp_path):
        with pytest.raises(StorageError, match="not a resstudy study directory"):
            resume_study(target)


def _started(tmp_path, spec) -> Path:
    """A study directory as a first driver leaves it (state written, no trial yet)."""
    d = tmp_path / "runs" / spec.name
    d.mkdir(parents=True, exist_ok=True)
    dumped = spec.model_dump(mode="json")
    ledger_lib.write_state(d, {"name": spec.name, "spec": dumped, "spec_fingerprint": ledger_lib.fingerprint(dumped),
                               "phases": {}})
    (d / "spec.yaml").write_text(spec.to_yaml())
    return d


def test_a_changed_spec_is_refused_with_the_differing_fields(tmp_path):
    _started(tmp_path, _spec(tmp_path))
    with pytest.raises(SpecChanged) as info:
        _run(_spec(tmp_path, epochs=3, train={"schedule": "step"}))
    message = str(info.value)
    assert "epochs (2 -> 3)" in message and "train.schedule" in message and "--new-name" in message


def test_an_edited_saved_spec_is_refused_on_resume(tmp_path):
    from study.runner import resume_study

    d = _started(tmp_path, _spec(tmp_path))
    (d / "spec.yaml").write_text((d / "spec.yaml").read_text().replace("epochs: 2", "epochs: 5"))
    with pytest.raises(SpecChanged, match=r"epochs \(2 -> 5\)"):
        resume_study(d)


def test_a_damaged_optuna_db_is_a_named_error(tmp_path):
    spec = _spec(tmp_path)
    d = _started(tmp_path, spec)
    (d / "optuna.db").write_bytes(b"SQLite format 3\x00" + os.urandom(200))
    with pytest.raises(StateError) as info:
        _run(spec)
    assert str(d / "optuna.db") in str(info.value) and "Traceback" not in str(info.value)


def test_a_damaged_mlflow_db_is_a_named_error(tmp_path):
    from study.tracking import TrackingError

    spec = _spec(tmp_path)
    d = _started(tmp_path, spec)
    sqlite3.connect(d / "optuna.db").close()
    (d / "mlflow.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 300)
    with pytest.raises(TrackingError) as info:
        _run(spec)
    assert str(d / "mlflow.db") in str(info.value)
    assert not (d / "tune").exists(), "a trial started although MLflow could not be used"


def test_the_lock_is_held_while_a_study_runs(tmp_path):
    spec = _spec(tmp_path)
    d = _started(tmp_path, spec)
    lock = StudyLock(d).acquire()
    try:
        with pytest.raises(StudyLocked, match=f"pid {os.getpid()}"):
            _run(spec)
    finally:
        lock.release()
    time.sleep(0)


# ---------------------------------------------------------------- the driver's bookkeeping, Tune played by hand


def _driver(tmp_path, spec):
    from study.runner import StudyRunner

    runner = StudyRunner(spec)
    runner._check_storage()
    lock = StudyLock(runner.study_dir).acquire()
    assert runner.prepare()
    return runner, lock


def _train(phase, cfg, epochs, *, logged_upto=None, final=None):
    """What a trial and Tune do: checkpoint each epoch, then report (the driver sees reports up to logged_upto)."""
    rid, reports = cfg["_rid"], []
    for e in epochs:
        status = final if (final and e == epochs[-1]) else "running"
        result = {"epoch": e, "status": status, "val_acc": 0.1 * e + (0.3 if rid.endswith("0") else 0.0),
                  "best_val_acc": 0.1 * e, "rid": rid, "train_loss": 1.0 / e}
        reports.append(result)
        _write_checkpoint(cfg["_ckpt"], e, _save(e), list(reports))
        if logged_upto is None or e <= logged_upto:
            phase.result(rid, result)
    return reports[-1]


def test_resume_after_driver_kills_finishes_each_trial_once_without_ray(tmp_path):
    """Ledger, Optuna, MLflow and epoch logs through two driver kills, Tune's events played by hand:
    a trial whose last checkpointed epoch the killed driver never logged, and a trial Optuna was told
    of just before the kill, are both finished exactly once."""
    import optuna
    from mlflow.tracking import MlflowClient
    from ray.tune.search import Searcher

    from study.runner import Phase

    spec = _spec(tmp_path, trials_per_variant=3, epochs=3, scheduler={"type": "none"},
                 search={"algorithm": "random", "seed": 0})
    exp = "s-resnet-d8"
    runner, lock = _driver(tmp_path, spec)
    runner.tracker.create(f"exp:{exp}", "study", exp, {"resstudy.level": "variant"})
    phase = Phase(runner, "resnet", 8, "search")
    phase.reconcile()
    a = phase.next_trial()
    phase.started(a["_rid"])
    phase.ended(a["_rid"], _train(phase, a, [1, 2, 3], final="completed"), "")
    b = phase.next_trial()
    phase.started(b["_rid"])
    _train(phase, b, [1, 2], logged_upto=1)  # epoch 2 checkpointed, the driver killed before logging it
    c = phase.next_trial()
    phase.started(c["_rid"])
    last = _train(phase, c, [1, 2])
    from study.searcher import tell

    # c errors for good (retries spent); the driver is killed between telling Optuna and the ledger line
    tell(phase.optuna, runner.ledger.trials[c["_rid"]]["optuna_number"], "failed", last, ["val_acc"],
         {"status": "failed", "error": "boom"})
    runner.ledger.close()
    lock.release()  # the kill

    runner, lock = _driver(tmp_path, spec)
    runner.tracker.create(f"exp:{exp}", "study", exp, {"resstudy.level": "variant"})
    phase = Phase(runner, "resnet", 8, "search")
    phase.reconcile()
    status = {rid: rec["status"] for rid, rec in runner.ledger.trials.items()}
    assert status == {a["_rid"]: "completed", b["_rid"]: "running", c["_rid"]: "failed"}, status
    again = phase.next_trial()
    assert again["_rid"] == b["_rid"] and phase.next_trial() == Searcher.FINISHED  # nothing new asked
    phase.started(b["_rid"])
    phase.ended(b["_rid"], _train(phase, again, [3], final="completed"), "")
    runner._compact()
    runner.tracker.flush()
    lock.release()

    for cfg, epochs in ((a, [1, 2, 3]), (b, [1, 2, 3]), (c, [1, 2])):
        assert [r["epoch"] for r in runner.epochs.read(cfg["_rid"])] == epochs, cfg["_rid"]
    assert [r.get("replayed", False) for r in runner.epochs.read(b["_rid"])] == [False, True, False]
    client = MlflowClient(spec.tracking_uri())
    trials = [r for r in client.search_runs([runner.tracker.experiment_id])
              if r.data.tags.get("resstudy.level") == "trial"]
    assert len(trials) == 3 and sorted(r.info.status for r in trials) == ["FAILED", "FINISHED", "FINISHED"]
    for r in trials:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert steps == ([1, 2] if r.info.status == "FAILED" else [1, 2, 3]), r.info.run_name
    ostudy = optuna.load_study(study_name=exp, storage=f"sqlite:///{runner.study_dir / 'optuna.db'}")
    assert [t.state.name for t in ostudy.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    import pandas as pd

    res = pd.read_parquet(runner.study_dir / "results.parquet").set_index("trial_id")
    assert res.status.to_dict() == {a["_rid"]: "completed", b["_rid"]: "completed", c["_rid"]: "failed"}
    assert res.loc[c["_rid"], "error"] == "boom"


def test_a_retry_logs_the_epoch_its_failed_attempt_checkpointed_but_never_reported(tmp_path):
    """The trial's process dies after writing epoch 2's checkpoint, before the report: Tune retries
    it from that checkpoint, and epoch 2 reaches the epoch log and MLflow once, marked replayed."""
    from mlflow.tracking import MlflowClient

    from study.runner import Phase

    spec = _spec(tmp_path, trials_per_variant=1, epochs=3, scheduler={"type": "none"},
                 search={"algorithm": "random", "seed": 0})
    exp = "s-resnet-d8"
    runner, lock = _driver(tmp_path, spec)
    try:
        runner.tracker.create(f"exp:{exp}", "study", exp, {"resstudy.level": "variant"})
        phase = Phase(runner, "resnet", 8, "search")
        phase.reconcile()
        a = phase.next_trial()
        phase.started(a["_rid"])
        _train(phase, a, [1, 2], logged_upto=1)
        phase.retried(a["_rid"])
        phase.ended(a["_rid"], _train(phase, a, [3], final="completed"), "")
        runner.tracker.flush()
    finally:
        lock.release()
    log = runner.epochs.read(a["_rid"])
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert [r.get("replayed", False) for r in log] == [False, True, False]
    client = MlflowClient(spec.tracking_uri())
    trials = [r for r in client.search_runs([runner.tracker.experiment_id])
              if r.data.tags.get("resstudy.level") == "trial"]
    assert len(trials) == 1
    assert [m.step for m in client.get_metric_history(trials[0].info.run_id, "val_acc")] == [1, 2, 3]


def test_an_epsilon_twin_waits_for_its_variant_run_and_trains_the_epochs_it_trained(tmp_path):
    """epsilon's restarts extend training past `epochs`: each twin launches only once the
    repeat run of its seed has finished, and trains exactly the epochs that run trained."""
    from ray.tune.search import Searcher

    from study.runner import Phase, Phases

    spec = _spec(tmp_path, variants=["epsilon"], trials_per_variant=1, epochs=3, seeds=[0, 1],
                 scheduler={"type": "none"}, search={"algorithm": "random", "seed": 0})
    exp = "s-epsilon-d8"
    runner, lock = _driver(tmp_path, spec)
    try:
        runner.tracker.create(f"exp:{exp}", "study", exp, {"resstudy.level": "variant"})
        phases = Phases([Phase(runner, "epsilon", 8, p) for p in ("search", "repeat", "twin")])
        phases.reconcile()
        s = phases.next_trial()
        phases.started(s["_rid"])
        phases.ended(s["_rid"], _train(phases, s, [1, 2, 3], final="completed"), "")
        r0, r1 = phases.next_trial(), phases.next_trial()
        assert (r0["_phase"], r0["seed"], r1["_phase"], r1["seed"]) == ("repeat", 0, "repeat", 1)
        for r in (r0, r1):
            phases.started(r["_rid"])
        assert phases.next_trial() is None  # both twins wait for their variant runs
        phases.ended(r0["_rid"], _train(phases, r0, [1, 2, 3, 4, 5], final="completed"), "")  # a restart: 5
        t0 = phases.next_trial()
        assert (t0["_phase"], t0["seed"], t0["epsilon_gate"], t0["train_epochs"]) == ("twin", 0, False, 5)
        assert runner.ledger.trials[t0["_rid"]]["config"]["train_epochs"] == 5  # recorded, so a resume keeps it
        assert phases.next_trial() is None  # seed 1's variant run is still training
        phases.ended(r1["_rid"], _train(phases, r1, [1, 2, 3], final="completed"), "")
        t1 = phases.next_trial()
        assert (t1["seed"], t1["train_epochs"]) == (1, 3)
        for t in (t0, t1):
            phases.started(t["_rid"])
        assert phases.next_trial() == Searcher.FINISHED
    finally:
        lock.release()


def test_a_twin_of_a_variant_that_cannot_extend_does_not_wait(tmp_path):
    from study.runner import Phase, Phases

    spec = _spec(tmp_path, variants=["epsilon"], trials_per_variant=1, epochs=3, seeds=[0],
                 train={"schedule": "step"}, scheduler={"type": "none"}, search={"algorithm": "random", "seed": 0})
    runner, lock = _driver(tmp_path, spec)
    try:
        runner.tracker.create("exp:s-epsilon-d8", "study", "s-epsilon-d8", {"resstudy.level": "variant"})
        phases = Phases([Phase(runner, "epsilon", 8, p) for p in ("search", "repeat", "twin")])
        s = phases.next_trial()
        phases.started(s["_rid"])
        phases.ended(s["_rid"], _train(phases, s, [1, 2, 3], final="completed"), "")
        r0, t0 = phases.next_trial(), phases.next_trial()
        assert (r0["_phase"], t0["_phase"], t0["train_epochs"]) == ("repeat", "twin", None)
    finally:
        lock.release()
