"""MLflow tracking for a study: runs nested study > experiment (variant) > trial.

Every MLflow call goes through one ordered queue keyed by resstudy's own names
("study", "exp:<name>", "trial:<id>"). When the tracking server is unreachable
the queue keeps the calls and replays them in order once it answers again, so
trials keep training and lose no metric. Run ids are kept in the study's
study.json, so a resumed study reopens its runs instead of opening new ones.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit, urlunsplit

from study.cache import cache_dir
from study.errors import UserError

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# MLflow 3 opens an experiment without this tag on its GenAI overview; this
# value makes the UI open on the runs table with metric/param columns.
EXPERIMENT_KIND = "custom_model_development"
PARENT_TAG = "mlflow.parentRunId"
LEVEL_TAG = "resstudy.level"
# A token unique to one create call, set on the run it makes: a create whose answer was lost
# (the client timed out while a busy server still made the run) is retried by looking for the
# run with its token first, so a retry never makes a second run (left RUNNING for ever).
CREATE_TAG = "resstudy.create"

# The view `resstudy ui` links to. MLflow 3.17's UI (server/js, the experiment
# page) reads `?viewStateShareKey=K` and applies the experiment tag
# `mlflow.sharedViewState.K`, a JSON of search facets (searchFilter,
# orderByKey, orderByAsc) and table state (selectedColumns, columnOrder,
# runsHiddenMode); `?workflowType=machine_learning` opens its model-training
# side bar instead of the GenAI one. The filter lists the trials themselves:
# nested under their study and variant runs they start collapsed behind one
# row (a shared view cannot carry runsExpanded).
VIEW_KEY = "resstudy-trials"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_METRICS = ("val_acc", "test_acc", "best_val_acc")  # the trainer's metrics, as the runner logs them
VIEW_TAGS = ("subject", "variant", "arm", "phase", "seed", "status")  # the runner's trial tags


def trials_view() -> dict[str, Any]:
    """The shared view state: every trial of the experiment, best val_acc first,
    with the key metrics and the trial's identity as columns."""
    columns = [f"metrics.`{m}`" for m in VIEW_METRICS] + [f"tags.`{t}`" for t in VIEW_TAGS]
    return {"searchFilter": f"tags.`{LEVEL_TAG}` = 'trial'", "orderByKey": f"metrics.`{VIEW_METRICS[0]}`",
            "orderByAsc": False, "selectedColumns": columns, "columnOrder": columns, "runsHiddenMode": "SHOW_ALL"}


def view_query() -> str:
    """The URL query (after `#/experiments/<id>/runs?`) that opens the trials view."""
    return urlencode({"workflowType": "machine_learning", "viewStateShareKey": VIEW_KEY})


def experiment_tags() -> dict[str, str]:
    """The tags every experiment the study creates carries: not GenAI, and the trials view."""
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG: json.dumps(trials_view())}


def tag_experiment(client, experiment_id: str, tags: dict[str, str] | None = None) -> None:
    """Set experiment_tags() on an experiment where they differ (a study made
    before them, or by another version)."""
    have = dict(tags) if tags is not None else client.get_experiment(experiment_id).tags
    for k, v in experiment_tags().items():
        if have.get(k) != v:
            client.set_experiment_tag(experiment_id, k, v)


def ensure_view(tracking_uri: str, experiment_id: str) -> bool:
    """tag_experiment on a study's own store; False (the plain runs page then)
    when it cannot be written, e.g. a read-only copy."""
    try:
        from mlflow.tracking import MlflowClient

        tag_experiment(MlflowClient(tracking_uri), experiment_id)
    except Exception:
        return False
    return True

# A pruned trial did its job (as in Optuna's own MLflow integration): FINISHED, with tag status=pruned.
STATUS_BY_OUTCOME = {"completed": "FINISHED", "pruned": "FINISHED", "interrupted": "KILLED", "stopped": "KILLED",
                     "diverged": "FAILED", "failed": "FAILED"}
TRIAL_TAG = "resstudy.trial"


class TrackingError(UserError, RuntimeError):
    """MLflow cannot be used; raised before any trial starts."""


