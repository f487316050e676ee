"""Fault injection for the reliability tests, off unless RESSTUDY_FAULTS names a
JSON file of rules. A rule fires inside a trial right after the epoch it names
has been reported (so its checkpoint exists), and at every later epoch, at most
`times` times in all (a retried trial resumes after that epoch, so a rule with
times > 1 fails the retries too):

    [{"variant": "resnet", "epoch": 2, "times": 1, "action": "raise"}]

`action` is "raise" (the trial errors; Tune retries it from its checkpoint) or
"exit" (the worker process dies abruptly). Firing counts are marker files
beside the rules file, so they survive worker restarts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class InjectedFault(RuntimeError):
    pass


def check(config: dict[str, Any], epoch: int) -> None:
    rules_file = os.environ.get("RESSTUDY_FAULTS")
    if not rules_file:
        return
    path = Path(rules_file)
    for i, rule in enumerate(json.loads(path.read_text())):
        if rule.get("variant", config.get("variant")) != config.get("variant") or epoch < rule["epoch"]:
            continue
        if "seed" in rule and rule["seed"] != config.get("seed"):
            continue
        marker_dir = path.parent / f"{path.stem}.fired"
        marker_dir.mkdir(exist_ok=True)
        fired = len(list(marker_dir.glob(f"rule{i}-*")))
        if fired >= rule.get("times", 1):
            continue
        (marker_dir / f"rule{i}-{fired}").touch()
        if rule.get("action", "raise") == "exit":
            os._exit(17)
        raise InjectedFault(f"injected fault: rule {i} at epoch {epoch} (firing {fired + 1})")
