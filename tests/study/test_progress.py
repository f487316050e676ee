"""The progress view: the numbers it shows, and how much it writes."""

from __future__ import annotations

import io
import logging

import pytest

from study.progress import Progress, quiet_libraries


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def plain(plan, interval=20.0):
    clock, out = Clock(), io.StringIO()
    return Progress("s", plan, live=False, interval=interval, stream=out, clock=clock), clock, out


def test_best_counts_completed_trials_only_and_keeps_depths_apart():
    p, _, _ = plain({"resnet d8": 3, "resnet d14": 3})
    for tid, label in (("a", "resnet d8"), ("b", "resnet d8"), ("c", "resnet d14")):
        p.trial_started(tid, label, "search")
    p.trial_epoch("a", 1, 6, val_acc=0.99, epoch_seconds=1.0)
    p.trial_finished("a", "pruned", best_val_acc=0.99)  # a partial score at low fidelity
    p.trial_finished("b", "completed", best_val_acc=0.80)
    p.trial_finished("c", "completed", best_val_acc=0.90)
    d8, d14 = p.stats("resnet d8"), p.stats("resnet d14")
    assert (d8["best"], d14["best"]) == (0.80, 0.90)
    assert (d8["finished"], d8["done"], d8["pruned"], d8["running"], d14["done"]) == (2, 1, 1, 0, 1)


def test_eta_appears_after_the_first_epoch_and_follows_the_epoch_rate():
    p, clock, _ = plain({"quotient d8": 4})
    p.trial_started("a", "quotient d8", "search")
    p.trial_started("b", "quotient d8", "search")
    assert p.stats("quotient d8")["eta_s"] is None  # nothing timed yet
    p.trial_epoch("a", 1, 10, val_acc=0.3, epoch_seconds=2.0)
    p.trial_epoch("b", 1, 10, val_acc=0.3, epoch_seconds=2.0)
    s = p.stats("quotient d8")
    assert s["epochs_per_s"] == pytest.approx(0.5)  # per trial
    # left: 2 trials not started x 10 epochs + 9 + 9 = 38 epochs at 0.5 epochs/s, 2 trials side by side
    assert s["eta_s"] == pytest.approx(38 / 0.5 / 2)


def test_a_replayed_epoch_is_counted_once():
    p, _, _ = plain({"sgs d8": 1})
    p.trial_started("a", "sgs d8", "search")
    for e in (1, 2, 3, 2, 3):  # restarted from the epoch-1 checkpoint
        p.trial_epoch("a", e, 4, val_acc=0.5, epoch_seconds=1.0)
    assert p.rows["sgs d8"].epochs_done == 3
    p.trial_started("a", "sgs d8", "search")  # Tune restores the same trial
    assert p.stats("sgs d8")["running"] == 1


def test_plain_log_is_rate_limited_with_one_line_per_finished_trial():
    p, clock, out = plain({"resnet d8": 2, "quotient d8": 2}, interval=20.0)
    trials = [("a", "resnet d8"), ("b", "resnet d8"), ("c", "quotient d8"), ("d", "quotient d8")]
    for tid, label in trials:
        p.trial_started(tid, label, "search")
    for epoch in range(1, 101):  # 100 epochs a trial, one second apart: 400 reports in 100 s
        clock.t += 1.0
        for tid, _ in trials:
            p.trial_epoch(tid, epoch, 100, val_acc=0.5, epoch_seconds=1.0)
    for tid, _ in trials:
        p.trial_finished(tid, "completed", best_val_acc=0.9)
    p.close()
    lines = out.getvalue().splitlines()
    finished = [ln for ln in lines if ": completed" in ln]
    assert len(finished) == 4
    # one summary at the start, then at most one per 20 s over 100 s, then the closing summary and table
    summaries = [ln for ln in lines if " trials finished (" in ln]
    assert 5 <= len(summaries) <= 7, lines
    assert "ETA" in summaries[1] and "epochs/s" in summaries[1]


def test_terminal_view_redraws_in_place():
    out = io.StringIO()
    clock = Clock()
    with Progress("s", {"epsilon d8": 2}, live=True, stream=out, clock=clock) as p:
        for tid in ("a", "b"):
            p.trial_started(tid, "epsilon d8", "search")
            for e in range(1, 4):
                p.trial_epoch(tid, e, 3, val_acc=0.4, epoch_seconds=1.0)
            p.trial_finished(tid, "completed", best_val_acc=0.7)
        p.message("a note")
    text = out.getvalue()
    assert "\x1b[" in text  # cursor movement: the table is redrawn, not appended
    last = text.split("a note")[-1]
    assert "epsilon d8" in last and "2/2" in last and "0.7000" in last


def test_quiet_libraries_silences_info_unless_verbose(monkeypatch):
    import optuna

    names = ("mlflow", "ray", "alembic")
    before = {n: logging.getLogger(n).level for n in names}
    verbosity = optuna.logging.get_verbosity()
    for var in ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "RAY_AUTH_MODE", "MLFLOW_LOGGING_LEVEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        optuna.logging.set_verbosity(optuna.logging.INFO)
        quiet_libraries(verbose=True)
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
        quiet_libraries(verbose=False)
        assert all(logging.getLogger(n).level == logging.WARNING for n in names)
        assert optuna.logging.get_verbosity() == optuna.logging.WARNING
        import os

        assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
        assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"  # read by MLflow's import, which comes later
        assert os.environ["RAY_AUTH_MODE"] == "token"  # explicit token mode: auth on, no warning
    finally:
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)
        optuna.logging.set_verbosity(verbosity)


_MLFLOW_LATER = """
import logging, sys
from study.progress import quiet_libraries
quiet_libraries()
print("mlflow" in sys.modules, flush=True)  # MLflow's import is the driver's, after Ray's start
import mlflow
print(logging.getLogger("mlflow").getEffectiveLevel(), logging.getLogger("mlflow.tracking").getEffectiveLevel())
"""


def test_mlflow_imported_after_quiet_libraries_stays_quiet():
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.study.test_security import clean_env

    env = {k: v for k, v in clean_env().items() if k != "MLFLOW_LOGGING_LEVEL"}
    out = subprocess.run([sys.executable, "-c", _MLFLOW_LATER], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.stdout.split() == ["False", str(logging.WARNING), str(logging.WARNING)], out.stdout + out.stderr[-2000:]


def test_a_resumed_study_counts_the_trials_it_finished_before():
    out = io.StringIO()
    p = Progress("s", {"resnet d8": 4}, live=False, stream=out)
    p.restore("resnet d8", "completed", 0.9)
    p.restore("resnet d8", "pruned")
    stats = p.stats("resnet d8")
    assert (stats["finished"], stats["done"], stats["pruned"], stats["best"]) == (2, 1, 1, 0.9)
    assert out.getvalue() == ""  # counted, not announced


def test_an_interrupted_trial_is_shown_as_interrupted_not_failed():
    p, _, out = plain({"resnet d8": 2})
    p.trial_started("a", "resnet d8", "search")
    p.trial_finished("a", "interrupted")
    s = p.stats("resnet d8")
    assert (s["failed"], s["finished"], s["running"]) == (0, 0, 0)
    line = out.getvalue().splitlines()[-1]
    assert line.endswith("trial a: interrupted") and "failed" not in line
