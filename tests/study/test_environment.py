"""The embedded Ray's start-up (study/driver/environment.py): a failed start leaves
none of its processes behind for the next attempt."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

_FAILED_START = """
import os
from study.driver import environment
environment.ray_in_its_own_group()
from ray._private import services
gcs = services.ConsolePopen(["sleep", "600"])  # how Ray starts each of its processes: one left by a failed start
stopped = environment.stop_failed_start()
print(stopped == [gcs.pid], gcs.wait(10) is not None, environment.stop_failed_start() == [], flush=True)
"""


def test_a_failed_starts_processes_are_stopped_by_their_pids():
    out = subprocess.run([sys.executable, "-c", _FAILED_START], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True", "True"], out.stdout + out.stderr[-2000:]


def test_a_transient_start_failure_is_retried_only_after_the_failed_start_is_stopped(monkeypatch):
    import ray

    from study.driver import environment

    calls: list[str] = []

    def init(**kwargs):
        calls.append("init")
        if calls.count("init") == 1:
            raise RuntimeError("The current node timed out during startup")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(environment, "ray_in_its_own_group", lambda: None)
    monkeypatch.setattr(environment, "stop_failed_start", lambda: calls.append("stop") or [])
    monkeypatch.setattr(environment.time, "sleep", lambda s: calls.append("wait"))
    environment.init_ray()
    assert calls == ["init", "shutdown", "stop", "wait", "init"], calls


def test_a_start_that_fails_for_good_is_stopped_too_and_raised(monkeypatch):
    import pytest
    import ray

    from study.driver import environment

    calls: list[str] = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: (_ for _ in ()).throw(ValueError("bad resources")))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(environment, "ray_in_its_own_group", lambda: None)
    monkeypatch.setattr(environment, "stop_failed_start", lambda: calls.append("stop") or [])
    with pytest.raises(ValueError, match="bad resources"):
        environment.init_ray()
    assert calls == ["stop"]
