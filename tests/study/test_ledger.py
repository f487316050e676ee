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
from tests.conftest import ROOT, importable

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
    from study.driver.options import Events

    cfg = TrainConfig.from_dict({"variant": "resnet", "dataset": "digits", "image_size": 8, "depth": 8, "epochs": 3,
                                 "batch_size": 64, "seed": 0, "threads": 1}).to_dict()
    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append(metrics))

    class FailAfter(Events):
        def __init__(self, epoch: int | None) -> None:
            self.epoch = epoch

        def after_epoch(self, config, control, epoch):
            if epoch == self.epoch:
                raise RuntimeError("boom")

    def run(name: str, fail_after: int | None = None) -> None:
        control = {"rid": name, "ckpt": str(tmp_path / name), "ckpt_epochs": [], "ckpt_every_s": 0}
        trainable_lib.trainable({"config": cfg, "control": control}, events=FailAfter(fail_after))

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


class _Unused:
    """A backend these tests must never reach: each stops the driver in its preparation,
    before Ray or a trial starts (and it has no `prestart`, so no Ray starts early)."""

    def start(self, ctx):
        raise AssertionError("the driver went on to the backend")

    run = start


def _run(spec):
    from study.driver.runner import StudyRunner

    return StudyRunner(spec, backend=_Unused()).run()


def test_the_default_backend_starts_ray_once_the_spec_passed_and_before_mlflow(tmp_path, monkeypatch):
    """Tune's Ray starts (environment.prestart, which returns once Ray is up) after the
    study's spec checks and before the driver sets up MLflow: the first trial's worker
    then imports beside MLflow's set-up, not Ray's start beside it."""
    from study.driver import environment, runner

    order: list[str] = []

    class Stop(Exception):
        pass

    def tracker(*args, **kwargs):
        order.append("mlflow")
        raise Stop()

    monkeypatch.setattr(environment, "prestart", lambda verbose, workers: order.append(f"ray {workers}"))
    monkeypatch.setattr(runner, "Tracker", tracker)
    with pytest.raises(Stop):
        runner.StudyRunner(_spec(tmp_path, max_concurrent=1)).run()
    assert order == ["ray 1", "mlflow"]
    order.clear()
    # a spec the study's record refuses starts nothing: no Ray, no MLflow
    spec = _spec(tmp_path, name="t")
    _started(tmp_path, spec)
    with pytest.raises(ledger_lib.SpecChanged):
        runner.StudyRunner(_spec(tmp_path, name="t", epochs=3)).run()
    assert order == []


def test_storage_that_is_a_file_or_not_a_study_is_refused(tmp_path):
    from study.driver import StorageError

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
    from study.driver import StorageError, resume_study

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
    from study.driver import resume_study

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


class _Experiments:
    """The driver's backend with its experiments (Tune's part) replaced by `experiments(ctx)`."""

    def __init__(self, experiments) -> None:
        self.experiments, self.ran = experiments, False

    def start(self, ctx) -> None:
        pass

    def run(self, ctx, phase) -> None:
        if not self.ran:
            self.ran = True
            self.experiments(ctx)


def _without_ray(monkeypatch, experiments) -> None:
    """StudyRunner.run() as it is, minus Ray: the backend's work replaced by `experiments(ctx)`."""
    from study.driver import backend

    monkeypatch.setattr(backend, "TuneBackend", lambda: _Experiments(experiments))


def test_the_lock_is_held_for_the_whole_run(tmp_path, monkeypatch):
    """A driver that finds the lock taken is refused; and while a study runs its trials (after
    prepare(), until run() returns) a second driver started then is refused with the first
    driver's pid; once the run is over the next driver gets the lock."""
    from study.driver.runner import StudyRunner

    spec = _spec(tmp_path)
    d = _started(tmp_path, spec)
    with StudyLock(d):
        with pytest.raises(StudyLocked, match=f"pid {os.getpid()}"):
            _run(spec)

    tries: list[str] = []

    def experiments(ctx):
        if tries:  # a second driver that got in: it runs, and the check below fails
            tries.append("second driver ran")
            return
        tries.append("second driver started mid-run")
        with pytest.raises(StudyLocked, match=f"pid {os.getpid()}"):
            StudyRunner(spec).run()
        tries.append("refused")

    _without_ray(monkeypatch, experiments)
    StudyRunner(spec).run()
    assert tries == ["second driver started mid-run", "refused"], tries
    with StudyLock(d):  # released when the run ended
        pass


