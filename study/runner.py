"""Run a study: for each (variant, depth), a search (Optuna through ask/tell,
ASHA stopping the weak), a repeat of the best config at every seed and the same
runs of its matched twin; every trial tracked in MLflow (study > variant > trial)
and recorded in the study's ledger (study/ledger.py) before anything else.

Resume is ledger-first: finished trials never re-run, a trial that was running
continues from its latest checkpoint with its own config, Optuna trial and
MLflow run, and the study ends with exactly the trials the spec asks for.
Ctrl-C or SIGTERM stop the whole study (exit 130, resume later): trials stopped,
nothing left running in the ledger, MLflow or Optuna (an interrupted search trial
waits there as WAITING). Should Ray not answer within STOP_GRACE_S (a job's
SIGTERM can reach Ray's processes too), or on a second signal, the state is saved
without Ray and the driver exits at once.

Each epoch reaches each store once: the epoch log first (the driver's truth),
then MLflow and Optuna; on resume and on a Tune retry each store gets what it
lacks, and an epoch trained again counts by its first report everywhere.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

if not os.environ.get("RAY_ADDRESS"):
    # The embedded local Ray must listen on loopback only. On Linux Ray rewrites
    # 127.0.0.1 to the machine's routable IP and binds its servers to every
    # interface; this switch (read when ray is imported) keeps them on 127.0.0.1.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Token auth, set before ray is imported: Ray's native side reads the mode once, and a
    # mode set later by ray.init's default is not seen by a retried start in this process.
    # Where ray was imported first, its native side has read the mode already: setting it
    # now would start servers that want a token the driver never sends; ray.init's own
    # default (token auth on) applies there.
    _SET_AUTH_MODE = "ray" not in sys.modules
    if _SET_AUTH_MODE:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
else:
    _SET_AUTH_MODE = False
# resstudy keeps its own state: Tune's per-trial logger files and periodic experiment
# snapshots are work the driver would pay for per report, and Tune's own SIGINT
# handling would stop one phase only.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "3600")
os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

from study import ledger as ledger_lib  # noqa: E402
from study.callbacks import StopAll, StudyCallback  # noqa: E402
from study.config import TrainConfig  # noqa: E402
from study.errors import UserError  # noqa: E402
from study.ledger import FINISHED, Ledger, SpecChanged, StateError, StudyLock  # noqa: E402
from study.results import EPOCH_ONLY, RESOLVED, EpochLog, compact, metrics_of, row_metrics  # noqa: E402
from study.searcher import (METRIC, LedgerSearcher, RungScheduler, Rungs, SamplerState, ask,  # noqa: E402
                            frozen_trial, optuna_study, park, replay, report_intermediate, tell, unpark)
from study.spec import StudySpec  # noqa: E402
from study.tracking import TRIAL_TAG, Tracker, redact_uri  # noqa: E402
from study.trainable import checkpoint_epochs, read_reports, trainable  # noqa: E402

STATE_FILE = ledger_lib.STATE_FILE
# After Ctrl-C or SIGTERM, how long Tune may take to stop the trials before the study saves its
# state without Ray and exits; under the grace SLURM (30 s) and Kubernetes (30 s) give before SIGKILL.
STOP_GRACE_S = 10.0
DEFAULT_CHECKPOINT_EVERY_S = 300.0


class StorageError(UserError):
    """The study's storage cannot be used; the message names the path."""


class StudyInterrupted(KeyboardInterrupt):
    """The study stopped on Ctrl-C/SIGTERM with its state saved (exit 130)."""


# ---------------------------------------------------------------- one phase


