"""Run a study: one Ray Tune experiment per (variant, depth), Optuna searching
the variant's define-by-run space behind a ConcurrencyLimiter, ASHA stopping
the weak, MLflow tracking study > experiment > trial, Parquet results.

The driver persists what it needs to resume in <study dir>/study.json; Tune
keeps trial checkpoints under <study dir>/tune/<experiment>.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not os.environ.get("RAY_ADDRESS"):
    # The embedded local Ray must listen on loopback only. On Linux Ray rewrites
    # 127.0.0.1 to the machine's routable IP and binds its servers to every
    # interface; this switch (read when ray is imported) keeps them on 127.0.0.1.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402
from ray.tune.search import ConcurrencyLimiter  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

import search_spaces  # noqa: E402
from study import faults  # noqa: E402
from study.config import TrainConfig  # noqa: E402
from study.results import FINAL_METRICS, ResultsWriter  # noqa: E402
from study.spec import StudySpec  # noqa: E402
from study.tracking import Tracker, redact_uri  # noqa: E402

STATE_FILE = "study.json"
METRIC, MODE = "val_acc", "max"


# ---------------------------------------------------------------- the trainable


def trainable(config: dict[str, Any]) -> None:
    """One Tune trial: a study.train run whose epochs become tune.report calls."""
    from study.train import load_checkpoint, train

    cfg = TrainConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_")})
    ctx = ray.get_runtime_context()
    node = f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:12]}"
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_checkpoint(d)

    def report(metrics: dict[str, Any], info: dict[str, Any], save) -> None:
        result = dict(metrics, node=node, info_json=json.dumps(info) if info else "")
        if metrics["status"] == "diverged":
            tune.report(result)
            return
        with tempfile.TemporaryDirectory(prefix="resstudy-ckpt-") as d:
            save(d)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
        faults.check(config, int(metrics["epoch"]))

    train(cfg, report, resume=resume)


# ---------------------------------------------------------------- Optuna


class StudyOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about how a trial ended.

    Ray's OptunaSearch marks a trial that ASHA stopped early as COMPLETE with its
    low-fidelity value, which poisons TPE and importance analysis. Here only a
    trial that trained all epochs is COMPLETE; an early-stopped one is PRUNED at
    the epoch it reached (its per-epoch values are Optuna intermediate values);
    errors and divergence are FAIL.
    """

    def __init__(self, *args: Any, trial_attrs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trial_attrs = trial_attrs or {}
        self.numbers: dict[str, int] = {}

    def suggest(self, trial_id: str):
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self.numbers[trial_id] = self._ot_trials[trial_id].number
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        # After a driver kill, Tune's last snapshot may predate a trial's end that
        # Optuna already recorded; the restored run replays it: keep Optuna's record.
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        status = (result or {}).get("status")
        outcome = "failed" if error else {"completed": "completed", "diverged": "diverged"}.get(status, "pruned")
        state = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}.get(
            outcome, optuna.trial.TrialState.FAIL)
        value = result.get(self.metric) if outcome == "completed" else None
        try:
            # Tune hands the result that made ASHA stop a trial to on_trial_complete
            # only; record it as the last intermediate value so PRUNED sits at its epoch.
            step = (result or {}).get("training_iteration")
            if outcome == "pruned" and step is not None and result.get(self.metric) is not None:
                if step not in ot_trial._cached_frozen_trial.intermediate_values:  # noqa: SLF001
                    ot_trial.report(result[self.metric], step)
            for k, v in {**self.trial_attrs, "status": outcome, "ray_trial_id": trial_id,
                         "epochs": (result or {}).get("epoch", 0)}.items():
                ot_trial.set_user_attr(k, v)
            self._ot_study.tell(ot_trial, value, state=state)
        except Exception as e:  # a NaN value or a trial already told: record, never crash the study
            print(f"resstudy: Optuna could not record trial {trial_id}: {e}", file=sys.stderr)
        self._completed_trials.add(trial_id)


# ---------------------------------------------------------------- tracking + results


