"""What one running study holds, made once the driver has its lock and its stores:
the phases and arms get it explicitly, instead of reaching back into the runner."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.config import TrainConfig
from study.driver.options import Events, RuntimeOptions
from study.ledger import Ledger
from study.results import EpochLog
from study.searcher import METRIC
from study.spec import StudySpec


@dataclass
class Context:
    spec: StudySpec
    study_dir: Path
    options: RuntimeOptions
    events: Events
    ledger: Ledger
    epochs: EpochLog
    mlflow: Any  # study.driver.stores.MlflowRuns
    progress: Any  # study.progress.Progress
    optuna_storage: Any  # an optuna RDBStorage on the study's optuna.db
    stop: threading.Event = field(default_factory=threading.Event)  # set on Ctrl-C/SIGTERM
    remote: str | None = None  # remote storage URI (checkpoints go there directly)

    def ckpt_root(self, rid: str) -> str:
        return f"{self.remote or self.study_dir}/checkpoints/{rid}"

    def experiment(self, variant: str, depth: int) -> str:
        return experiment_name(self.spec.name, variant, depth)

    def best_search_record(self, experiment: str) -> dict[str, Any] | None:
        return best_search_record(self.ledger, experiment)


def experiment_name(study: str, variant: str, depth: int) -> str:
    return f"{study}-{variant}-d{depth}"


def best_search_record(ledger: Ledger, experiment: str) -> dict[str, Any] | None:
    """The completed search trial with the best validation accuracy (ties: the earlier one)."""
    done = [r for r in ledger.select(experiment=experiment, phase="search", status="completed")
            if isinstance(r["row"].get(METRIC), (int, float)) and math.isfinite(r["row"][METRIC])]
    return max(done, key=lambda r: (r["row"][METRIC], -r["optuna_number"])) if done else None


def identity(rec: dict[str, Any]) -> dict[str, Any]:
    """The columns that say which trial a row belongs to."""
    return {"study": rec["study"], "experiment": rec["experiment"], "subject": rec["subject"],
            "variant": rec["variant"], "arm": rec["arm"], "claim": rec.get("claim", ""), "phase": rec["phase"],
            "depth": rec["depth"], "trial_id": rec["rid"], "seed": rec["seed"]}


def ledger_error(error: str) -> str:
    return (error or "")[-500:]


def resolved(config: dict[str, Any]) -> dict[str, Any]:
    """The full TrainConfig a trial runs with (its own variant's options), as plain values."""
    return TrainConfig.from_dict(config).to_dict()


def run_name(variant: str, cfg: dict[str, Any], searched: list[str], phase: str, subject: str,
             arm: str = "") -> str:
    """What a person reads in the MLflow run list: variant and searched values."""
    def short(name: str) -> str:
        return name.removeprefix(f"{variant}_").removeprefix(f"{subject}_")

    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    if phase == "search":
        return " ".join([variant, *(f"{short(k)}={fmt(cfg.get(k))}" for k in searched)])
    what = {"repeat": "repeat", "twin": f"twin of {subject}"}.get(phase, arm)
    return f"{variant} {what} seed={cfg.get('seed')}"


__all__ = ["Context", "best_search_record", "experiment_name", "identity", "ledger_error", "resolved", "run_name"]
