"""Faults the tests plug into a study through the driver's events seam
(study.driver.options.Events, never imported in production): `Faults(path)` is
called inside each trial after each reported epoch (queued, as production
reports are, with that epoch's checkpoint written) and in the driver at study
start, each phase start, right after an epoch's line in the epoch log (before
MLflow and Optuna get it) and after the last trial.

    python -m tests.study.faultplug FAULTS.json run SPEC.yaml    # the real CLI, faults plugged in

runs `resstudy` with Faults(FAULTS.json) passed to its driver, and every epoch
checkpointed (RuntimeOptions.checkpoint_every_s = 0) unless the file, as
{"rules": [...], "checkpoint_every_s": null}, asks for the spec's own policy.

FAULTS.json holds rules; each fires at most `times` times
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
import sys
import time
from pathlib import Path
from typing import Any

from study.driver.options import Events


class InjectedFault(RuntimeError):
    pass


def _rules(path: str) -> tuple[Path, list[dict[str, Any]]]:
    data = json.loads(Path(path).read_text())
    return Path(path), data["rules"] if isinstance(data, dict) else data


def _options(path: str) -> dict[str, Any]:
    """The driver's runtime options for a faults file: every epoch checkpointed, unless the file
    ({"rules": [...], "checkpoint_every_s": null}) asks for the spec's own policy."""
    data = json.loads(Path(path).read_text())
    every = data.get("checkpoint_every_s", 0.0) if isinstance(data, dict) else 0.0
    return {"checkpoint_every_s": every}


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


class Faults(Events):
    """The rules of one faults file, fired through the driver's events."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def after_epoch(self, config: dict[str, Any], control: dict[str, Any], epoch: int) -> None:
        path, rules = _rules(self.path)
        rid = str(control.get("rid", ""))
        index = int(rid[-4:]) if rid[-4:].isdigit() else None
        for i, rule in enumerate(rules):
            if rule.get("at", "trial") != "trial" or epoch < rule.get("epoch", 1):
                continue
            if any(k in rule and rule[k] != v for k, v in
                   (("variant", config.get("variant")), ("seed", config.get("seed")), ("phase", control.get("phase")),
                    ("index", index))):
                continue
            if _claim(path, i, rule) is not None:
                _act(path, i, rule, f"epoch {epoch} of {rid}")

    def _driver(self, event: str, **info: Any) -> None:
        path, rules = _rules(self.path)
        for i, rule in enumerate(rules):
            if rule.get("at") != event or any(k in rule and rule[k] != v for k, v in info.items()):
                continue
            if _claim(path, i, rule) is not None:
                _act(path, i, rule, f"{event} {info}")

    def study_start(self) -> None:
        (Path(self.path).parent / "driver.pid").write_text(str(os.getpid()))
        self._driver("start")

    def phase_start(self, experiment: str, phase: str) -> None:
        self._driver("phase_start", experiment=experiment, phase=phase)

    def epoch_logged(self, experiment: str, phase: str, epoch: int) -> None:
        self._driver("epoch_logged", experiment=experiment, phase=phase, epoch=epoch)

    def study_end(self) -> None:
        self._driver("study_end")


def command(faults: str | Path, *args: str) -> list[str]:
    """The command line that runs `resstudy ARGS` with these faults plugged in."""
    return [sys.executable, "-m", "tests.study.faultplug", str(faults), *args]


if __name__ == "__main__":
    from study import cli

    sys.exit(cli.main(sys.argv[2:], events=Faults(sys.argv[1]), options=_options(sys.argv[1])))
