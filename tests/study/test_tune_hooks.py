"""study.driver.tune_hooks: the Tune callback, on Tune's own Trial objects (no Ray started):
each ended trial reaches the phase with its last result, and Tune's per-metric
statistics of that trial are dropped (the driver's memory stays flat over a study)."""

from __future__ import annotations

import pytest
from ray.tune.experiment import Trial

from study.driver.tune_hooks import StudyCallback


class _Phase:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def started(self, rid):
        self.events.append(("started", rid))

    def result(self, rid, result):
        self.events.append(("result", rid, result["val_acc"]))

    def ended(self, rid, result, error):
        self.events.append(("ended", rid, result.get("val_acc"), error))


def _trial(rid: str) -> Trial:
    return Trial("__fake", config={"control": {"rid": rid}}, stub=True)


@pytest.mark.parametrize("how", ["complete", "error"])
def test_an_ended_trial_reaches_the_phase_and_tune_forgets_its_metric_stats(how):
    phase = _Phase()
    cb = StudyCallback(phase)
    live, ended = _trial("r-live"), _trial("r-ended")
    for t in (live, ended):
        cb.on_trial_start(0, [], t)
        for epoch in (1, 2, 3):  # as Tune does with each report: its statistics, then the callbacks
            result = {"val_acc": 0.1 * epoch, "epoch": epoch, "training_iteration": epoch, "loss": 1.0 / epoch}
            t.update_last_result(result)
            cb.on_trial_result(0, [], t, result)
    assert set(ended.metric_analysis) >= {"val_acc", "epoch", "loss"} and ended.metric_n_steps
    getattr(cb, f"on_trial_{how}")(0, [], ended)
    assert phase.events[-1] == ("ended", "r-ended", pytest.approx(0.3), "" if how == "complete" else "error")
    assert ended.metric_analysis == {} and ended.metric_n_steps == {}
    assert ended.last_result["val_acc"] == pytest.approx(0.3)  # what Tune itself reads at a trial's end stays
    assert live.metric_analysis["val_acc"]["max"] == pytest.approx(0.3)  # a running trial keeps its own


class _Controller:
    """What Tune hands a scheduler, with a run's trials: only the live ones may be read."""

    def __init__(self, live: list[Trial]) -> None:
        self.live = set(live)

    def get_live_trials(self):
        return self.live

    def get_trials(self):
        raise AssertionError("a scan of every trial of the run, finished ones too")


def test_the_scheduler_picks_from_the_live_trials_in_the_order_tune_added_them():
    from study.driver.tune_hooks import RungScheduler

    sched = RungScheduler(None, on_prune=lambda rid, epoch: None)
    trials = [_trial(f"r{i}") for i in range(5)]
    for t in trials:
        sched.on_trial_add(None, t)
    for t, status in zip(trials, (Trial.TERMINATED, Trial.RUNNING, Trial.PAUSED, Trial.PENDING, Trial.PENDING)):
        t.set_status(status)
    ctl = _Controller(trials[1:])
    assert sched.choose_trial_to_run(ctl) is trials[3]  # the first pending, by the order they were added
    trials[3].set_status(Trial.RUNNING)
    assert sched.choose_trial_to_run(ctl) is trials[4]
    trials[4].set_status(Trial.RUNNING)
    assert sched.choose_trial_to_run(ctl) is trials[2]  # then a paused one
    trials[2].set_status(Trial.RUNNING)
    assert sched.choose_trial_to_run(ctl) is None
    sched.on_trial_complete(None, trials[3], {})
    assert trials[3].trial_id not in sched._added  # nothing kept of an ended trial
