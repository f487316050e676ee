"""Security: secrets in tracking URIs stay out of output and state, files a user
hands resstudy cannot run code, and the embedded Ray listens on loopback only
with token authentication on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from study.spec import SpecError, load_spec
from study.tracking import Tracker, TrackingError, redact_text, redact_uri
from study.train import CheckpointError, load_checkpoint
from tests.conftest import importable

SECRET = "hunter2"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    return {**importable(env), **extra}


# ---------------------------------------------------------------- redaction


@pytest.mark.parametrize("uri, expected", [
    ("postgresql://user:secret@db.example:5432/mlflow", "postgresql://user:***@db.example:5432/mlflow"),
    ("http://user:tok@mlflow.example", "http://user:***@mlflow.example"),
    ("https://tok@mlflow.example/", "https://***@mlflow.example/"),
    ("https://mlflow.example/?token=abc&x=1", "https://mlflow.example/?token=***&x=1"),
    ("https://h/?access_token=abc&api_key=k&Password=p&sig=s", "https://h/?access_token=***&api_key=***&Password=***&sig=***"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////data/runs/study/mlflow.db", "sqlite:////data/runs/study/mlflow.db"),
    ("databricks", "databricks"),
    ("file:///tmp/mlruns", "file:///tmp/mlruns"),
])
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


credential = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%", min_size=1,
                     max_size=20)


@settings(max_examples=200, deadline=None)
@given(scheme=st.sampled_from(["http", "https", "postgresql", "mysql+pymysql", "mssql"]), user=credential,
       password=credential, port=st.one_of(st.none(), st.integers(1, 65535), st.just("99999x")))
def test_no_password_survives_redaction(scheme, user, password, port):
    secret = f"S3cr{password}"  # a prefix no scheme or host contains
    netloc = f"{user}:{secret}@db.example" + ("" if port is None else f":{port}")
    uri = f"{scheme}://{netloc}/path?q=1"
    assert secret not in redact_uri(uri)
    message = f"API request to {uri}/api/2.0/mlflow/runs/get failed (x)"
    assert secret not in redact_text(message)
    assert "API request to" in redact_text(message) and "db.example" in redact_text(message)


def test_unreachable_tracking_server_error_hides_the_password(tmp_path):
    uri = f"http://user:{SECRET}@127.0.0.1:{closed_port()}"
    with pytest.raises(TrackingError) as info:
        Tracker(uri, "exp", "study", tmp_path)
    message = str(info.value)
    assert "http://user:***@127.0.0.1" in message and "cannot be used" in message
    # not in the message, nor anywhere in a traceback someone might log
    assert SECRET not in "".join(traceback.format_exception(info.value))


@pytest.mark.ray  # `resstudy run`: a refusal that broke would start Ray
def test_run_with_unreachable_mlflow_fails_before_ray_without_leaking_the_password(tmp_path):
    storage, ray_tmp = tmp_path / "runs", tmp_path / "raytmp"
    spec = {"name": "sec", "dataset": "digits", "image_size": 8, "depth": 8, "epochs": 1, "trials_per_variant": 1,
            "storage_path": str(storage), "mlflow": {"tracking_uri": f"http://user:{SECRET}@127.0.0.1:{closed_port()}"}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    # RAY_TMPDIR: where a started Ray would put its session directory
    proc = subprocess.run([sys.executable, "-m", "study.cli", "run", str(path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180, env=clean_env(RAY_TMPDIR=str(ray_tmp)))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert proc.stderr.startswith("resstudy run: error: MLflow tracking at http://user:***@127.0.0.1:")
    assert SECRET not in output and "Traceback" not in output
    assert not ray_tmp.exists() and "Started a local Ray instance" not in output
    study = storage / "sec"
    written = {p.name for p in study.iterdir()} if study.exists() else set()
    assert not written & {"tune", "artifacts", "study.json", "results.parquet", "history.parquet", "optuna.db"}
    assert not list(study.glob("epochs/*")), "a trial reported an epoch"


# ---------------------------------------------------------------- files that try to run code


def test_a_spec_cannot_construct_python_objects(tmp_path):
    marker = tmp_path / "pwned"
    for tag in ("!!python/object/apply:os.mkdir", "!!python/object/new:os.mkdir", "!!python/name:os.system"):
        path = tmp_path / "evil.yaml"
        path.write_text(f"name: p\ndataset: digits\nstorage_path: {tag} [{json.dumps(str(marker))}]\n")
        with pytest.raises(SpecError, match="could not determine a constructor"):
            load_spec(path)
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_checkpoint_cannot_run_code_when_loaded(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    state = {"model": {}, "optimizer": {}, "schedule": {}, "epoch": 1, "rng": {}, "config": _Payload(marker)}
    torch.save(state, ckpt / "state.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt)
    assert str(ckpt / "state.pt") in str(info.value)
    assert not marker.exists()


# ---------------------------------------------------------------- the embedded Ray

_RAY_PROBE = r"""
import json, sys
import psutil
if sys.argv[1] == "ray-first":
    import ray  # as a notebook or another library might, before the driver sets its switch
