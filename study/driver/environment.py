"""Ray's and Tune's environment, and the embedded Ray's start-up.

The switches are set when the study.driver package is imported (its __init__
calls `set_switches`), so before any driver module imports ray, which reads them
once. Nothing else in the driver sets process environment. This module imports
ray only inside its functions.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import time
from typing import Any

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


def init_ray(verbose: bool = False, *, attempts: int = START_ATTEMPTS) -> None:
    """Connect to the cluster RAY_ADDRESS names, or start an embedded single-node Ray
    (loopback only, no dashboard, token auth on). A busy machine can miss Ray's
    start-up window: a transient failure is retried after the failed start's
    processes are stopped."""
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


__all__ = ["init_ray", "ray_in_its_own_group", "stop_failed_start"]
