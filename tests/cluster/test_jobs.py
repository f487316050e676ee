"""study.jobs without a cluster: the storage rule, token lookup, addresses, and a
fake Ray dashboard that records what a submission sends."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from study import jobs

SPEC = {
    "name": "unit", "dataset": "digits", "image_size": 16, "depth": 8, "epochs": 1,
    "trials_per_variant": 1, "variants": ["resnet"], "scheduler": {"type": "none"},
}


# ------------------------------------------------------------------ storage rule


@pytest.mark.parametrize("path", ["s3://bucket/runs", "gs://b/r", "abfs://c@acct.dfs.core.windows.net/r",
                                  "hdfs://nn:8020/r"])
def test_uri_storage_is_accepted_on_any_cluster(path):
    def never():
        raise AssertionError("node count must not be asked for a URI")
    jobs.check_storage(path, shared_storage=False, node_count=never)


def test_local_storage_is_refused_on_a_multi_node_cluster():
    with pytest.raises(jobs.JobError) as e:
        jobs.check_storage("/data/runs", shared_storage=False, node_count=lambda: 3)
    msg = str(e.value)
    assert "storage_path" in msg and "'/data/runs'" in msg and "3 nodes" in msg
    assert "s3://" in msg and "shared_storage: true" in msg and "--shared-storage" in msg


def test_local_storage_is_accepted_when_shared_or_single_node():
    jobs.check_storage("/mnt/shared/runs", shared_storage=True, node_count=lambda: 5)
    jobs.check_storage("/data/runs", shared_storage=False, node_count=1)
    # file:// is a local path, not a URI every node reaches
    with pytest.raises(jobs.JobError):
        jobs.check_storage("file:///data/runs", shared_storage=False, node_count=2)


# ------------------------------------------------------------------ token, address


def test_token_lookup_follows_rays_order(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "tok").write_text("  from-path\n")
    monkeypatch.setattr(Path, "home", lambda: home)
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    assert jobs.resolve_token() == "from-home"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert jobs.resolve_token() == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.resolve_token() == "from-env"
    assert jobs.resolve_token("explicit") == "explicit"
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(jobs.JobError, match="RAY_AUTH_TOKEN_PATH"):
        jobs.resolve_token()


def test_default_address_prefers_the_api_server_variable(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address, as inside a job
    assert jobs.default_address() == jobs.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert jobs.default_address() == "http://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:9999")
    assert jobs.default_address() == "http://api:9999"


@pytest.mark.parametrize("bad", ["ray://head:10001", "auto", "ftp://head:8265"])
def test_non_dashboard_addresses_are_refused(bad):
    with pytest.raises(jobs.JobError, match="address"):
        jobs.list_jobs(bad)


def test_unreachable_address_is_a_clear_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(jobs.JobError) as e:
        jobs.status("raysubmit_x", f"127.0.0.1:{port}")
    assert f"http://127.0.0.1:{port}" in str(e.value) and "cannot reach" in str(e.value)


def test_entrypoint_quotes_arguments():
    cmd = jobs.build_entrypoint("specs/my study.yaml", storage_path="/mnt/shared/runs",
                                tracking_uri="http://mlflow:5000", extra_args=["--x", "a b"])
    assert cmd == ("python -m study.cli run 'specs/my study.yaml' --storage-path /mnt/shared/runs "
                   "--tracking-uri http://mlflow:5000 --x 'a b'")


# ------------------------------------------------------------------ fake dashboard


class FakeDashboard:
    """Answers the few endpoints JobSubmissionClient and study.jobs use, demands a
    bearer token, and records every request."""

    def __init__(self, token: str = "s3cret", alive_nodes: int = 3):
        self.token, self.alive_nodes, self.requests = token, alive_nodes, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: object = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append((self.command, self.path, dict(self.headers), body))
                auth = self.headers.get("Authorization")
                if not auth:
                    return self._reply(401, {"error": "missing token"})
                if auth != f"Bearer {outer.token}":
                    return self._reply(403, {"error": "bad token"})
                if self.path == "/api/version":
                    return self._reply(200, {"version": "4", "ray_version": "2.60.0",
                                             "ray_commit": "x", "session_name": "fake"})
                if self.path.startswith("/api/v0/nodes"):
                    nodes = [{"node_id": f"n{i}", "state": "ALIVE"} for i in range(outer.alive_nodes)]
                    nodes.append({"node_id": "gone", "state": "DEAD"})
                    return self._reply(200, {"result": True, "data": {"result": {"result": nodes}}})
                if self.path.startswith("/api/packages/"):
                    return self._reply(404 if self.command == "GET" else 200, {})
                if self.path == "/api/jobs/" and self.command == "POST":
                    return self._reply(200, {"submission_id": "raysubmit_fake", "job_id": None})
                return self._reply(404, {"error": "no such endpoint"})

            do_GET = do_PUT = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeDashboard":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def job_posts(self) -> list[dict]:
        return [json.loads(b) for m, p, _, b in self.requests if m == "POST" and p == "/api/jobs/"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A small working dir holding a spec; no ambient Ray settings."""
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS",
                "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(Path, "home", lambda: tmp_path / "nohome")
    wd = tmp_path / "proj"
    (wd / "specs").mkdir(parents=True)
    (wd / "code.py").write_text("print('hi')\n")
    return wd


