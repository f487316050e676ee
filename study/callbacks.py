"""Tune's view of a study phase: trial events go to the phase (ledger, Optuna,
MLflow, epoch logs, progress), and a stop request ends the whole Tune run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ray import tune


class _NotSaved:
    """Tune pickles its run config into tuner.pkl; resstudy never reads that back
    (resume starts from the ledger), so these driver-side objects save nothing."""

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        pass


class StudyCallback(_NotSaved, tune.Callback):
    """Driver-side: forwards each trial event to the phase, by resstudy trial id."""

    def __init__(self, phase: Any) -> None:
        self.phase = phase
        self.last: dict[str, dict[str, Any]] = {}

    def _rid(self, trial) -> str:
        return trial.config["_rid"]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.phase.started(self._rid(trial))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        # Tune retries the trial; it continues from its own latest checkpoint.
        self.phase.retried(self._rid(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.last[self._rid(trial)] = result
        self.phase.result(self._rid(trial), result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        rid = self._rid(trial)
        self.phase.ended(rid, self.last.get(rid) or trial.last_result or {}, error="")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        rid = self._rid(trial)
        error = ""
        if getattr(trial, "error_file", None) and Path(trial.error_file).exists():
            error = Path(trial.error_file).read_text(errors="replace")[-2000:]
        self.phase.ended(rid, self.last.get(rid) or trial.last_result or {}, error=error or "error")


class StopAll(_NotSaved, tune.Stopper):
    """Stops every trial of the Tune run once `stopping()` is true (Ctrl-C, SIGTERM)."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        self.stopping = stopping

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.stopping()