class StudyCallback(tune.Callback):
    """Driver-side: MLflow runs, Parquet rows and the progress view, per trial event."""

    def __init__(self, runner: "StudyRunner", experiment: str, variant: str, depth: int, phase: str,
                 searcher: StudyOptunaSearch | None, searched: list) -> None:
        self.r, self.experiment, self.variant, self.depth, self.phase = runner, experiment, variant, depth, phase
        self.searcher, self.searched = searcher, searched
        self.last: dict[str, dict[str, Any]] = {}
        self.started: dict[str, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config (callbacks included) into the experiment
        # folder; the runner is re-attached on restore, so leave it out.
        return {k: v for k, v in self.__dict__.items() if k not in ("r", "searcher")}

    def _key(self, trial) -> str:
        return f"trial:{trial.trial_id}"

    def _identity(self, trial) -> dict[str, Any]:
        return {"study": self.r.spec.name, "experiment": self.experiment, "variant": self.variant,
                "depth": self.depth, "phase": self.phase, "trial_id": trial.trial_id,
                "seed": int(trial.config.get("seed", 0))}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started.setdefault(trial.trial_id, time.time())
        key = self._key(trial)
        self.r.tracker.create(key, f"exp:{self.experiment}", f"{self.variant}-{trial.trial_id}",
                              {"resstudy.level": "trial", "variant": self.variant, "seed": str(trial.config.get("seed")),
                               "phase": self.phase, "status": "running", "ray_trial_id": trial.trial_id})
        self.r.tracker.params(key, resolved_config(trial.config))
        self.r.progress.update(trial.trial_id, self.variant, "running")

    def on_trial_restore(self, iteration, trials, trial, **info) -> None:
        self.on_trial_start(iteration, trials, trial)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        # Tune restarts the trial from its last checkpoint: epochs after it will be re-run.
        last = self.last.get(trial.trial_id, {})
        ckpt_epoch = int(last.get("epoch", 0))
        self.r.results.drop_epochs_after(trial.trial_id, ckpt_epoch)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.last[trial.trial_id] = result
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k not in ("epoch", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s",
                                 "time_since_restore", "iterations_since_restore", "pid", "done")}
        self.r.tracker.metrics(self._key(trial), metrics, step=epoch)
        self.r.results.add_epoch(self._identity(trial), result)
        self.r.progress.best(self.variant, result.get(METRIC))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = self.last.get(trial.trial_id) or trial.last_result or {}
        status = result.get("status")
        outcome = status if status in ("completed", "diverged") else "pruned"
        self._finish(trial, result, outcome)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        result = self.last.get(trial.trial_id) or trial.last_result or {}
        error = ""
        if getattr(trial, "error_file", None) and os.path.exists(trial.error_file):
            error = Path(trial.error_file).read_text(errors="replace")[-2000:]
        self._finish(trial, result, "failed", error)

    def _finish(self, trial, result: dict[str, Any], outcome: str, error: str = "") -> None:
        key = self._key(trial)
        row = self._identity(trial)
        number = self.searcher.numbers.get(trial.trial_id) if self.searcher else None
        row.update(optuna_number=number, status=outcome, epochs_reached=int(result.get("epoch", 0)),
                   seconds=time.time() - self.started.get(trial.trial_id, time.time()),
                   node=result.get("node", ""), mlflow_run_id=self.r.tracker.run_id(key) or "",
                   searched=json.dumps([p.name for p in self.searched if p.is_active(trial.config)]),
                   error=error[-500:])
        row.update(resolved_config(trial.config))
        row.update({k: result.get(k, float("nan")) for k in FINAL_METRICS})
        if outcome != "completed":
            row["test_acc"] = row["test_loss"] = row["compressed_test_acc"] = float("nan")
        self.r.results.finish_trial(row)
        self.r.tracker.tags(key, {"status": outcome, "node": row["node"], "epochs_reached": row["epochs_reached"]})
        self._artifacts(key, trial.trial_id, result)
        self.r.tracker.end(key, outcome)
        self.r.progress.update(trial.trial_id, self.variant, outcome, result.get(METRIC))

    def _artifacts(self, key: str, trial_id: str, result: dict[str, Any]) -> None:
        info = json.loads(result.get("info_json") or "{}")
        out = self.r.study_dir / "artifacts" / trial_id
        out.mkdir(parents=True, exist_ok=True)
        from study import artifacts

        for path in artifacts.write(info, result, out):
            self.r.tracker.artifact(key, path)


def resolved_config(config: dict[str, Any]) -> dict[str, Any]:
    """The full TrainConfig a trial ran with (defaults filled in), as plain values."""
    return TrainConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_")}).to_dict()