class Phase:
    """The trials of one (experiment, phase): which to launch next, and what to
    record when Tune reports on them."""

    def __init__(self, study: "StudyRunner", variant: str, depth: int, phase: str) -> None:
        self.s, self.subject, self.depth, self.phase = study, variant, depth, phase
        spec = study.spec
        self.experiment = f"{spec.name}-{variant}-d{depth}"
        self.label = f"{variant} d{depth}"
        self.live: set[str] = set()
        self.launched: set[str] = set()
        self._rids: list[str] | None = None
        self.optuna = None
        self.objectives = list(getattr(spec.variants[variant], "objectives", None) or [METRIC])
        self.rungs: Rungs | None = None
        if phase == "search":
            import search_spaces

            overrides = spec.space_overrides(variant)
            self.params = search_spaces.space_params(variant, overrides, spec.variants[variant].fixed)
            self.space = spec.build_space(variant)
            sampler = spec.make_sampler(variant)
            self.planned = min(spec.trials_per_variant, getattr(sampler, "size", spec.trials_per_variant))
            self.optuna = optuna_study(study.optuna_storage(), self.experiment, self.objectives, sampler)
            # a resumed search draws on from where the sampler stood, never from its seed again
            self.sampler_state = SamplerState(study.study_dir / "samplers" / f"{self.experiment}.json",
                                              spec.search.seed)
            note = self.sampler_state.restore(self.optuna)
            if note:
                study.progress.message(note)
            if spec.scheduler.type == "asha":
                self.rungs = Rungs(spec.epochs, spec.scheduler.grace_period, spec.scheduler.reduction_factor)
        else:
            self.params, self.space = [], None
            self.planned = len(spec.seeds)
        # its own trials only: in a Tune run shared with other phases, theirs are not on its rungs
        self.scheduler = RungScheduler(self.rungs, self._pruned,
                                       applies=lambda rid: study.ledger.trials[rid]["phase"] == phase)

    # ------------------------------------------------------------ records

    def records(self) -> list[dict[str, Any]]:
        if self._rids is None:  # one scan per phase, then kept up to date (flat cost per trial)
            self._rids = [rid for rid, r in self.s.ledger.trials.items() if r["experiment"] == self.experiment
                          and r["phase"] == self.phase]
        return [self.s.ledger.trials[rid] for rid in self._rids]

    def unfinished(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["status"] not in FINISHED]

    def done(self) -> bool:
        return not self.unfinished() and (self.phase != "search" or len(self.records()) >= self.planned)

    def _new_record(self, config: dict[str, Any], *, variant: str, arm: str, optuna_number: int | None,
                    searched: list[str]) -> dict[str, Any]:
        led = self.s.ledger
        rid = f"{self.experiment}-{self.phase[0]}{len(self.records()):04d}"
        cfg = resolved(config)
        self._rids.append(rid)
        return led.put({
            "rid": rid, "study": self.s.spec.name, "experiment": self.experiment, "subject": self.subject,
            "variant": variant, "arm": arm, "phase": self.phase, "depth": self.depth, "seed": int(cfg["seed"]),
            "optuna_number": optuna_number, "config": cfg, "searched": searched, "status": "pending",
            "attempts": 0, "mlflow_run_id": None, "pruned_at": None, "created": time.time(),
            "name": run_name(variant, cfg, searched, self.phase, self.subject),
        })

    def create_fixed(self) -> bool:
        """Repeat/twin records, all at once (their configs follow from the search)."""
        if self.records():
            return True
        best = self.s.best_search_record(self.experiment)
        if best is None:
            self.s.progress.message(f"{self.experiment}: no completed search trial; no {self.phase} phase")
            return False
        for seed in self.s.spec.seeds:
            cfg = TrainConfig.from_dict(best["config"]).replace(seed=seed)
            if self.phase == "twin":
                twin = cfg.twin() if hasattr(cfg, "twin") else None
                if twin is None:
                    return False
                cfg = twin
            self._new_record(cfg.to_dict(), variant=cfg.variant, arm="twin" if self.phase == "twin" else "variant",
                             optuna_number=None, searched=list(best["searched"]))
        return True

    # ------------------------------------------------------------ before launching: reconcile

    def reconcile(self) -> None:
        """Bring unfinished trials in line with what their checkpoints and Optuna hold."""
        if self.optuna is not None:
            unpark(self.optuna)  # an interrupted study's trials, WAITING until now
            known = {r["optuna_number"] for r in self.records()}
            for t in self.optuna.trials:
                if t.number not in known and not t.state.is_finished():
                    # asked, then killed before the ledger line: adopt it with its stored params
                    values = replay(self.optuna, t.number, self.space)
                    self._new_record({**self.s.spec.trial_base_config(self.subject, self.depth), **values},
                                     variant=self.subject, arm="variant", optuna_number=t.number,
                                     searched=self._searched(values))
        for rec in self.unfinished():
            self._catch_up(rec)
        if self.rungs is not None:
            for rec in self.s.ledger.select(experiment=self.experiment, phase="search"):
                by_epoch = {int(r["epoch"]): r.get(METRIC) for r in self.s.epochs.first(rec["rid"])}
                self.rungs.seed(rec["rid"], by_epoch)

    def _replay(self, rec: dict[str, Any], run_open: bool = False) -> list[dict[str, Any]]:
        """Each store gets the epochs it lacks, once: the epoch log those the trial's latest
        checkpoint holds (trained and checkpointed, then the process died before the report
        reached the driver), then MLflow and Optuna those of the epoch log (a driver killed
        between its log line and theirs). Returns the checkpoint's reports."""
        rid = rec["rid"]
        root = self.s.ckpt_root(rid)
        done = checkpoint_epochs(root)
        reports = read_reports(root, done[-1]) if done else []
        logged = set(self.s.epochs.epochs(rid))
        for r in reports:
            if int(r["epoch"]) not in logged:
                self.s.epochs.append(self.s.identity(rec), int(r["epoch"]), rec["attempts"], metrics_of(r),
                                     replayed=True)
        rows = self.s.epochs.first(rid)
        if rows and not run_open and not self.s.tracker.known(f"trial:{rid}"):
            self.s.open_trial_run(self, rec)  # its run never reached MLflow
        self.s.to_mlflow(rid, rows)
        if self.optuna is not None and rec["optuna_number"] is not None:
            report_intermediate(self.optuna, rec["optuna_number"], {int(r["epoch"]): r.get(METRIC) for r in rows})
        return reports

    def _catch_up(self, rec: dict[str, Any]) -> None:
        reports = self._replay(rec)
        last = reports[-1] if reports else None
        told = None
        if self.optuna is not None and rec["optuna_number"] is not None:
            t = frozen_trial(self.optuna, rec["optuna_number"])
            if t.state.is_finished():
                told = t.user_attrs.get("status") or {"COMPLETE": "completed", "PRUNED": "pruned"}.get(
                    t.state.name, "failed")
        if told is not None:
            self.finish(rec, told, last or {}, t.user_attrs.get("error", ""))
        elif rec.get("pruned_at") and last is not None:
            self.finish(rec, "pruned", last)
        elif last is not None and last.get("status") in ("completed", "diverged"):
            self.finish(rec, last["status"], last)

    def _searched(self, config: dict[str, Any]) -> list[str]:
        return [p.name for p in self.params if p.is_active(config)]

    # ------------------------------------------------------------ Tune asks for the next trial

    def next_trial(self):
        if self.s.stopping:
            return Searcher.FINISHED
        waiting = False
        for rec in self.unfinished():
            if rec["rid"] not in self.launched:
                if self.phase == "twin":
                    rec = self._matched(rec)
                    if rec is None:  # its paired variant run is still training
                        waiting = True
                        continue
                return self._launch(rec)
        if waiting:
            return None
        if self.phase == "search" and len(self.records()) < self.planned:
            number, values = ask(self.optuna, self.space, self.sampler_state)  # saves the sampler state
            config = {**self.s.spec.trial_base_config(self.subject, self.depth), **values}
            rec = self._new_record(config, variant=self.subject, arm="variant", optuna_number=number,
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
        partner = next((r for r in self.s.ledger.trials.values() if r["experiment"] == self.experiment
                        and r["phase"] == "repeat" and r["seed"] == rec["seed"]), None)
        if partner is None or TrainConfig.from_dict(partner["config"]).epoch_limit() == partner["config"]["epochs"]:
            return rec
        if partner["status"] not in FINISHED:
            return None
        if partner["status"] != "completed":
            return rec
        epochs = int(partner["row"]["epochs_reached"])
        return self.s.ledger.update(rec["rid"], config={**rec["config"], "train_epochs": epochs})

    def _launch(self, rec: dict[str, Any]) -> dict[str, Any]:
        rec = self.s.ledger.update(rec["rid"], status="running", attempts=rec["attempts"] + 1,
                                   started=rec.get("started") or time.time())
        self.launched.add(rec["rid"])
        self.live.add(rec["rid"])
        every = self.s.checkpoint_every_s()
        return {**rec["config"], "threads": rec["config"].get("threads") or max(1, int(self.s.spec.resources.cpu)),
                "_rid": rec["rid"], "_phase": self.phase, "_ckpt": self.s.ckpt_root(rec["rid"]),
                "_plugins": list(self.s.spec.plugins),
                "_ckpt_epochs": list(self.rungs.milestones) if self.rungs else [], "_ckpt_every_s": every}

    # ------------------------------------------------------------ Tune's events

    def started(self, rid: str) -> None:
        rec = self.s.ledger.trials[rid]
        self.s.open_trial_run(self, rec)
        self.s.progress.trial_started(rid, self.label, self.phase)

    def retried(self, rid: str) -> None:
        rec = self.s.ledger.trials[rid]
        # the failed attempt's checkpointed epochs, before the retry goes on from them (its run is open)
        self._replay(rec, run_open=True)
        self.s.ledger.update(rid, attempts=rec["attempts"] + 1)

    def result(self, rid: str, result: dict[str, Any]) -> None:
        rec = self.s.ledger.trials[rid]
        self._log_epoch(rec, result)
        # epsilon's restarts may extend training: the trainer says how far it now runs
        epochs = int(result.get("epochs_planned") or rec["config"].get("train_epochs") or rec["config"]["epochs"])
        self.s.progress.trial_epoch(rid, int(result.get("epoch", 0)), epochs, result.get(METRIC),
                                    result.get("epoch_seconds"))

    def _log_epoch(self, rec: dict[str, Any], result: dict[str, Any]) -> None:
        """The epoch log first (the driver's truth), then MLflow and Optuna. An epoch logged
        before (trained again after a kill, or by a retry from an older checkpoint) keeps its
        first report everywhere: the repeat stays in the raw epoch log only."""
        rid, epoch = rec["rid"], int(result.get("epoch", 0))
        row = self.s.epochs.append(self.s.identity(rec), epoch, rec["attempts"], metrics_of(result))
        if row.get("repeat"):
            return
        _driver_hook("epoch_logged", experiment=self.experiment, phase=self.phase, epoch=epoch)
        self.s.to_mlflow(rid, [row], fresh=True)
        if self.optuna is not None and rec["optuna_number"] is not None:
            report_intermediate(self.optuna, rec["optuna_number"], {epoch: result.get(METRIC)})

    def _pruned(self, rid: str, epoch: int) -> None:
        self.s.ledger.update(rid, pruned_at=epoch)

    def ended(self, rid: str, result: dict[str, Any], error: str) -> None:
        if rid not in self.live:
            return
        rec = self.s.ledger.trials[rid]
        status = result.get("status")
        if status in ("completed", "diverged"):
            outcome = status
        elif rec.get("pruned_at") is not None:
            outcome = "pruned"
        elif self.s.stopping:
            self.interrupt(rec)
            return
        else:
            outcome = "failed"
            error = error or f"trial ended at epoch {result.get('epoch', 0)} without finishing"
        self.finish(rec, outcome, result, error)

    def interrupt(self, rec: dict[str, Any]) -> None:
        """Stopped by Ctrl-C/SIGTERM: resumable from its latest checkpoint."""
        self.s.ledger.update(rec["rid"], status="interrupted")
        key = f"trial:{rec['rid']}"
        if self.s.tracker.known(key):
            self.s.tracker.tags(key, {"status": "interrupted"})
            self.s.tracker.end(key, "interrupted")
        self.live.discard(rec["rid"])
        self.s.progress.trial_finished(rec["rid"], "interrupted")

    def finish(self, rec: dict[str, Any], outcome: str, result: dict[str, Any], error: str = "") -> None:
        """A trial's end: Optuna first, then the ledger (the study's truth), then MLflow."""
        rid = rec["rid"]
        s = self.s
        row = {**s.identity(rec), "optuna_number": rec["optuna_number"], "status": outcome,
               "epochs_reached": int(result.get("epoch", 0)),
               "seconds": round(time.time() - (rec.get("started") or time.time()), 3),
               "node": result.get("node", ""), "mlflow_run_id": s.tracker.run_id(f"trial:{rid}") or "",
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
        s.ledger.update(rid, status=outcome, row=row, finished=time.time())
        key = f"trial:{rid}"
        if s.tracker.known(key):
            s.tracker.tags(key, {"status": outcome, "node": row["node"], "epochs_reached": row["epochs_reached"]})
            s.log_artifacts(key, rid, rec["variant"], result)
            s.tracker.end(key, outcome)
        self.live.discard(rid)
        s.progress.trial_finished(rid, outcome, result.get("best_val_acc", result.get(METRIC)))


class Phases:
    """The phases of one experiment as one Tune run: the search first; once every
    search trial has ended, the fixed repeat and twin trials of its best
    configuration, on the actors the search used. Tune's events go to the phase
    that owns the trial; the rung scheduler sees the search trials only."""

    def __init__(self, members: list[Phase]) -> None:
        self.members = members
        self.s, self.experiment = members[0].s, members[0].experiment
        self.phase = "+".join(p.phase for p in members)
        self.search = members[0] if members[0].phase == "search" else None
        self.fixed = [p for p in members if p.phase != "search"]
        self._created: dict[str, bool] = {}
        self.scheduler = members[0].scheduler  # the search's rungs, or (no search) none
        self.launched = _Union([p.launched for p in members])
        self.live = _Union([p.live for p in members])

    def _owner(self, rid: str) -> Phase:
        name = self.s.ledger.trials[rid]["phase"]
        return next(p for p in self.members if p.phase == name)

    def _searching(self) -> bool:
        return self.search is not None and not self.search.done()

    def _fixed(self) -> list[Phase]:
        """The fixed phases whose trials exist (created once the search is over)."""
        out = []
        for p in self.fixed:
            if p.phase not in self._created:
                _driver_hook("phase_start", experiment=self.experiment, phase=p.phase)
                self._created[p.phase] = p.create_fixed()
            if self._created[p.phase]:
                out.append(p)
        return out

    def reconcile(self) -> None:
        for p in self.members:
            p.reconcile()

    def unfinished(self) -> list[dict[str, Any]]:
        return [r for p in self.members for r in p.unfinished()]

    def done(self) -> bool:
        if self._searching():
            return False
        return all(p.done() for p in self._fixed())

    def next_trial(self):
        if self.s.stopping:
            return Searcher.FINISHED
        if self.search is not None:
            cfg = self.search.next_trial()
            if cfg is not Searcher.FINISHED:
                return cfg
            if self._searching():
                # the fixed trials follow from the best search trial: wait for the running ones
                return None if self.search.live else Searcher.FINISHED
        for p in self._fixed():
            cfg = p.next_trial()
            if cfg is not Searcher.FINISHED:
                return cfg
        return Searcher.FINISHED

    def started(self, rid: str) -> None:
        self._owner(rid).started(rid)

    def retried(self, rid: str) -> None:
        self._owner(rid).retried(rid)

    def result(self, rid: str, result: dict[str, Any]) -> None:
        self._owner(rid).result(rid, result)

    def ended(self, rid: str, result: dict[str, Any], error: str) -> None:
        self._owner(rid).ended(rid, result, error)

    def interrupt(self, rec: dict[str, Any]) -> None:
        self._owner(rec["rid"]).interrupt(rec)


class _Union:
    """The members' sets seen as one (iterate, test, clear, discard)."""

    def __init__(self, sets: list[set]) -> None:
        self.sets = sets

    def __iter__(self):
        return iter([x for s in self.sets for x in s])

    def __contains__(self, x) -> bool:
        return any(x in s for s in self.sets)

    def __bool__(self) -> bool:
        return any(self.sets)

    def clear(self) -> None:
        for s in self.sets:
            s.clear()

    def discard(self, x) -> None:
        for s in self.sets:
            s.discard(x)


def ledger_error(error: str) -> str:
    return (error or "")[-500:]


def resolved(config: dict[str, Any]) -> dict[str, Any]:
    """The full TrainConfig a trial runs with (its own variant's options), as plain values."""
    return TrainConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_")}).to_dict()


def run_name(variant: str, cfg: dict[str, Any], searched: list[str], phase: str, subject: str) -> str:
    """What a person reads in the MLflow run list: variant and searched values."""
    def short(name: str) -> str:
        return name.removeprefix(f"{variant}_").removeprefix(f"{subject}_")

    def fmt(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    if phase == "search":
        return " ".join([variant, *(f"{short(k)}={fmt(cfg.get(k))}" for k in searched)])
    what = "repeat" if phase == "repeat" else f"twin of {subject}"
    return f"{variant} {what} seed={cfg.get('seed')}"


# ---------------------------------------------------------------- the study


class StudyRunner:
    def __init__(self, spec: StudySpec, study_dir: Path | None = None, *, disk: ledger_lib.Disk = ledger_lib.DISK) -> None:
        self.spec = spec
        self.disk = disk  # how the ledger and study.json reach the disk (tests: one that fills up)
        self.remote: str | None = None
        if study_dir is None:
            study_dir = spec.study_dir()
            if isinstance(study_dir, str):
                # Remote storage: checkpoints go there directly; the driver keeps its ledger,
                # Parquet and state files locally and copies them up after every experiment.
                self.remote = study_dir
                study_dir = Path(os.environ.get("RESSTUDY_LOCAL_DIR", "resstudy_runs")).resolve() / spec.name
        self.study_dir = Path(study_dir)
        self.stopping = False
        self.tracker: Tracker | None = None
        self._storage = None
        self._signals = 0
        self._saved = threading.Event()  # an interrupted study's state is saved
        self._stopping_now = threading.Lock()  # held by whichever thread says the study stopped
        self._open: set[str] = set()
        self._mlflow_steps: dict[str, dict[str, set[int]]] = {}  # per trial: metric -> steps its run holds

    # ------------------------------------------------------------ paths and helpers

    def ckpt_root(self, rid: str) -> str:
        base = self.remote if self.remote else str(self.study_dir)
        return f"{base}/checkpoints/{rid}"

    def tracking_uri(self) -> str:
        """The spec's tracking URI, else the study's own store where the study lies now
        (never where the saved spec's storage_path says it was started)."""
        return self.spec.mlflow.tracking_uri or ledger_lib.own_tracking_uri(self.study_dir)

    def checkpoint_every_s(self) -> float:
        env = os.environ.get("RESSTUDY_CHECKPOINT_EVERY_S")
        if env is not None:
            return float(env)
        ck = getattr(self.spec, "checkpoint", None)
        minutes = getattr(ck, "every_minutes", None) if ck is not None else None
        return DEFAULT_CHECKPOINT_EVERY_S if minutes is None else 60.0 * float(minutes)

    def optuna_storage(self):
        if self._storage is None:
            import optuna

            path = self.study_dir / "optuna.db"
            try:
                self._storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
                optuna.get_all_study_summaries(self._storage)
            except Exception as e:
                raise StateError(f"Optuna database {path} cannot be read ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200]}); restore it from a backup, or move the study "
                                 "directory away and start the study again") from None
        return self._storage

    def identity(self, rec: dict[str, Any]) -> dict[str, Any]:
        return {"study": rec["study"], "experiment": rec["experiment"], "subject": rec["subject"],
                "variant": rec["variant"], "arm": rec["arm"], "phase": rec["phase"], "depth": rec["depth"],
                "trial_id": rec["rid"], "seed": rec["seed"]}

    def best_search_record(self, experiment: str) -> dict[str, Any] | None:
        done = [r for r in self.ledger.select(experiment=experiment, phase="search", status="completed")
                if isinstance(r["row"].get(METRIC), (int, float)) and math.isfinite(r["row"][METRIC])]
        return max(done, key=lambda r: (r["row"][METRIC], -r["optuna_number"])) if done else None

    def open_trial_run(self, phase: Phase, rec: dict[str, Any]) -> None:
        key = f"trial:{rec['rid']}"
        if rec.get("mlflow_run_id") and key not in self.tracker.ids:
            self.tracker.ids[key] = rec["mlflow_run_id"]
        tags = {"resstudy.level": "trial", "resstudy.study": self.spec.name, TRIAL_TAG: rec["rid"],
                "variant": rec["variant"], "subject": rec["subject"], "arm": rec["arm"], "phase": rec["phase"],
                "seed": str(rec["seed"]), "status": "running"}
        self.tracker.create(key, f"exp:{phase.experiment}", rec["name"], tags, params=rec["config"])

    def to_mlflow(self, rid: str, rows: list[dict[str, Any]], fresh: bool = False) -> None:
        """The epochs of `rows` (epoch log rows) that the trial's MLflow run lacks, each at the
        time it was logged. What the run holds is asked once per driver and then kept up to date;
        `fresh` rows were just logged for the first time, so MLflow cannot hold them."""
        key = f"trial:{rid}"
        held = self._mlflow_steps.get(rid)
        if held is None and not fresh:
            names = sorted({k for r in rows for k, v in row_metrics(r).items() if _number(v)})
            held = self._mlflow_steps[rid] = self.tracker.logged_steps(key, names)
        for row in rows:
            epoch = int(row["epoch"])
            metrics = {k: v for k, v in row_metrics(row).items() if _number(v)}
            if not metrics or (held is not None and all(epoch in held.get(k, ()) for k in metrics)):
                continue
            self.tracker.metrics(key, metrics, step=epoch, ts=row.get("logged_ms"))
            if held is not None:
                for k in metrics:
                    held.setdefault(k, set()).add(epoch)

    def log_artifacts(self, key: str, rid: str, variant: str, result: dict[str, Any]) -> None:
        import json

        info = json.loads(result.get("info_json") or "{}")  # quotient's artifact comes from its metrics alone
        out = self.study_dir / "artifacts" / rid
        try:
            from study import artifacts

            paths = artifacts.write(info, result, out, variant)
            for path in paths:
                self.tracker.artifact(key, path)
        except Exception as e:  # an artifact must never cost a trial its result
            print(f"resstudy: artifacts of {rid} not written: {e}", file=sys.stderr)

    # ------------------------------------------------------------ storage, lock, spec

    def _check_storage(self) -> None:
        d = self.study_dir
        for p in [d, *d.parents]:
            if p.exists():
                if not p.is_dir():
                    raise StorageError(f"storage: {p} is a file, not a directory; choose another storage_path")
                if not os.access(p, os.W_OK | os.X_OK):
                    raise StorageError(f"storage: {p} is not writable by this user; choose a writable "
                                       "storage_path or fix its permissions")
                break
        # a `.lock` alone is what a driver killed before writing anything left: nothing to keep
        if d.is_dir() and any(p.name != ledger_lib.LOCK_FILE for p in d.iterdir()) and not ledger_lib.is_study_dir(d):
            raise StorageError(f"storage: {d} exists and is not a resstudy study directory (no study.json, "
                               "ledger.jsonl or spec.yaml); choose another study name or storage_path")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"storage: cannot create {d} ({e.strerror}); choose a writable storage_path") from None

    def _check_spec(self, state: dict[str, Any]) -> None:
        new = _redacted(self.spec).model_dump(mode="json")
        old = state.get("spec")
        if old is None or state.get("spec_fingerprint") == ledger_lib.fingerprint(new):
            return
        diff = ledger_lib.spec_diff(old, new)
        if not diff:
            return
        raise SpecChanged(
            f"study {self.spec.name} in {self.study_dir} was started with a different spec; differing: "
            + "; ".join(diff) + ". Resume it with its own spec (`resstudy resume "
            f"{self.study_dir}`), or run the changed spec as a new study (`--new-name NAME`)")

    # ------------------------------------------------------------ signals

    def _on_signal(self, signum, frame) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals > 1:
            print(f"\nresstudy: {name} again: stopping at once", file=sys.stderr, flush=True)
            self._stop_now()
            return
        self.stopping = True
        print(f"\nresstudy: {name}: stopping the study (running trials keep their last checkpoint); "
              "press Ctrl-C again to stop at once", file=sys.stderr, flush=True)
        # Tune stops the trials, then the study saves its state, on this thread. Ray may not
        # answer (a job's SIGTERM can reach Ray's processes too, and a driver that lost its GCS
        # waits a minute, then dies): past STOP_GRACE_S the state is saved without Ray.
        threading.Thread(target=self._stop_unless_saved, name="resstudy-stop", daemon=True).start()

    def _stop_unless_saved(self) -> None:
        if not self._saved.wait(STOP_GRACE_S):
            self._stop_now()

    def _stop_now(self) -> None:
        """Save the state and end every run without Ray, then exit 130 at once. The trials'
        processes die with the driver and keep their last checkpoint; what this cannot
        reach now (MLflow down) `resstudy resume` reconciles."""
        if not self._stopping_now.acquire(blocking=False):
            return  # the other thread is at it
        try:
            if not self._saved.is_set():
                self._save_interrupted()
                print(f"resstudy: study {self.spec.name} stopped; its state is saved. Resume with: "
                      f"resstudy resume {self.study_dir}", file=sys.stderr, flush=True)
        except BaseException as e:
            print(f"resstudy: stopping: {type(e).__name__}: {e}; resume with: resstudy resume {self.study_dir}",
                  file=sys.stderr, flush=True)
        finally:
            os._exit(130)

    def _save_interrupted(self) -> None:
        """_stopped's bookkeeping on a thread of its own: the ledger first, then Optuna, then
        MLflow through a client of its own (the tracker's queue belongs to the main thread)."""
        if not hasattr(self, "ledger"):
            return
        running = [rec["rid"] for rec in list(self.ledger.trials.values()) if rec["status"] == "running"]
        for rid in running:
            self.ledger.update(rid, status="interrupted")
        self._park_optuna()
        if self.tracker is None:
            return
        from mlflow.entities import RunStatus, RunTag
        from mlflow.tracking import MlflowClient

        store = MlflowClient(self.tracker.uri)._tracking_client.store  # noqa: SLF001 - no "View run" line
        ids, now = dict(self.tracker.ids), int(time.time() * 1000)
        for key in [*(f"trial:{rid}" for rid in running), "study", *sorted(self._open)]:
            if ids.get(key):
                if key.startswith("trial:"):
                    store.set_tag(ids[key], RunTag("status", "interrupted"))
                store.update_run_info(ids[key], RunStatus.KILLED, end_time=now, run_name=None)

    def _park_optuna(self) -> None:
        if self._storage is not None:
            park(self._storage, [f"{self.spec.name}-{v}-d{d}" for v, d in self.spec.experiments()])

    def _install_signals(self) -> dict:
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: the caller handles signals
                pass
        return old

    # ------------------------------------------------------------ the run

    def prepare(self) -> bool:
        """Everything before Ray: ledger, spec check, preflight, Optuna, MLflow, and
        reconciling them. False when the study is already finished. Needs the lock.

        A first start that fails before study.json is written (MLflow unreachable, say)
        takes away the files it made, so the next `run` finds an empty folder."""
        fresh = not any(p.name != ledger_lib.LOCK_FILE for p in self.study_dir.iterdir())
        try:
            return self._prepare()
        except BaseException:
            if fresh and not (self.study_dir / STATE_FILE).exists():
                for p in self.study_dir.iterdir():
                    if p.name == ledger_lib.LOCK_FILE:
                        continue  # it goes when the lock is released
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
            raise

    def _prepare(self) -> bool:
        spec = self.spec
        ledger_lib.sweep_tmp(self.study_dir)  # what a driver stopped mid-write (kill, full disk) left
        self.ledger = Ledger(self.study_dir, self.disk)
        state = self.ledger.state
        self._check_spec(state)
        try:
            from study import preflight

            preflight.check_spec(spec)
        except ImportError:
            pass
        if state.get("finished") and all(r["status"] in FINISHED for r in self.ledger.trials.values()):
            return False
        saved = _redacted(spec)
        uri = self.tracking_uri()
        if uri == ledger_lib.own_tracking_uri(self.study_dir):
            ledger_lib.relocate_mlflow_artifacts(self.study_dir)  # a copied or moved study logs into itself
        if os.environ.get("RESSTUDY_VERBOSE") != "1":
            # the Tracker says in one line which call the store refused; MLflow's own ERROR
            # log repeats it with every traceback then in flight
            import logging

            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        # MLflow first: an unreachable server fails before any study file is written
        self.tracker = Tracker(uri, spec.experiment_name(), spec.name, self.study_dir,
                               ids=dict(state.get("mlflow_runs", {})), on_ids_changed=self._on_ids,
                               log=_tracking_log)
        self.optuna_storage()
        if not (self.study_dir / "spec.yaml").exists() or "spec" not in state:
            (self.study_dir / "spec.yaml").write_text(saved.to_yaml())
        dumped = saved.model_dump(mode="json")  # study.json never holds a tracking password
        state.update(name=spec.name, tracking_uri=redact_uri(ledger_lib.stored_tracking_uri(self.study_dir, uri)),
                     experiment_id=self.tracker.experiment_id,
                     started=state.get("started", time.time()), spec=dumped,
                     spec_fingerprint=ledger_lib.fingerprint(dumped))
        state.setdefault("phases", {})
        state.pop("finished", None)
        state["sessions"] = int(state.get("sessions", 0)) + 1
        self.ledger.save_state()
        self.epochs = EpochLog(self.study_dir)
        self._reconcile_mlflow()
        self.ledger.compact()
        self._compact()
        self.progress = _progress(spec.name, self._plan())
        for rec in self.ledger.trials.values():  # a resumed study counts what it finished before
            if rec["status"] in FINISHED:
                row = rec.get("row") or {}
                self.progress.restore(f"{rec['subject']} d{rec['depth']}", rec["status"], row.get(METRIC)
                                      if rec["phase"] == "search" else None)
        return True

    def run(self) -> Path:
        spec = self.spec
        if not self.remote:
            self._check_storage()
        else:
            self.study_dir.mkdir(parents=True, exist_ok=True)
        lock = StudyLock(self.study_dir).acquire()
        old_handlers: dict = {}
        try:
            resumed = Path(self.study_dir / ledger_lib.LEDGER_FILE).exists()
            if not self.prepare():
                print(f"resstudy: study {spec.name} is already finished ({self.study_dir})", flush=True)
                self._compact()
                return self.study_dir
            print(f"resstudy: study {spec.name} -> {self.study_dir}" + (" (resuming)" if resumed else ""), flush=True)
            print(f"resstudy: browse it with: resstudy ui {self.study_dir}", flush=True)
            old_handlers = self._install_signals()  # a stop while Ray starts is a stop too
            try:
                _init_ray(spec)
            except SystemExit as e:  # the SIGTERM handler ray.init sets while it starts Ray
                if e.code != signal.SIGTERM:
                    raise
                self.stopping = True
            self._install_signals()  # ours again, in place of ray.init's
            try:
                from study import preflight
            except ImportError:
                preflight = None
            if preflight is not None and not self.stopping:  # stopped while Ray started: ask it nothing
                # a trial must fit on one node: per-node resources, and the data on every node
                preflight.check_cluster(spec, ray.cluster_resources(),
                                        nodes=[n["Resources"] for n in ray.nodes() if n.get("Alive")])
                if os.environ.get("RAY_ADDRESS"):
                    preflight.check_nodes(spec)
            try:
                if self.stopping:
                    raise StudyInterrupted()
                _driver_hook("start")
                self._run_experiments()
                _driver_hook("study_end")
                if self.stopping:
                    raise StudyInterrupted()
            except StudyInterrupted:
                self._stopped("interrupted", "KILLED")
                raise
            except BaseException:
                self._stopped("failed", "FAILED")
                raise
            self._summaries()
            self.tracker.end("study", "completed")
            self.ledger.state["finished"] = time.time()
            self.ledger.save_state()
            self._flush_tracking()  # first: runs created late give their rows their ids
            self._compact()
            self.progress.close()
            print(f"resstudy: results in {self.study_dir / 'results.parquet'} and history.parquet", flush=True)
            print(f"resstudy: browse the runs with: resstudy ui {self.study_dir}", flush=True)
            return self.study_dir
        finally:
            self._saved.set()  # whatever happens from here, the study's state is what it will be
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            if hasattr(self, "ledger"):
                self.ledger.close()
            lock.release()

    def _on_ids(self, key: str, run_id: str) -> None:
        if key.startswith("trial:"):
            rid = key[len("trial:"):]
            rec = self.ledger.trials.get(rid)
            if rec is not None and rec.get("mlflow_run_id") != run_id:
                fields = {"mlflow_run_id": run_id}
                if rec.get("row") is not None:  # finished while MLflow was down: its row learns the id now
                    fields["row"] = {**rec["row"], "mlflow_run_id": run_id}
                self.ledger.update(rid, **fields)
            return
        self.ledger.state.setdefault("mlflow_runs", {})[key] = run_id
        if key == "study":
            self.ledger.state["mlflow_parent_run_id"] = run_id
        self.ledger.save_state()

    def _plan(self) -> dict[str, int]:
        return {f"{variant} d{depth}": sum(arms.values()) for (variant, depth), arms in self.spec.plan().items()}

    def _run_experiments(self) -> None:
        spec = self.spec
        for variant, depth in spec.experiments():
            experiment = f"{spec.name}-{variant}-d{depth}"
            phases = ["search"]
            if spec.repeat_best and spec.seeds:
                phases += ["repeat", "twin"]
            opened = False
            members = []
            for phase_name in phases:
                key = f"{experiment}:{phase_name}"
                if self.ledger.state["phases"].get(key) == "done":
                    continue
                if phase_name == "search":  # a fixed phase's start is when its trials are made
                    _driver_hook("phase_start", experiment=experiment, phase=phase_name)
                if self.stopping:
                    raise StudyInterrupted()
                if not opened:
                    self.tracker.create(f"exp:{experiment}", "study", experiment, {
                        "resstudy.level": "variant", "variant": variant, "depth": str(depth)})
                    self._open.add(f"exp:{experiment}")
                    opened = True
                members.append(Phase(self, variant, depth, phase_name))
            if members:
                # one Tune run per experiment: the search, then (from its best trial) the fixed
                # repeat and twin trials, on the same actors; a Tune start costs seconds
                self._run_phase(members[0] if len(members) == 1 and members[0].phase == "search"
                                else Phases(members))
                for phase in members:
                    self._phase_done(f"{experiment}:{phase.phase}")
            if opened or self.tracker.known(f"exp:{experiment}"):
                # also after a kill that came once the phases were done but before this end
                self._experiment_summary(experiment)
                self.tracker.end(f"exp:{experiment}", "completed")
                self._open.discard(f"exp:{experiment}")
            self._compact()
            self._sync_remote()

    def _phase_done(self, key: str) -> None:
        self.ledger.state["phases"][key] = "done"
        self.ledger.save_state()

    def _run_phase(self, phase: "Phase | Phases") -> None:
        phase.reconcile()
        spec = self.spec
        resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
        storage_path = f"{self.remote}/tune" if self.remote else str(self.study_dir / "tune")
        for _ in range(3):
            if phase.done():
                return
            phase.launched.clear()
            session = self.ledger.state["sessions"]
            tuner = tune.Tuner(
                tune.with_resources(trainable, resources),
                param_space={},
                tune_config=tune.TuneConfig(
                    search_alg=LedgerSearcher(phase.next_trial), scheduler=phase.scheduler, num_samples=-1,
                    max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
                    trial_dirname_creator=lambda t: str(t.config.get("_rid", t.trial_id))),
                run_config=tune.RunConfig(
                    name=f"{phase.experiment}-{phase.phase}-s{session}", storage_path=storage_path,
                    callbacks=[StudyCallback(phase)], stop=StopAll(lambda: self.stopping), verbose=0,
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=0)),
            )
            tuner.fit()
            if self.stopping:
                for rid in list(phase.live):
                    phase.interrupt(self.ledger.trials[rid])
                raise StudyInterrupted()
            for rid in list(phase.live):  # Tune dropped it without an event: run it again
                self.ledger.update(rid, status="interrupted")
                phase.live.discard(rid)
        if phase.unfinished():
            raise RuntimeError(f"{phase.experiment} {phase.phase}: trials {[r['rid'] for r in phase.unfinished()]} "
                               "did not finish after 3 attempts")

    def _stopped(self, outcome: str, status: str) -> None:
        """Every MLflow run ends on every path: the running ones are closed as `status`."""
        for rec in self.ledger.trials.values():
            if rec["status"] == "running":
                self.ledger.update(rec["rid"], status="interrupted")
                key = f"trial:{rec['rid']}"
                if self.tracker.known(key):
                    self.tracker.tags(key, {"status": "interrupted"})
                    self.tracker.end(key, "interrupted")
        for key in ["study", *sorted(self._open)]:  # the open ones only: finished experiments stay FINISHED
            if self.tracker.known(key):
                self.tracker.end(key, "interrupted" if status == "KILLED" else "failed")
        self.ledger.save_state()
        self._park_optuna()
        self._flush_tracking(wait_s=5.0)
        self._compact()
        if hasattr(self, "progress"):
            self.progress.close()
        if outcome == "interrupted" and self._stopping_now.acquire(blocking=False):  # else _stop_now says it
            print(f"resstudy: study {self.spec.name} stopped; its state is saved. Resume with: "
                  f"resstudy resume {self.study_dir}", file=sys.stderr, flush=True)
        self._saved.set()

    def _flush_tracking(self, wait_s: float | None = None) -> None:
        if wait_s is None:
            wait_s = float(os.environ.get("RESSTUDY_MLFLOW_FLUSH_WAIT", "120"))
        if not self.tracker.flush(wait_s=wait_s):
            print(f"resstudy: {self.tracker.pending} MLflow call(s) could not be delivered", file=sys.stderr)

    def _compact(self) -> None:
        rows = [r["row"] for r in self.ledger.trials.values() if r["status"] in FINISHED and r.get("row")]
        compact(self.study_dir, rows)

    # ------------------------------------------------------------ MLflow: reconcile and summarise

    def _reconcile_mlflow(self) -> None:
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
                    self.to_mlflow(rid, self.epochs.first(rid))  # a kill kept its last epochs from it
                    self.tracker.tags(f"trial:{rid}", {"status": rec["status"]})
                    self.tracker.end(f"trial:{rid}", rec["status"])
        for rec in self.ledger.trials.values():
            if rec.get("mlflow_run_id"):
                self.tracker.ids[f"trial:{rec['rid']}"] = rec["mlflow_run_id"]

    def _experiment_summary(self, experiment: str) -> None:
        best = self.best_search_record(experiment)
        recs = list(self.ledger.select(experiment=experiment))
        counts = {s: sum(1 for r in recs if r["status"] == s and r["phase"] == "search") for s in FINISHED}
        metrics = {f"n_{s}": float(n) for s, n in counts.items()}
        if best is not None:
            metrics["best_val_acc"] = float(best["row"][METRIC])
            self.tracker.params(f"exp:{experiment}", {f"best.{k}": v for k, v in best["config"].items()})
            self.tracker.tags(f"exp:{experiment}", {"best_trial": best["rid"],
                                                    "best_mlflow_run_id": best.get("mlflow_run_id") or ""})
        self.tracker.metrics(f"exp:{experiment}", metrics, step=0)

    def _summaries(self) -> None:
        metrics, tags = {}, {}
        for variant, depth in self.spec.experiments():
            experiment = f"{self.spec.name}-{variant}-d{depth}"
            best = self.best_search_record(experiment)
            if best is not None:
                metrics[f"best_val_acc.{variant}.d{depth}"] = float(best["row"][METRIC])
                tags[f"best_trial.{variant}.d{depth}"] = best["rid"]
        if metrics:
            metrics["best_val_acc"] = max(metrics.values())
            self.tracker.metrics("study", metrics, step=0)
            self.tracker.tags("study", tags)
        rows = [r for r in self.ledger.trials.values()]
        self.tracker.metrics("study", {"n_trials": float(len(rows))}, step=0)

    def _sync_remote(self) -> None:
        if not self.remote:
            return
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(self.remote)
        local = pafs.LocalFileSystem()
        for name in ("results.parquet", "history.parquet", "spec.yaml", STATE_FILE, ledger_lib.LEDGER_FILE,
                     "optuna.db", "samplers"):
            if (self.study_dir / name).exists():
                pafs.copy_files(str(self.study_dir / name), f"{root}/{name}", source_filesystem=local,
                                destination_filesystem=fs)


def _driver_hook(event: str, **info: Any) -> None:
    """The test seam on the driver side (as RESSTUDY_TRIAL_HOOK on the trial side):
    RESSTUDY_DRIVER_HOOK=tests.module:function is called at study start, at each
    phase start and after the last trial. Unset in production: nothing is called."""
    spec = os.environ.get("RESSTUDY_DRIVER_HOOK")
    if not spec:
        return
    import importlib

    module, _, name = spec.partition(":")
    if not module.startswith("tests."):
        raise RuntimeError(f"RESSTUDY_DRIVER_HOOK={spec!r}: only a tests.* module may be plugged in")
    getattr(importlib.import_module(module), name or "driver_event")(event, **info)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _FallbackProgress:
    """One line per finished trial, where study.progress is not available."""

    def __init__(self, name: str, plan: dict[str, int]) -> None:
        self.name, self.total, self.done = name, sum(plan.values()), 0
        self.t0 = time.time()

    def restore(self, label: str, status: str, val_acc: float | None = None) -> None:
        self.done += 1

    def trial_started(self, trial_id: str, label: str, phase: str) -> None:
        pass

    def trial_epoch(self, trial_id, epoch, epochs, val_acc=None, epoch_seconds=None) -> None:
        pass

    def trial_finished(self, trial_id: str, status: str, best_val_acc: float | None = None) -> None:
        self.done += status != "interrupted"
        print(f"[{self.name} {time.time() - self.t0:6.0f}s] trials {self.done}/{self.total} done; "
              f"{trial_id} {status} best val_acc {best_val_acc}", flush=True)

    def message(self, text: str) -> None:
        print(f"resstudy: {text}", flush=True)

    def close(self) -> None:
        pass


def _progress(name: str, plan: dict[str, int]):
    try:
        from study.progress import Progress
    except ImportError:
        return _FallbackProgress(name, plan)
    return Progress(name, plan)


def _redacted(spec: StudySpec) -> StudySpec:
    saved = spec.model_copy(deep=True)
    if saved.mlflow.tracking_uri:
        saved.mlflow.tracking_uri = redact_uri(saved.mlflow.tracking_uri)
    return saved


def _ray_log_level() -> int:
    # ray.init resets Ray's logger to INFO; resstudy's progress view is the output
    import logging

    return logging.DEBUG if os.environ.get("RESSTUDY_VERBOSE") == "1" else logging.WARNING


_REAPER: "subprocess.Popen | None" = None


def _ray_in_its_own_group() -> None:
    """The embedded Ray's processes in a process group of their own, led by a reaper that
    kills the group once this driver is gone, however it ended.

    In the driver's group, a SIGTERM sent to that group (by `timeout`, SLURM, Kubernetes)
    reached Ray's GCS before the driver could stop the study, and the driver then hung on
    the lost GCS and died without saving its state; in their own group they hear only the
    driver, which stops the study and then Ray. The reaper's stdin is a pipe this driver
    alone holds (no child inherits it): when the driver exits, even by SIGKILL, the pipe
    closes and the reaper kills the group, so none of Ray's processes (its agents, which
    would otherwise wait minutes for a GCS that is gone) outlives it. Ray's workers put
    themselves in groups of their own and end with their raylet. On Linux Ray's own
    processes already end with the driver (parent-death signal); its agents, children of
    the raylet, did not."""
    global _REAPER
    import subprocess

    from ray._private import services

    if _REAPER is None or _REAPER.poll() is not None:
        _REAPER = subprocess.Popen(["/bin/sh", "-c", "trap '' INT TERM HUP; read _; kill -KILL 0"],
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   process_group=0)
    if getattr(services.ConsolePopen, "in_ray_group", False):
        return

    class InRayGroup(services.ConsolePopen):
        in_ray_group = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("process_group", _REAPER.pid)
            super().__init__(*args, **kwargs)

    # Ray starts each of its processes through this class (services.start_ray_process)
    services.ConsolePopen = InRayGroup


def _init_ray(spec: StudySpec | None) -> None:
    if ray.is_initialized():
        return
    # The progress view is resstudy's own: silence Tune's tables and chatter.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import logging

    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune's end-of-run analysis looks for the per-trial logger files resstudy switches off
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", log_to_driver=False, logging_level=_ray_log_level())
    else:
        # An embedded single-node Ray: nothing listens beyond loopback, no dashboard.
        # Ray reads the loopback switch (top of this module) when first imported; where
        # ray was imported before this module, set the constant it was read into.
        if os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0").lower() in ("0", "false"):
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
        _ray_in_its_own_group()
        import random

        for attempt in range(5):
            # token auth on, stated here rather than left to ray.init's default, which a failed
            # start-up attempt can leave switched off for the next one
            if _SET_AUTH_MODE:
                os.environ.setdefault("RAY_AUTH_MODE", "token")
            try:
                ray.init(include_dashboard=False, log_to_driver=False, num_cpus=os.cpu_count(),
                         logging_level=_ray_log_level())
                return
            except Exception as e:  # a busy machine can miss Ray's start-up window (its agents start late)
                transient = any(s in str(e) for s in ("timed out during startup", "Failed to start GCS"))
                if not transient or attempt == 4:
                    raise
                ray.shutdown()
                wait = random.uniform(5, 20) * (attempt + 1)  # apart from other drivers starting now
                print(f"resstudy: Ray did not start in time (busy machine?); trying again in {wait:.0f} s",
                      file=sys.stderr, flush=True)
                time.sleep(wait)


# ---------------------------------------------------------------- entry points


def run_study(spec: StudySpec, *, new_name: str | None = None, disk: ledger_lib.Disk = ledger_lib.DISK) -> Path:
    """Run (or continue) the study of `spec`. `new_name` runs it as a new study
    of that name (for a spec that differs from the one a study was started with).
    Raises StudyInterrupted (a KeyboardInterrupt: exit 130) on Ctrl-C/SIGTERM, and
    StorageError (one line) when the disk fills up."""
    if new_name:
        from study.spec import check_study_name

        spec = spec.model_copy(update={"name": check_study_name(new_name, "--new-name")})
    return _run(StudyRunner(spec, disk=disk))


def resume_study(study_dir: str | Path, tracking_uri: str | None = None) -> Path:
    """Continue the study in `study_dir` with the spec it was started with, where the
    study lies now: a copied or moved study writes only into itself."""
    from study.spec import SpecError, load_spec

    study_dir = Path(study_dir)
    if not study_dir.is_dir() or not ledger_lib.is_study_dir(study_dir):
        raise StorageError(f"{study_dir} is not a resstudy study directory (no study.json, ledger.jsonl or "
                           "spec.yaml); give the directory `resstudy run` printed")
    overrides = {"mlflow": {"tracking_uri": tracking_uri}} if tracking_uri else None
    try:
        spec = load_spec(study_dir / "spec.yaml", overrides=overrides)
    except SpecError as e:
        raise StateError(f"{study_dir / 'spec.yaml'}: {e}") from None
    except FileNotFoundError:
        raise StateError(f"{study_dir / 'spec.yaml'} is missing; resume needs the spec the study was "
                         "started with") from None
    study_dir = study_dir.resolve()
    if not spec.is_remote_storage:  # the saved storage_path is where the study was started
        spec = spec.model_copy(update={"storage_path": str(study_dir.parent)})
    return _run(StudyRunner(spec, study_dir))


def _run(runner: StudyRunner) -> Path:
    """runner.run(), with a full disk reported as one line, and no empty folder left by a
    first start that failed."""
    made = not runner.study_dir.exists()
    try:
        return runner.run()
    except BaseException as e:
        if made:
            try:
                runner.study_dir.rmdir()  # only if empty: prepare took away what it had made
            except OSError:
                pass
        full = ledger_lib.disk_full(e)
        if full is None:
            raise
        where = f" writing {full.filename}" if getattr(full, "filename", None) else ""
        raise StorageError(
            f"storage: no space left on the device holding {runner.study_dir} ({_first_line(full)}{where}); "
            f"the study stopped with every finished trial recorded. Free space, then: resstudy resume "
            f"{runner.study_dir}") from None


def _tracking_log(message: str) -> None:
    # A study stopping for a full disk: MLflow's store (on that disk too) refuses the
    # calls that end its runs; the one line that ends the command says it, and
    # resume ends them.
    if ledger_lib.disk_full(sys.exc_info()[1]) is None:
        print(message, file=sys.stderr, flush=True)


def _first_line(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


# Backwards-compatible names
read_state = ledger_lib.read_state
write_state = ledger_lib.write_state
