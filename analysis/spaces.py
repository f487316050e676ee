"""How each searched parameter was distributed: numeric (log or linear) or
categorical, with its range. Taken from search_spaces.space_params when that
package knows the variant; otherwise inferred from the results table, so the
analysis also runs on studies whose space module changed since."""

from __future__ import annotations

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


def space_info(variant: str) -> dict[str, ParamInfo]:
    """The declared search space of a variant; {} when search_spaces can't say."""
    try:
        from search_spaces import space_params
    except Exception:  # the package is optional for analysis; fall back to inference
        return {}
    try:
        return {p.name: _from_space(p) for p in space_params(variant)}
    except Exception:
        return {}


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


def param_info(variant: str, name: str, values: pd.Series | None = None) -> ParamInfo:
    """The declared space entry when known, else inferred from `values`."""
    info = space_info(variant).get(name)
    if info is not None:
        return info
    if values is None:
        return ParamInfo(name, "float", log=name in LOG_PARAMS)
    return infer_info(name, values)


__all__ = ["ParamInfo", "LOG_PARAMS", "space_info", "infer_info", "param_info"]
