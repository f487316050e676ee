"""A study's lifecycle edges: read while it runs, a start that fails, the lock
file, and a disk that fills up. The drivers are real, with Tune played by hand
(tests/study/handplayed.py): no Ray starts."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from study import ledger as ledger_lib
from study.ledger import Disk, StudyLock, StudyLocked
from tests.conftest import ROOT
from tests.study.handplayed import PLANNED, SPEC, build, hand_played


def _spec(storage: Path, **overrides):
    from study.spec import load_spec

    return load_spec({**SPEC, "storage_path": str(storage), **overrides})


# ---------------------------------------------------------------- read while it runs


def test_status_and_analyze_of_a_running_study_show_the_trials_it_has_finished(tmp_path, monkeypatch):
    import pandas as pd

    from analysis.load import load_history, load_results
    from analysis.report import analyze
    from study.report import status_text
    from study.driver import run_study

    seen = {}

    def look(ctx, n):  # the driver holds the lock; results.parquet is as compacted at the start
        if n == 3:
            d = ctx.study_dir
            seen["parquet rows"] = len(pd.read_parquet(d / "results.parquet"))
            seen["status"] = status_text(d)
            seen["results"] = load_results(d)
            seen["history"] = load_history(d)
            seen["report"] = analyze(d, out_dir=tmp_path / "report", log_to_mlflow=False, n_boot=10)

    play = hand_played(monkeypatch)
    play.on_trial = look
    run_study(_spec(tmp_path))
    assert seen["parquet rows"] == 0, "the first experiment's trials were compacted already: nothing is tested"
    status = seen["status"]
    assert f"state: running (driver pid {os.getpid()} on {socket.gethostname()}" in status, status
    assert "3 trials finished" in status and "no finished trials yet" not in status, status
    table = next(line.split() for line in status.splitlines() if line.startswith("s-resnet-d8"))
    assert table[1:3] == ["3", "3"], status  # trials, completed
    assert len(seen["results"]) == 3 and set(seen["results"]["status"]) == {"completed"}
    assert len(seen["history"]) == 3 * SPEC["epochs"]
    assert seen["report"].is_file()


def test_analyze_before_any_trial_has_finished_says_so_in_one_line(tmp_path, monkeypatch):
    from analysis.load import InsufficientDataError, load_results

    d = build(tmp_path, monkeypatch, stop_after=0)  # Ctrl-C during the first trial
    with pytest.raises(InsufficientDataError, match="no trial of the study in .* has finished yet"):
        load_results(d)


# ---------------------------------------------------------------- starts that fail, the lock file


def test_a_start_that_fails_before_the_study_exists_leaves_no_folder(tmp_path, monkeypatch):
    from study.driver import run_study
    from study.tracking import TrackingError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: MLflow is down
    hand_played(monkeypatch)
    with pytest.raises(TrackingError):
        run_study(_spec(tmp_path, mlflow={"tracking_uri": f"http://127.0.0.1:{port}"}))
    assert not (tmp_path / "s").exists(), sorted(p.name for p in (tmp_path / "s").iterdir())
    run_study(_spec(tmp_path))  # and the next run starts it
    assert json.loads((tmp_path / "s" / "study.json").read_text()).get("finished")


def test_a_finished_study_has_no_lock_file_and_a_killed_drivers_is_taken_over(tmp_path, monkeypatch):
    from study.report import status_text
    from study.driver import run_study

    d = build(tmp_path, monkeypatch)
    assert not (d / ".lock").exists(), "a finished study keeps a lock file that looks held"
    # a driver SIGKILLed before it wrote anything left its folder holding only the lock file
    (tmp_path / "t").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from study.ledger import StudyLock; "
                               "StudyLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)",
                               str(tmp_path / "t")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert StudyLock.holder(tmp_path / "t")["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    assert [p.name for p in (tmp_path / "t").iterdir()] == [".lock"] and StudyLock.holder(tmp_path / "t") is None
    run_study(_spec(tmp_path, name="t"))  # neither refused as "not a study" nor as locked
    assert not (tmp_path / "t" / ".lock").exists()
    assert status_text(tmp_path / "t").splitlines()[1] == "state: finished"


def test_a_driver_that_opened_the_lock_file_just_as_its_holder_removed_it_locks_the_new_one(tmp_path, monkeypatch):
    import fcntl

    first = StudyLock(tmp_path).acquire()
    real_flock = fcntl.flock
    calls = []

    def flock(fd, op):  # between the second driver's open and its flock, the first one ends
        calls.append(op)
        if len(calls) == 1:
            first.release()
        return real_flock(fd, op)

    monkeypatch.setattr(ledger_lib.fcntl, "flock", flock)
    second = StudyLock(tmp_path).acquire()
    monkeypatch.setattr(ledger_lib.fcntl, "flock", real_flock)
    try:
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(StudyLocked):  # one holder at a time: the second holds the file that is there
            StudyLock(tmp_path).acquire()
    finally:
        second.release()


# ---------------------------------------------------------------- a disk that fills up


class FullDisk(Disk):
    """A disk that fills up after `room` writes: each later write gets half its data out, then ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room, self.refused = room, 0

    def write(self, fd: int, data: bytes) -> None:
        if self.room > 0:
            self.room -= 1
            return super().write(fd, data)
        self.refused += 1
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_write_the_full_disk_refuses_leaves_the_ledger_and_study_json_as_they_were(tmp_path):
    from study.ledger import Ledger, read_state, read_trials, write_state

    write_state(tmp_path, {"name": "s"})
    with pytest.raises(OSError, match="No space left"):
        write_state(tmp_path, {"name": "s", "sessions": 2}, FullDisk(room=0))
    assert read_state(tmp_path) == {"name": "s"} and sorted(p.name for p in tmp_path.iterdir()) == ["study.json"]
    led = Ledger(tmp_path, FullDisk(room=1))
    led.put({"rid": "a", "status": "running"})
    with pytest.raises(OSError, match="No space left"):
        led.update("a", status="completed")
    assert led.trials["a"]["status"] == "running"  # here as on disk
    led.close()
    lines = (tmp_path / "ledger.jsonl").read_bytes().splitlines()
    assert len(lines) == 1 and read_trials(tmp_path / "ledger.jsonl")["a"]["status"] == "running"


