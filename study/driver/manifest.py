"""What a study resolved when it started, recorded once in study.json.

The driver binds each experiment's search space (the spec's overrides applied to
the options), has ASHA put its rungs at certain epochs, picks objectives, a base
config and a twin, and runs certain plugin files under certain library versions.
`resolve` writes those decisions down as JSON so that readers (the analysis) take
them from the record instead of deciding them again with copies of the rules,
which drift (a copy of the rung rule once put a rung at epoch 16 where ASHA
stopped trials at 15).

    state["manifest"] = resolve(spec)     # or record(state, spec), on every start
    m = read(study_dir)                   # None for a study recorded before manifests

Nothing here starts Ray or opens a store.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from study.searcher import Rungs

FORMAT = 1
# Distributions whose version changes what a trial computes or how a study is read.
VERSIONED = ("torch", "torchvision", "ray", "optuna", "mlflow", "pyarrow", "numpy", "resstudy")


def rung_epochs(epochs: int, scheduler: Any) -> list[int]:
    """The epochs at which ASHA compares trials, ascending, exactly as the study's
    scheduler (study.searcher.Rungs) places them; [] when the scheduler is not ASHA.
    `scheduler`: the spec's SchedulerSpec."""
    if scheduler.type != "asha":
        return []
    # a set: with a reduction factor below 2 two of Rungs' milestones can fall on one epoch
    return sorted(set(Rungs(epochs, scheduler.grace_period, scheduler.reduction_factor).milestones))


def param_entry(p: Any) -> dict[str, Any]:
    """One searched parameter (a bound search_spaces Param) as JSON."""
    out: dict[str, Any] = {"name": p.name, "kind": p.kind}
    if p.kind == "categorical":
        out["choices"] = list(p.choices)
    else:
        out.update(low=p.low, high=p.high, log=bool(p.log))
    cond = p.parent()
    out["condition"] = None if cond is None else {"param": cond[0], "value": cond[1]}
    return out


def _claim_entry(c: Any) -> dict[str, Any]:
    # `where` is code, not data: its words (where_text) are recorded
    return {"key": c.key, "text": c.text, "kind": c.kind, "metric": c.metric, "option": c.option,
            "better": c.better, "worse": c.worse, "margin": c.margin, "gain_metric": c.gain_metric,
            "where_text": c.where_text}


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def plugin_files(plugins: list[str]) -> list[dict[str, Any]]:
    """Each plugin of the spec with the file it was loaded from and that file's sha256
    (None where it cannot be read)."""
    out = []
    for p in plugins:
        if p.endswith(".py"):
            path: Path | None = Path(p)
        else:  # a module name: the file it imports from
            found = importlib.util.find_spec(p)
            path = Path(found.origin) if found is not None and found.origin else None
        out.append({"plugin": p, "file": None if path is None else str(path),
                    "sha256": None if path is None else _sha256(path)})
    return out


def versions() -> dict[str, str | None]:
    """Python's version and each VERSIONED distribution's (None where not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def resolve(spec: Any) -> dict[str, Any]:
    """What the driver decides from `spec` (a validated study.spec.StudySpec), as JSON:
    per experiment (study-variant-dDEPTH) the bound search space, ASHA's rung epochs,
    the objectives, the planned trials per arm, the twin's variant, the variant's
    declared claims and the base config of every trial; the spec's design section;
    the plugin files with their sha256; the versions it runs under."""
    from study import spaces
    from study.config import TrainConfig
    from study.driver.context import experiment_name
    from study.driver.plan import plan as trials_plan
    from study.variants import get_variant

    plan = trials_plan(spec)
    experiments = {}
    for variant, depth in spec.experiments():
        vs = spec.variants[variant]
        base = spec.trial_base_config(variant, depth)
        twin = TrainConfig.from_dict({k: v for k, v in base.items() if not k.startswith("_")}).twin()
        experiments[experiment_name(spec.name, variant, depth)] = {
            "variant": variant,
            "depth": depth,
            "space": [param_entry(p) for p in
                      spaces.space_params(variant, spec.space_overrides(variant), vs.fixed)],
            "rung_epochs": rung_epochs(spec.epochs, spec.scheduler),
            "objectives": list(vs.objectives),
            "arms": dict(plan[(variant, depth)]),
            "twin": None if twin is None else twin.variant,
            "claims": [_claim_entry(c) for c in get_variant(variant).claims],
            "base_config": base,
        }
    out: dict[str, Any] = {"format": FORMAT, "study": spec.name, "experiments": experiments}
    # null: the best configuration and its twin only
    out["design"] = None if spec.design is None else spec.design.model_dump(mode="json")
    out["plugins"] = plugin_files(list(spec.plugins))
    out["versions"] = versions()
    # as study.json will hold it (tuples as lists), and proof that it is JSON at all
    return json.loads(json.dumps(out, allow_nan=False))


def record(state: dict[str, Any], spec: Any) -> dict[str, Any]:
    """Put the manifest into a study's state, on every start before the driver counts
    the session in state["sessions"]: resolved on the study's first start (or the first
    since manifests exist) and kept after. A later session whose versions or plugin
    files differ from the ones last recorded appends them to the manifest's "sessions",
    with its number (state["sessions"] + 1). Returns the manifest."""
    now = resolve(spec)
    kept = state.get("manifest")
    if not isinstance(kept, dict):
        state["manifest"] = now
        return now
    last = (kept.get("sessions") or [kept])[-1]
    if (last.get("versions"), last.get("plugins")) != (now["versions"], now["plugins"]):
        kept.setdefault("sessions", []).append({"session": int(state.get("sessions") or 0) + 1,
                                                "versions": now["versions"],
                                                "plugins": now["plugins"]})
    return kept


def read(source: str | Path | Mapping[str, Any]) -> dict[str, Any] | None:
    """The manifest of a study (a study directory, or its study.json state already
    read); None when the study was recorded without one."""
    if isinstance(source, Mapping):
        state = source
    else:
        from study.ledger import read_state

        state = read_state(source)
    found = state.get("manifest")
    return found if isinstance(found, dict) else None


__all__ = ["FORMAT", "param_entry", "plugin_files", "read", "record", "resolve", "rung_epochs",
           "versions"]
