"""The Tune backend: one Tune run per experiment, fed by the phases' bookkeeping.

Tune runs only the trials the driver hands it (`LedgerSearcher`), asks the rung
scheduler whether to stop a search trial, and reports every trial event to the
phases (`StudyCallback`). The trials get the events object through Tune's own
parameter passing (`tune.with_parameters`). A backend with the same two methods
(`start`, `run`) can stand in for it: the hand-played tests use one without Ray.
Ray Tune and Tune's plug-ins (study.driver.tune_hooks) are imported when a phase
runs, not with this module: the driver makes its backend before it starts Ray
(`prestart`), and Ray Tune's import (about 1 s) then runs beside the first trial's
worker preload instead of before Ray's start.
"""

from __future__ import annotations

import os
from typing import Any

from study.driver import environment
from study.driver.context import Context
from study.timeline import mark

TUNE_RUNS_PER_PHASE = 3  # Tune runs of one experiment before its unfinished trials count as failed


class BackendError(RuntimeError):
    """Trials Tune could not finish (a bug or a broken cluster, not bad input)."""


class TuneBackend:
    """Ray Tune on the embedded Ray or the cluster RAY_ADDRESS names."""

    def prestart(self, verbose: bool = False, workers: int | None = None) -> None:
        """Start the embedded Ray now, before the driver sets up its stores
        (environment.prestart, with `workers` started as the driver connects); `start`
        then finds it up."""
        environment.prestart(verbose, workers)

    def start(self, ctx: Context) -> None:
        """Start or join Ray, then check that a trial fits on one node (and, on a cluster,
        that every node sees the data)."""
        import ray

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
        from ray import tune

        from study.driver.tune_hooks import LedgerSearcher, RungScheduler, StopAll, StudyCallback, trial_rid
        from study.trainable import trainable

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
                    trial_dirname_creator=trial_rid),
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


__all__ = ["BackendError", "TuneBackend"]
