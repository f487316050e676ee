"""The study driver, one role per module (docs/architecture.md draws the data flow):

- options: what a run depends on besides its spec (RuntimeOptions, the Events seam)
- manifest: what a start resolved (spaces, rungs, claims, plugins, versions), read by analysis
- context: what one running study holds, handed to phases and arms
- phases: the search, repeat and twin trials' bookkeeping (ledger, epoch log, MLflow, Optuna)
- experiment: one experiment's phases as one Tune run
- design / arms: the designed experiments of the variants' claims, round by round
- stores: the MLflow runs kept in step with the ledger
- backend: the Tune backend (Ray Tune imported when a phase runs)
- tune_hooks: Tune's plug-ins (searcher, rung scheduler, callback, stopper)
- environment: Ray's switches and the embedded Ray's start-up
- lifecycle: storage, spec fingerprint, signals and stopping
- runner: StudyRunner, run_study, resume_study

`import study.driver` stays light (no Ray): it sets Ray's switches (see
environment), and the names below load on first use.
"""

from __future__ import annotations

from typing import Any

from study.driver.environment import set_switches
from study.timeline import mark as _mark

set_switches()  # before any driver module imports ray
_mark("driver: package imported (spec loaded and checked)")

_EXPORTS = {
    "run_study": "study.driver.runner", "resume_study": "study.driver.runner", "StudyRunner": "study.driver.runner",
    "RuntimeOptions": "study.driver.options", "Events": "study.driver.options",
    "StudyInterrupted": "study.driver.lifecycle", "StorageError": "study.driver.lifecycle",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'study.driver' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = sorted(_EXPORTS)
