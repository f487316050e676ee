"""The study's MLflow runs, kept in step with the ledger: one run per trial, each
epoch logged once at the time it was logged, artifacts at the end, runs a killed
driver left adopted or deleted, and the experiment and study summaries."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from study.driver.context import best_search_record, experiment_name
from study.ledger import FINISHED, Ledger
from study.results import EpochLog, is_number, row_metrics
from study.searcher import METRIC
from study.spec import StudySpec
from study.tracking import TRIAL_TAG, Tracker


class MlflowRuns:
    def __init__(self, tracker: Tracker, spec: StudySpec, study_dir: Path, ledger: Ledger, epochs: EpochLog) -> None:
        self.tracker, self.spec, self.study_dir, self.ledger, self.epochs = tracker, spec, study_dir, ledger, epochs
        self.open: set[str] = set()  # experiment runs open now (ended on every path)
        self._steps: dict[str, dict[str, set[int]]] = {}  # per trial: metric -> steps its run holds

    def open_trial(self, experiment: str, rec: dict[str, Any]) -> None:
        key = f"trial:{rec['rid']}"
        if rec.get("mlflow_run_id") and key not in self.tracker.ids:
            self.tracker.ids[key] = rec["mlflow_run_id"]
        tags = {"resstudy.level": "trial", "resstudy.study": self.spec.name, TRIAL_TAG: rec["rid"],
                "variant": rec["variant"], "subject": rec["subject"], "arm": rec["arm"], "phase": rec["phase"],
                "seed": str(rec["seed"]), "status": "running"}
        if rec.get("claim"):
            tags["claim"] = rec["claim"]
        self.tracker.create(key, f"exp:{experiment}", rec["name"], tags, params=rec["config"])

    def open_experiment(self, experiment: str, variant: str, depth: int) -> None:
        self.tracker.create(f"exp:{experiment}", "study", experiment,
                            {"resstudy.level": "variant", "variant": variant, "depth": str(depth)})
        self.open.add(f"exp:{experiment}")

    def end_experiment(self, experiment: str) -> None:
        self.experiment_summary(experiment)
        self.tracker.end(f"exp:{experiment}", "completed")
        self.open.discard(f"exp:{experiment}")

    def epochs_to_run(self, rid: str, rows: list[dict[str, Any]], fresh: bool = False) -> None:
        """The epochs of `rows` (epoch log rows) that the trial's MLflow run lacks, each at the
        time it was logged. What the run holds is asked once per driver and then kept up to date;
        `fresh` rows were just logged for the first time, so MLflow cannot hold them."""
        key = f"trial:{rid}"
        held = self._steps.get(rid)
        if held is None and not fresh:
            names = sorted({k for r in rows for k, v in row_metrics(r).items() if is_number(v)})
            held = self._steps[rid] = self.tracker.logged_steps(key, names)
        for row in rows:
            epoch = int(row["epoch"])
            metrics = {k: v for k, v in row_metrics(row).items() if is_number(v)}
            if not metrics or (held is not None and all(epoch in held.get(k, ()) for k in metrics)):
                continue
            self.tracker.metrics(key, metrics, step=epoch, ts=row.get("logged_ms"))
            if held is not None:
                for k in metrics:
                    held.setdefault(k, set()).add(epoch)

    def end_trial(self, rid: str, variant: str, outcome: str, row: dict[str, Any], result: dict[str, Any]) -> None:
        key = f"trial:{rid}"
        if not self.tracker.known(key):
            return
        self.tracker.tags(key, {"status": outcome, "node": row["node"], "epochs_reached": row["epochs_reached"]})
        self._artifacts(key, rid, variant, result)
        self.tracker.end(key, outcome)

    def interrupt_trial(self, rid: str) -> None:
        key = f"trial:{rid}"
        if self.tracker.known(key):
            self.tracker.tags(key, {"status": "interrupted"})
            self.tracker.end(key, "interrupted")

    def _artifacts(self, key: str, rid: str, variant: str, result: dict[str, Any]) -> None:
        info = json.loads(result.get("info_json") or "{}")  # quotient's artifact comes from its metrics alone
        try:
            from study import artifacts

            for path in artifacts.write(info, result, self.study_dir / "artifacts" / rid, variant):
                self.tracker.artifact(key, path)
        except Exception as e:  # an artifact must never cost a trial its result
            print(f"resstudy: artifacts of {rid} not written: {e}", file=sys.stderr)

    def reconcile(self) -> None:
        """One MLflow run per trial: adopt or delete runs a killed driver left, and end
        the runs of finished trials that were left RUNNING."""
        try:
            runs = self.tracker.trial_runs(self.spec.name)
        except Exception as e:
            print(f"resstudy: MLflow runs not reconciled ({type(e).__name__})", file=sys.stderr)
            return
        by_rid: dict[str, list] = {}
        for run in runs:
            by_rid.setdefault(run.data.tags.get(TRIAL_TAG, ""), []).append(run)
        for rid, group in by_rid.items():
            rec = self.ledger.trials.get(rid)
            keep = rec.get("mlflow_run_id") if rec else None
            if rec is not None and keep is None:
                keep = sorted(group, key=lambda r: r.info.start_time)[0].info.run_id
                self.ledger.update(rid, mlflow_run_id=keep)
            for run in group:
                if run.info.run_id != keep:
                    self.tracker.delete_run(run.info.run_id)
                elif rec is not None and rec["status"] in FINISHED and run.info.status == "RUNNING":
                    self.tracker.ids[f"trial:{rid}"] = keep
                    self.epochs_to_run(rid, self.epochs.first(rid))  # a kill kept its last epochs from it
                    self.tracker.tags(f"trial:{rid}", {"status": rec["status"]})
                    self.tracker.end(f"trial:{rid}", rec["status"])
        for rec in self.ledger.trials.values():
            if rec.get("mlflow_run_id"):
                self.tracker.ids[f"trial:{rec['rid']}"] = rec["mlflow_run_id"]

    def experiment_summary(self, experiment: str) -> None:
        best = best_search_record(self.ledger, experiment)
        recs = list(self.ledger.select(experiment=experiment))
        counts = {s: sum(1 for r in recs if r["status"] == s and r["phase"] == "search") for s in FINISHED}
        metrics = {f"n_{s}": float(n) for s, n in counts.items()}
        if best is not None:
            metrics["best_val_acc"] = float(best["row"][METRIC])
            self.tracker.params(f"exp:{experiment}", {f"best.{k}": v for k, v in best["config"].items()})
            self.tracker.tags(f"exp:{experiment}", {"best_trial": best["rid"],
                                                    "best_mlflow_run_id": best.get("mlflow_run_id") or ""})
        self.tracker.metrics(f"exp:{experiment}", metrics, step=0)

    def study_summary(self) -> None:
        metrics, tags = {}, {}
        for variant, depth in self.spec.experiments():
            best = best_search_record(self.ledger, experiment_name(self.spec.name, variant, depth))
            if best is not None:
                metrics[f"best_val_acc.{variant}.d{depth}"] = float(best["row"][METRIC])
                tags[f"best_trial.{variant}.d{depth}"] = best["rid"]
        if metrics:
            metrics["best_val_acc"] = max(metrics.values())
            self.tracker.metrics("study", metrics, step=0)
            self.tracker.tags("study", tags)
        self.tracker.metrics("study", {"n_trials": float(len(self.ledger.trials))}, step=0)

    def stopped(self, status: str) -> None:
        """Every run ends on every path: the open experiment runs and the study's as
        `status` (finished experiments stay FINISHED)."""
        for key in ["study", *sorted(self.open)]:
            if self.tracker.known(key):
                self.tracker.end(key, "interrupted" if status == "KILLED" else "failed")


__all__ = ["MlflowRuns"]