from study.driver import environment
import ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled

environment.init_ray()
try:
    me = psutil.Process()
    listening = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except psutil.NoSuchProcess:
            continue
        listening += [[name, c.laddr.ip, c.laddr.port] for c in conns if c.status == psutil.CONN_LISTEN]
    print("PROBE " + json.dumps({"listening": listening, "token_auth": is_token_auth_enabled(),
                                 "node_ip": ray.util.get_node_ip_address()}))
finally:
    ray.shutdown()
"""


@pytest.mark.ray
@pytest.mark.parametrize("order", ["runner-first", "ray-first"])
def test_embedded_ray_listens_on_loopback_only_with_token_auth(tmp_path, order):
    proc = subprocess.run([sys.executable, "-c", _RAY_PROBE, order], cwd=tmp_path, capture_output=True, text=True,
                          timeout=240, env=clean_env())
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    probe = json.loads(lines[-1][len("PROBE "):])
    names = {name for name, _, _ in probe["listening"]}
    assert {"gcs_server", "raylet"} <= names, probe  # the servers were found, so the check below means something
    exposed = [entry for entry in probe["listening"] if entry[1] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert probe["node_ip"] == "127.0.0.1"
    assert probe["token_auth"] is True


# ---------------------------------------------------------------- no credentials printed, no code from env


def test_ending_a_run_never_prints_mlflows_view_run_line(tmp_path, monkeypatch, capsys):
    """MlflowClient.set_terminated prints "View run ... at <url>", credentials of the URI included;
    the tracker ends runs without it, at every level."""
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    def refuse(*args, **kwargs):
        raise AssertionError("set_terminated/_log_url called: it prints the run URL")
    monkeypatch.setattr(MlflowClient, "set_terminated", refuse)
    monkeypatch.setattr(TrackingServiceClient, "_log_url", refuse)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", "study", tmp_path)
    tracker.create("exp:a", "study", "a", {})
    tracker.create("trial:1", "exp:a", "t", {}, params={"lr": 0.1})
    for key, outcome in (("trial:1", "pruned"), ("exp:a", "completed"), ("study", "interrupted")):
        tracker.end(key, outcome)
    assert tracker.flush() and "View run" not in capsys.readouterr().out
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    status = {k: client.get_run(tracker.run_id(k)).info.status for k in ("trial:1", "exp:a", "study")}
    assert status == {"trial:1": "FINISHED", "exp:a": "FINISHED", "study": "KILLED"}
    assert client.get_run(tracker.run_id("trial:1")).info.end_time is not None


# ---------------------------------------------------------------- a password in the tracking URI, end to end

PLAYED_EPOCHS = 2


class _PlayedTune:
    """The driver's backend played by hand: every trial the driver hands out trains its
    epochs and ends; `stop_after` experiments in, the study is interrupted."""

    def __init__(self, stop_after: list[int]) -> None:
        self.stop_after = stop_after

    def start(self, ctx) -> None:
        pass

    def run(self, ctx, phase) -> None:
        _play_tune(ctx, phase, self.stop_after)


def _play_tune(ctx, phase, stop_after: list[int]) -> None:
    from ray.tune.search import Searcher

    from study.driver.lifecycle import StudyInterrupted

    phase.reconcile()
    while (cfg := phase.next_trial()) not in (None, Searcher.FINISHED):
        rid = cfg["control"]["rid"]
        phase.started(rid)
        for e in range(1, PLAYED_EPOCHS + 1):
            result = {"epoch": e, "status": "completed" if e == PLAYED_EPOCHS else "running", "val_acc": 0.5 + e / 10,
                      "best_val_acc": 0.5 + e / 10, "train_loss": 1.0 / e, "val_loss": 1.0 / e,
                      "test_acc": 0.55, "rid": rid}
            phase.result(rid, result)
        phase.ended(rid, result, "")
    stop_after[0] -= 1
    if stop_after[0] == 0:
        ctx.stop.set()
        raise StudyInterrupted()


def test_a_tracking_password_reaches_no_file_no_mlflow_param_or_tag_and_no_console(tmp_path, monkeypatch, capfd):
    """`run` with user:password in the tracking URI, interrupted after its first experiment, then
    `resume`, `status` and `export`, all through the CLI in this process; Ray is not started
    (Tune's part is played by hand) and the URI's MLflow client is a local SQLite store. The
    password must be in no file the study wrote (study.json, spec.yaml, ledger, results, the
    Optuna and MLflow databases, ...), no MLflow param, tag or run name, and not on the console."""
    import mlflow.tracking
    from mlflow.tracking import MlflowClient

    from study.cli import main
    from study.driver import backend

    uri = f"http://resstudy:{SECRET}@127.0.0.1:{closed_port()}"
    store = f"sqlite:///{tmp_path / 'work' / 'tracking.db'}"
    clients: list[str] = []

    def client(tracking_uri=None, *args, **kwargs):  # the server behind `uri`, played by a local store
        clients.append(tracking_uri)
        return MlflowClient(store if tracking_uri == uri else tracking_uri, *args, **kwargs)

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", client)
    stop_after = [1]
    monkeypatch.setattr(backend, "TuneBackend", lambda: _PlayedTune(stop_after))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # whatever lands in the working directory is looked at too
    storage = tmp_path / "work" / "runs"
    spec = {"name": "sec", "dataset": "digits", "image_size": 8, "depth": 8, "epochs": PLAYED_EPOCHS,
            "trials_per_variant": 2, "seeds": [0, 1], "repeat_best": True, "variants": ["resnet", "quotient"],
            "scheduler": {"type": "none"}, "search": {"algorithm": "random", "seed": 0},
            "storage_path": str(storage), "mlflow": {"tracking_uri": uri, "experiment": "sec"}}
    spec_path = tmp_path / "mine" / "sec.yaml"  # the user's own file holds the password: not looked at
    spec_path.parent.mkdir()
    spec_path.write_text(yaml.safe_dump(spec))

    assert main(["run", str(spec_path)]) == 130  # interrupted after the resnet experiment
    d = storage / "sec"
    assert main(["resume", str(d), "--tracking-uri", uri]) == 0
    assert main(["status", str(d)]) == 0 and main(["export", str(d)]) == 0
    out, err = capfd.readouterr()

    assert uri in clients, "the tracking URI never reached MLflow: the check below proves nothing"
    ml = MlflowClient(store)
    runs = [r for e in ml.search_experiments() for r in ml.search_runs([e.experiment_id], max_results=1000)]
    trials = [r for r in runs if r.data.tags.get("resstudy.level") == "trial"]
    assert len(trials) == 2 * (2 + 2) + 2 and all(r.data.params for r in trials), out + err  # searches, repeats, twins
    for r in runs:
        for where, values in (("param", r.data.params), ("tag", r.data.tags)):
            leaked = {k: v for k, v in values.items() if SECRET in k or SECRET in v}
            assert not leaked, f"MLflow {where}s of run {r.info.run_name}: {leaked}"
        assert SECRET not in (r.info.run_name or "")
    assert SECRET not in out + err, (out + err)[-3000:]
    files = [p for p in (tmp_path / "work").rglob("*") if p.is_file()]
    assert {"study.json", "spec.yaml", "ledger.jsonl", "results.parquet", "optuna.db", "tracking.db"} <= \
        {p.name for p in files}
    leaked = [str(p.relative_to(tmp_path)) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaked, f"the tracking password is in {leaked}"
    # what was kept instead: the URI with its password masked
    assert json.loads((d / "study.json").read_text())["tracking_uri"] == redact_uri(uri)
    assert yaml.safe_load((d / "spec.yaml").read_text())["mlflow"]["tracking_uri"] == redact_uri(uri)
