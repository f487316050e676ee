"""The last tests on the shared local cluster (tests/cluster/conftest.py), as each
breaks it: a worker node dies mid-study, and its trials are rescheduled on the
surviving node (from their last checkpoint) and the study completes; then `down`
stops every process `up` started, a running job's driver and actors included."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
import yaml

from study import jobs
from tests.cluster.conftest import REPO, read_procs, same_process, still_running, tree
from tests.conftest import record_fault

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


def test_killed_worker_node_trials_are_rescheduled_and_study_completes(cluster, tmp_path):
    wd = tmp_path / "wd"
    for pkg in ("study", "search_spaces", "analysis"):
        shutil.copytree(REPO / pkg, wd / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    storage = cluster.state / "storage"
    spec = {"name": "lost", "dataset": "digits", "image_size": 8, "depth": 8, "epochs": 8,
            "trials_per_variant": 4, "variants": ["resnet"], "train": {"batch_size": 64, "val_size": 0.15},
            "search": {"algorithm": "random", "seed": 0}, "scheduler": {"type": "none"},
            "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 2, "max_failures": 3,
            "storage_path": str(storage), "shared_storage": True,
            # every epoch checkpointed (an interval shorter than any epoch), so "from its last
            # checkpoint" means from the epoch it reached
            "checkpoint": {"every_minutes": 0.0001}}
    (wd / "lost.yaml").write_text(yaml.safe_dump(spec))
    job = jobs.submit(wd / "lost.yaml", cluster.address, working_dir=wd, token=cluster.token)

    # wait until trials train on both workers, then kill worker 2 outright
    epochs = storage / "lost" / "epochs"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(epochs.glob("*.jsonl"))) < 2:
        time.sleep(0.5)
    assert len(list(epochs.glob("*.jsonl"))) >= 2, jobs.status(job, cluster.address, token=cluster.token)
    (pid,) = [pid for role, pid, _ in read_procs(cluster.state) if role == "worker2"]
    deadline = time.monotonic() + 120
    while True:  # a trial's actor must be running on worker 2 when it dies
        victims = tree([pid])
        names = []
        for p in victims:
            try:
                names.append(" ".join(psutil.Process(p).cmdline()))
            except psutil.NoSuchProcess:
                pass
        trial_actors = [n for n in names if "ImplicitFunc" in n or "trainable" in n]
        if trial_actors or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert trial_actors, names
    for p in victims:
        try:
            psutil.Process(p).send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass

    state = jobs.wait(job, cluster.address, token=cluster.token, timeout=600)
    assert state == "SUCCEEDED", jobs.status(job, cluster.address, token=cluster.token)
    df = pd.read_parquet(storage / "lost" / "results.parquet")
    assert len(df) == 4 and set(df.status) == {"completed"}, df[["trial_id", "status", "node"]]
    assert (df.epochs_reached == 8).all()
    # every report each trial made (the raw epoch log keeps a repeated epoch as a row of its
    # own): each epoch is checkpointed before it is reported, so a trial that lost its worker
    # goes on from the epoch after its last report (a checkpointed epoch whose report the kill
    # cut off is replayed from the checkpoint), never from epoch 1, and trains no epoch twice
    restarted = 0
    for trial_id in df.trial_id:
        rows = [json.loads(line) for line in (epochs / f"{trial_id}.jsonl").read_text().splitlines()]
        by_attempt: dict[int, list[int]] = {}
        for row in rows:
            by_attempt.setdefault(row["attempt"], []).append(row["epoch"])
        assert sorted(row["epoch"] for row in rows) == list(range(1, 9)), (trial_id, by_attempt)  # each once
        assert not [row for row in rows if row.get("repeat")], (trial_id, by_attempt)
        for attempt in sorted(by_attempt)[1:]:
            restarted += 1
            before = max(e for a, es in by_attempt.items() if a < attempt for e in es)
            assert by_attempt[attempt][0] == before + 1, (trial_id, by_attempt)
    assert restarted >= 1, "no trial was restarted: the kill hit no trial"
    record_fault("a worker node SIGKILLed mid-study (local 3-node cluster)",
                 "its trials rescheduled on the surviving node; the study completes",
                 f"{len(victims)} processes killed ({len(trial_actors)} trial actor(s)); job {state}; "
                 f"4/4 trials completed on {df.node.nunique()} node(s)")


def test_down_stops_every_process_it_started(cluster, tmp_path):
    """Last on the shared cluster: a running job (its driver, and an actor on each CPU
    the cluster still has: both workers', or the one the previous test left) is stopped
    along with the nodes and MLflow, and nothing else is touched."""
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
        "hs = [Hold.remote() for _ in range(int(ray.cluster_resources()['CPU']))]\n"
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
