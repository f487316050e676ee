"""Read a study directory (results/history parquet, spec, Optuna DB, MLflow runs).

Every loader names the file it failed on: a report built on a silently empty
table is worse than no report. Results and history are read as the study's
ledger and epoch logs hold them now, so a running study shows every trial
that has finished (its Parquet files are compacted only at the end of each
experiment); a study without them (an export, a synthetic one) is read from
the Parquet files. A copied or moved study is read where it lies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from study.errors import UserError
from study.ledger import FINISHED, SPEC_FILE, STUDY_DIR_RULE, is_study_dir

if TYPE_CHECKING:  # imported where used: both are slow to import
    import mlflow
    import optuna

STATUSES = FINISHED


class InsufficientDataError(UserError, ValueError):
    """Too few finished or usable trials for what was asked (a report, a fit); the
    message says how many and why. A user error: more trials, or waiting for them,
    fixes it; the analysis catches it where it can go on without (one fit)."""


class StudyDirError(UserError, FileNotFoundError):
    """A study directory, or one of its files, is not where it was looked for."""


class StudyFileError(UserError, ValueError):
    """A study file exists but cannot be read as what it should hold."""


def _file(study_dir: str | Path, name: str) -> Path:
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise StudyDirError(f"study directory {str(study_dir)!r} does not exist")
    path = study_dir / name
    if not path.is_file():
        raise StudyDirError(f"{name} not found in study directory {str(study_dir)!r} (looked for {path})")
    return path


def _read_parquet(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a truncated/foreign file
        raise StudyFileError(f"cannot read {path}: not a readable parquet file ({type(e).__name__}: {e})") from e
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise StudyFileError(f"{path} lacks required column(s) {missing}; it has {sorted(df.columns)}")
    return df


def searched_list(value: Any) -> list[str]:
    """The `searched` cell (a JSON list of names) as a list; empty for missing."""
    if value is None or (isinstance(value, float) and value != value):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    try:
        out = json.loads(value)
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"column 'searched' holds {value!r}, expected a JSON list of parameter names") from e
    if not isinstance(out, list):
        raise ValueError(f"column 'searched' holds {value!r}, expected a JSON list of parameter names")
    return [str(v) for v in out]


def searched_params(df: pd.DataFrame) -> list[str]:
    """Union of the searched parameter names over the rows, in first-seen order."""
    names: dict[str, None] = {}
    for v in df["searched"] if "searched" in df.columns else ():
        for n in searched_list(v):
            names.setdefault(n, None)
    return list(names)


def _columns(df: pd.DataFrame, path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise StudyFileError(f"{path} lacks required column(s) {missing}; it has {sorted(df.columns)}")
    return df


def load_results(study_dir: str | Path) -> pd.DataFrame:
    """One row per finished trial (see the study output schema): the ledger's rows as
    they are now, else results.parquet."""
    from study.ledger import LEDGER_FILE, finished_rows
    from study.results import ordered, table_of

    required = ("experiment", "variant", "phase", "trial_id", "seed", "status", "val_acc")
    if not Path(study_dir).is_dir():
        raise StudyDirError(f"study directory {str(study_dir)!r} does not exist")
    rows = finished_rows(study_dir)
    if rows is None:
        path = _file(study_dir, "results.parquet")
        df = _read_parquet(path, required)
    elif not rows:
        raise InsufficientDataError(f"no trial of the study in {str(study_dir)!r} has finished yet (its ledger "
                                    f"{Path(study_dir) / LEDGER_FILE} lists none); try again once one has")
    else:
        path = Path(study_dir) / LEDGER_FILE
        df = _columns(table_of(ordered(rows)).to_pandas(), path, required)
    bad = sorted(set(df["status"].dropna().unique()) - set(STATUSES))
    if bad:
        raise StudyFileError(f"{path}: column 'status' has unknown value(s) {bad}; allowed: {list(STATUSES)}")
    if "searched" not in df.columns:
        df["searched"] = "[]"
    if "depth" not in df.columns:
        df["depth"] = -1
    if {"params", "params_compressed"} <= set(df.columns):
        # the schema defines param_reduction = 1 - params_compressed / params;
        # derive it where a writer left it out
        derived = 1.0 - df["params_compressed"].astype(float) / df["params"].astype(float)
        df["param_reduction"] = df["param_reduction"].astype(float).fillna(derived) \
            if "param_reduction" in df.columns else derived
    return df


def load_history(study_dir: str | Path) -> pd.DataFrame:
    """One row per trial-epoch: from the epoch logs as they are now, else history.parquet."""
    from study.results import EPOCHS_DIR, history_rows, table_of

    required = ("experiment", "variant", "trial_id", "epoch", "val_acc")
    logs = Path(study_dir) / EPOCHS_DIR
    if logs.is_dir() and any(logs.glob("*.jsonl")):
        return _columns(table_of(history_rows(study_dir)).to_pandas(), logs, required)
    path = _file(study_dir, "history.parquet")
    return _read_parquet(path, required)


def load_spec(study_dir: str | Path) -> dict[str, Any]:
    """The spec the study ran, as a dict (the spec's JSON form), with what the driver
    resolved from it under "manifest" (study.driver.manifest): the analysis takes
    search spaces, rung epochs and claims from there. A study whose study.json holds a
    manifest is read from study.json, the spec the driver validated, so nothing (no
    plugin) is loaded again; an older one from spec.yaml through study.spec, its
    manifest resolved now by the driver's own function."""
    state = load_study_meta(study_dir) if (Path(study_dir) / "study.json").is_file() else {}
    recorded = state.get("manifest")
    if isinstance(recorded, dict) and isinstance(state.get("spec"), dict):
        return {**state["spec"], "manifest": recorded}
    spec = _validated_spec(study_dir)
    return {**spec.model_dump(mode="json"), "manifest": recorded if isinstance(recorded, dict) else _resolve(spec)}


def manifest(study_dir: str | Path) -> dict[str, Any]:
    """What the driver resolved when the study started (study.driver.manifest); for a
    study recorded before manifests, resolved now from its spec.yaml by the same function."""
    from study.driver.manifest import read

    state = load_study_meta(study_dir) if (Path(study_dir) / "study.json").is_file() else {}
    return read(state) or _resolve(_validated_spec(study_dir))


def _validated_spec(study_dir: str | Path):
    from study.spec import load_spec as load_study_spec

    path = _file(study_dir, SPEC_FILE)
    try:
        return load_study_spec(path)
    except (UserError, ImportError) as e:  # SpecError; a plugin that is gone or fails to import
        raise StudyFileError(f"{path} is not a spec this resstudy can read: {type(e).__name__}: {e}") from None


def _resolve(spec: Any) -> dict[str, Any]:
    from study.driver.manifest import resolve

    return resolve(spec)


def load_study_meta(study_dir: str | Path) -> dict[str, Any]:
    """study.json: MLflow tracking_uri, experiment_id, mlflow_parent_run_id."""
    path = _file(study_dir, "study.json")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StudyFileError(f"cannot parse {path}: {e}") from e
    if not isinstance(meta, dict):
        raise StudyFileError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    return meta


def load_optuna_studies(study_dir: str | Path) -> dict[str, optuna.Study]:
    """Every Optuna study in optuna.db, keyed by study (= experiment) name."""
    import optuna

    path = _file(study_dir, "optuna.db")
    with open(path, "rb") as f:
        head = f.read(16)
    if head and not head.startswith(b"SQLite format 3"):
        raise StudyFileError(f"{path} is not an SQLite database")
    url = f"sqlite:///{path.resolve()}"
    try:
        storage = optuna.storages.RDBStorage(url, skip_compatibility_check=False)
        names = optuna.get_all_study_names(storage)
        return {n: optuna.load_study(study_name=n, storage=storage) for n in names}
    except Exception as e:
        raise ValueError(f"cannot read Optuna storage {path}: {type(e).__name__}: {e}") from e


def _redact(text: str) -> str:
    try:
        from study.tracking import redact_text
    except Exception:  # the analysis must still read a study without the trainer's deps
        return text
    return redact_text(text)


def load_mlflow_runs(study_dir: str | Path, uri: str | None = None) -> pd.DataFrame:
    """The study's MLflow runs: the parent run and all its descendants.

    Uses study.json's tracking_uri, experiment_id and mlflow_parent_run_id. A
    column `level` says study / experiment / trial.
    """
    import mlflow

    meta = load_study_meta(study_dir)
    if not meta.get("mlflow_parent_run_id"):
        raise ValueError(f"study.json in {str(study_dir)!r} lacks key 'mlflow_parent_run_id'")
    uri = uri or tracking_uri(study_dir, meta)
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        parent = client.get_run(meta["mlflow_parent_run_id"])
    except Exception as e:  # bad URI, missing DB, unknown run: say which (credentials masked)
        raise ValueError(_redact(f"cannot read MLflow parent run {meta['mlflow_parent_run_id']!r} from tracking "
                                 f"URI {uri!r} (study.json of {str(study_dir)!r}): {type(e).__name__}: {e}")) from e
    exp_id = meta.get("experiment_id") or parent.info.experiment_id
    runs = _search_all(client, exp_id)
    if runs.empty:
        return runs
    parent_col = "tags.mlflow.parentRunId"
    if parent_col not in runs.columns:
        runs[parent_col] = None
    # Walk down from the parent: the experiment may hold other studies' runs.
    keep = {parent.info.run_id}
    level = {parent.info.run_id: "study"}
    frontier = {parent.info.run_id}
    depth_names = ["experiment", "trial"]
    depth = 0
    while frontier:
        children = runs.loc[runs[parent_col].isin(frontier), "run_id"]
        frontier = set(children) - keep
        for r in frontier:
            level[r] = depth_names[min(depth, len(depth_names) - 1)]
        keep |= frontier
        depth += 1
    out = runs[runs["run_id"].isin(keep)].copy()
    out["level"] = out["run_id"].map(level)
    return out.reset_index(drop=True)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a well-formed sqlite:/// URI, else None."""
    from study.ledger import sqlite_file

    return sqlite_file(uri)


def tracking_uri(study_dir: str | Path, meta: dict[str, Any] | None = None) -> str:
    """The study's MLflow URI from study.json, for where the study lies now: its own
    store (a relative SQLite path, or the default store of an older study.json) is
    the mlflow.db in `study_dir`, with the artifact locations MLflow keeps absolute
    pointed at its mlartifacts/ (so a copy logs into itself, never into the
    original). An SQLite store whose file is not where the URI says (a malformed
    URI) falls back to the study dir's own mlflow.db. A server URI is as given."""
    from study.ledger import relocate_mlflow_artifacts
    from study.ledger import tracking_uri as study_tracking_uri

    meta = load_study_meta(study_dir) if meta is None else meta
    uri = study_tracking_uri(study_dir, meta)
    if not uri:
        raise ValueError(f"study.json in {str(study_dir)!r} lacks key 'tracking_uri'")
    local = Path(study_dir).resolve() / "mlflow.db"
    if uri.startswith("sqlite:"):
        f = sqlite_path(uri)
        if (f is None or not f.is_file()) and local.is_file():
            print(_redact(f"[analysis] tracking_uri {uri!r} in study.json has no database; using {local}"), flush=True)
            uri = f"sqlite:///{local}"
        if (sqlite_path(uri) or Path()).resolve() == local:
            relocate_mlflow_artifacts(study_dir)
    return uri


def _search_all(client: mlflow.MlflowClient, experiment_id: str) -> pd.DataFrame:
    """All runs of an experiment as mlflow.search_runs lays them out (tags./params./metrics.)."""
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for r in page:
            row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
                   "start_time": r.info.start_time, "end_time": r.info.end_time}
            row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
            row.update({f"params.{k}": v for k, v in r.data.params.items()})
            row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
            rows.append(row)
        token = page.token
        if not token:
            return pd.DataFrame(rows)


