"""Faults the tests plug into a study through its two seams (never imported in
production): RESSTUDY_TRIAL_HOOK=tests.study.faultplug:after_epoch (inside a
trial, after each reported epoch, so that epoch's checkpoint exists) and
RESSTUDY_DRIVER_HOOK=tests.study.faultplug:driver_event (in the driver, at
study start, each phase start, right after an epoch's line in the epoch log
(before MLflow and Optuna get it) and after the last trial).

RESSTUDY_FAULTS names a JSON file of rules; each fires at most `times` times
(default 1) in all, counted by marker files beside it, so counts survive
worker restarts and driver kills:

    {"at": "trial", "variant": "resnet", "phase": "search", "index": 1, "epoch": 2, "action": "raise"}
    {"at": "phase_start", "experiment": "km-quotient-d8", "phase": "search", "action": "kill_driver",
     "signal": "SIGKILL"}
    {"at": "study_end", "action": "kill_driver", "signal": "SIGINT"}
    {"at": "epoch_logged", "experiment": "km-resnet-d8", "phase": "search", "epoch": 2, "action": "kill_driver"}

Trial rules match on variant, seed, phase, index (the trial's number within its
phase) and fire at `epoch` and every later epoch. Actions: "raise" (the trial
errors), "exit" (the worker process dies), "kill_driver" (the driver gets
`signal`: SIGKILL to its pid, SIGINT/SIGTERM to its process group, as a
terminal's Ctrl-C, `timeout` and Kubernetes do; with "everyone": true also to
every process the driver started, Ray's own included, as SLURM's scancel and
systemd do).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any


class InjectedFault(RuntimeError):
    pass


def _rules() -> tuple[Path, list[dict[str, Any]]] | None:
    path = os.environ.get("RESSTUDY_FAULTS")
    if not path:
        return None
    return Path(path), json.loads(Path(path).read_text())


def _claim(path: Path, i: int, rule: dict[str, Any]) -> int | None:
    """The firing number if rule i may fire now (and record it), else None."""
    marker_dir = path.parent / f"{path.stem}.fired"
    marker_dir.mkdir(exist_ok=True)
    fired = len(list(marker_dir.glob(f"rule{i}-*")))
    if fired >= rule.get("times", 1):
        return None
    (marker_dir / f"rule{i}-{fired}").write_text(json.dumps({"time": time.time(), "pid": os.getpid()}))
    return fired


def _driver_pid(path: Path) -> int:
    return int((path.parent / "driver.pid").read_text())


def _act(path: Path, i: int, rule: dict[str, Any], where: str) -> None:
    action = rule.get("action", "raise")
    if action == "exit":
        os._exit(17)
    if action == "kill_driver":
        sig = getattr(signal, rule.get("signal", "SIGKILL"))
        pid = _driver_pid(path)
        if sig == signal.SIGKILL:
            os.kill(pid, sig)
            time.sleep(30)  # a trial must not outlive its driver's death by reporting again
        else:
            os.killpg(os.getpgid(pid), sig)
            if rule.get("everyone"):
                import psutil

                for p in sorted(psutil.Process(pid).children(recursive=True), key=lambda p: p.pid == os.getpid()):
                    try:
                        p.send_signal(sig)  # this process last
                    except psutil.NoSuchProcess:
                        pass
            time.sleep(3)  # let the driver's stop reach this trial before it reports again
        return
    raise InjectedFault(f"injected fault: rule {i} at {where}")


def after_epoch(config: dict[str, Any], epoch: int) -> None:
    loaded = _rules()
    if loaded is None:
        return
    path, rules = loaded
    index = int(str(config.get("_rid", "x0"))[-4:]) if str(config.get("_rid", ""))[-4:].isdigit() else None
    for i, rule in enumerate(rules):
        if rule.get("at", "trial") != "trial" or epoch < rule.get("epoch", 1):
            continue
        if any(k in rule and rule[k] != v for k, v in
               (("variant", config.get("variant")), ("seed", config.get("seed")), ("phase", config.get("_phase")),
                ("index", index))):
            continue
        if _claim(path, i, rule) is not None:
            _act(path, i, rule, f"epoch {epoch} of {config.get('_rid')}")


def driver_event(event: str, **info: Any) -> None:
    loaded = _rules()
    if loaded is None:
        return
    path, rules = loaded
    if event == "start":
        (path.parent / "driver.pid").write_text(str(os.getpid()))
    for i, rule in enumerate(rules):
        if rule.get("at") != event or any(k in rule and rule[k] != v for k, v in info.items()):
            continue
        if _claim(path, i, rule) is not None:
            _act(path, i, rule, f"{event} {info}")
