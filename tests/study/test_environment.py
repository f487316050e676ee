"""The embedded Ray's start-up (study/driver/environment.py): a failed start leaves
none of its processes behind for the next attempt."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest

from study.driver import environment

from tests.conftest import ROOT
from tests.study.test_security import clean_env

_FAILED_START = """
import os
from study.driver import environment
environment.ray_in_its_own_group()
from ray._private import services
gcs = services.ConsolePopen(["sleep", "600"])  # how Ray starts each of its processes: one left by a failed start
stopped = environment.stop_failed_start()
print(stopped == [gcs.pid], gcs.wait(10) is not None, environment.stop_failed_start() == [], flush=True)
"""


def test_tunes_default_trial_env_is_the_one_the_raylet_gets():
    """The raylet's environment takes Tune's default trial-actor variables from a copy
    (reading Tune's own imports Ray Tune on the start's path); the copy is Tune's."""
    from ray.tune.execution import class_cache

    from study.driver import environment

    assert environment.TUNE_DEFAULT_ENV == class_cache.DEFAULT_ENV_VARS


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


_LEAN_START = r"""
import json, os, time
import psutil
from study.driver import environment
import sys
environment.prestart(workers=1)  # on a thread of its own, as `resstudy run` starts it (max_concurrent 1)
import ray
# prestart returned with Ray up, and without Ray Tune: the driver imports Tune beside the worker's preload
print("EARLY " + json.dumps([ray.is_initialized(), "ray.tune" in sys.modules]), flush=True)
environment.init_ray()  # waits for that start instead of starting a second Ray
try:
    names = set()
    for pid in environment._ray_group():
        try:
            proc = psutil.Process(pid)
            name = proc.name()
            names.add(proc.cmdline()[-1] if name == "sh" else name if "python" not in name else proc.cmdline()[1])
        except psutil.Error:
            pass
    print("LEAN " + json.dumps(sorted(names)), flush=True)

    from ray.tune.execution.class_cache import _ActorClassCache

    class Probe:  # a trial actor, declared the way Tune declares one
        def where(self):
            import sys
            from study import trainable
            trainable._PRELOADING.join()
            return os.getpid(), all(m in sys.modules for m in ("ray.tune.trainable.function_trainable", "torch",
                                                               "study.train", "study.models"))

    time.sleep(1.0)  # the raylet started its workers as the driver connected
    raylet = next(psutil.Process(p) for p in environment._ray_group() if psutil.Process(p).name() == "raylet")
    started = {c.pid for c in raylet.children()  # its workers (retitled ray::IDLE once up), not its agents
               if any(w in " ".join(c.cmdline()) for w in ("default_worker.py", "ray::IDLE"))}
    pid, preloaded = ray.get(_ActorClassCache().get(Probe).options(num_cpus=1).remote().where.remote())
    print("PROBE " + json.dumps([pid in started, preloaded, len(started)]), flush=True)
    # after the probe, which the one worker started with Ray is for
    assert ray.get(ray.remote(lambda: 7).remote()) == 7  # Ray outlives nothing it needs: the thread is parked
    # the runtime-env agent, on the port the driver chose for it, serves a task's own runtime_env
    own_env = ray.remote(lambda: os.environ.get("RESSTUDY_PROBE"))
    own_env = own_env.options(runtime_env={"env_vars": {"RESSTUDY_PROBE": "y"}})
    port = ray._private.worker._global_node._ray_params.runtime_env_agent_port
    print("AGENT " + json.dumps([ray.get(own_env.remote(), timeout=120), port in environment.AGENT_PORTS]), flush=True)
finally:
    ray.shutdown()
"""


@pytest.mark.ray
def test_the_embedded_ray_starts_early_and_lean():
    """No API server, autoscaler monitor, log monitor or dashboard agent (a stand-in); the
    first trial on a worker started, and preloaded, before it was asked for; only as many
    workers started with Ray as the study runs trials at once."""
    out = subprocess.run([sys.executable, "-c", _LEAN_START], cwd=ROOT, capture_output=True, text=True, timeout=240,
                         env=clean_env())
    lines = [line for line in out.stdout.splitlines() if line.startswith("LEAN ")]
    assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-3000:]
    early = [line for line in out.stdout.splitlines() if line.startswith("EARLY ")]
    assert early and json.loads(early[-1][len("EARLY "):]) == [True, False], out.stdout[-2000:]
    names = " ".join(json.loads(lines[-1][len("LEAN "):]))
    assert "gcs_server" in names and "raylet" in names, names
    for absent in ("dashboard/dashboard.py", "monitor.py", "log_monitor.py", "dashboard/agent.py", "DashboardAgent"):
        assert absent not in names, names
    # the raylet watches the dashboard agent's stand-in; the runtime-env agent runs (a task with a runtime_env
    # of its own goes through it, below)
    assert environment.DASHBOARD_AGENT_STUB[-1] in names and "RuntimeEnvAgent" in names, names
    assert "SIGTERM handler is not set" not in out.stderr
    # the first trial actor takes a worker the raylet started as the driver connected, which
    # had imported Tune's trainable classes, torch, the trainer and the variants
    # (study.trainable.preload) by then; one worker started with Ray, not one per CPU
    probe = [line for line in out.stdout.splitlines() if line.startswith("PROBE ")]
    assert probe and json.loads(probe[-1][len("PROBE "):]) == [True, True, 1], out.stdout[-2000:] + out.stderr[-3000:]
    agent = [line for line in out.stdout.splitlines() if line.startswith("AGENT ")]
    assert agent and json.loads(agent[-1][len("AGENT "):]) == ["y", True], out.stdout[-2000:] + out.stderr[-3000:]


def test_the_dashboard_agents_stand_in_ends_with_its_raylet():
    """The raylet takes an agent's exit for a failure: the stand-in lives as long as the
    raylet's pipe is open, and ends when it closes or, with no pipe, when its parent goes."""
    stub = environment.DASHBOARD_AGENT_STUB
    piped = subprocess.Popen(stub, stdin=subprocess.PIPE)
    time.sleep(0.5)
    assert piped.poll() is None  # alive while the pipe is open
    piped.stdin.close()
    assert piped.wait(timeout=5) == 0
    # no pipe (stdin at its end at once): it watches the process that started it
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; p = subprocess.Popen({stub!r}, "
                               "stdin=subprocess.DEVNULL); print(p.pid, flush=True); time.sleep(1.5)"],
                              stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    time.sleep(0.5)
    assert child.is_running() and parent.poll() is None
    parent.wait(timeout=10)
    psutil.wait_procs([child], timeout=15)
    try:
        assert child.status() == psutil.STATUS_ZOMBIE  # ended, not yet reaped by its new parent
    except psutil.NoSuchProcess:
        pass
