"""How each searched parameter was distributed: numeric (log or linear) or
categorical, with its range. Taken from the space the study's driver bound and
recorded (the manifest analysis.load.load_spec attaches to the spec); without a
manifest, the variant's default space; otherwise inferred from the results
table, so the analysis also runs on studies of variants this code lacks."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# The trainer's options searched on a log scale (see log_params).
CORE_LOG_PARAMS = frozenset({"lr", "weight_decay"})


@dataclass(frozen=True)
class ParamInfo:
    name: str
    kind: str  # "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    condition: tuple[str, Any] | None = None  # (parent, value): used only when parent == value

    @property
    def numeric(self) -> bool:
        return self.kind != "categorical"

    def active(self, df: pd.DataFrame) -> pd.Series:
        """Rows where this param was in effect (its condition held)."""
        if self.condition is None or self.condition[0] not in df.columns:
            return pd.Series(True, index=df.index)
        parent, value = self.condition
        return df[parent] == value


def _info(entry: dict[str, Any]) -> ParamInfo:
    """A ParamInfo from a manifest's parameter entry (study.driver.manifest.param_entry)."""
    cond = entry.get("condition")
    cond = None if not cond else (cond["param"], cond["value"])
    if entry["kind"] == "categorical":
        return ParamInfo(entry["name"], "categorical", choices=tuple(entry["choices"]), condition=cond)
    low, high = entry.get("low"), entry.get("high")
    return ParamInfo(entry["name"], entry["kind"], None if low is None else float(low),
                     None if high is None else float(high), bool(entry.get("log")), condition=cond)


@functools.lru_cache(maxsize=None)
def _default_space(variant: str) -> tuple[dict[str, Any], ...]:
    try:
        from study.driver.manifest import param_entry
        from study.spaces import space_params

        return tuple(param_entry(p) for p in space_params(variant))
    except Exception:  # a variant this code does not know: inferred from the results instead
        return ()


def log_params() -> frozenset[str]:
    """Fallback when study.spaces cannot say (a variant this code lacks): the params
    searched on a log scale, as the trainer's and every registered variant's default
    space searches them (continuous ones only: an integer option inferred from its
    values keeps its levels)."""
    try:
        from study.variants import list_variants

        names = list_variants()
    except Exception:  # no registry here: the trainer's own
        names = []
    return CORE_LOG_PARAMS | {e["name"] for v in names for e in _default_space(v)
                              if e.get("log") and e["kind"] == "float"}


def recorded_space(variant: str, spec: dict | None) -> list[dict[str, Any]] | None:
    """The searched parameters of `variant` as the study's manifest recorded them
    (spaces do not depend on the depth: the first experiment of the variant); None
    without a manifest or when the study did not run the variant."""
    experiments = ((spec or {}).get("manifest") or {}).get("experiments") or {}
    for exp in experiments.values():
        if exp.get("variant") == variant:
            return list(exp.get("space") or [])
    return None


def space_info(variant: str, spec: dict | None = None) -> dict[str, ParamInfo]:
    """The search space `variant` had in the study: the one its manifest recorded,
    else the variant's default space; {} when neither says."""
    entries = recorded_space(variant, spec)
    return {e["name"]: _info(e) for e in (_default_space(variant) if entries is None else entries)}


def infer_info(name: str, values: pd.Series) -> ParamInfo:
    """Guess a param's distribution from the values it took."""
    v = values.dropna()
    if v.empty or pd.api.types.is_bool_dtype(v) or not pd.api.types.is_numeric_dtype(v):
        choices = tuple(sorted(v.unique(), key=str))
        return ParamInfo(name, "categorical", choices=choices)
    is_int = pd.api.types.is_integer_dtype(v) or bool(np.all(np.asarray(v, float) == np.round(np.asarray(v, float))))
    logs = log_params()
    log = name in logs and float(v.min()) > 0
    return ParamInfo(name, "int" if is_int and name not in logs else "float",
                     float(v.min()), float(v.max()), log)


def param_info(variant: str, name: str, values: pd.Series | None = None, spec: dict | None = None) -> ParamInfo:
    """The study's space entry (spec overrides applied) when known, else inferred from `values`."""
    info = space_info(variant, spec).get(name)
    if info is not None:
        return info
    if values is None:
        return ParamInfo(name, "float", log=name in log_params())
    return infer_info(name, values)


__all__ = ["ParamInfo", "CORE_LOG_PARAMS", "log_params", "recorded_space", "space_info", "infer_info", "param_info"]
