"""The Tune backend: one Tune run per experiment, fed by the phases' bookkeeping.

Tune runs only the trials the driver hands it (`LedgerSearcher`), asks the rung
scheduler whether to stop a search trial, and reports every trial event to the
phases (`StudyCallback`). The trials get the events object through Tune's own
parameter passing (`tune.with_parameters`). A backend with the same two methods
(`start`, `run`) can stand in for it: the hand-played tests use one without Ray.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from study.driver import environment
from study.driver.context import Context
from study.searcher import METRIC, Rungs
from study.timeline import mark
from study.trainable import trainable

TUNE_RUNS_PER_PHASE = 3  # Tune runs of one experiment before its unfinished trials count as failed


class BackendError(RuntimeError):
    """Trials Tune could not finish (a bug or a broken cluster, not bad input)."""


class _NotSaved:
    """Tune pickles its run config, searcher and scheduler into its experiment folder;
    resstudy never reads them back (the ledger is the state), so these save nothing."""

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        pass


def _rid(trial: Any) -> str:
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
            mark(f"tune: trial started ({_rid(trial)})")
        self.phase.started(_rid(trial))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        # Tune retries the trial; it continues from its own latest checkpoint.
        self.phase.retried(_rid(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if not self.seen:
            self.seen = True
            mark(f"driver: first epoch result received ({_rid(trial)})")
        self.last[_rid(trial)] = result
        self.phase.result(_rid(trial), result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        rid = _rid(trial)
        self.phase.ended(rid, self.last.pop(rid, None) or trial.last_result or {}, error="")
        forget_metric_stats(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        rid = _rid(trial)
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


class TuneBackend:
    """Ray Tune on the embedded Ray or the cluster RAY_ADDRESS names."""

    def prestart(self, verbose: bool = False, workers: int | None = None) -> None:
        """Start the embedded Ray now, on a thread of its own, while the driver prepares
        (environment.prestart, with `workers` started as the driver connects); `start`
        then joins it."""
        environment.prestart(verbose, workers)

    def start(self, ctx: Context) -> None:
        """Start or join Ray, then check that a trial fits on one node (and, on a cluster,
        that every node sees the data)."""
        from study import preflight

        mark("ray: start")
        environment.init_ray(ctx.options.verbose, workers=ctx.spec.max_concurrent)
        mark("ray: up (ray.init returned)")
        if ctx.stop.is_set():  # stopped while Ray started: ask it nothing
            return
        preflight.check_cluster(ctx.spec, ray.cluster_resources(),
                                nodes=[n["Resources"] for n in ray.nodes() if n.get("Alive")])
        if os.environ.get("RAY_ADDRESS"):
            preflight.check_nodes(ctx.spec)
        mark("ray: cluster checked")

    def run(self, ctx: Context, phase: Any) -> None:
        """Run `phase` (a Phase or Phases) until every trial it plans has ended; Tune
        runs again (up to TUNE_RUNS_PER_PHASE) where it dropped a trial without an event."""
        spec = ctx.spec
        resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
        storage_path = f"{ctx.remote}/tune" if ctx.remote else str(ctx.study_dir / "tune")
        for _ in range(TUNE_RUNS_PER_PHASE):
            if phase.done():
                return
            phase.launched.clear()
            session = ctx.ledger.state["sessions"]
            scheduler = RungScheduler(phase.rungs, phase.pruned, applies=phase.is_search)
            tuner = tune.Tuner(
                tune.with_resources(tune.with_parameters(trainable, events=ctx.events), resources),
                param_space={},
                tune_config=tune.TuneConfig(
                    search_alg=LedgerSearcher(phase.next_trial), scheduler=scheduler, num_samples=-1,
                    max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
                    trial_dirname_creator=_rid),
                run_config=tune.RunConfig(
                    name=f"{phase.experiment}-{phase.phase}-s{session}", storage_path=storage_path,
                    callbacks=[StudyCallback(phase)], stop=StopAll(ctx.stop.is_set), verbose=0,
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=0)),
            )
            mark(f"tune: fit ({phase.experiment} {phase.phase})")
            tuner.fit()
            if ctx.stop.is_set():
                return
            for rid in list(phase.live):  # Tune dropped it without an event: run it again
                ctx.ledger.update(rid, status="interrupted")
                phase.live.discard(rid)
        if phase.unfinished():
            raise BackendError(f"{phase.experiment} {phase.phase}: trials {[r['rid'] for r in phase.unfinished()]} "
                               f"did not finish after {TUNE_RUNS_PER_PHASE} Tune runs")


__all__ = ["BackendError", "LedgerSearcher", "RungScheduler", "StopAll", "StudyCallback", "TuneBackend"]