def write_spec(wd: Path, **fields) -> Path:
    path = wd / "specs" / "s.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **fields}))
    return path


def test_missing_and_wrong_tokens_are_explained(project):
    spec = write_spec(project, storage_path="s3://b/runs", mlflow={"tracking_uri": "http://m:5000"})
    with FakeDashboard() as dash:
        with pytest.raises(jobs.JobError, match="no token was sent"):
            jobs.submit(spec, dash.address, working_dir=project)
        with pytest.raises(jobs.JobError, match="token was refused"):
            jobs.submit(spec, dash.address, working_dir=project, token="wrong")
        assert dash.job_posts() == []


def test_local_storage_refused_by_the_cluster_node_count(project):
    spec = write_spec(project, storage_path=str(project / "runs"))
    with FakeDashboard(alive_nodes=2) as dash:
        with pytest.raises(jobs.JobError) as e:
            jobs.submit(spec, dash.address, working_dir=project, token="s3cret")
        assert "storage_path" in str(e.value) and "2 nodes" in str(e.value)
        assert dash.job_posts() == []


def test_submission_sends_token_entrypoint_and_working_dir(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:1")  # must not override the argument
    spec = write_spec(project, storage_path=str(project / "runs"), shared_storage=True)
    with FakeDashboard(alive_nodes=4) as dash:
        job_id = jobs.submit(spec, dash.address, working_dir=project, token="s3cret")
        assert job_id == "raysubmit_fake"
        (post,) = dash.job_posts()
        assert all(h.get("Authorization") == "Bearer s3cret" for _, _, h, _ in dash.requests)
    assert post["entrypoint"] == (f"python -m study.cli run specs/s.yaml --storage-path {project / 'runs'} "
                                  "--tracking-uri http://mlflow.internal:5000")
    env = post["runtime_env"]
    assert env["working_dir"].startswith("gcs://_ray_pkg_")  # uploaded, not a local path
    assert ".venv" in env["excludes"] and ".git" in env["excludes"]
    assert post["metadata"]["resstudy.study"] == "unit"


def test_single_node_cluster_accepts_local_storage(project):
    spec = write_spec(project, storage_path=str(project / "runs"))
    with FakeDashboard(alive_nodes=1) as dash:
        assert jobs.submit(spec, dash.address, working_dir=project, token="s3cret") == "raysubmit_fake"
        # a sqlite tracking URI is a file, so it is not forwarded to the cluster
        (post,) = dash.job_posts()
        assert "--tracking-uri" not in post["entrypoint"]


def test_spec_outside_working_dir_and_bad_spec_are_refused(project, tmp_path):
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text(yaml.safe_dump({**SPEC, "storage_path": "s3://b/r", "mlflow": {"tracking_uri": "http://m"}}))
    with pytest.raises(jobs.JobError, match="outside the working directory"):
        jobs.submit(outside, "http://127.0.0.1:9", working_dir=project, token="t")
    bad = write_spec(project, epochs=0)
    with pytest.raises(jobs.JobError, match="epochs"):
        jobs.submit(bad, "http://127.0.0.1:9", working_dir=project, token="t")
    (project / "resstudy_runs").mkdir()
    hidden = project / "resstudy_runs" / "s.yaml"
    hidden.write_text(outside.read_text())
    with pytest.raises(jobs.JobError, match="not shipped"):
        jobs.submit(hidden, "http://127.0.0.1:9", working_dir=project, token="t")


def test_alive_node_count_ignores_dead_nodes():
    with FakeDashboard(alive_nodes=3) as dash:
        assert jobs.alive_node_count(dash.address, token="s3cret") == 3
