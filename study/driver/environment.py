"""Ray's and Tune's environment, and the embedded Ray's start-up.

The switches are set when the study.driver package is imported (its __init__
calls `set_switches`), so before any driver module imports ray, which reads them
once. Nothing else in the driver sets process environment. This module imports
ray only inside its functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

from study.timeline import mark

SET_AUTH_MODE = False  # whether these switches set token auth (ray was not imported before them)


def set_switches() -> None:
    """Ray's and Tune's switches, set when the study.driver package is imported: before any
    of its modules imports ray, which reads them once."""
    global SET_AUTH_MODE
    if not os.environ.get("RAY_ADDRESS"):
        # The embedded local Ray must listen on loopback only. On Linux Ray rewrites
        # 127.0.0.1 to the machine's routable IP and binds its servers to every
        # interface; this switch (read when ray is imported) keeps them on 127.0.0.1.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Token auth, set before ray is imported: Ray's native side reads the mode once, and a
        # mode set later by ray.init's default is not seen by a retried start in this process.
        # Where ray was imported first, its native side has read the mode already: setting it
        # now would start servers that want a token the driver never sends; ray.init's own
        # default (token auth on) applies there.
        SET_AUTH_MODE = "ray" not in sys.modules
        if SET_AUTH_MODE:
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    # resstudy keeps its own state: Tune's per-trial logger files and periodic experiment
    # snapshots are work the driver would pay for per report, and Tune's own SIGINT
    # handling would stop one phase only.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "3600")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # The driver checks no IRI formats either: `import ray` (through jsonschema) skips
    # rfc3987-syntax's grammar build here too (see raypath/rfc3987_syntax).
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


START_ATTEMPTS = 5
_REAPER: subprocess.Popen | None = None


def _log_level(verbose: bool) -> int:
    # ray.init resets Ray's logger to INFO; resstudy's progress view is the output
    return logging.DEBUG if verbose else logging.WARNING


def _quiet() -> None:
    # The progress view is resstudy's own: silence Tune's tables and chatter.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune's end-of-run analysis looks for the per-trial logger files resstudy switches off
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def ray_in_its_own_group() -> subprocess.Popen:
    """The embedded Ray's processes in a process group of their own, led by a reaper that
    kills the group once this driver is gone, however it ended. Returns the reaper.

    In the driver's group, a SIGTERM sent to that group (by `timeout`, SLURM, Kubernetes)
    reached Ray's GCS before the driver could stop the study, and the driver then hung on
    the lost GCS and died without saving its state; in their own group they hear only the
    driver, which stops the study and then Ray. The reaper's stdin is a pipe this driver
    alone holds (no child inherits it): when the driver exits, even by SIGKILL, the pipe
    closes and the reaper kills the group, so none of Ray's processes (its agents, which
    would otherwise wait minutes for a GCS that is gone) outlives it. Ray's workers put
    themselves in groups of their own and end with their raylet."""
    global _REAPER
    from ray._private import services

    if _REAPER is None or _REAPER.poll() is not None:
        _REAPER = subprocess.Popen(["/bin/sh", "-c", "trap '' INT TERM HUP; read _; kill -KILL 0"],
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   process_group=0)
    reaper = _REAPER
    if not getattr(services.ConsolePopen, "in_ray_group", False):
        class InRayGroup(services.ConsolePopen):
            in_ray_group = True

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.setdefault("process_group", _REAPER.pid if _REAPER is not None else 0)
                super().__init__(*args, **kwargs)

        # Ray starts each of its processes through this class (services.start_ray_process)
        services.ConsolePopen = InRayGroup  # type: ignore[misc]
    return reaper


def _ray_group() -> list[int]:
    """The pids of the embedded Ray's processes (the reaper's group, the reaper excepted)."""
    if _REAPER is None or _REAPER.poll() is not None:
        return []
    import psutil

    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid != _REAPER.pid and os.getpgid(p.pid) == _REAPER.pid:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def stop_failed_start() -> list[int]:
    """A failed start's processes (a GCS that came up after ray.init gave up, agents
    waiting for it), stopped by their pids before the next attempt; returns them."""
    import psutil

    pids = _ray_group()
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
            procs[-1].kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)
    return pids


# The raylet's command imports the dashboard's packages (aiohttp and more: 0.3-0.5 s) to
# choose the agent's flags, which the stand-in ignores
NO_AGENT = "resstudy's embedded Ray runs a stand-in for its dashboard agent"
RAY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "raypath")


@contextlib.contextmanager
def lean_start(workers: int | None = None) -> Iterator[None]:
    """The embedded single-node Ray without the processes a study never uses, while
    ray.init starts it (Ray has no switch for these; its Node's methods are replaced
    for the start only, then put back):

    - the API server (dashboard head, started even with include_dashboard=False):
      job submission, the state API and usage stats, none of which a study calls;
      ray.init waited for it to register (seconds of a Python process importing
      aiohttp on a busy machine) before it started the raylet;
    - the autoscaler's monitor: one fixed node, nothing to scale;
    - the log monitor: the driver runs with log_to_driver=False, nothing reads it;
    - the dashboard agent: a stand-in the raylet watches instead (DASHBOARD_AGENT_STUB).
      Without the API server nothing asks the agent anything (its modules serve the
      dashboard head, Jobs, the state API's logs and metrics; it would run minimal,
      with no metrics), yet the raylet waited for its ports before it registered
      while the agent imported all of the dashboard's modules: about 1 s of a core
      on a 2-core machine, on the path to the first trial, then 0.6% of a core
      while idle. The driver writes the ports it would have written (none: -1);
    - rfc3987-syntax in Ray's Python processes (agents, workers: every trial), which
      `import ray` loads through jsonschema and which builds a grammar at import (2-3 s
      on a busy 2-core machine): RAY_PATH leads their PYTHONPATH (see its package's
      docstring). The driver's own PYTHONPATH is put back once Ray is up.

    The workers the raylet starts import what every trial imports as they start
    (study.trainable.preload, through Ray's worker setup hook, which the raylet's
    environment hands to every worker: the one it starts as the driver connects
    included, which a runtime_env's hook would not start), so the first trial's
    imports run while the driver sets up the study. `workers`: how many workers the
    raylet starts as the driver connects (Ray's default: one per CPU), at most as many
    as the study runs trials at once: the others would preload at the same time on the
    same cores as the first trial's, and Ray starts more when they are asked for.

    What stays: the GCS, the raylet (with its object store) and the runtime-env agent
    (actors with a runtime_env of their own need it), all on 127.0.0.1, with token
    auth as before.
    Fewer idle processes also take less of the cores from the trials."""
    from ray._private import node as node_mod
    from ray._private import ray_constants, services, utils

    from study.trainable import PRELOAD

    node_cls = node_mod.Node
    saved = {name: getattr(node_cls, name) for name in ("start_api_server", "start_monitor", "start_log_monitor")}
    saved_process = services.start_ray_process
    saved_dep = utils.get_dashboard_dependency_error

    def lean_raylet(command: list[str], process_type: str, *args: Any, **kwargs: Any) -> Any:
        if process_type == ray_constants.PROCESS_TYPE_RAYLET:
            command = _raylet_command(command, workers)
        return saved_process(command, process_type, *args, **kwargs)

    def no_api_server(self: Any, *, include_dashboard: Any = None, raise_on_failure: Any = None) -> None:
        self._webui_url = None

    pythonpath = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [RAY_PATH, pythonpath]))  # read by Ray's children
    added = [k for k in TUNE_DEFAULT_ENV if k not in os.environ]
    os.environ.update(TUNE_DEFAULT_ENV)  # what Tune hands each trial actor, given to every worker
    _RAYLET_ENV.clear()
    _RAYLET_ENV.update(os.environ)
    hook: str = getattr(ray_constants, "WORKER_PROCESS_SETUP_HOOK_ENV_VAR", "")
    hook_set = bool(hook) and hook not in os.environ
    if hook_set:
        os.environ[hook] = PRELOAD  # read by every worker the raylet starts, the first one included
    node_cls.start_api_server = no_api_server  # type: ignore[method-assign]
    node_cls.start_monitor = lambda self: None  # type: ignore[method-assign]
    node_cls.start_log_monitor = lambda self: None  # type: ignore[method-assign]
    services.start_ray_process = lean_raylet
    utils.get_dashboard_dependency_error = lambda: ImportError(NO_AGENT)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(node_cls, name, fn)
        services.start_ray_process = saved_process
        utils.get_dashboard_dependency_error = saved_dep
        if hook_set:
            os.environ.pop(hook, None)
        for k in added:  # the raylet has them; the driver's environment is put back
            os.environ.pop(k, None)
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath


# What the raylet starts as its dashboard agent: a shell that waits for the raylet to go.
# The raylet takes an agent's exit for a failure (it stops itself) and hands each agent a
# pipe as its stdin, which ends when the raylet does; where stdin is no pipe (Ray's
# pipe-based health check switched off), the raylet's pid is watched instead.
DASHBOARD_AGENT_STUB = ["/bin/sh", "-c", "if [ -p /dev/stdin ]; then while read -r _; do :; done; "
                        "else while kill -0 $PPID 2>/dev/null; do sleep 5; done; fi",
                        "resstudy-dashboard-agent-stand-in"]


def _raylet_command(command: list[str], workers: int | None) -> list[str]:
    """The embedded raylet's command: `workers` prestarted workers at most, and the
    dashboard agent's stand-in, whose ports (none) are written before the raylet
    looks for them."""
    from ray._raylet import (DASHBOARD_AGENT_LISTEN_PORT_NAME, METRICS_AGENT_PORT_NAME,  # type: ignore[attr-defined]
                             METRICS_EXPORT_PORT_NAME, persist_port)

    opts = dict(c[2:].split("=", 1) for c in command if c.startswith("--") and "=" in c)
    for name in (METRICS_AGENT_PORT_NAME, METRICS_EXPORT_PORT_NAME, DASHBOARD_AGENT_LISTEN_PORT_NAME):
        persist_port(opts["session_dir"], opts["node_id"], name, -1)  # what a minimal agent writes
    # the runtime-env agent's port chosen here: the raylet waits for an agent that picks its
    # own (0.7 s of its Python start on 2 cores) before it registers, for a port it uses
    # only for an actor with a runtime_env of its own. An agent that cannot bind it ends,
    # and the raylet with it: a failed start, which init_ray tries again.
    port = _free_loopback_port() if opts.get("runtime_env_agent_port") == "0" else None
    out = []
    for c in command:
        if port is not None:
            c = c.replace("--runtime_env_agent_port=0", f"--runtime_env_agent_port={port}")
            c = c.replace("--runtime-env-agent-port=0", f"--runtime-env-agent-port={port}")
        flag = "--num_prestart_python_workers="
        if c.startswith(flag) and workers:
            c = f"{flag}{min(workers, int(c[len(flag):]))}"
        elif c.startswith("--dashboard_agent_command="):
            c = "--dashboard_agent_command=" + subprocess.list2cmdline(DASHBOARD_AGENT_STUB)
        out.append(c)
    return out


# Where the runtime-env agent's port is picked: below Linux's ephemeral range (32768 and
# up, where any process's outgoing connection or bind to port 0 could take it before the
# agent binds it) and above Ray's worker ports (10002-19999)
AGENT_PORTS = range(20000, 32768)


def _free_loopback_port(tries: int = 50) -> int | None:
    """A port free on 127.0.0.1 now, in AGENT_PORTS; None where none was found (Ray's own
    way then: the agent binds any port and the raylet waits to read it)."""
    import socket

    for port in random.SystemRandom().sample(AGENT_PORTS, tries):  # not a study's seeded random
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return None


_RAYLET_ENV: dict[str, str] = {}  # the embedded raylet's environment, which every worker inherits
# ray.tune.execution.class_cache.DEFAULT_ENV_VARS, which only importing ray.tune reads (0.7 s
# on the embedded start's path); trial_actors_on_started_workers compares it with Tune's own
# at every trial, and tests/study/test_environment.py holds the two equal
TUNE_DEFAULT_ENV = {"PL_DISABLE_FORK": "1"}


def _tune_trial_env() -> dict[str, str]:
    """The variables Tune puts in each trial actor's runtime_env: its defaults and those it
    copies from the driver's environment (ray.tune.execution.class_cache)."""
    from ray.tune.execution import class_cache

    env = dict(class_cache.DEFAULT_ENV_VARS)
    env.update({k: os.environ[k] for k in class_cache.ENV_VARS_TO_PROPAGATE if k in os.environ})
    return env


def trial_actors_on_started_workers() -> None:
    """Tune's trial actors in the embedded Ray without a runtime_env of their own.

    Tune gives each trial actor a runtime_env of environment variables (its defaults and
    some copied from the driver's environment); an actor whose runtime_env differs from the
    job's cannot take a worker the raylet started for the job, so the first trial waited
    for a fresh worker (a Python process importing Ray, then torch) while the worker
    started, and preloaded, as the driver connected sat idle. The embedded raylet's
    environment already holds those variables (lean_start put them there), and every
    worker inherits it: where they are still what Tune would send, a trial actor is
    declared plain. Where the driver's environment changed since, Tune's own way stands.
    On a cluster (RAY_ADDRESS) nothing changes."""
    from ray.tune.execution import class_cache

    cache = class_cache._ActorClassCache
    if getattr(cache, "resstudy_plain", False) or not _RAYLET_ENV:
        return
    tune_get = cache.get

    def get(self: Any, trainable_cls: Any) -> Any:
        import ray

        if not _raylet_has(_tune_trial_env()):
            return tune_get(self, trainable_cls)
        if trainable_cls not in self._cache:
            self._cache[trainable_cls] = ray.remote(trainable_cls)
        return self._cache[trainable_cls]

    cache.get = get  # type: ignore[method-assign]
    cache.resstudy_plain = True  # type: ignore[attr-defined]


def _raylet_has(env: dict[str, str]) -> bool:
    """Whether every worker the raylet starts has `env` (what Tune would hand a trial
    actor now) already: each of those variables as the raylet got it."""
    return all(_RAYLET_ENV.get(k) == v for k, v in env.items())


class _NoSigtermNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


_START_LOCK = threading.Lock()  # one start at a time: a start begun early is waited for, not repeated
_PRESTART: threading.Thread | None = None


def prestart(verbose: bool = False, workers: int | None = None) -> threading.Thread | None:
    """Start the embedded Ray now, on a thread of its own, and return once it is up (or
    its start failed): as soon as the spec has passed its checks, before the driver
    imports MLflow and Ray Tune and sets up its stores. The raylet starts the first
    trial's worker as the driver connects, and that worker's imports (study.trainable.
    preload) then run on the other core beside the driver's MLflow and Optuna set-up.
    Run beside Ray's start instead, the driver's imports took the GIL from the start's
    own Python and the cores from its processes: the start took 5 s instead of 2.2 and
    the first epoch came 3 s later (docs/startup.md). `init_ray` later finds this start
    done and returns (or starts Ray itself where this one failed: its error is raised
    there). Nothing for a cluster (RAY_ADDRESS), or where Ray is up. The thread is a
    daemon, parked once Ray is up: Ray's processes die with the thread that started them,
    and the reaper (ray_in_its_own_group) takes them when the driver exits.
    `workers`: as lean_start's."""
    global _PRESTART
    if os.environ.get("RAY_ADDRESS") or _START_LOCK.locked():
        return None
    done = threading.Event()

    def start() -> None:
        with _START_LOCK:
            mark("ray: early start begun, on its own thread")
            try:
                _init_ray(verbose, 1, workers)
                mark("ray: early start done")
            except Exception:  # init_ray in the driver's thread tries again and reports it
                logging.getLogger("study.driver").debug("early Ray start failed", exc_info=True)
            finally:
                done.set()
        # Ray's processes die with the THREAD that started them (PR_SET_PDEATHSIG fires at
        # the thread's exit on Linux): this one stays, parked, as long as the process lives.
        threading.Event().wait()

    # ray.init sets its SIGTERM handler from the main thread only and says so; the driver
    # installs its own handlers (lifecycle.Stopper) either way
    logging.getLogger("ray._private.worker").addFilter(_NoSigtermNote())
    _PRESTART = threading.Thread(target=start, name="resstudy-ray-start", daemon=True)
    _PRESTART.start()
    done.wait()
    return _PRESTART


def init_ray(verbose: bool = False, *, attempts: int = START_ATTEMPTS, workers: int | None = None) -> None:
    """Connect to the cluster RAY_ADDRESS names, or start an embedded single-node Ray
    (loopback only, no dashboard, token auth on). A busy machine can miss Ray's
    start-up window: a transient failure is retried after the failed start's
    processes are stopped. A start `prestart` began is waited for. `workers`: as
    lean_start's."""
    with _START_LOCK:
        _init_ray(verbose, attempts, workers)
    if not os.environ.get("RAY_ADDRESS"):
        trial_actors_on_started_workers()  # here, not on the start's thread: it imports Ray Tune


def _init_ray(verbose: bool, attempts: int, workers: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    _quiet()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", log_to_driver=False, logging_level=_log_level(verbose))
        return
    # Ray reads the loopback switch (top of this module) when first imported; where
    # ray was imported before this module, set the constant it was read into.
    if os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0").lower() in ("0", "false"):
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    ray_in_its_own_group()
    for attempt in range(attempts):
        # token auth on, stated here rather than left to ray.init's default, which a failed
        # start-up attempt can leave switched off for the next one
        if SET_AUTH_MODE:
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        try:
            with lean_start(workers):
                ray.init(include_dashboard=False, log_to_driver=False, num_cpus=os.cpu_count(),
                         logging_level=_log_level(verbose))
            return
        except Exception as e:
            transient = any(s in str(e) for s in ("timed out during startup", "Failed to start GCS"))
            ray.shutdown()
            stop_failed_start()
            if not transient or attempt == attempts - 1:
                raise
            wait = random.uniform(5, 20) * (attempt + 1)  # apart from other drivers starting now
            print(f"resstudy: Ray did not start in time (busy machine?); trying again in {wait:.0f} s",
                  file=sys.stderr, flush=True)
            time.sleep(wait)


__all__ = ["init_ray", "prestart", "lean_start", "ray_in_its_own_group", "stop_failed_start"]