def test_a_full_disk_stops_the_study_in_one_line_and_resume_repairs_what_it_left(tmp_path, monkeypatch):
    from study.ledger import read_trials
    from study.driver import RuntimeOptions, StorageError, resume_study, run_study

    hand_played(monkeypatch)
    first = tmp_path / "first"  # (its databases stay open in this process's MLflow and Optuna: another place)
    with pytest.raises(StorageError):  # full from the start: study.json cannot be written
        run_study(_spec(first), options=RuntimeOptions(disk=FullDisk(room=0)))
    assert not (first / "s").exists(), f"a half-made study was left: {sorted(p.name for p in (first / 's').iterdir())}"
    d = tmp_path / "s"
    disk = FullDisk(room=26)  # full in the middle of quotient's first trial
    with pytest.raises(StorageError) as info:
        run_study(_spec(tmp_path), options=RuntimeOptions(disk=disk))
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message and f"resstudy resume {d}" in message
    assert disk.refused >= 2, "the stop itself met the full disk too"
    trials = read_trials(d / "ledger.jsonl")
    assert 0 < sum(r["status"] == "completed" for r in trials.values()) < PLANNED
    for line in (d / "ledger.jsonl").read_bytes().splitlines():
        json.loads(line)  # no torn line: a failed append is cut back
    # what a driver killed mid-write leaves: a torn last line and .tmp files
    with open(d / "ledger.jsonl", "ab") as f:
        f.write(b'{"rid": "s-resnet-d8-s0000", "status": "comp')
    for name in ("study.json.tmp", "results.parquet.tmp", "samplers/s-resnet-d8.json.tmp"):
        (d / name).write_text("half")

    resume_study(d)
    assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*.tmp") if "checkpoints" not in p.parts) == []
    trials = read_trials(d / "ledger.jsonl")
    assert len(trials) == PLANNED and {r["status"] for r in trials.values()} == {"completed"}
    con = sqlite3.connect(d / "mlflow.db")
    assert con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall() == [("FINISHED", PLANNED + 3)]
    con.close()


def test_mlflow_refusals_while_stopping_for_a_full_disk_are_left_to_the_one_line(capsys):
    from study.driver.runner import _tracking_log

    _tracking_log("resstudy: MLflow refused tags for trial:t (skipped)")
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        try:
            raise RuntimeError("Tune: a callback failed")  # as Tune wraps it
        except RuntimeError:
            _tracking_log("resstudy: MLflow refused end for study (skipped)")
    assert capsys.readouterr().err == "resstudy: MLflow refused tags for trial:t (skipped)\n"
