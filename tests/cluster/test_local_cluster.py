"""A real three-node Ray cluster on this machine (cluster/local.sh up 2): token
auth, Ray Jobs across nodes, a study submitted with `resstudy submit`, MLflow on
its own server, and a `down` that stops every process it started, job drivers
and trial actors included. Slow: the cluster takes ~30-60 s to start."""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from study import jobs

REPO = Path(__file__).resolve().parents[2]
LOCAL_SH = REPO / "cluster" / "local.sh"
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


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


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(workers=2)
    try:
        c.sh("up", str(c.workers))
        c.procs = read_procs(c.state)
        yield c
    finally:
        c.sh("down", check=False)
        shutil.rmtree(c.state, ignore_errors=True)


def test_up_starts_a_token_protected_multi_node_cluster(cluster):
    roles = [r for r, _, _ in cluster.procs]
    assert roles == ["mlflow", "head", "worker1", "worker2"]
    assert all(same_process(pid, start) for _, pid, start in cluster.procs)
    status = cluster.sh("status")
    assert "ray nodes alive: 3" in status.stdout and "mlflow: healthy" in status.stdout

    # token auth is on: the dashboard refuses requests without or with a wrong token
    assert requests.get(f"{cluster.address}/api/jobs/", timeout=10).status_code == 401
    assert requests.get(f"{cluster.address}/api/jobs/", timeout=10,
                        headers={"Authorization": "Bearer wrong"}).status_code == 403
    with pytest.raises(jobs.JobError, match="token"):
        jobs.list_jobs(cluster.address, token="wrong")
    assert jobs.alive_node_count(cluster.address, token=cluster.token) == 3

    # the dashboard and MLflow listen on loopback only
    listening = {c.laddr.port: c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN"}
    assert listening[cluster.dashboard_port] == "127.0.0.1"
    assert listening[cluster.mlflow_port] == "127.0.0.1"

    env = cluster.cluster_env()
    assert env["RAY_API_SERVER_ADDRESS"] == cluster.address and env["RAY_AUTH_MODE"] == "token"
    assert env["MLFLOW_TRACKING_URI"] == cluster.mlflow_uri
    assert Path(env["RAY_AUTH_TOKEN_PATH"]).read_text() == cluster.token


def test_a_job_sees_every_node_and_runs_tasks_on_the_workers(cluster, tmp_path):
    (tmp_path / "probe.py").write_text(
        "import ray\n"
        "ray.init()\n"
        "print('NODES', len([n for n in ray.nodes() if n['Alive']]))\n"
        "@ray.remote(num_cpus=1)\n"
        "def where():\n"
        "    import time; time.sleep(0.5)\n"
        "    return ray.get_runtime_context().get_node_id()\n"
        "print('TASK_NODES', len(set(ray.get([where.remote() for _ in range(6)]))))\n"
    )
    job = jobs.submit_command("python probe.py", cluster.address, working_dir=tmp_path, token=cluster.token)
    assert jobs.wait(job, cluster.address, token=cluster.token, timeout=300) == "SUCCEEDED"
    out = io.StringIO()
    jobs.logs(job, cluster.address, token=cluster.token, out=out)
    assert "NODES 3" in out.getvalue()
    assert "TASK_NODES 2" in out.getvalue()  # the head has no CPUs: both workers ran tasks
    assert jobs.status(job, cluster.address, token=cluster.token).startswith(f"{job}: SUCCEEDED")
    assert job in [j["submission_id"] for j in jobs.list_jobs(cluster.address, token=cluster.token)]


E2E_SPEC = {
    "name": "e2e", "dataset": "digits", "image_size": 16, "depth": 8, "epochs": 2,
    "trials_per_variant": 2, "seeds": [0], "variants": ["resnet", "epsilon"],
    "train": {"batch_size": 128, "val_size": 0.15}, "search": {"algorithm": "random", "seed": 0},
    "scheduler": {"type": "none"}, "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 2,
    "shared_storage": True,
}


def test_study_submitted_with_resstudy_submit_runs_on_both_workers(cluster, tmp_path):
    # The job ships a working dir: a copy of the packages plus the spec.
    wd = tmp_path / "wd"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("study", "search_spaces", "analysis"):
        if (REPO / pkg).is_dir():
            shutil.copytree(REPO / pkg, wd / pkg, ignore=ignore)
    storage = cluster.state / "storage"  # the "shared" disk every local node sees
    (wd / "e2e.yaml").write_text(yaml.safe_dump({**E2E_SPEC, "storage_path": str(storage)}))

    env = cluster.cluster_env()
    r = subprocess.run([sys.executable, "-m", "study.cli", "submit", "e2e.yaml", "--address", cluster.address],
                       cwd=wd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    job = re.search(r"raysubmit_\w+", r.stdout).group(0)
    state = jobs.wait(job, cluster.address, token=cluster.token, timeout=600)
    out = io.StringIO()
    jobs.logs(job, cluster.address, token=cluster.token, out=out)
    assert state == "SUCCEEDED", out.getvalue()[-4000:]

    import mlflow
    import pandas as pd

    study_dir = storage / "e2e"
    for name in ("spec.yaml", "study.json", "results.parquet", "history.parquet", "optuna.db"):
        assert (study_dir / name).is_file(), name
    df = pd.read_parquet(study_dir / "results.parquet")
    assert len(df) == 4 and set(df["status"]) == {"completed"}
    assert set(df["variant"]) == {"resnet", "epsilon"}

    # trials ran on both worker nodes (the node column names the trial's Ray node)
    nodes = requests.get(f"{cluster.address}/api/v0/nodes?limit=100", timeout=10,
                         headers={"Authorization": f"Bearer {cluster.token}"}).json()["data"]["result"]["result"]
    workers = [n["node_id"] for n in nodes if n["state"] == "ALIVE" and not n["is_head_node"]]
    assert df["node"].nunique() == 2
    for value in df["node"]:
        assert any(nid.startswith(value.rsplit("/", 1)[-1]) for nid in workers), value

    # every trial's checkpoints and Tune state are in the shared storage path
    tune_dirs = [p for p in (study_dir / "tune").iterdir() if p.is_dir()]
    assert len(tune_dirs) == 2

    # every trial has its run on the MLflow server
    client = mlflow.MlflowClient(cluster.mlflow_uri)
    for _, row in df.iterrows():
        run = client.get_run(row["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags.get("node") == row["node"]


def test_down_stops_every_process_it_started(cluster, tmp_path):
    """Last in this module: a running job (driver + actors on both workers) is
    stopped along with the nodes and MLflow, and nothing else is touched."""
    marker = tmp_path / "pids"
    marker.mkdir()
    (tmp_path / "hold.py").write_text(
        "import os, time, ray\n"
        "ray.init()\n"
        f"open('{marker}/driver', 'w').write(str(os.getpid()))\n"
        "@ray.remote(num_cpus=1)\n"
        "class Hold:\n"
        "    def pid(self): return os.getpid()\n"
        "    def sleep(self): time.sleep(3600)\n"
        "hs = [Hold.remote() for _ in range(2)]\n"
        f"open('{marker}/actors', 'w').write(' '.join(str(p) for p in ray.get([h.pid.remote() for h in hs])))\n"
        "ray.get([h.sleep.remote() for h in hs])\n"
    )
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        jobs.submit_command("python hold.py", cluster.address, working_dir=tmp_path, token=cluster.token)
        deadline = time.monotonic() + 120
        while not (marker / "actors").exists():
            assert time.monotonic() < deadline, "the holding job did not start"
            time.sleep(1)
        job_pids = [int((marker / "driver").read_text())] + [int(p) for p in (marker / "actors").read_text().split()]
        snapshot = tree([pid for _, pid, _ in cluster.procs] + job_pids)
        assert all(p in snapshot for p in job_pids)

        r = cluster.sh("down")
        assert "stopped" in r.stdout
        assert still_running(snapshot) == []
        assert not any(same_process(pid, start) for _, pid, start in cluster.procs)
        assert bystander.poll() is None  # not one of ours: left alone
        assert "down" in cluster.sh("status", check=False).stdout
        assert cluster.sh("down").returncode == 0  # idempotent
    finally:
        bystander.kill()
        bystander.wait()
