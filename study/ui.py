"""`resstudy ui NAME`: the study's MLflow UI and optuna-dashboard, side by side.

Both servers listen on 127.0.0.1 only, each in its own process group so that
Ctrl-C (or any exit of this process) stops them and every worker they forked,
by pid, and takes their temporary log folder with them; Ctrl-C and SIGTERM
then end the command as interrupted (exit 130). The MLflow link opens the
study's experiment on its model-training runs table, every trial listed with
its key metrics as columns (study.tracking.trials_view). The study is served
where it lies: a copied or moved study shows its own runs and artifacts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from study.errors import UserError
from study.tracking import ensure_view, view_query

HOST = "127.0.0.1"


class UiError(UserError):
    pass


@dataclass
class Server:
    name: str
    url: str  # the page to open
    probe: str  # a URL that answers 200 once the server is up
    proc: subprocess.Popen
    log: Path  # in a temporary folder that stop() removes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _tool(name: str) -> str:
    """The console script installed beside this Python (the venv's), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise UiError(f"{name} is not installed; it comes with resstudy's dependencies (pip install -e .)")
    return found


def experiment_id(mlflow_db: Path, name: str | None) -> str | None:
    """The id of experiment `name` (else the first non-default one) in an MLflow sqlite store."""
    con = sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active' "
                           "ORDER BY experiment_id").fetchall()
    except sqlite3.DatabaseError as e:
        raise UiError(f"MLflow store {mlflow_db} cannot be read ({e}); it is written by `resstudy run`") from None
    finally:
        con.close()
    for exp_id, exp_name in rows:
        if exp_name == name:
            return str(exp_id)
    named = [str(i) for i, n in rows if n != "Default"]
    return named[0] if named else None


def _study_meta(study_dir: Path) -> tuple[str | None, str | None]:
    """(tracking URI from the saved spec, MLflow experiment name)."""
    import yaml

    from study.ledger import SPEC_FILE

    spec_file = study_dir / SPEC_FILE
    if not spec_file.is_file():
        return None, study_dir.name
    try:
        spec = yaml.safe_load(spec_file.read_text()) or {}
    except yaml.YAMLError as e:
        raise UiError(f"{spec_file} cannot be read ({e})") from None
    ml = spec.get("mlflow") or {}
    return ml.get("tracking_uri"), ml.get("experiment") or spec.get("name") or study_dir.name


def start(study_dir: Path, *, mlflow_port: int = 0, dashboard_port: int = 0) -> list[Server]:
    """Start both servers for `study_dir` and return them once they answer."""
    study_dir = Path(study_dir)
    uri, exp_name = _study_meta(study_dir)
    mlflow_db, optuna_db = study_dir / "mlflow.db", study_dir / "optuna.db"
    if uri is None and not mlflow_db.is_file() and not optuna_db.is_file():
        raise UiError(f"study {str(study_dir)!r} has no mlflow.db or optuna.db yet; run it first")
    for port in (mlflow_port, dashboard_port):
        if port and not _port_free(port):
            raise UiError(f"port {port} on {HOST} is in use; allowed: a free port, or 0 to pick one")
    servers: list[Server] = []
    logs = Path(tempfile.mkdtemp(prefix=f"resstudy-ui-{study_dir.name}-"))
    try:
        if uri is None and mlflow_db.is_file():
            from study.ledger import relocate_mlflow_artifacts

            relocate_mlflow_artifacts(study_dir)  # a copied or moved study: its runs' artifacts are its own
            port = mlflow_port or free_port()
            exp = experiment_id(mlflow_db, exp_name)
            base = f"http://{HOST}:{port}"
            page = f"{base}/#/experiments/{exp}/runs" if exp else base
            if exp and ensure_view(f"sqlite:///{mlflow_db.resolve()}", exp):  # trials listed, metrics as columns
                page += "?" + view_query()
            cmd = [_tool("mlflow"), "server", "--backend-store-uri", f"sqlite:///{mlflow_db.resolve()}",
                   "--default-artifact-root", (study_dir / "mlartifacts").resolve().as_uri(),
                   "--host", HOST, "--port", str(port), "--workers", "1"]
            servers.append(Server("MLflow", page, f"{base}/health", _spawn(cmd, study_dir, logs / "mlflow.log"),
                                  logs / "mlflow.log"))
        if optuna_db.is_file():
            port = dashboard_port or free_port()
            base = f"http://{HOST}:{port}"
            cmd = [_tool("optuna-dashboard"), f"sqlite:///{optuna_db.resolve()}", "--host", HOST, "--port", str(port)]
            servers.append(Server("optuna-dashboard", f"{base}/dashboard", f"{base}/api/meta",
                                  _spawn(cmd, study_dir, logs / "optuna-dashboard.log"), logs / "optuna-dashboard.log"))
        for s in servers:
            _wait_up(s)
        if not servers:
            shutil.rmtree(logs, ignore_errors=True)
    except UiError:
        stop(servers, keep_logs=True)  # the error names the log of the server that failed
        raise
    except BaseException:
        stop(servers)
        shutil.rmtree(logs, ignore_errors=True)
        raise
    return servers


def _spawn(cmd: list[str], study_dir: Path, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 (closed with the process)
    # the job runner (GenAI scorers) would start a pool of worker processes we do not use
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # a new session: the server and its workers form one process group to stop together
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env, cwd=study_dir)


def _wait_up(server: Server, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            log = server.log
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise UiError(f"{server.name} exited with code {server.proc.returncode} before it answered; "
                          f"its log {log} ends: {tail.strip()[-400:]}")
        try:
            with urllib.request.urlopen(server.probe, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise UiError(f"{server.name} did not answer {server.probe} within {timeout:g} s; its log: {server.log}")


def stop(servers: list[Server], grace: float = 10.0, keep_logs: bool = False) -> None:
    """SIGTERM each server's process group, then SIGKILL what is left; then remove
    their temporary log folder (unless keep_logs)."""
    for s in servers:
        if s.proc.poll() is None:
            try:
                os.killpg(s.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for s in servers:
        try:
            s.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:  # workers outlive a parent that ignored SIGTERM: the whole group goes
            os.killpg(s.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            s.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    if not keep_logs:
        for folder in {s.log.parent for s in servers}:
            shutil.rmtree(folder, ignore_errors=True)


def serve(study_dir: Path, *, mlflow_port: int = 0, dashboard_port: int = 0,
          echo: Callable[[str], None] = print) -> None:
    """Start both servers, print their URLs, and keep them until Ctrl-C or SIGTERM
    (then KeyboardInterrupt: the command exits 130 once both are stopped)."""
    uri, _ = _study_meta(Path(study_dir))
    servers = start(study_dir, mlflow_port=mlflow_port, dashboard_port=dashboard_port)
    if uri is not None:
        from study.tracking import redact_uri

        echo(f"MLflow:           the study tracks to {redact_uri(uri)} (open it there)")
    for s in servers:
        echo(f"{s.name + ':':<17} {s.url}")
    echo("Ctrl-C stops both.")
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while all(s.proc.poll() is None for s in servers):
            time.sleep(0.5)
        gone = next(s for s in servers if s.proc.poll() is not None)
        raise UiError(f"{gone.name} stopped unexpectedly (exit code {gone.proc.returncode})")
    except KeyboardInterrupt:
        echo("stopping")
        raise
    finally:
        stop(servers)
        signal.signal(signal.SIGTERM, previous)


__all__ = ["Server", "UiError", "experiment_id", "free_port", "serve", "start", "stop"]
