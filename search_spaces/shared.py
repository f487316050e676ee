"""The space every variant shares: how far does each method's accuracy depend
on the optimiser's two main knobs, the learning rate and the weight decay?

The baseline ResNet searches only this; every other variant searches it too,
so a variant's gain is measured against a baseline tuned as hard as itself.
The standard recipe (lr 0.1, weight decay 1e-4) lies inside both ranges. This
module also defines `Param`, the description every space is written in.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any, Mapping

KINDS = ("float", "int", "categorical")

_CONDITION = re.compile(r"^\s*([A-Za-z_]\w*)\s*==\s*(.+?)\s*$")


@dataclass(frozen=True)
class Param:
    """One searched option: only the search range is declared here; the type,
    hard limits, allowed choices and help come from the option's declaration
    beside its model (`bind`), so a space cannot allow what a trial refuses.

    `low`/`high`/`log` describe numeric ranges, `choices` the categoricals
    searched by default (None: every allowed value). `condition`
    ("sgs_mode == 'mi'") names the parent whose value switches the param on;
    it is suggested only then. After `bind`: `kind`, `min_value`/`max_value`
    (`min_open`: the minimum itself excluded, as for alpha > 1) and `allowed`
    (every value an override may choose) are the option's.
    """

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    condition: str | None = None
    kind: str | None = None
    min_value: float | None = None
    min_open: bool = False
    max_value: float | None = None
    allowed: tuple[Any, ...] | None = None
    help: str = ""

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"Param {self.name!r}: kind {self.kind!r} not in {KINDS}")
        if self.condition is not None:
            self.parent()  # fail at definition time on a malformed condition

    def bind(self, option: Any) -> "Param":
        """This search range with the option's type, limits, choices and help."""
        from dataclasses import replace

        if option.choices is not None:
            return replace(self, kind="categorical", choices=tuple(self.choices or option.choices),
                           allowed=tuple(option.choices), help=self.help or option.help)
        kind = "int" if option.kind is int else "float"
        return replace(self, kind=kind, min_value=option.low, min_open=option.low_open, max_value=option.high,
                       help=self.help or option.help)

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")

    def parent(self) -> tuple[str, Any] | None:
        """The condition as (parent name, required value), or None."""
        if self.condition is None:
            return None
        m = _CONDITION.match(self.condition)
        if m is None:
            raise ValueError(
                f"Param {self.name!r}: condition {self.condition!r} is not of the form "
                "\"<param> == <literal>\""
            )
        return m.group(1), ast.literal_eval(m.group(2))

    def is_active(self, values: Mapping[str, Any]) -> bool:
        """Whether this param is used given the values chosen so far."""
        cond = self.parent()
        if cond is None:
            return True
        name, required = cond
        return name in values and values[name] == required

    def limits_text(self) -> str:
        """The hard limits in words, for error messages."""
        if self.kind == "categorical":
            return f"one of {list(self.allowed or self.choices or ())}"
        parts = []
        if self.min_value is not None:
            parts.append(f"{'>' if self.min_open else '>='} {self.min_value:g}")
        if self.max_value is not None:
            parts.append(f"<= {self.max_value:g}")
        kind = "an integer" if self.kind == "int" else "a number"
        return kind + (" " + " and ".join(parts) if parts else "")

    def within_limits(self, value: float) -> bool:
        if self.min_value is not None:
            if value < self.min_value or (self.min_open and value == self.min_value):
                return False
        return self.max_value is None or value <= self.max_value


PARAMS = (
    Param("lr", 0.01, 0.4, log=True),
    Param("weight_decay", 1e-5, 1e-3, log=True),
)
