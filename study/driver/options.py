"""What a study run depends on besides its spec, passed in: runtime options, and
the events object the driver and its trials call at fixed points.

Production uses the defaults (`Events` does nothing). Tests plug faults in by
passing their own `Events` through this same seam: the object travels to the
trials through Tune's parameter passing, so a trial calls it exactly where a
production trial calls the no-op, and reports stay asynchronous.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from study import ledger as ledger_lib

# After Ctrl-C or SIGTERM, how long Tune may take to stop the trials before the study saves its
# state without Ray and exits; under the grace SLURM (30 s) and Kubernetes (30 s) give before SIGKILL.
STOP_GRACE_S = 10.0


class Events:
    """Called by the driver (study start, phase start, each epoch's line in the epoch log,
    the study's end) and inside each trial (after each epoch's report was queued). Must be
    picklable: the trials get a copy."""

    def study_start(self) -> None:
        """The driver holds the lock and Ray is up; no trial has started."""

    def phase_start(self, experiment: str, phase: str) -> None:
        """A phase's trials are about to be made (the search: before its first ask)."""

    def epoch_logged(self, experiment: str, phase: str, epoch: int) -> None:
        """An epoch reached the epoch log, before MLflow and Optuna get it."""

    def study_end(self) -> None:
        """The last trial ended; the study's summaries follow."""

    def after_epoch(self, config: dict[str, Any], control: dict[str, Any], epoch: int) -> None:
        """In the trial: epoch `epoch` was reported (queued, not necessarily delivered) and,
        where the checkpoint policy said so, checkpointed."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How this process runs a study, beside what the spec says the study is.

    checkpoint_every_s: a trial's checkpoint interval; None takes the spec's
      `checkpoint.every_minutes`.
    local_dir: where a study with remote storage keeps its ledger and Parquet files.
    mlflow_flush_wait_s: how long the end of a study waits for MLflow calls in flight.
    verbose: Ray's and MLflow's own logs at DEBUG/ERROR instead of silenced.
    stop_grace_s: after a stop signal, how long Tune may take before the state is saved without it.
    disk: how the ledger and study.json reach the disk (tests: one that fills up).
    """

    checkpoint_every_s: float | None = None
    local_dir: str = "resstudy_runs"
    mlflow_flush_wait_s: float = 120.0
    verbose: bool = False
    stop_grace_s: float = STOP_GRACE_S
    disk: ledger_lib.Disk = field(default=ledger_lib.DISK)

    @classmethod
    def from_environment(cls, **overrides: Any) -> "RuntimeOptions":
        """The user-facing settings a shell sets (documented in the README): RESSTUDY_VERBOSE,
        RESSTUDY_LOCAL_DIR, RESSTUDY_MLFLOW_FLUSH_WAIT."""
        env = os.environ
        found: dict[str, Any] = {"verbose": env.get("RESSTUDY_VERBOSE") == "1"}
        if env.get("RESSTUDY_LOCAL_DIR"):
            found["local_dir"] = env["RESSTUDY_LOCAL_DIR"]
        if env.get("RESSTUDY_MLFLOW_FLUSH_WAIT"):
            found["mlflow_flush_wait_s"] = float(env["RESSTUDY_MLFLOW_FLUSH_WAIT"])
        return cls(**{**found, **overrides})

    def checkpoint_interval(self, spec: Any) -> float:
        if self.checkpoint_every_s is not None:
            return float(self.checkpoint_every_s)
        return 60.0 * float(spec.checkpoint.every_minutes)


__all__ = ["Events", "RuntimeOptions", "STOP_GRACE_S"]
