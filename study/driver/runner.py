"""Run a study: for each (variant, depth), a search (Optuna through ask/tell, ASHA
stopping the weak), then from its best configuration the repeat at every seed,
its matched twin and the designed arms of the variant's claims; every trial
tracked in MLflow (study > variant > trial) and recorded in the study's ledger
(study/ledger.py) before anything else.

Resume is ledger-first: finished trials never re-run, a trial that was running
continues from its latest checkpoint with its own config, Optuna trial and
MLflow run, and the study ends with exactly the trials the spec asks for.
Ctrl-C or SIGTERM stop the whole study (exit 130, resume later): trials stopped,
nothing left running in the ledger, MLflow or Optuna (an interrupted search trial
waits there as WAITING). Should Ray not answer within the stop grace (a job's
SIGTERM can reach Ray's processes too), or on a second signal, the state is saved
without Ray and the driver exits at once.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from study import ledger as ledger_lib
from study.driver.context import Context, experiment_name
from study.driver.lifecycle import (StorageError, Stopper, StudyInterrupted, check_spec, check_storage,
                                    end_runs_without_tracker, redacted)
from study.driver.options import Events, RuntimeOptions
from study.driver.plan import plan
from study.driver.stores import MlflowRuns
from study.ledger import FINISHED, Ledger, StateError, StudyLock
from study.results import EpochLog, compact
from study.searcher import METRIC, park
from study.spec import StudySpec
from study.timeline import mark
from study.tracking import Tracker, redact_uri

STATE_FILE = ledger_lib.STATE_FILE


class StudyRunner:
    """One driver of one study. `backend` runs the trials (default: Ray Tune);
    `events` is called at the driver's and the trials' fixed points (default: nothing)."""

    def __init__(self, spec: StudySpec, study_dir: Path | None = None, *, options: RuntimeOptions | None = None,
                 events: Events | None = None, backend: Any = None) -> None:
        self.spec = spec
        self.options = options or RuntimeOptions()
        self.events = events or Events()
        self.backend = backend
        self.remote: str | None = None
        if study_dir is None:
            where = spec.study_dir()
            if isinstance(where, str):
                # Remote storage: checkpoints go there directly; the driver keeps its ledger,
                # Parquet and state files locally and copies them up after every experiment.
                self.remote = where
                where = Path(self.options.local_dir).resolve() / spec.name
            study_dir = where
        self.study_dir = Path(study_dir)
        self.stop = threading.Event()
        self.ctx: Context | None = None  # made by prepare()
        self._ledger: Ledger | None = None  # opened by prepare(), closed by run() on every path
        self.stopper = Stopper(self.stop, self._save_interrupted, spec.name, self.study_dir, self.options.stop_grace_s)

    # ------------------------------------------------------------ before Ray

    def tracking_uri(self) -> str:
        """The spec's tracking URI, else the study's own store where the study lies now
        (never where the saved spec's storage_path says it was started)."""
        return self.spec.mlflow.tracking_uri or ledger_lib.own_tracking_uri(self.study_dir)

    def _optuna_storage(self) -> Any:
        import optuna

        path = self.study_dir / "optuna.db"
        try:
            storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
            optuna.get_all_study_summaries(storage)
        except Exception as e:
            raise StateError(f"Optuna database {path} cannot be read ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}); restore it from a backup, or move the study "
                             "directory away and start the study again") from None
        return storage

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
        from study import preflight
        from study.driver import manifest

        spec = self.spec
        ledger_lib.sweep_tmp(self.study_dir)  # what a driver stopped mid-write (kill, full disk) left
        ledger = Ledger(self.study_dir, self.options.disk)
        self._ledger = ledger
        state = ledger.state
        check_spec(spec, self.study_dir, state)
        preflight.check_spec(spec)
        if state.get("finished") and all(r["status"] in FINISHED for r in ledger.trials.values()):
            return False
        saved = redacted(spec)
        uri = self.tracking_uri()
        prestart = getattr(self.backend, "prestart", None)
        if prestart is not None and _reachable(uri):
            # the spec passed its checks: a backend that can (Tune's) starts its Ray now, while
            # the stores are set up; where the tracking server does not answer, nothing starts
            # and the study fails below before any Ray
            prestart(self.options.verbose, spec.max_concurrent)
        if uri == ledger_lib.own_tracking_uri(self.study_dir):
            ledger_lib.relocate_mlflow_artifacts(self.study_dir)  # a copied or moved study logs into itself
        if not self.options.verbose:
            # the Tracker says in one line which call the store refused; MLflow's own ERROR
            # log repeats it with every traceback then in flight
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        # MLflow first: an unreachable server fails before any study file is written
        tracker = Tracker(uri, spec.experiment_name(), spec.name, self.study_dir,
                          ids=dict(state.get("mlflow_runs", {})), on_ids_changed=self._on_ids, log=_tracking_log)
        storage = self._optuna_storage()
        if not (self.study_dir / ledger_lib.SPEC_FILE).exists() or "spec" not in state:
            (self.study_dir / ledger_lib.SPEC_FILE).write_text(saved.to_yaml())
        dumped = saved.model_dump(mode="json")  # study.json never holds a tracking password
        state.update(name=spec.name, tracking_uri=redact_uri(ledger_lib.stored_tracking_uri(self.study_dir, uri)),
                     experiment_id=tracker.experiment_id, started=state.get("started", time.time()), spec=dumped,
                     spec_fingerprint=ledger_lib.fingerprint(dumped))
        manifest.record(state, spec)  # what this start resolved; analysis reads it, never recomputes it
        state.setdefault("phases", {})
        state.pop("finished", None)
        state["sessions"] = int(state.get("sessions", 0)) + 1
        ledger.save_state()
        epochs = EpochLog(self.study_dir)
        mlflow_runs = MlflowRuns(tracker, spec, self.study_dir, ledger, epochs)
        mlflow_runs.reconcile()
        ledger.compact()
        compact(self.study_dir, _finished_rows(ledger))
        progress = _progress(spec.name, self._plan())
        for rec in ledger.trials.values():  # a resumed study counts what it finished before
            if rec["status"] in FINISHED:
                row = rec.get("row") or {}
                progress.restore(f"{rec['subject']} d{rec['depth']}", rec["status"],
                                 row.get(METRIC) if rec["phase"] == "search" else None)
        self.ctx = Context(spec=spec, study_dir=self.study_dir, options=self.options, events=self.events,
                           ledger=ledger, epochs=epochs, mlflow=mlflow_runs, progress=progress,
                           optuna_storage=storage, stop=self.stop, remote=self.remote)
        return True

    # ------------------------------------------------------------ the run

    def run(self) -> Path:
        spec = self.spec
        if not self.remote:
            check_storage(self.study_dir)
        else:
            self.study_dir.mkdir(parents=True, exist_ok=True)
        lock = StudyLock(self.study_dir).acquire()
        if self.backend is None:
            from study.driver.backend import TuneBackend

            self.backend = TuneBackend()
        try:
            resumed = Path(self.study_dir / ledger_lib.LEDGER_FILE).exists()
            if not self.prepare():
                print(f"resstudy: study {spec.name} is already finished ({self.study_dir})", flush=True)
                assert self._ledger is not None
                compact(self.study_dir, _finished_rows(self._ledger))
                return self.study_dir
            ctx = self.ctx
            assert ctx is not None
            mark("driver: prepared (ledger, spec check, MLflow, Optuna)")
            print(f"resstudy: study {spec.name} -> {self.study_dir}" + (" (resuming)" if resumed else ""), flush=True)
            print(f"resstudy: browse it with: resstudy ui {self.study_dir}", flush=True)
            self.stopper.install()  # a stop while Ray starts is a stop too
            backend = self.backend
            try:
                try:
                    backend.start(ctx)
                except SystemExit as e:  # the SIGTERM handler ray.init sets while it starts Ray
                    if e.code != 15:
                        raise
                    self.stop.set()
                self.stopper.install()  # ours again, in place of ray.init's
                if self.stop.is_set():
                    raise StudyInterrupted()
                self.events.study_start()
                self._run_experiments(ctx, backend)
                mark("driver: last trial done")
                self.events.study_end()
                if self.stop.is_set():  # a stop after the last trial: the study ends interrupted all the same
                    raise StudyInterrupted()
            except StudyInterrupted:
                self._stopped(ctx, "interrupted", "KILLED")
                raise
            except BaseException:
                self._stopped(ctx, "failed", "FAILED")
                raise
            ctx.mlflow.study_summary()
            ctx.mlflow.tracker.end("study", "completed")
            ctx.ledger.state["finished"] = time.time()
            ctx.ledger.save_state()
            self._flush_tracking(ctx)  # first: runs created late give their rows their ids
            compact(self.study_dir, _finished_rows(ctx.ledger))
            ctx.progress.close()
            mark("driver: study recorded (MLflow, ledger, results)")
            print(f"resstudy: results in {self.study_dir / 'results.parquet'} and history.parquet", flush=True)
            print(f"resstudy: browse the runs with: resstudy ui {self.study_dir}", flush=True)
            return self.study_dir
        finally:
            self.stopper.saved.set()  # whatever happens from here, the study's state is what it will be
            self.stopper.restore()
            if self._ledger is not None:
                self._ledger.close()
            lock.release()

    def _on_ids(self, key: str, run_id: str) -> None:
        ledger = self._ledger
        assert ledger is not None
        if key.startswith("trial:"):
            rid = key[len("trial:"):]
            rec = ledger.trials.get(rid)
            if rec is not None and rec.get("mlflow_run_id") != run_id:
                fields: dict[str, Any] = {"mlflow_run_id": run_id}
                if rec.get("row") is not None:  # finished while MLflow was down: its row learns the id now
                    fields["row"] = {**rec["row"], "mlflow_run_id": run_id}
                ledger.update(rid, **fields)
            return
        ledger.state.setdefault("mlflow_runs", {})[key] = run_id
        if key == "study":
            ledger.state["mlflow_parent_run_id"] = run_id
        ledger.save_state()

    def _plan(self) -> dict[str, int]:
        return {f"{variant} d{depth}": sum(arms.values()) for (variant, depth), arms in plan(self.spec).items()}

    def _phase_names(self) -> list[str]:
        from study.driver.arms import PHASE
        from study.driver.phases import FIXED_PHASES

        later = FIXED_PHASES if self.spec.repeat_best and self.spec.seeds else ()
        return ["search", *later, *((PHASE,) if later and self.spec.design is not None else ())]

    def _run_experiments(self, ctx: Context, backend: Any) -> None:
        # imported here, not at the top: they import Ray Tune (about 1 s), which the embedded
        # Ray's start, begun in prepare(), imports on its own thread beside MLflow's set-up
        from study.driver.arms import PHASE, Arms
        from study.driver.experiment import Phases
        from study.driver.phases import Phase

        spec = self.spec
        for variant, depth in spec.experiments():
            experiment = experiment_name(spec.name, variant, depth)
            members: list[Any] = []
            for name in self._phase_names():
                if ctx.ledger.state["phases"].get(f"{experiment}:{name}") == "done":
                    continue
                if name == "search":  # a later phase's start is when its trials are made
                    self.events.phase_start(experiment, name)
                if self.stop.is_set():
                    raise StudyInterrupted()
                if not members:
                    ctx.mlflow.open_experiment(experiment, variant, depth)
                members.append(Arms(ctx, variant, depth) if name == PHASE else Phase(ctx, variant, depth, name))
            if members:
                # one Tune run per experiment: the search, then (from its best trial) the trials that
                # follow from it, on the same actors; a Tune start costs seconds
                phase = members[0] if len(members) == 1 and members[0].phase == "search" else Phases(members)
                phase.reconcile()
                backend.run(ctx, phase)
                if self.stop.is_set():
                    for rid in list(phase.live):
                        phase.interrupt(ctx.ledger.trials[rid])
                    raise StudyInterrupted()
                for p in members:
                    ctx.ledger.state["phases"][f"{experiment}:{p.phase}"] = "done"
                ctx.ledger.save_state()
            if members or ctx.mlflow.tracker.known(f"exp:{experiment}"):
                # also after a kill that came once the phases were done but before this end
                ctx.mlflow.end_experiment(experiment)
            compact(self.study_dir, _finished_rows(ctx.ledger))
            self._sync_remote()

    def _stopped(self, ctx: Context, outcome: str, status: str) -> None:
        """Every store says where the study stopped; every MLflow run ends."""
        for rec in ctx.ledger.trials.values():
            if rec["status"] == "running":
                ctx.ledger.update(rec["rid"], status="interrupted")
                ctx.mlflow.interrupt_trial(rec["rid"])
        ctx.mlflow.stopped(status)
        ctx.ledger.save_state()
        self._park_optuna(ctx.optuna_storage)
        self._flush_tracking(ctx, wait_s=5.0)
        compact(self.study_dir, _finished_rows(ctx.ledger))
        ctx.progress.close()
        if outcome == "interrupted":
            self.stopper.say_stopped()
        self.stopper.saved.set()

    def _save_interrupted(self) -> None:
        """_stopped's bookkeeping on the stopper's thread: the ledger first, then Optuna,
        then MLflow through a client of its own (the tracker's queue belongs to the main thread)."""
        ctx = self.ctx
        if ctx is None:
            return
        running = [rec["rid"] for rec in list(ctx.ledger.trials.values()) if rec["status"] == "running"]
        for rid in running:
            ctx.ledger.update(rid, status="interrupted")
        self._park_optuna(ctx.optuna_storage)
        tracker = ctx.mlflow.tracker
        end_runs_without_tracker(tracker.uri, dict(tracker.ids), running, ["study", *sorted(ctx.mlflow.open)])

    def _park_optuna(self, storage: Any) -> None:
        park(storage, [experiment_name(self.spec.name, v, d) for v, d in self.spec.experiments()])

    def _flush_tracking(self, ctx: Context, wait_s: float | None = None) -> None:
        tracker = ctx.mlflow.tracker
        if not tracker.flush(wait_s=self.options.mlflow_flush_wait_s if wait_s is None else wait_s):
            print(f"resstudy: {tracker.pending} MLflow call(s) could not be delivered", file=sys.stderr)

    def _sync_remote(self) -> None:
        if not self.remote:
            return
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(self.remote)
        local = pafs.LocalFileSystem()
        for name in ("results.parquet", "history.parquet", ledger_lib.SPEC_FILE, STATE_FILE, ledger_lib.LEDGER_FILE,
                     "optuna.db", "samplers"):
            if (self.study_dir / name).exists():
                pafs.copy_files(str(self.study_dir / name), f"{root}/{name}", source_filesystem=local,
                                destination_filesystem=fs)


def _finished_rows(ledger: Ledger) -> list[dict[str, Any]]:
    return [r["row"] for r in ledger.trials.values() if r["status"] in FINISHED and r.get("row")]


def _progress(name: str, plan: dict[str, int]) -> Any:
    from study.progress import Progress

    return Progress(name, plan)


def _tracking_log(message: str) -> None:
    # A study stopping for a full disk: MLflow's store (on that disk too) refuses the
    # calls that end its runs; the one line that ends the command says it, and
    # resume ends them.
    if ledger_lib.disk_full(sys.exc_info()[1]) is None:
        print(message, file=sys.stderr, flush=True)


def _reachable(uri: str, timeout_s: float = 1.0) -> bool:
    """Whether a tracking server at `uri` accepts a connection (a local store always does)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return True
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
        return True
    except (OSError, ValueError):
        return False


def _first_line(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


# ---------------------------------------------------------------- entry points


def run_study(spec: StudySpec, *, new_name: str | None = None, options: RuntimeOptions | None = None,
              events: Events | None = None, backend: Any = None) -> Path:
    """Run (or continue) the study of `spec`. `new_name` runs it as a new study
    of that name (for a spec that differs from the one a study was started with).
    Raises StudyInterrupted (a KeyboardInterrupt: exit 130) on Ctrl-C/SIGTERM, and
    StorageError (one line) when the disk fills up."""
    if new_name:
        from study.spec import check_study_name

        spec = spec.model_copy(update={"name": check_study_name(new_name, "--new-name")})
    mark("driver: run_study (driver modules imported)")
    return _run(StudyRunner(spec, options=options, events=events, backend=backend))


def resume_study(study_dir: str | Path, tracking_uri: str | None = None, *, options: RuntimeOptions | None = None,
                 events: Events | None = None, backend: Any = None) -> Path:
    """Continue the study in `study_dir` with the spec it was started with, where the
    study lies now: a copied or moved study writes only into itself."""
    from study.spec import SpecError, load_spec

    study_dir = Path(study_dir)
    if not study_dir.is_dir() or not ledger_lib.is_study_dir(study_dir):
        raise StorageError(f"{study_dir} is not a resstudy study directory ({ledger_lib.STUDY_DIR_RULE}); give the "
                           "directory `resstudy run` printed")
    overrides = {"mlflow": {"tracking_uri": tracking_uri}} if tracking_uri else None
    try:
        spec = load_spec(study_dir / ledger_lib.SPEC_FILE, overrides=overrides)
    except SpecError as e:
        raise StateError(f"{study_dir / ledger_lib.SPEC_FILE}: {e}") from None
    except FileNotFoundError:
        raise StateError(f"{study_dir / ledger_lib.SPEC_FILE} is missing; resume needs the spec the study was "
                         "started with") from None
    study_dir = study_dir.resolve()
    if not spec.is_remote_storage:  # the saved storage_path is where the study was started
        spec = spec.model_copy(update={"storage_path": str(study_dir.parent)})
    return _run(StudyRunner(spec, study_dir, options=options, events=events, backend=backend))


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
        filename = getattr(full, "filename", None)
        where = f" writing {filename}" if filename else ""
        raise StorageError(
            f"storage: no space left on the device holding {runner.study_dir} ({_first_line(full)}{where}); "
            f"the study stopped with every finished trial recorded. Free space, then: resstudy resume "
            f"{runner.study_dir}") from None


__all__ = ["StudyRunner", "resume_study", "run_study"]
