"""The report and the claims table logged to the study's MLflow parent run."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from typing import Any
from pathlib import Path

import pandas as pd

from ..claims import reported_text
from ..load import (load_study_meta, sqlite_path,
                   tracking_uri as study_tracking_uri)
from .page import _say, _slug


def _reachable(uri: str) -> tuple[bool, str]:
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                return r.status == 200, f"HTTP {r.status}"
        except (urllib.error.URLError, OSError) as e:
            return False, str(e)
    if uri.startswith("sqlite:"):
        p = sqlite_path(uri)
        if p is None:
            return False, "not an SQLite file URI (sqlite:///relative/path or sqlite:////absolute/path)"
        return p.is_file(), f"{p} missing"
    if uri.startswith("file:"):
        p = Path(urllib.parse.urlparse(uri).path)
        return p.exists(), f"{p} missing"
    return True, ""


def _local_artifact_root(artifact_uri: str, run_id: str) -> Path | None:
    """For a local (file) artifact URI, the experiment's store above the run's folder."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(urllib.parse.unquote(parsed.path))
    for parent in path.parents:
        if parent.name == run_id:
            return parent.parent
    return path.parent


def _redact(text: str) -> str:
    try:
        from study.tracking import redact_text
    except Exception:
        return text
    return redact_text(text)


def _study_run(study_dir: str | Path, tracking_uri: str | None, warn):
    """(client, run id, uri) of the study's MLflow parent run, or None after warn(why)."""
    try:
        meta = load_study_meta(study_dir)
    except (FileNotFoundError, ValueError) as e:
        return warn(str(e)) and None
    run_id = meta.get("mlflow_parent_run_id")
    if not (tracking_uri or meta.get("tracking_uri")) or not run_id:
        return warn(f"study.json lacks tracking_uri or mlflow_parent_run_id (keys: {sorted(meta)})") and None
    uri = tracking_uri or study_tracking_uri(study_dir, meta)
    ok, why = _reachable(uri)
    if not ok:
        return warn(f"tracking server {uri} not reachable ({why})") and None
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri), run_id, uri


def _claim_records(t: pd.DataFrame) -> tuple[list, list]:
    """The claims as MLflow metrics (claim.<key>.d<depth>.estimate / .p_holm / .reported) and
    tags (.verdict, .verdicts, .reported with its source)."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics, tags = [], []
    for _, r in t.iterrows():
        k = _slug(f"claim.{r['key']}.d{r['depth']}")
        for col, suffix in (("estimate", "estimate"), ("p_adj", "p_holm"), ("reported", "reported")):
            if col in r and pd.notna(r[col]):
                metrics.append(Metric(f"{k}.{suffix}", float(r[col]), now, 0))
        tags.append(RunTag(f"{k}.verdict", str(r["verdict"])))
        tags.append(RunTag(f"{k}.verdicts", str(r.get("verdicts") or r["verdict"])))
        if pd.notna(r.get("reported")):
            tags.append(RunTag(f"{k}.reported", reported_text(r)[:5000]))
    return metrics, tags


def _log_claim_records(client: Any, run_id: str, table: pd.DataFrame) -> None:
    metrics, tags = _claim_records(table)
    for i in range(0, max(len(tags), len(metrics)), 900):  # MLflow's batch limits: 1000 tags, 1000 metrics
        client.log_batch(run_id, metrics=metrics[i:i + 900], tags=tags[i:i + 900])


def log_claims(study_dir: str | Path, table: pd.DataFrame, tracking_uri: str | None = None) -> bool:
    """The claims' verdicts and reported effects as metrics and tags of the study's MLflow
    parent run (see _claim_records); a warning, not an error, when it cannot be reached.
    Opens no run, so none is left RUNNING."""
    def warn(msg: str) -> bool:
        _say(_redact(f"WARNING: claims not logged to MLflow: {msg}"))
        return False

    found = _study_run(study_dir, tracking_uri, warn)
    if not found:
        return False
    client, run_id, _ = found
    try:
        _log_claim_records(client, run_id, table)
    except Exception as e:  # an MLflow failure must not fail the command that finished the study
        return warn(f"{type(e).__name__}: {e}")
    return True


def log_artifacts(study_dir: str | Path, out_dir: str | Path, tracking_uri: str | None = None) -> bool:
    """Upload out_dir under "analysis/" to the study's MLflow parent run, and
    the claims as that run's metrics and tags (_claim_records); warn (not raise)
    when study.json, the server or the run is unavailable. Opens no run (it
    writes to the existing parent run by id), so none is left RUNNING; URIs in
    messages have credentials masked."""
    def warn(msg: str) -> bool:
        msg = _redact(f"analysis not logged to MLflow: {msg}")
        warnings.warn(msg, stacklevel=3)
        _say(f"WARNING: {msg}")
        return False

    found = _study_run(study_dir, tracking_uri, warn)
    if not found:
        return False
    client, run_id, uri = found
    try:
        run = client.get_run(run_id)
        store = _local_artifact_root(run.info.artifact_uri, run_id)
        if store is not None and not store.parent.exists():
            # a moved study dir: its runs still name the old local store, whose
            # folder is gone; writing would recreate a stale tree there
            return warn(f"the run's local artifact store {store} does not exist (study dir moved?)")
        client.log_artifacts(run_id, str(out_dir), artifact_path="analysis")
        claims = Path(out_dir) / "claims.parquet"
        if claims.is_file():
            _log_claim_records(client, run_id, pd.read_parquet(claims))
    except Exception as e:  # any MLflow/IO failure must not lose the report already on disk
        return warn(f"{type(e).__name__}: {e}")
    _say(_redact(f"logged {out_dir} to MLflow run {run_id} ({uri}) under analysis/"))
    return True


__all__ = ["log_artifacts", "log_claims"]