class Progress:
    """The live view: one line per change, trials done/running/pruned/failed and best per variant."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total = name, total
        self.state: dict[str, tuple[str, str]] = {}
        self.bests: dict[str, float] = {}
        self._last_line = ""
        self._t0 = time.time()

    def best(self, variant: str, value: Any) -> None:
        if isinstance(value, (int, float)) and value == value:
            self.bests[variant] = max(self.bests.get(variant, -1.0), float(value))

    def update(self, trial_id: str, variant: str, status: str, value: Any = None) -> None:
        self.state[trial_id] = (variant, status)
        self.best(variant, value)
        counts = {s: sum(1 for _, st in self.state.values() if st == s)
                  for s in ("running", "completed", "pruned", "failed", "diverged")}
        done = counts["completed"] + counts["pruned"] + counts["failed"] + counts["diverged"]
        bests = " ".join(f"{v}={b:.3f}" for v, b in sorted(self.bests.items()))
        line = (f"[{self.name} {time.time() - self._t0:6.0f}s] trials {done}/{self.total} done: "
                f"{counts['completed']} completed, {counts['pruned']} pruned, {counts['failed']} failed, "
                f"{counts['diverged']} diverged; {counts['running']} running | best val_acc {bests}")
        if line != self._last_line:
            print(line, flush=True)
            self._last_line = line


# ---------------------------------------------------------------- the runner


class StudyRunner:
    def __init__(self, spec: StudySpec, study_dir: Path | None = None) -> None:
        self.spec = spec
        self.remote: str | None = None
        if study_dir is None:
            study_dir = spec.study_dir()
            if isinstance(study_dir, str):
                # Remote storage: Tune writes trials there directly; the driver keeps its
                # Parquet/state files locally and copies them up after every experiment.
                self.remote = study_dir
                study_dir = Path(os.environ.get("RESSTUDY_LOCAL_DIR", "resstudy_runs")).resolve() / spec.name
        self.study_dir = Path(study_dir)
        self.study_dir.mkdir(parents=True, exist_ok=True)
        self.state = read_state(self.study_dir)
        self.results = ResultsWriter(self.study_dir)
        n_exp = len(spec.experiments())
        repeats = len(spec.seeds) if spec.repeat_best else 0
        self.progress = Progress(spec.name, n_exp * (spec.trials_per_variant + repeats))
        self.tracker: Tracker | None = None

    def save_state(self) -> None:
        write_state(self.study_dir, self.state)

    def _on_ids(self, ids: dict[str, str]) -> None:
        self.state["mlflow_runs"] = dict(ids)
        if "study" in ids:
            self.state["mlflow_parent_run_id"] = ids["study"]
        self.save_state()

    def run(self) -> Path:
        spec = self.spec
        # The saved spec must not carry a tracking password: `resstudy resume` takes
        # it again from --tracking-uri or MLflow's own MLFLOW_TRACKING_USERNAME/PASSWORD.
        saved = spec.model_copy(deep=True)
        if saved.mlflow.tracking_uri:
            saved.mlflow.tracking_uri = redact_uri(saved.mlflow.tracking_uri)
        (self.study_dir / "spec.yaml").write_text(saved.to_yaml())
        uri = spec.tracking_uri()
        self.tracker = Tracker(uri, spec.experiment_name(), spec.name, self.study_dir,
                               ids=self.state.get("mlflow_runs"), on_ids_changed=self._on_ids)
        self.state.update(name=spec.name, tracking_uri=redact_uri(uri), experiment_id=self.tracker.experiment_id,
                          started=self.state.get("started", time.time()))
        self.state.setdefault("experiments", {})
        self.save_state()
        print(f"resstudy: study {spec.name} -> {self.study_dir}", flush=True)
        print(f"resstudy: MLflow: {self.tracker.ui_command()}", flush=True)
        _init_ray(spec)
        try:
            for variant, depth in spec.experiments():
                self._experiment(variant, depth, "search")
                if spec.repeat_best and spec.seeds:
                    self._experiment(variant, depth, "repeat")
            self.tracker.end("study", "completed")
        finally:
            self.results.flush()
            if not self.tracker.flush(wait_s=float(os.environ.get("RESSTUDY_MLFLOW_FLUSH_WAIT", "120"))):
                print(f"resstudy: {self.tracker.pending} MLflow call(s) could not be delivered", file=sys.stderr)
        self.state["finished"] = time.time()
        self.save_state()
        print(f"resstudy: results in {self.study_dir / 'results.parquet'} and history.parquet", flush=True)
        print(f"resstudy: browse the runs with: {self.tracker.ui_command()}", flush=True)
        return self.study_dir

    def _experiment(self, variant: str, depth: int, phase: str) -> None:
        spec = self.spec
        name = f"{spec.name}-{variant}-d{depth}" + ("-repeat" if phase == "repeat" else "")
        if self.state["experiments"].get(name) == "done":
            return
        parent = f"{spec.name}-{variant}-d{depth}"
        self.tracker.create(f"exp:{parent}", "study", parent, {"resstudy.level": "variant", "variant": variant,
                                                               "depth": str(depth)}) if phase == "search" else None
        base = spec.trial_base_config(variant, depth)
        base["threads"] = max(1, int(spec.resources.cpu))
        searcher = None
        # search_spaces.Param list; a conditional one counts only where active. A repeat
        # trial runs a searched configuration, so it lists the same names.
        overrides = spec.space_overrides(variant)
        searched = search_spaces.space_params(variant, overrides, spec.variants[variant].fixed)
        if phase == "search":
            sampler = spec.make_sampler(variant)
            import optuna

            storage = optuna.storages.RDBStorage(f"sqlite:///{self.study_dir / 'optuna.db'}")
            searcher = StudyOptunaSearch(space=spec.build_space(variant), metric=METRIC, mode=MODE, sampler=sampler,
                                         study_name=name, storage=storage,
                                         trial_attrs={"seed": int(base["seed"]), "variant": variant, "depth": depth})
            search_alg = ConcurrencyLimiter(searcher, max_concurrent=spec.max_concurrent)
            param_space = base
            num_samples = min(spec.trials_per_variant, getattr(sampler, "size", spec.trials_per_variant))
            scheduler = (ASHAScheduler(max_t=spec.epochs, grace_period=spec.scheduler.grace_period,
                                       reduction_factor=spec.scheduler.reduction_factor)
                         if spec.scheduler.type == "asha" else FIFOScheduler())
        else:
            best = self._best_config(parent)
            if best is None:
                print(f"resstudy: {parent}: no completed trial to repeat", flush=True)
                self.state["experiments"][name] = "done"
                self.save_state()
                return
            param_space = dict(best, seed=tune.grid_search(list(spec.seeds)))
            search_alg, num_samples, scheduler = None, 1, FIFOScheduler()

        callback = StudyCallback(self, parent, variant, depth, phase, searcher, searched)
        resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
        fn = tune.with_resources(trainable, resources)
        storage_path = f"{self.remote}/tune" if self.remote else str(self.study_dir / "tune")
        exp_path = f"{storage_path}/{name}"
        run_config = tune.RunConfig(
            name=name, storage_path=storage_path, callbacks=[callback], verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        )
        if tune.Tuner.can_restore(exp_path):
            print(f"resstudy: {name}: resuming the interrupted experiment", flush=True)
            tuner = tune.Tuner.restore(exp_path, fn, resume_unfinished=True, resume_errored=False,
                                       param_space=param_space)
            # callbacks are not restored from the pickled state; re-attach ours
            tuner._local_tuner._run_config.callbacks = [callback]  # noqa: SLF001 (no public hook in Ray 2.60)
            if searcher is not None:
                restored = tuner._local_tuner._tune_config.search_alg  # noqa: SLF001
                inner = getattr(restored, "searcher", restored)
                callback.searcher = inner if isinstance(inner, StudyOptunaSearch) else searcher
        else:
            tuner = tune.Tuner(fn, param_space=param_space, run_config=run_config, tune_config=tune.TuneConfig(
                metric=METRIC, mode=MODE, search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                max_concurrent_trials=None if search_alg is not None else spec.max_concurrent, reuse_actors=True,
                trial_dirname_creator=_trial_dirname))
        print(f"resstudy: {name}: {num_samples if phase == 'search' else len(spec.seeds)} trial(s)", flush=True)
        tuner.fit()
        self.results.flush()
        self.state["experiments"][name] = "done"
        self.save_state()
        self._sync_remote()

    def _sync_remote(self) -> None:
        if not self.remote:
            return
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(self.remote)
        local = pafs.LocalFileSystem()
        for name in ("results.parquet", "history.parquet", "spec.yaml", STATE_FILE, "optuna.db"):
            if (self.study_dir / name).exists():
                pafs.copy_files(str(self.study_dir / name), f"{root}/{name}", source_filesystem=local,
                                destination_filesystem=fs)

    def _best_config(self, experiment: str) -> dict[str, Any] | None:
        rows = [r for r in self.results.results.values()
                if r["experiment"] == experiment and r["phase"] == "search" and r["status"] == "completed"]
        if not rows:
            return None
        best = max(rows, key=lambda r: r.get(METRIC) or -1.0)
        fields = set(TrainConfig.__dataclass_fields__)
        return {k: v for k, v in best.items() if k in fields}


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _init_ray(spec: StudySpec) -> None:
    if ray.is_initialized():
        return
    # The progress view is resstudy's own: silence Tune's tables and chatter.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import logging

    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", log_to_driver=False)
    else:
        # An embedded single-node Ray: nothing listens beyond loopback, no dashboard.
        # Ray reads the loopback switch (top of this module) when first imported; where
        # ray was imported before this module, set the constant it was read into.
        if os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0").lower() in ("0", "false"):
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(include_dashboard=False, log_to_driver=False, num_cpus=os.cpu_count())


# ---------------------------------------------------------------- study.json


def read_state(study_dir: str | Path) -> dict[str, Any]:
    path = Path(study_dir) / STATE_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"study state {path} is corrupt ({e}); it is rewritten by `resstudy run`") from e


def write_state(study_dir: str | Path, state: dict[str, Any]) -> None:
    path = Path(study_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, path)


def run_study(spec: StudySpec) -> Path:
    return StudyRunner(spec).run()

