"""The local three-node Ray cluster (cluster/local.sh up 2: a head without CPUs, two
one-CPU workers, MLflow; token auth on, the dashboard and MLflow on 127.0.0.1) that
every cluster test shares: one start per test run (~30-60 s), stopped by the pids
`up` recorded at the end.

The tests that break it run last: pytest takes the modules in name order, and
test_worker_loss.py (a worker node killed mid-study, then `down`) comes after
test_local_cluster.py."""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL_SH = REPO / "cluster" / "local.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_run(n: int) -> int:
    """A base port with n consecutive free ports (the nodes' dashboard agents)."""
    for _ in range(200):
        base = random.randint(20000, 30000)
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("0.0.0.0", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def read_procs(state: Path) -> list[tuple[str, int, str]]:
    rows = [line.split() for line in (state / "procs").read_text().splitlines() if line.strip()]
    return [(role, int(pid), start) for role, pid, start in rows]


def same_process(pid: int, start: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1].split()[19] == start and stat.rsplit(") ", 1)[1].split()[0] != "Z"


def tree(pids) -> dict[int, float]:
    """pid -> create_time of the given processes and all their descendants."""
    out = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            for q in [p, *p.children(recursive=True)]:
                out[q.pid] = q.create_time()
        except psutil.NoSuchProcess:
            pass
    return out


def still_running(snapshot: dict[int, float]) -> list[int]:
    alive = []
    for pid, created in snapshot.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


class LocalCluster:
    def __init__(self, workers: int = 2):
        # Ray's socket paths limit the state dir's length, so no pytest tmp_path.
        self.state = Path(tempfile.mkdtemp(prefix="rslc", dir="/tmp"))
        self.dashboard_port, self.mlflow_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RAY_", "MLFLOW_", "RESSTUDY_"))}
        self.env.update(
            RESSTUDY_LOCAL_CLUSTER=str(self.state), RESSTUDY_GCS_PORT=str(free_port()),
            RESSTUDY_DASHBOARD_PORT=str(self.dashboard_port), RESSTUDY_CLIENT_PORT=str(free_port()),
            RESSTUDY_AGENT_PORT=str(free_port_run(workers + 1)), RESSTUDY_MLFLOW_PORT=str(self.mlflow_port),
            RESSTUDY_VENV=str(Path(sys.executable).parent.parent),
        )
        self.workers = workers
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"

    def sh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["bash", str(LOCAL_SH), *args], env=self.env, capture_output=True, text=True,
                           timeout=600)
        if check and r.returncode != 0:
            raise AssertionError(f"local.sh {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    @property
    def token(self) -> str:
        return (self.state / "auth_token").read_text().strip()

    def cluster_env(self) -> dict[str, str]:
        """The environment after `source cluster.env`."""
        env = dict(self.env)
        for line in (self.state / "cluster.env").read_text().splitlines():
            m = re.match(r"export (\w+)=(.*)$", line)
            if m:
                env[m.group(1)] = m.group(2)
        return env


@pytest.fixture(scope="package")
def cluster():
    c = LocalCluster(workers=2)
    try:
        c.sh("up", str(c.workers))
        c.procs = read_procs(c.state)
        yield c
    finally:
        c.sh("down", check=False)  # by the recorded pids (and their descendants) only
        shutil.rmtree(c.state, ignore_errors=True)