def storage_roots(start: str | Path | None = None) -> list[Path]:
    """Where study names are looked up: $RESSTUDY_STORAGE, then ./resstudy_runs
    in `start` (default: the working directory) and every folder above it,
    so a notebook kernel started in analysis/notebooks/ finds the project's runs."""
    roots = []
    env = os.environ.get("RESSTUDY_STORAGE")
    if env:
        roots.append(Path(env).expanduser())
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        roots.append(d / "resstudy_runs")
    return roots


def find_study(name_or_path: str | Path | None = None, start: str | Path | None = None) -> Path:
    """A study directory from a name or a path, wherever the caller runs.

    None: $RESSTUDY_STUDY (a name or path), else $RESSTUDY_STUDY_DIR, else the
    newest study under the first storage root holding any. A path (absolute,
    or relative to `start`/cwd) is used as is; a name is looked up under
    storage_roots(start). Raises StudyDirError naming every place it looked."""
    if name_or_path is None or str(name_or_path) == "":
        name_or_path = os.environ.get("RESSTUDY_STUDY") or os.environ.get("RESSTUDY_STUDY_DIR")
    roots = storage_roots(start)
    if not name_or_path:
        for root in roots:
            found = sorted((p.parent for p in root.glob(f"*/{SPEC_FILE}")), key=lambda p: p.stat().st_mtime) \
                if root.is_dir() else []
            if found:
                return found[-1]
        raise StudyDirError("no study given and none found: set RESSTUDY_STUDY to a study name or path "
                            f"(looked under {', '.join(str(r) for r in roots[:3])}, ...)")
    p = Path(name_or_path).expanduser()
    base = Path(start).resolve() if start else Path.cwd()
    for cand in ([p] if p.is_absolute() else [base / p]):
        if is_study_dir(cand):
            return cand.resolve()
    if p.is_absolute() or len(p.parts) > 1:
        raise StudyDirError(f"{str(name_or_path)!r} is not a study directory; allowed: {STUDY_DIR_RULE}")
    for root in roots:
        if is_study_dir(root / p):
            return (root / p).resolve()
    raise StudyDirError(f"no study named {str(name_or_path)!r}: looked in "
                        + ", ".join(str(r) for r in roots[:4]) + (", ..." if len(roots) > 4 else ""))


def default_study_dir() -> Path:
    """$RESSTUDY_STUDY / $RESSTUDY_STUDY_DIR, else the newest study dir (see find_study)."""
    return find_study()


__all__ = [
    "InsufficientDataError", "STATUSES", "load_results", "load_history", "load_spec", "load_study_meta", "manifest",
    "load_optuna_studies", "load_mlflow_runs", "tracking_uri", "sqlite_path", "searched_list", "searched_params",
    "default_study_dir", "find_study", "storage_roots", "StudyDirError", "StudyFileError",
]
