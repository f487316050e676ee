"""An `Option`: one training option's type, default, allowed values or bounds,
and help, declared once. TrainConfig fields, CLI flags, spec validation,
search-space limits and analysis axes are all derived from these."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Iterable

from study.errors import OptionError

TYPES = (bool, int, float, str)


@dataclass(frozen=True)
class Option:
    """`kind` is bool, int, float or str. `choices` closes the set of values
    (str options always have it); `low`/`high` bound numbers (`low_open`: low
    itself excluded). `nullable`: None is allowed (its meaning is in `help`).
    `pattern`: a regular expression a str value must match whole (its `help` then
    says in words what it allows). `target` says who consumes it: "model" (the
    builder's keyword), "train" (the trainer or a variant's hooks)."""

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    nullable: bool = False
    pattern: str | None = None
    target: str = "train"

    def __post_init__(self) -> None:
        if self.kind not in TYPES:
            raise TypeError(f"option {self.name!r}: kind {self.kind!r} is not one of {TYPES}")
        if self.target not in ("model", "train"):
            raise TypeError(f"option {self.name!r}: target {self.target!r} is not 'model' or 'train'")
        if self.pattern is not None and self.kind is not str:
            raise TypeError(f"option {self.name!r}: a pattern is for str options, not {self.kind.__name__}")
        if self.kind is bool and self.choices is None:
            object.__setattr__(self, "choices", (True, False))
        if self.default is not None or not self.nullable:
            self.check(self.default)  # a declaration whose default breaks its own rule fails at import

    # ------------------------------------------------------------ checking

    def allowed(self) -> str:
        """What the option allows, in words, for errors and help."""
        if self.choices is not None:
            text = "one of " + ", ".join(_show(c) for c in self.choices)
        elif self.kind is str:
            text = self.help if self.pattern else "text" + (f" ({self.help})" if self.help else "")
        else:
            fmt = (lambda v: str(int(v))) if self.kind is int else (lambda v: f"{v:g}")
            parts = []
            if self.low is not None:
                parts.append(f"{'>' if self.low_open else '>='} {fmt(self.low)}")
            if self.high is not None:
                parts.append(f"<= {fmt(self.high)}")
            text = ("an integer" if self.kind is int else "a number") + (" " + " and ".join(parts) if parts else "")
        return text + (" (or null)" if self.nullable else "")

    def check(self, value: Any) -> Any:
        """`value` cast to the option's type, or OptionError naming the option,
        the value and what is allowed."""
        if value is None:
            if self.nullable:
                return None
            raise self.error(value)
        kind = self.kind
        if kind is bool:
            if type(value).__name__ not in ("bool", "bool_"):  # numpy bools come from samplers
                raise self.error(value)
            value = bool(value)
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise self.error(value)
            value = int(value)
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise self.error(value)
            value = float(value)
        elif not isinstance(value, str) or (self.pattern is not None and not re.fullmatch(self.pattern, value)):
            raise self.error(value)
        if self.choices is not None and not any(same_value(value, c) for c in self.choices):
            raise self.error(value)
        if kind in (int, float) and not self.within(value):
            raise self.error(value)
        return value

    def within(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or value <= self.high

    def error(self, value: Any) -> OptionError:
        return OptionError(f"{self.name}: {value!r} is not allowed; allowed: {self.allowed()}", field=self.name)

    def replace(self, **changes: Any) -> "Option":
        """A copy with other fields (a variant's own default, say)."""
        from dataclasses import replace

        return replace(self, **changes)

    def parse(self, text: str) -> Any:
        """The option's value from command-line text, checked."""
        t = text.strip()
        if self.nullable and t.lower() in ("none", "null"):
            return None
        try:
            if self.kind is bool:
                low = t.lower()
                if low not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                    raise ValueError
                value: Any = low in ("1", "true", "yes", "on")
            elif self.kind is int:
                value = int(t)
            elif self.kind is float:
                value = float(t)
            else:
                value = t
        except ValueError:
            raise self.error(text) from None
        return self.check(value)


def same_value(a: Any, b: Any) -> bool:
    """Whether option value `a` is `b`: equal, with a bool never the same as a number
    (True == 1 in Python: a bool choice must not accept an int, nor an int choice True)."""
    return (isinstance(a, bool) == isinstance(b, bool)) and a == b


def _show(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def by_name(options: Iterable[Option]) -> dict[str, Option]:
    out: dict[str, Option] = {}
    for o in options:
        if o.name in out and out[o.name] != o:
            raise TypeError(f"option {o.name!r} is declared twice with different rules")
        out[o.name] = o
    return out


__all__ = ["Option", "by_name", "same_value"]
