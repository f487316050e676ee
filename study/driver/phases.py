"""The bookkeeping of one experiment's phases: which trial to launch next, and what
to record when Tune reports on it. Every store hears of each event once, in one
order: the ledger (the study's truth) or the epoch log first, then MLflow, then Optuna.

A launched trial is {"config": its TrainConfig dict, "control": the driver's data
for it (trial id, phase, checkpoint root and policy, plugin files)}: the config
is what the trial trains, the control how it is run, and neither holds the other.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune.search import Searcher

from study.config import TrainConfig
from study.driver.context import Context, identity, ledger_error, resolved, run_name
from study.ledger import FINISHED
from study.results import EPOCH_ONLY, RESOLVED, metrics_of
from study.searcher import (METRIC, Rungs, SamplerState, ask, frozen_trial, optuna_study, replay,
                            report_intermediate, tell, unpark)
from study.trainable import checkpoint_epochs, read_reports

FIXED_PHASES = ("repeat", "twin")  # after the search, from its best configuration


class Phase:
    """The trials of one (experiment, phase)."""

    def __init__(self, ctx: Context, variant: str, depth: int, phase: str) -> None:
        self.ctx, self.subject, self.depth, self.phase = ctx, variant, depth, phase
        spec = ctx.spec
        self.experiment = ctx.experiment(variant, depth)
        self.label = f"{variant} d{depth}"
        self.live: set[str] = set()
        self.launched: set[str] = set()
        self._rids = [rid for rid, r in ctx.ledger.trials.items() if r["experiment"] == self.experiment
                      and r["phase"] == phase]  # one scan, then kept up to date (flat cost per trial)
        self.optuna = None
        self.objectives = list(spec.variants[variant].objectives or [METRIC])
        self.rungs: Rungs | None = None
        self.params: list[Any] = []
        self.space = None
        self.planned = len(spec.seeds)
        if phase == "search":
            from study import spaces

            self.params = spaces.space_params(variant, spec.space_overrides(variant),
                                                     spec.variants[variant].fixed)
            self.space = spec.build_space(variant)
            sampler = spec.make_sampler(variant)
            self.planned = min(spec.trials_per_variant, getattr(sampler, "size", spec.trials_per_variant))
            self.optuna = optuna_study(ctx.optuna_storage, self.experiment, self.objectives, sampler)
            # a resumed search draws on from where the sampler stood, never from its seed again
            self.sampler_state = SamplerState(ctx.study_dir / "samplers" / f"{self.experiment}.json",
                                              spec.search.seed)
            note = self.sampler_state.restore(self.optuna)
            if note:
                ctx.progress.message(note)
            if spec.scheduler.type == "asha":
                self.rungs = Rungs(spec.epochs, spec.scheduler.grace_period, spec.scheduler.reduction_factor)

    # ------------------------------------------------------------ records

    def records(self) -> list[dict[str, Any]]:
        return [self.ctx.ledger.trials[rid] for rid in self._rids]

    def unfinished(self) -> list[dict[str, Any]]:
        return self.ctx.ledger.unfinished(self.experiment, self.phase)

    def done(self) -> bool:
        return not self.unfinished() and (self.phase != "search" or len(self._rids) >= self.planned)

    def new_record(self, config: dict[str, Any], *, variant: str, arm: str, optuna_number: int | None,
                   searched: list[str], claim: str = "") -> dict[str, Any]:
        rid = f"{self.experiment}-{self.phase[0]}{len(self._rids):04d}"
        cfg = resolved(config)
        self._rids.append(rid)
        return self.ctx.ledger.put({
            "rid": rid, "study": self.ctx.spec.name, "experiment": self.experiment, "subject": self.subject,
            "variant": variant, "arm": arm, "claim": claim, "phase": self.phase, "depth": self.depth,
            "seed": int(cfg["seed"]), "optuna_number": optuna_number, "config": cfg, "searched": searched,
            "status": "pending", "attempts": 0, "mlflow_run_id": None, "pruned_at": None, "created": time.time(),
            "name": run_name(variant, cfg, searched, self.phase, self.subject, arm),
        })

    def create_fixed(self) -> bool:
        """Repeat/twin records, all at once (their configs follow from the search)."""
        if self.records():
            return True
        best = self.ctx.best_search_record(self.experiment)
        if best is None:
            self.ctx.progress.message(f"{self.experiment}: no completed search trial; no {self.phase} phase")
            return False
        for seed in self.ctx.spec.seeds:
            cfg = TrainConfig.from_dict(best["config"]).replace(seed=seed)
            if self.phase == "twin":
                twin = cfg.twin()
                if twin is None:
                    return False
                cfg = twin
            self.new_record(cfg.to_dict(), variant=cfg.variant, arm="twin" if self.phase == "twin" else "variant",
                            optuna_number=None, searched=list(best["searched"]))
        return True

    # ------------------------------------------------------------ before launching: reconcile

    def reconcile(self) -> None:
        """Bring unfinished trials in line with what their checkpoints and Optuna hold."""
        if self.optuna is not None and self.space is not None:
            unpark(self.optuna)  # an interrupted study's trials, WAITING until now
            known = {r["optuna_number"] for r in self.records()}
            for t in self.optuna.trials:
                if t.number not in known and not t.state.is_finished():
                    # asked, then killed before the ledger line: adopt it with its stored params
                    values = replay(self.optuna, t.number, self.space)
                    self.new_record({**self.ctx.spec.trial_base_config(self.subject, self.depth), **values},
                                    variant=self.subject, arm="variant", optuna_number=t.number,
                                    searched=self._searched(values))
        for rec in self.unfinished():
            self._catch_up(rec)
        if self.rungs is not None:
            for rec in self.ctx.ledger.select(experiment=self.experiment, phase="search"):
                by_epoch = {int(r["epoch"]): r[METRIC] for r in self.ctx.epochs.first(rec["rid"])
                            if r.get(METRIC) is not None}
                self.rungs.seed(rec["rid"], by_epoch)

    def _replay(self, rec: dict[str, Any], run_open: bool = False) -> list[dict[str, Any]]:
        """Each store gets the epochs it lacks, once: the epoch log those the trial's latest
        checkpoint holds (trained and checkpointed, then the process died before the report
        reached the driver), then MLflow and Optuna those of the epoch log (a driver killed
        between its log line and theirs). Returns the checkpoint's reports."""
        ctx, rid = self.ctx, rec["rid"]
        root = ctx.ckpt_root(rid)
        done = checkpoint_epochs(root)
        reports = read_reports(root, done[-1]) if done else []
        logged = set(ctx.epochs.epochs(rid))
        for r in reports:
            if int(r["epoch"]) not in logged:
                ctx.epochs.append(identity(rec), int(r["epoch"]), rec["attempts"], metrics_of(r), replayed=True)
        rows = ctx.epochs.first(rid)
        if rows and not run_open and not ctx.mlflow.tracker.known(f"trial:{rid}"):
            ctx.mlflow.open_trial(self.experiment, rec)  # its run never reached MLflow
        ctx.mlflow.epochs_to_run(rid, rows)
        if self.optuna is not None and rec["optuna_number"] is not None:
            report_intermediate(self.optuna, rec["optuna_number"], {int(r["epoch"]): r.get(METRIC) for r in rows})
        return reports

    def _catch_up(self, rec: dict[str, Any]) -> None:
        reports = self._replay(rec)
        last = reports[-1] if reports else None
        if self.optuna is not None and rec["optuna_number"] is not None:
            t = frozen_trial(self.optuna, rec["optuna_number"])
            if t.state.is_finished():
                told = t.user_attrs.get("status") or {"COMPLETE": "completed", "PRUNED": "pruned"}.get(
                    t.state.name, "failed")
                self.finish(rec, told, last or {}, t.user_attrs.get("error", ""))
                return
        if rec.get("pruned_at") and last is not None:
            self.finish(rec, "pruned", last)
        elif last is not None and last.get("status") in ("completed", "diverged"):
            self.finish(rec, last["status"], last)

    def _searched(self, config: dict[str, Any]) -> list[str]:
        return [p.name for p in self.params if p.is_active(config)]

    # ------------------------------------------------------------ Tune asks for the next trial

    def next_trial(self):
        if self.ctx.stop.is_set():
            return Searcher.FINISHED
        waiting = False
        for rec in self.unfinished():
            if rec["rid"] not in self.launched:
                if self.phase == "twin":
                    matched = self._matched(rec)
                    if matched is None:  # its paired variant run is still training
                        waiting = True
                        continue
                    rec = matched
                return self._launch(rec)
        if waiting:
            return None
        if self.phase == "search" and len(self._rids) < self.planned:
            assert self.optuna is not None and self.space is not None
            number, values = ask(self.optuna, self.space, self.sampler_state)  # saves the sampler state
            config = {**self.ctx.spec.trial_base_config(self.subject, self.depth), **values}
            rec = self.new_record(config, variant=self.subject, arm="variant", optuna_number=number,
                                  searched=self._searched(config))
            return self._launch(rec)
        return Searcher.FINISHED

    def _matched(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        """A twin trains exactly the epochs its paired variant run (same seed) trained,
        where that run's training could extend past `epochs` (epsilon's restarts):
        None until that run has finished, then the twin with `train_epochs` set. A
        partner that did not complete leaves the twin at its own `epochs`."""
        if rec["config"].get("train_epochs") is not None:
            return rec
        partner = next((r for r in self.ctx.ledger.trials.values() if r["experiment"] == self.experiment
                        and r["phase"] == "repeat" and r["seed"] == rec["seed"]), None)
        return matched_epochs(self.ctx, rec, partner)

    def _launch(self, rec: dict[str, Any]) -> dict[str, Any]:
        return launch(self.ctx, rec, self.phase, self.rungs, self.launched, self.live)

    # ------------------------------------------------------------ Tune's events

    def started(self, rid: str) -> None:
        rec = self.ctx.ledger.trials[rid]
        self.ctx.mlflow.open_trial(self.experiment, rec)
        self.ctx.progress.trial_started(rid, self.label, self.phase)

    def retried(self, rid: str) -> None:
        rec = self.ctx.ledger.trials[rid]
        # the failed attempt's checkpointed epochs, before the retry goes on from them (its run is open)
        self._replay(rec, run_open=True)
        self.ctx.ledger.update(rid, attempts=rec["attempts"] + 1)

    def result(self, rid: str, result: dict[str, Any]) -> None:
        rec = self.ctx.ledger.trials[rid]
        self._log_epoch(rec, result)
        # epsilon's restarts may extend training: the trainer says how far it now runs
        epochs = int(result.get("epochs_planned") or rec["config"].get("train_epochs") or rec["config"]["epochs"])
        self.ctx.progress.trial_epoch(rid, int(result.get("epoch", 0)), epochs, result.get(METRIC),
                                      result.get("epoch_seconds"))

    def _log_epoch(self, rec: dict[str, Any], result: dict[str, Any]) -> None:
        """The epoch log first (the driver's truth), then MLflow and Optuna. An epoch logged
        before (trained again after a kill, or by a retry from an older checkpoint) keeps its
        first report everywhere: the repeat stays in the raw epoch log only."""
        ctx, rid, epoch = self.ctx, rec["rid"], int(result.get("epoch", 0))
        row = ctx.epochs.append(identity(rec), epoch, rec["attempts"], metrics_of(result))
        if row.get("repeat"):
            return
        ctx.events.epoch_logged(self.experiment, self.phase, epoch)
        ctx.mlflow.epochs_to_run(rid, [row], fresh=True)
        if self.optuna is not None and rec["optuna_number"] is not None:
            report_intermediate(self.optuna, rec["optuna_number"], {epoch: result.get(METRIC)})

    def pruned(self, rid: str, epoch: int) -> None:
        self.ctx.ledger.update(rid, pruned_at=epoch)

    def is_search(self, rid: str) -> bool:
        return self.ctx.ledger.trials[rid]["phase"] == "search"

    def ended(self, rid: str, result: dict[str, Any], error: str) -> None:
        if rid not in self.live:
            return
        rec = self.ctx.ledger.trials[rid]
        status = result.get("status")
        if status in ("completed", "diverged"):
            outcome = status
        elif rec.get("pruned_at") is not None:
            outcome = "pruned"
        elif self.ctx.stop.is_set():
            self.interrupt(rec)
            return
        else:
            outcome = "failed"
            error = error or f"trial ended at epoch {result.get('epoch', 0)} without finishing"
        self.finish(rec, outcome, result, error)

    def interrupt(self, rec: dict[str, Any]) -> None:
        """Stopped by Ctrl-C/SIGTERM: resumable from its latest checkpoint."""
        self.ctx.ledger.update(rec["rid"], status="interrupted")
        self.ctx.mlflow.interrupt_trial(rec["rid"])
        self.live.discard(rec["rid"])
        self.ctx.progress.trial_finished(rec["rid"], "interrupted", label=self.label, phase=self.phase)

    def finish(self, rec: dict[str, Any], outcome: str, result: dict[str, Any], error: str = "") -> None:
        """A trial's end: Optuna first, then the ledger (the study's truth), then MLflow."""
        ctx, rid = self.ctx, rec["rid"]
        row = {**identity(rec), "optuna_number": rec["optuna_number"], "status": outcome,
               "epochs_reached": int(result.get("epoch", 0)),
               "seconds": round(time.time() - (rec.get("started") or time.time()), 3),
               "node": result.get("node", ""), "mlflow_run_id": ctx.mlflow.tracker.run_id(f"trial:{rid}") or "",
               "searched": rec["searched"], "error": ledger_error(error)}
        row.update(rec["config"])
        # the trial's own numbers, not per-epoch ones (lr, speed); precision and device as resolved
        metrics = {k: v for k, v in metrics_of(result).items()
                   if k not in EPOCH_ONLY and (k not in rec["config"] or k in RESOLVED)}
        if outcome != "completed":
            metrics = {k: (float("nan") if k.startswith(("test_", "compressed_test")) else v)
                       for k, v in metrics.items()}
        row.update(metrics)
        if self.optuna is not None and rec["optuna_number"] is not None:
            tell(self.optuna, rec["optuna_number"], outcome, result, self.objectives,
                 {"rid": rid, "status": outcome, "seed": rec["seed"], "variant": rec["variant"], "depth": self.depth,
                  "epochs": row["epochs_reached"], "mlflow_run_id": row["mlflow_run_id"],
                  **({"error": row["error"]} if row["error"] else {})})
        ctx.ledger.update(rid, status=outcome, row=row, finished=time.time())
        ctx.mlflow.end_trial(rid, rec["variant"], outcome, row, result)
        self.live.discard(rid)
        ctx.progress.trial_finished(rid, outcome, result.get("best_val_acc", result.get(METRIC)), label=self.label,
                                    phase=self.phase)


def matched_epochs(ctx: Context, rec: dict[str, Any], partner: dict[str, Any] | None) -> dict[str, Any] | None:
    """`rec` (a twin) set to train the epochs its partner trained where the partner's training
    could extend; None while the partner still trains."""
    if partner is None or TrainConfig.from_dict(partner["config"]).epoch_limit() == partner["config"]["epochs"]:
        return rec
    if partner["status"] not in FINISHED:
        return None
    if partner["status"] != "completed":
        return rec
    epochs = int(partner["row"]["epochs_reached"])
    return ctx.ledger.update(rec["rid"], config={**rec["config"], "train_epochs": epochs})


def launch(ctx: Context, rec: dict[str, Any], phase: str, rungs: Rungs | None, launched: set[str],
           live: set[str]) -> dict[str, Any]:
    """The trial as Tune gets it: its config, and beside it the driver's control data."""
    rec = ctx.ledger.update(rec["rid"], status="running", attempts=rec["attempts"] + 1,
                            started=rec.get("started") or time.time())
    launched.add(rec["rid"])
    live.add(rec["rid"])
    cfg = dict(rec["config"])
    cfg["threads"] = cfg.get("threads") or max(1, int(ctx.spec.resources.cpu))
    control = {"rid": rec["rid"], "phase": phase, "ckpt": ctx.ckpt_root(rec["rid"]),
               "plugins": list(ctx.spec.plugins), "ckpt_epochs": list(rungs.milestones) if rungs else [],
               "ckpt_every_s": ctx.options.checkpoint_interval(ctx.spec)}
    return {"config": cfg, "control": control}


__all__ = ["FIXED_PHASES", "Phase", "launch", "matched_epochs"]