def redact_uri(uri: str) -> str:
    """The URI with any password or token replaced, fit for logs and reports."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return re.sub(r"//[^/@\s]*@", "//***@", uri)
    if parts.password or parts.username:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        netloc = f"{parts.username}:***@{host}" if parts.password else f"***@{host}"
        parts = parts._replace(netloc=netloc)
    query = re.sub(r"(?i)((?:token|pass|secret|key|sig|auth|credential)[^=&]*=)[^&]*", r"\1***", parts.query)
    if query == parts.query and not (parts.password or parts.username):
        return uri  # nothing secret; urlunsplit would fold sqlite:////abs into sqlite://abs
    return urlunsplit(parts._replace(query=query))


def default_tracking_uri(study_dir: str | Path) -> str:
    return f"sqlite:///{Path(study_dir).resolve() / 'mlflow.db'}"


def _quiet_http_retries(uri: str) -> None:
    # MLflow's HTTP client retries with exponential backoff for minutes by default;
    # the queue below does the retrying, so one quick attempt per call is right.
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _template_dir() -> Path:
    return cache_dir()


def new_sqlite_store(tracking_uri: str) -> bool:
    """Where `tracking_uri` names an SQLite store that does not exist yet, make it a copy of
    an empty store that MLflow created once per machine and MLflow version (in the cache
    directory, $XDG_CACHE_HOME/resstudy): creating a store runs every one of MLflow's
    schema migrations, seconds of a study's start (4 s on a busy 2-core machine), where
    a copy takes milliseconds and holds the very same empty, current schema. True where
    the store was copied; anything that fails leaves MLflow to create the store itself."""
    if not tracking_uri.startswith("sqlite:///"):
        return False
    target = Path(tracking_uri[len("sqlite:///"):])
    if target.exists() or not target.parent.is_dir():
        return False
    try:
        import shutil

        import mlflow
        from mlflow.tracking import MlflowClient

        template = _template_dir() / f"mlflow-{mlflow.__version__}-empty.db"
        if not template.is_file():
            template.parent.mkdir(parents=True, exist_ok=True)
            tmp = template.with_name(f"{template.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            MlflowClient(f"sqlite:///{tmp}").search_experiments()  # MLflow creates and migrates it
            os.replace(tmp, template)  # whole or not at all: drivers starting at once may race here
        part = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, part)
        os.replace(part, target)
        return True
    except Exception:
        return False


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, study_name: str, study_dir: str | Path,
                 ids: dict[str, str] | None = None, on_ids_changed: Callable[[str, str], None] | None = None,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> None:
        _quiet_http_retries(tracking_uri)
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.study_dir = Path(study_dir)
        self.ids: dict[str, str] = dict(ids or {})
        self._on_ids_changed = on_ids_changed or (lambda key, run_id: None)
        self._log = log
        self._queue: collections.deque[tuple[str, str, dict[str, Any]]] = collections.deque()
        self._down_since: float | None = None
        try:
            new_sqlite_store(tracking_uri)
            self.client = MlflowClient(tracking_uri)
            self.experiment_id = self._experiment(experiment)
        except Exception as e:  # connection refused, bad scheme, locked DB: all fatal here
            # `from None`: MLflow's own message (the cause) repeats the URI with its password.
            raise TrackingError(
                f"MLflow tracking at {redact_uri(tracking_uri)} cannot be used ({type(e).__name__}: {_short(e)}); "
                "start the server or fix mlflow.tracking_uri in the spec"
            ) from None
        self.create("study", None, study_name, {LEVEL_TAG: "study", "resstudy.study": study_name})

    # ------------------------------------------------------------ public

    def create(self, key: str, parent: str | None, name: str, tags: dict[str, str],
               params: dict[str, Any] | None = None) -> None:
        """Open a run under `key` (or reopen the one a previous driver opened), with
        its tags and params in the same request batch. A key whose creation still waits in the
        queue (MLflow down while a trial starts, fails and is retried) is reopened behind it."""
        if self.known(key):
            self._submit("reopen", key, {})
        else:
            self._submit("create", key, {"parent": parent, "name": name, "tags": tags, "token": uuid.uuid4().hex})
        if params:
            self.params(key, params)

    def params(self, key: str, params: dict[str, Any]) -> None:
        self._submit("params", key, {"params": {k: _param(v) for k, v in params.items()}})

    def metrics(self, key: str, metrics: dict[str, float], step: int, ts: int | None = None) -> None:
        """`ts` (ms): the time the values were taken; the same metric sent again with the same
        step, value and time is one metric to MLflow's SQL stores."""
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._submit("metrics", key, {"metrics": clean, "step": int(step),
                                      "ts": int(time.time() * 1000) if ts is None else int(ts)})

    def logged_steps(self, key: str, metrics: list[str]) -> dict[str, set[int]]:
        """The steps at which `key`'s run holds each of `metrics`: none for a run not created
        yet, and none when MLflow cannot be asked now (what is then sent again is sent with
        its first timestamp)."""
        run_id = self.ids.get(key)
        if run_id is None:
            return {}
        try:
            return {m: {x.step for x in self.client.get_metric_history(run_id, m)} for m in metrics}
        except Exception as e:
            self._log(f"resstudy: MLflow not asked which epochs {key} holds ({_short(e)}); sending them all")
            return {}

    def tags(self, key: str, tags: dict[str, Any]) -> None:
        self._submit("tags", key, {"tags": {k: str(v) for k, v in tags.items()}})

    def artifact(self, key: str, path: str | Path, artifact_path: str | None = None) -> None:
        self._submit("artifact", key, {"path": str(path), "artifact_path": artifact_path})

    def end(self, key: str, outcome: str) -> None:
        self._submit("end", key, {"status": STATUS_BY_OUTCOME.get(outcome, outcome)})

    def flush(self, wait_s: float = 0.0) -> bool:
        """Replay queued calls; True when the queue is empty. Waits up to wait_s for a server to return."""
        deadline = time.monotonic() + wait_s
        while True:
            if self._drain():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(2.0, max(deadline - time.monotonic(), 0.05)))

    @property
    def pending(self) -> int:
        return len(self._queue)

    def trial_runs(self, study_name: str) -> list:
        """Every trial run of this study in the experiment (for reconciling after a kill)."""
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=(
                f"tags.`{LEVEL_TAG}` = 'trial' and tags.`resstudy.study` = '{study_name}'"),
                max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def run_id(self, key: str) -> str | None:
        return self.ids.get(key)

    def known(self, key: str) -> bool:
        """A run exists for `key`, or its creation waits in the queue (MLflow down): calls
        for it (tags, end) must be queued behind the creation, not dropped."""
        return key in self.ids or any(kind == "create" and k == key for kind, k, _ in self._queue)

    def ui_command(self) -> str:
        if self.uri.startswith("sqlite:"):
            art = self.study_dir / "mlartifacts"
            return f"mlflow ui --host 127.0.0.1 --backend-store-uri {self.uri} --default-artifact-root {art}"
        return f"open {redact_uri(self.uri)} in a browser"

    # ------------------------------------------------------------ internals

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = None
            if self.uri.startswith("sqlite:"):
                location = (self.study_dir / "mlartifacts").resolve().as_uri()
            exp_id = self.client.create_experiment(name, artifact_location=location, tags=experiment_tags())
        else:
            exp_id = exp.experiment_id
            tag_experiment(self.client, exp_id, exp.tags)
        return exp_id

    def _submit(self, kind: str, key: str, payload: dict[str, Any]) -> None:
        self._queue.append((kind, key, payload))
        self._drain()

    def _drain(self) -> bool:
        while self._queue:
            kind, key, payload = self._queue[0]
            try:
                self._apply(kind, key, payload)
            except Exception as e:
                if not _is_transient(e):
                    self._log(f"resstudy: MLflow refused {kind} for {key}: {_short(e)} (skipped)")
                    self._queue.popleft()
                    continue
                payload["tried"] = True  # it may have reached the server: a create looks for its run first
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    self._log(f"resstudy: MLflow at {redact_uri(self.uri)} is unreachable; "
                              f"keeping {len(self._queue)} call(s) until it returns")
                return False
            self._queue.popleft()
            if self._down_since is not None:
                self._log("resstudy: MLflow is back; delivering kept calls")
                self._down_since = None
        return True

    def _apply(self, kind: str, key: str, p: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        if kind == "create":
            tags = {**p["tags"], CREATE_TAG: p["token"]}
            if p["parent"] is not None:
                tags[PARENT_TAG] = self.ids[p["parent"]]
            made = self.client.search_runs([self.experiment_id], f"tags.`{CREATE_TAG}` = '{p['token']}'",
                                           max_results=1) if p.get("tried") else []
            run = made[0] if made else self.client.create_run(self.experiment_id, run_name=p["name"], tags=tags)
            self.ids[key] = run.info.run_id
            self._on_ids_changed(key, run.info.run_id)
            return
        run_id = self.ids[key]
        if kind == "reopen":
            self.client.update_run(run_id, status="RUNNING")
        elif kind == "params":
            items = [Param(k, v) for k, v in p["params"].items()]
            for i in range(0, len(items), 100):  # MLflow's per-request param limit
                self.client.log_batch(run_id, params=items[i:i + 100])
        elif kind == "metrics":
            self.client.log_batch(run_id, metrics=[Metric(k, v, p["ts"], p["step"]) for k, v in p["metrics"].items()])
        elif kind == "tags":
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in p["tags"].items()])
        elif kind == "artifact":
            self.client.log_artifact(run_id, p["path"], p["artifact_path"])
        elif kind == "end":
            # Through the store: MlflowClient.set_terminated prints "View run ... at <url>" on
            # stdout, and that URL carries any credentials of the tracking URI.
            from mlflow.entities import RunStatus

            self.client._tracking_client.store.update_run_info(  # noqa: SLF001
                run_id, RunStatus.from_string(p["status"]), end_time=int(time.time() * 1000), run_name=None)


def _param(v: Any) -> str:
    return "None" if v is None else str(v)


def redact_text(text: str) -> str:
    """`text` (an error message) with the userinfo and token parameters of any URI in it masked."""
    text = re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/\s@]*)@",
                  lambda m: m.group(1) + (m.group(2).split(":")[0] + ":***" if ":" in m.group(2) else "***") + "@",
                  text)
    return re.sub(r"(?i)([?&][^=&\s]*(?:token|pass|secret|key|sig|auth|credential)[^=&\s]*=)[^&\s'\"]*", r"\1***", text)


def _short(e: BaseException) -> str:
    # MLflow's HTTP errors quote the full request URL, credentials included.
    text = redact_text(str(e)).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _is_transient(e: BaseException) -> bool:
    """Connection trouble (retry later) as opposed to a request MLflow rejects."""
    import requests

    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError)):
        return True
    text = str(e)
    return any(s in text for s in ("Max retries exceeded", "Connection refused", "Failed to establish",
                                   "API request to", "database is locked", "timed out", "503", "502"))