_RESUME = """
import sys
from study.driver import resume_study
from study.ledger import StudyLocked
from tests.study.test_ledger import _Experiments

def experiments(ctx):
    print("running", flush=True)
    sys.stdin.readline()  # the trials train until the test lets them end

try:
    resume_study(sys.argv[1], backend=_Experiments(experiments))
except StudyLocked as e:
    print("refused", e, flush=True)
    sys.exit(3)
print("ended", flush=True)
"""


def _said(proc: subprocess.Popen) -> str:
    """The driver's next word on what happened (running, refused ..., ended), or "" at its end."""
    for line in proc.stdout:
        if line.startswith(("running", "refused", "ended")):
            return line.strip()
    return ""


def test_two_concurrent_resumes_cannot_both_run(tmp_path, monkeypatch):
    """Two `resume`s of one study started together: one runs, the other is refused naming the
    first one's pid; a third started while the first runs is refused too."""
    from study.driver import resume_study

    d = _started(tmp_path, _spec(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", _RESUME, str(d)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        first = [_said(p) for p in procs]
        assert sorted(line.split(" ")[0] for line in first) == ["refused", "running"], first
        runner = procs[first.index("running")]
        loser = procs[1 - procs.index(runner)]
        assert loser.wait(60) == 3 and f"pid {runner.pid}" in first[procs.index(loser)], first
        _without_ray(monkeypatch, lambda runner: pytest.fail("a third driver ran while the first one runs"))
        with pytest.raises(StudyLocked, match=f"pid {runner.pid}"):
            resume_study(d)
        runner.stdin.write("\n")
        runner.stdin.flush()
        assert _said(runner) == "ended" and runner.wait(60) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


# ---------------------------------------------------------------- the driver's bookkeeping, Tune played by hand


def _driver(tmp_path, spec):
    from study.driver.lifecycle import check_storage
    from study.driver.runner import StudyRunner

    runner = StudyRunner(spec)
    check_storage(runner.study_dir)
    lock = StudyLock(runner.study_dir).acquire()
    assert runner.prepare()
    return runner, lock


def _compact(runner) -> None:
    from study.driver.runner import _finished_rows
    from study.results import compact

    compact(runner.study_dir, _finished_rows(runner.ctx.ledger))


def _train(phase, cfg, epochs, *, logged_upto=None, final=None):
    """What a trial and Tune do: checkpoint each epoch, then report (the driver sees reports up to logged_upto)."""
    rid, reports = cfg["control"]["rid"], []
    for e in epochs:
        status = final if (final and e == epochs[-1]) else "running"
        result = {"epoch": e, "status": status, "val_acc": 0.1 * e + (0.3 if rid.endswith("0") else 0.0),
                  "best_val_acc": 0.1 * e, "rid": rid, "train_loss": 1.0 / e}
        reports.append(result)
        _write_checkpoint(cfg["control"]["ckpt"], e, _save(e), list(reports))
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

    from study.driver.phases import Phase

    spec = _spec(tmp_path, trials_per_variant=3, epochs=3, scheduler={"type": "none"},
                 search={"algorithm": "random", "seed": 0})
    exp = "s-resnet-d8"
    runner, lock = _driver(tmp_path, spec)
    runner.ctx.mlflow.tracker.create(f"exp:{exp}", "study", exp, {"resstudy.level": "variant"})
    phase = Phase(runner.ctx, "resnet", 8, "search")
    phase.reconcile()
    a = phase.next_trial()
    phase.started(a["control"]["rid"])
    phase.ended(a["control"]["rid"], _train(phase, a, [1, 2, 3], final="completed"), "")
    b = phase.next_trial()
    phase.started(b["control"]["rid"])
    _train(phase, b, [1, 2], logged_upto=1)  # epoch 2 checkpointed, the driver killed before logging it
    c = phase.next_trial()
    phase.started(c["control"]["rid"])
    last = _train(phase, c, [1, 2])
    from study.searcher import tell

    # c errors for good (retries spent); the driver is killed between telling Optuna and the ledger line
    tell(phase.optuna, runner.ctx.ledger.trials[c["control"]["rid"]]["optuna_number"], "failed", last, ["val_acc"],
         {"status": "failed", "error": "boom"})
    runner.ctx.ledger.close()
    lock.release()  # the kill

    runner, lock = _driver(tmp_path, spec)
    runner.ctx.mlflow.tracker.create(f"exp:{exp}", "study", exp, {"resstudy.level": "variant"})
    phase = Phase(runner.ctx, "resnet", 8, "search")
    phase.reconcile()
    status = {rid: rec["status"] for rid, rec in runner.ctx.ledger.trials.items()}
    assert status == {a["control"]["rid"]: "completed", b["control"]["rid"]: "running",
                      c["control"]["rid"]: "failed"}, status
    again = phase.next_trial()
    # nothing new asked
    assert again["control"]["rid"] == b["control"]["rid"] and phase.next_trial() == Searcher.FINISHED
    phase.started(b["control"]["rid"])
    phase.ended(b["control"]["rid"], _train(phase, again, [3], final="completed"), "")
    _compact(runner)
    runner.ctx.mlflow.tracker.flush()
    lock.release()

    for cfg, epochs in ((a, [1, 2, 3]), (b, [1, 2, 3]), (c, [1, 2])):
        assert [r["epoch"] for r in runner.ctx.epochs.read(cfg["control"]["rid"])] == epochs, cfg["control"]["rid"]
    assert [r.get("replayed", False) for r in runner.ctx.epochs.read(b["control"]["rid"])] == [False, True, False]
    client = MlflowClient(spec.tracking_uri())
    trials = [r for r in client.search_runs([runner.ctx.mlflow.tracker.experiment_id])
              if r.data.tags.get("resstudy.level") == "trial"]
    assert len(trials) == 3 and sorted(r.info.status for r in trials) == ["FAILED", "FINISHED", "FINISHED"]
    for r in trials:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert steps == ([1, 2] if r.info.status == "FAILED" else [1, 2, 3]), r.info.run_name
    ostudy = optuna.load_study(study_name=exp, storage=f"sqlite:///{runner.study_dir / 'optuna.db'}")
    assert [t.state.name for t in ostudy.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    import pandas as pd

    res = pd.read_parquet(runner.study_dir / "results.parquet").set_index("trial_id")
    assert res.status.to_dict() == {a["control"]["rid"]: "completed", b["control"]["rid"]: "completed",
                                    c["control"]["rid"]: "failed"}
    assert res.loc[c["control"]["rid"], "error"] == "boom"


def test_a_retry_logs_the_epoch_its_failed_attempt_checkpointed_but_never_reported(tmp_path):
    """The trial's process dies after writing epoch 2's checkpoint, before the report: Tune retries
    it from that checkpoint, and epoch 2 reaches the epoch log and MLflow once, marked replayed."""
    from mlflow.tracking import MlflowClient

    from study.driver.phases import Phase

    spec = _spec(tmp_path, trials_per_variant=1, epochs=3, scheduler={"type": "none"},
                 search={"algorithm": "random", "seed": 0})
    exp = "s-resnet-d8"
    runner, lock = _driver(tmp_path, spec)
    try:
        runner.ctx.mlflow.tracker.create(f"exp:{exp}", "study", exp, {"resstudy.level": "variant"})
        phase = Phase(runner.ctx, "resnet", 8, "search")
        phase.reconcile()
        a = phase.next_trial()
        phase.started(a["control"]["rid"])
        _train(phase, a, [1, 2], logged_upto=1)
        phase.retried(a["control"]["rid"])
        phase.ended(a["control"]["rid"], _train(phase, a, [3], final="completed"), "")
        runner.ctx.mlflow.tracker.flush()
    finally:
        lock.release()
    log = runner.ctx.epochs.read(a["control"]["rid"])
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert [r.get("replayed", False) for r in log] == [False, True, False]
    client = MlflowClient(spec.tracking_uri())
    trials = [r for r in client.search_runs([runner.ctx.mlflow.tracker.experiment_id])
              if r.data.tags.get("resstudy.level") == "trial"]
    assert len(trials) == 1
    assert [m.step for m in client.get_metric_history(trials[0].info.run_id, "val_acc")] == [1, 2, 3]


def test_an_epsilon_twin_waits_for_its_variant_run_and_trains_the_epochs_it_trained(tmp_path):
    """epsilon's restarts extend training past `epochs`: each twin launches only once the
    repeat run of its seed has finished, and trains exactly the epochs that run trained."""
    from ray.tune.search import Searcher

    from study.driver.experiment import Phases
    from study.driver.phases import Phase

    spec = _spec(tmp_path, variants=["epsilon"], trials_per_variant=1, epochs=3, seeds=[0, 1],
                 scheduler={"type": "none"}, search={"algorithm": "random", "seed": 0})
    exp = "s-epsilon-d8"
    runner, lock = _driver(tmp_path, spec)
    try:
        runner.ctx.mlflow.tracker.create(f"exp:{exp}", "study", exp, {"resstudy.level": "variant"})
        phases = Phases([Phase(runner.ctx, "epsilon", 8, p) for p in ("search", "repeat", "twin")])
        phases.reconcile()
        s = phases.next_trial()
        phases.started(s["control"]["rid"])
        phases.ended(s["control"]["rid"], _train(phases, s, [1, 2, 3], final="completed"), "")
        r0, r1 = phases.next_trial(), phases.next_trial()
        assert (r0["control"]["phase"], r0["config"]["seed"],
                r1["control"]["phase"], r1["config"]["seed"]) == ("repeat", 0, "repeat", 1)
        for r in (r0, r1):
            phases.started(r["control"]["rid"])
        assert phases.next_trial() is None  # both twins wait for their variant runs
        phases.ended(r0["control"]["rid"], _train(phases, r0, [1, 2, 3, 4, 5], final="completed"), "")  # a restart: 5
        t0 = phases.next_trial()
        assert (t0["control"]["phase"], t0["config"]["seed"], t0["config"]["epsilon_gate"],
                t0["config"]["train_epochs"]) == ("twin", 0, False, 5)
        # recorded, so a resume keeps it
        assert runner.ctx.ledger.trials[t0["control"]["rid"]]["config"]["train_epochs"] == 5
        assert phases.next_trial() is None  # seed 1's variant run is still training
        phases.ended(r1["control"]["rid"], _train(phases, r1, [1, 2, 3], final="completed"), "")
        t1 = phases.next_trial()
        assert (t1["config"]["seed"], t1["config"]["train_epochs"]) == (1, 3)
        for t in (t0, t1):
            phases.started(t["control"]["rid"])
        assert phases.next_trial() == Searcher.FINISHED
    finally:
        lock.release()


def test_a_twin_of_a_variant_that_cannot_extend_does_not_wait(tmp_path):
    from study.driver.experiment import Phases
    from study.driver.phases import Phase

    spec = _spec(tmp_path, variants=["epsilon"], trials_per_variant=1, epochs=3, seeds=[0],
                 train={"schedule": "step"}, scheduler={"type": "none"}, search={"algorithm": "random", "seed": 0})
    runner, lock = _driver(tmp_path, spec)
    try:
        runner.ctx.mlflow.tracker.create("exp:s-epsilon-d8", "study", "s-epsilon-d8", {"resstudy.level": "variant"})
        phases = Phases([Phase(runner.ctx, "epsilon", 8, p) for p in ("search", "repeat", "twin")])
        s = phases.next_trial()
        phases.started(s["control"]["rid"])
        phases.ended(s["control"]["rid"], _train(phases, s, [1, 2, 3], final="completed"), "")
        r0, t0 = phases.next_trial(), phases.next_trial()
        assert (r0["control"]["phase"], t0["control"]["phase"],
                t0["config"]["train_epochs"]) == ("repeat", "twin", None)
    finally:
        lock.release()


# ---------------------------------------------------------------- every epoch in every store once, Tune played by hand


class _Killed(BaseException):
    """The driver dies here (raised through the driver's code, as a SIGKILL would stop it)."""


def _epochs(phase, cfg, epochs, *, ckpt=True, final=None, bump=0.0):
    """A trial's epochs as Tune delivers them: each checkpointed (when `ckpt`) before its report,
    continuing the reports of the newest checkpoint. `bump` marks the values of this attempt."""
    rid, root = cfg["control"]["rid"], cfg["control"]["ckpt"]
    done = checkpoint_epochs(root)
    reports = [r for r in read_reports(root, done[-1]) if r["epoch"] < epochs[0]] if done else []
    for e in epochs:
        status = final if (final and e == epochs[-1]) else "running"
        result = {"epoch": e, "status": status, "val_acc": round(0.1 * e + bump, 6), "train_loss": 1.0 / e + bump,
                  "rid": rid}
        reports.append(result)
        if ckpt:
            _write_checkpoint(root, e, _save(e), list(reports))
        phase.result(rid, result)
    return reports[-1]


def _kill_at(monkeypatch, what: str, rid: str, epoch: int) -> None:
    """Kill the driver after `rid`'s epoch `epoch` reached the epoch log ("log") or MLflow ("mlflow")."""
    from study.driver import phases as phases_lib
    from study.driver.options import Events

    if what == "log":  # through the driver's own events (the default object's class)
        def hook(events, experiment, phase, logged):
            if logged == epoch and _current[0] == rid:
                raise _Killed()
        monkeypatch.setattr(Events, "epoch_logged", hook)
    else:
        real_report = phases_lib.report_intermediate

        def report(study, number, values):
            if _current[0] == rid and epoch in values:
                raise _Killed()
            return real_report(study, number, values)
        monkeypatch.setattr(phases_lib, "report_intermediate", report)


_current = [""]


def _die_at(monkeypatch, what: str, driver, trial, epoch: int) -> None:
    """`trial` reports `epoch` and the driver dies once it reached `what` ("log" or "mlflow");
    its ledger and lock go as a killed process's would."""
    runner, lock, phase = driver
    rid = trial["control"]["rid"]
    _kill_at(monkeypatch, what, rid, epoch)
    with pytest.raises(_Killed):
        _as(rid, _epochs, phase, trial, [epoch])
    monkeypatch.undo()
    runner.ctx.ledger.close()
    lock.release()


def _as(rid, fn, *a, **kw):
    _current[0] = rid
    try:
        return fn(*a, **kw)
    finally:
        _current[0] = ""


def _stores(runner, exp, rids):
    """Per trial: (history's (epoch, val_acc), MLflow's (step, val_acc), Optuna's intermediate values)."""
    import optuna
    import pandas as pd
    from mlflow.tracking import MlflowClient

    _compact(runner)
    hist = pd.read_parquet(runner.study_dir / "history.parquet")
    client = MlflowClient(runner.spec.tracking_uri())
    ostudy = optuna.load_study(study_name=exp, storage=f"sqlite:///{runner.study_dir / 'optuna.db'}")
    out = {}
    for rid in rids:
        rec = runner.ctx.ledger.trials[rid]
        h = hist[hist.trial_id == rid].sort_values("epoch")
        out[rid] = ([(int(e), v) for e, v in zip(h.epoch, h.val_acc)],
                    [(m.step, m.value) for m in client.get_metric_history(rec["mlflow_run_id"], "val_acc")],
                    sorted(ostudy.trials[rec["optuna_number"]].intermediate_values.items()))
    return out


def test_every_epoch_reaches_every_store_once_through_kills_retries_and_retraining(tmp_path, monkeypatch):
    """history, MLflow and Optuna agree trial by trial, each epoch once, by its first report:
    a driver killed right after an epoch's log line (before MLflow and Optuna), one killed
    between MLflow and Optuna, a trial without checkpoints that trains its epochs again after
    the kill, and a retry that reports again an epoch the driver had (no checkpoint of it)."""
    from study.driver.phases import Phase

    spec = _spec(tmp_path, trials_per_variant=3, epochs=4, scheduler={"type": "none"},
                 search={"algorithm": "random", "seed": 0})
    exp = "s-resnet-d8"

    def driver():
        runner, lock = _driver(tmp_path, spec)
        runner.ctx.mlflow.tracker.create(f"exp:{exp}", "study", exp, {"resstudy.level": "variant"})
        phase = Phase(runner.ctx, "resnet", 8, "search")
        phase.reconcile()
        return runner, lock, phase

    def launch(phase, n):
        cfgs = [phase.next_trial() for _ in range(n)]
        for cfg in cfgs:
            phase.started(cfg["control"]["rid"])
        return cfgs

    # driver 1: killed after a's epoch 3 reached the epoch log, before MLflow and Optuna
    runner, lock, phase = driver()
    a, b, c = launch(phase, 3)
    _epochs(phase, c, [1, 2], ckpt=False)  # no checkpoint yet (the policy's interval not reached)
    _epochs(phase, b, [1])
    _epochs(phase, a, [1, 2])
    _die_at(monkeypatch, "log", (runner, lock, phase), a, 3)

    # driver 2: a goes on from its epoch-3 checkpoint; killed after b's epoch 2 reached MLflow, before Optuna
    runner, lock, phase = driver()
    a, b, c = launch(phase, 3)
    phase.ended(a["control"]["rid"], _epochs(phase, a, [4], final="completed"), "")
    _die_at(monkeypatch, "mlflow", (runner, lock, phase), b, 2)

    # driver 3: c, never checkpointed, trains from epoch 1 again (other values: a repeat counts nowhere);
    # its worker dies after epoch 3 (no checkpoint of it), and Tune's retry reports 1-3 again
    runner, lock, phase = driver()
    try:
        b, c = launch(phase, 2)
        phase.ended(b["control"]["rid"], _epochs(phase, b, [3, 4], final="completed"), "")
        _epochs(phase, c, [1, 2, 3], ckpt=False, bump=0.5)
        phase.retried(c["control"]["rid"])
        phase.ended(c["control"]["rid"], _epochs(phase, c, [1, 2, 3, 4], final="completed", bump=0.7), "")
        runner.ctx.mlflow.tracker.flush()
        stores = _stores(runner, exp, [a["control"]["rid"], b["control"]["rid"], c["control"]["rid"]])
    finally:
        lock.release()
    for rid, (history, mlflow_steps, optuna_values) in stores.items():
        assert [e for e, _ in history] == [1, 2, 3, 4], (rid, history)
        assert mlflow_steps == history, (rid, "MLflow", mlflow_steps, history)
        assert optuna_values == history, (rid, "Optuna", optuna_values, history)
    # each epoch of c counts by its first report, its repeats stay in the raw log only, marked
    assert [v for _, v in stores[c["control"]["rid"]][0]] == [0.1, 0.2, 0.3 + 0.5, 0.4 + 0.7]
    raw = runner.ctx.epochs.read(c["control"]["rid"])
    assert [(r["epoch"], bool(r.get("repeat"))) for r in raw] == [
        (1, False), (2, False), (1, True), (2, True), (3, False), (1, True), (2, True), (3, True), (4, False)]


def test_an_epoch_sent_again_to_mlflow_is_held_once(tmp_path, monkeypatch):
    """MLflow cannot be asked which epochs a run holds (down at resume): every epoch of the log is
    sent again, at the time it was first logged, and MLflow keeps each once."""
    from mlflow.tracking import MlflowClient

    from study.driver.phases import Phase

    spec = _spec(tmp_path, trials_per_variant=1, epochs=3, scheduler={"type": "none"},
                 search={"algorithm": "random", "seed": 0})
    exp = "s-resnet-d8"
    runner, lock = _driver(tmp_path, spec)
    runner.ctx.mlflow.tracker.create(f"exp:{exp}", "study", exp, {"resstudy.level": "variant"})
    phase = Phase(runner.ctx, "resnet", 8, "search")
    phase.reconcile()
    a = phase.next_trial()
    phase.started(a["control"]["rid"])
    _epochs(phase, a, [1, 2])
    runner.ctx.ledger.close()
    lock.release()  # killed

    runner, lock = _driver(tmp_path, spec)
    try:
        monkeypatch.setattr(runner.ctx.mlflow.tracker, "logged_steps", lambda key, metrics: {})
        runner.ctx.mlflow.tracker.create(f"exp:{exp}", "study", exp, {"resstudy.level": "variant"})
        phase = Phase(runner.ctx, "resnet", 8, "search")
        phase.reconcile()  # sends epochs 1 and 2 again
        a = phase.next_trial()
        phase.started(a["control"]["rid"])
        phase.ended(a["control"]["rid"], _epochs(phase, a, [3], final="completed"), "")
        runner.ctx.mlflow.tracker.flush()
    finally:
        lock.release()
    client = MlflowClient(spec.tracking_uri())
    run_id = runner.ctx.ledger.trials[a["control"]["rid"]]["mlflow_run_id"]
    for name in ("val_acc", "train_loss"):
        assert [m.step for m in client.get_metric_history(run_id, name)] == [1, 2, 3], name


def test_an_epoch_log_line_cut_short_by_a_kill_costs_no_later_line(tmp_path):
    from study.results import EpochLog

    log = EpochLog(tmp_path)
    ident = {"trial_id": "t", "study": "s"}
    log.append(ident, 1, 1, {"val_acc": 0.1})
    with open(tmp_path / "epochs" / "t.jsonl", "a") as f:
        f.write('{"trial_id": "t", "epoch": 2, "val_a')  # the kill came mid-line
    again = EpochLog(tmp_path)  # the next driver
    again.append(ident, 2, 2, {"val_acc": 0.2})
    assert [(r["epoch"], r["val_acc"]) for r in EpochLog(tmp_path).first("t")] == [(1, 0.1), (2, 0.2)]


# ---------------------------------------------------------------- an interrupted study: nothing left RUNNING


_HUNG_ON_RAY = """
import signal, sys, time
from study.driver import RuntimeOptions, run_study
from study.driver.phases import Phase
from study.spec import load_spec
from tests.study import handplayed

real = Phase.result

def result(phase, rid, result):
    real(phase, rid, result)
    if rid.endswith("-s0001") and result["epoch"] == 1:
        signal.raise_signal(signal.SIGTERM)  # the job is stopped ...
        time.sleep(600)  # ... and Tune waits on a GCS that the same SIGTERM took away

Phase.result = result
run_study(load_spec({**handplayed.SPEC, "storage_path": sys.argv[1]}), options=RuntimeOptions(stop_grace_s=1.0),
          backend=handplayed.HandBackend(handplayed.Play))
"""


def _nothing_running(study_dir: Path) -> dict:
    """Ledger, MLflow and Optuna states of an interrupted study (none may be RUNNING)."""
    import optuna
    from mlflow.tracking import MlflowClient

    statuses = {rid: rec["status"] for rid, rec in Ledger(study_dir).trials.items()}
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(study_dir.name).experiment_id])
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_dir / 'optuna.db'}")
    trials = {f"{s.study_name}#{t.number}": t.state.name for s in optuna.get_all_study_summaries(storage)
              for t in optuna.load_study(study_name=s.study_name, storage=storage).trials}
    assert "running" not in statuses.values(), statuses
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], "MLflow: a run left RUNNING"
    assert "RUNNING" not in trials.values(), trials
    return {"ledger": statuses, "optuna": trials}


