"""How each searched parameter was distributed: numeric (log or linear) or
categorical, with its range. Taken from search_spaces.space_params when that
package knows the variant; otherwise inferred from the results table, so the
analysis also runs on studies whose space module changed since."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# Fallback when search_spaces is unavailable: params searched on a log scale.
LOG_PARAMS = frozenset({"lr", "weight_decay", "epsilon", "sgs_k"})
_CATEGORICAL_KINDS = frozenset({"categorical", "cat", "choice", "bool", "boolean"})


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


def _from_space(p: Any) -> ParamInfo:
    kind = str(getattr(p, "kind", "float")).lower()
    choices = getattr(p, "choices", None)
    parent = getattr(p, "parent", None)
    cond = parent() if callable(parent) else None
    if kind in _CATEGORICAL_KINDS or (choices is not None and kind not in ("float", "int")):
        return ParamInfo(p.name, "categorical", choices=tuple(choices) if choices is not None else None,
                         condition=cond)
    kind = "int" if kind.startswith("int") else "float"
    low, high = getattr(p, "low", None), getattr(p, "high", None)
    return ParamInfo(p.name, kind, None if low is None else float(low), None if high is None else float(high),
                     bool(getattr(p, "log", False)), condition=cond)


@functools.lru_cache(maxsize=None)
def _default_names(variant: str) -> frozenset[str]:
    try:
        from search_spaces import space_params

        return frozenset(p.name for p in space_params(variant))
    except Exception:
        return frozenset()


def spec_overrides(spec: dict | None, variant: str) -> tuple[dict, dict]:
    """(space overrides, fixed) of `variant` in a study's spec.yaml, as the
    runner built its space: the variant's `space`, plus `train` values of
    params it searches (those fix the param), and its `fixed` fields."""
    if not spec:
        return {}, {}
    vs = (spec.get("variants") or {})
    vs = vs.get(variant) if isinstance(vs, dict) else None
    vs = vs if isinstance(vs, dict) else {}
    space = dict(vs.get("space") or {})
    fixed = dict(vs.get("fixed") or {})
    names = _default_names(variant)
    for k, v in (spec.get("train") or {}).items():
        if k in names and k not in space and k not in fixed:
            space[k] = {"value": v}
    return space, fixed


_CACHE: dict[str, dict[str, ParamInfo]] = {}


def space_info(variant: str, spec: dict | None = None) -> dict[str, ParamInfo]:
    """The search space `variant` had in the study (its spec's overrides
    applied); {} when search_spaces can't say."""
    import json

    space, fixed = spec_overrides(spec, variant)
    key = json.dumps([variant, space, fixed], sort_keys=True, default=str)
    if key in _CACHE:
        return _CACHE[key]
    try:
        from search_spaces import space_params
    except Exception:  # the package is optional for analysis; fall back to inference
        return {}
    try:
        out = {p.name: _from_space(p) for p in space_params(variant, space or None, fixed or None)}
    except Exception:
        try:  # overrides the current code rejects: the default space still names the axes
            out = {p.name: _from_space(p) for p in space_params(variant)}
        except Exception:
            out = {}
    _CACHE[key] = out
    return out


def infer_info(name: str, values: pd.Series) -> ParamInfo:
    """Guess a param's distribution from the values it took."""
    v = values.dropna()
    if v.empty or pd.api.types.is_bool_dtype(v) or not pd.api.types.is_numeric_dtype(v):
        choices = tuple(sorted(v.unique(), key=str))
        return ParamInfo(name, "categorical", choices=choices)
    is_int = pd.api.types.is_integer_dtype(v) or bool(np.all(np.asarray(v, float) == np.round(np.asarray(v, float))))
    log = name in LOG_PARAMS and float(v.min()) > 0
    return ParamInfo(name, "int" if is_int and name not in LOG_PARAMS else "float",
                     float(v.min()), float(v.max()), log)


def param_info(variant: str, name: str, values: pd.Series | None = None, spec: dict | None = None) -> ParamInfo:
    """The study's space entry (spec overrides applied) when known, else inferred from `values`."""
    info = space_info(variant, spec).get(name)
    if info is not None:
        return info
    if values is None:
        return ParamInfo(name, "float", log=name in LOG_PARAMS)
    return infer_info(name, values)


__all__ = ["ParamInfo", "LOG_PARAMS", "spec_overrides", "space_info", "infer_info", "param_info"]
