"""Tune's plug-ins for a study's Tune run: the searcher that hands Tune the trials the
driver decides on (`LedgerSearcher`), the rung scheduler that stops weak search
trials, the callback that reports every trial event to the phases (`StudyCallback`)
and the stopper of the whole run. Apart from study.driver.backend, which imports
them (and Ray Tune, about 1 s) only when a phase runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from study.searcher import METRIC, Rungs
from study.timeline import mark


class _NotSaved:
    """Tune pickles its run config, searcher and scheduler into its experiment folder;
    resstudy never reads them back (the ledger is the state), so these save nothing."""

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        pass


def trial_rid(trial: Any) -> str:
    return trial.config["control"]["rid"]


class LedgerSearcher(_NotSaved, Searcher):
    """Hands Tune the next trial the study decides on: `next_trial()` returns a trial
    ({"config", "control"}), None (nothing now; ask again later) or Searcher.FINISHED."""

    def __init__(self, next_trial: Callable[[], Any]) -> None:
        super().__init__()
        self._next = next_trial

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        return self._next()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # the study callback records outcomes, in the ledger first

    def save(self, checkpoint_path: str) -> None:
        pass  # Tune's searcher-state pickles are never written, so never read

    def restore(self, checkpoint_path: str) -> None:
        raise RuntimeError("resstudy resumes from its ledger, never from a Tune searcher pickle")


class RungScheduler(_NotSaved, FIFOScheduler):
    """Tune's side of `Rungs`: stops the search trials it says to, recorded first."""

    def __init__(self, rungs: Rungs | None, on_prune: Callable[[str, int], None],
                 applies: Callable[[str], bool] = lambda rid: True) -> None:
        super().__init__()
        self.rungs, self.on_prune, self.applies = rungs, on_prune, applies
        self.pruned: set[str] = set()
        self._added: dict[str, int] = {}  # each live trial's place in the order Tune added them
        self._count = 0

    def choose_trial_to_run(self, tune_controller) -> Any:
        """FIFOScheduler's choice (a pending trial, else a paused one) from the run's live
        trials: FIFOScheduler walks every trial of the run, finished ones too, at each step
        of Tune's loop, a cost that grows with the study. The earliest added first, as there."""
        live = tune_controller.get_live_trials()
        for status in (Trial.PENDING, Trial.PAUSED):
            ready = [t for t in live if t.status == status]
            if ready:
                return min(ready, key=lambda t: self._added.get(t.trial_id, len(self._added)))
        return None

    def on_trial_add(self, tune_controller, trial) -> None:
        self._added[trial.trial_id] = self._count
        self._count += 1

    def on_trial_error(self, tune_controller, trial) -> None:
        self._added.pop(trial.trial_id, None)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._added.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._added.pop(trial.trial_id, None)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self.rungs is None or "rid" not in result or not self.applies(result["rid"]):
            return TrialScheduler.CONTINUE
        rid, epoch = result["rid"], int(result.get("epoch", 0))
        if result.get("status") != "running":
            return TrialScheduler.CONTINUE
        if self.rungs.decide(rid, epoch, result.get(METRIC)) == "stop":
            self.pruned.add(rid)
            self.on_prune(rid, epoch)  # in the ledger before Tune stops it
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


class StudyCallback(_NotSaved, tune.Callback):
    """Forwards each trial event to the phases, by resstudy trial id."""

    def __init__(self, phase: Any) -> None:
        self.phase = phase
        self.last: dict[str, dict[str, Any]] = {}  # each live trial's last result (dropped at its end)
        self.seen = False  # a result has come in (the start-up timeline marks the first)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if not self.seen:
            mark(f"tune: trial started ({trial_rid(trial)})")
        self.phase.started(trial_rid(trial))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        # Tune retries the trial; it continues from its own latest checkpoint.
        self.phase.retried(trial_rid(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if not self.seen:
            self.seen = True
            mark(f"driver: first epoch result received ({trial_rid(trial)})")
        self.last[trial_rid(trial)] = result
        self.phase.result(trial_rid(trial), result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        rid = trial_rid(trial)
        self.phase.ended(rid, self.last.pop(rid, None) or trial.last_result or {}, error="")
        forget_metric_stats(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        rid = trial_rid(trial)
        error = ""
        if getattr(trial, "error_file", None) and Path(trial.error_file).exists():
            error = Path(trial.error_file).read_text(errors="replace")[-2000:]
        self.phase.ended(rid, self.last.pop(rid, None) or trial.last_result or {}, error=error or "error")
        forget_metric_stats(trial)


def forget_metric_stats(trial: Any) -> None:
    """Drop an ended trial's per-metric statistics: Tune keeps, for every numeric key of
    every result, its max, min, mean, last value and last-5 and last-10 means (with their
    deques), for every trial of a run, as long as the driver lives. Only Tune's
    ExperimentAnalysis.get_best_trial reads them, and the study never asks it: its
    records are the ledger's. They were most of the driver's growth over a study (about
    50 KB of the 80 KB a trial, traced over 130 tiny trials)."""
    meta = getattr(trial, "run_metadata", None)
    if meta is not None and hasattr(meta, "metric_analysis"):
        meta.metric_analysis, meta.metric_n_steps = {}, {}
        meta.invalidate_cache()


class StopAll(_NotSaved, tune.Stopper):
    """Stops every trial of the Tune run once `stopping()` is true (Ctrl-C, SIGTERM)."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        self.stopping = stopping

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.stopping()


__all__ = ["LedgerSearcher", "RungScheduler", "StopAll", "StudyCallback", "forget_metric_stats", "trial_rid"]
