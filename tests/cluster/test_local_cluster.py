"""A real three-node Ray cluster on this machine (cluster/local.sh up 2, shared by
the cluster tests: tests/cluster/conftest.py): token auth, Ray Jobs across nodes,
a study submitted with `resstudy submit`, MLflow on its own server. The tests
that break the cluster (a worker node lost, `down`) are in test_worker_loss.py,
which runs after this module."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from study import jobs
from tests.cluster.conftest import REPO, same_process

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


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