def test_a_stopped_study_leaves_nothing_running_even_when_ray_hangs_and_resumes_to_the_end(tmp_path, monkeypatch):
    """A SIGTERM whose Tune never returns (Ray's GCS killed by the same job signal): past the grace,
    the driver saves the state without Ray and exits 130 with the resume line; the interrupted
    search trial waits in Optuna (WAITING), and the resume finishes every trial once, with
    history, MLflow and Optuna agreeing."""
    import optuna
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from tests.study.handplayed import PLANNED, SPEC, build

    env = importable(os.environ)
    proc = subprocess.run([sys.executable, "-c", _HUNG_ON_RAY, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    study_dir = tmp_path / SPEC["name"]
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert proc.stderr.count(f"Resume with: resstudy resume {study_dir}") == 1, proc.stderr[-3000:]
    states = _nothing_running(study_dir)
    assert states["ledger"]["s-resnet-d8-s0001"] == "interrupted"
    assert states["optuna"]["s-resnet-d8#1"] == "WAITING", states

    build(tmp_path, monkeypatch)  # resume, Tune played by hand, to the end
    led = Ledger(study_dir).trials
    assert len(led) == PLANNED and {rec["status"] for rec in led.values()} == {"completed"}
    assert led["s-resnet-d8-s0001"]["attempts"] == 2
    hist = pd.read_parquet(study_dir / "history.parquet")
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    for rid, rec in led.items():
        h = hist[hist.trial_id == rid].sort_values("epoch")
        history = [(int(e), float(v)) for e, v in zip(h.epoch, h.val_acc)]
        assert [e for e, _ in history] == [1, 2], (rid, history)
        assert [(m.step, m.value) for m in client.get_metric_history(rec["mlflow_run_id"], "val_acc")] == history
        if rec["optuna_number"] is not None:
            t = optuna.load_study(study_name=rec["experiment"], storage=storage).trials[rec["optuna_number"]]
            assert t.state.name == "COMPLETE" and sorted(t.intermediate_values.items()) == history, rid
    assert len(optuna.load_study(study_name="s-resnet-d8", storage=storage).trials) == SPEC["trials_per_variant"]


def test_ctrl_c_leaves_nothing_running_and_the_interrupted_search_trial_waiting_in_optuna(tmp_path, monkeypatch):
    from tests.study.handplayed import build

    d = build(tmp_path, monkeypatch, stop_after=1)  # Ctrl-C in the 2nd search trial
    states = _nothing_running(d)
    assert states["optuna"] == {"s-resnet-d8#0": "COMPLETE", "s-resnet-d8#1": "WAITING"}, states


# ---------------------------------------------------------------- Ray's processes: their own group, and the reaper


_DRIVER_WITH_RAY_PROCESS = """
import signal, time
from study.driver import environment
reaper = environment.ray_in_its_own_group()
from ray._private import services

agent = services.ConsolePopen(["sleep", "600"])  # how Ray starts each of its processes
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # this driver outlives the job's SIGTERM, to see who else got it
print(reaper.pid, agent.pid, flush=True)
time.sleep(600)
"""


def _hit(pid: int, sig: int) -> bool:
    """`pid` got `sig` (pending, or acted on: exiting, a zombie, gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in "ZX" or int(fields[6]) & 0x4:  # state; flags & PF_EXITING
        return True
    pending = {k: int(v, 16) for k, v in (line.split(":\t") for line in status.splitlines()
                                          if line.startswith(("SigPnd", "ShdPnd")))}
    return any(mask >> (sig - 1) & 1 for mask in pending.values())


def test_ray_processes_miss_the_jobs_sigterm_and_die_with_the_driver_even_by_sigkill(tmp_path):
    """Ray's processes hear only the driver: a SIGTERM to the driver's process group passes them
    by; and when the driver is SIGKILLed, its reaper kills them (Ray's agents otherwise waited
    minutes for a GCS that had died with the driver)."""
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER_WITH_RAY_PROCESS], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    reaper, agent = map(int, driver.stdout.readline().split())
    try:
        os.killpg(driver.pid, signal.SIGTERM)  # `timeout`, Kubernetes
        assert not _hit(agent, signal.SIGTERM) and not _hit(reaper, signal.SIGTERM)
        driver.kill()
        driver.wait(10)
        while not _hit(reaper, signal.SIGKILL):  # its stdin closed with the driver: it kills its group
            time.sleep(0.01)
        assert _hit(agent, signal.SIGKILL)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(10)
        if not _hit(agent, signal.SIGKILL):
            os.kill(agent, signal.SIGKILL)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["search", "repeat"]),
                          st.sampled_from(["pending", "running", "interrupted", "completed", "pruned", "failed"])),
                min_size=1, max_size=30))
def test_unfinished_is_the_scan_it_replaces_as_puts_come_and_after_a_reload(tmp_path_factory, puts):
    """Ledger.unfinished(experiment, phase), kept as records are put, equals the scan of
    every trial in first-record order (what the driver asked at each step of Tune's loop),
    whatever the order of the status changes, and so does a ledger read back from disk."""
    d = tmp_path_factory.mktemp("ledger")
    led = Ledger(d)

    def scan(ledger: Ledger, phase: str) -> list[str]:
        return [r["rid"] for r in ledger.trials.values() if r["experiment"] == "e" and r["phase"] == phase
                and r["status"] not in ledger_lib.FINISHED]

    for n, phase, status in puts:
        led.put({"rid": f"t{n}-{phase}", "experiment": "e", "phase": phase, "status": status})
        for p in ("search", "repeat"):
            assert [r["rid"] for r in led.unfinished("e", p)] == scan(led, p)
    led.close()
    again = Ledger(d)
    for p in ("search", "repeat"):
        assert [r["rid"] for r in again.unfinished("e", p)] == scan(again, p) == scan(led, p)
    assert again.unfinished("other", "search") == []
