"""How a spec's problems read: one SpecError with one line per problem, each naming the field
path (`scheduler.grace_period`), the bad value and what is allowed, from our validators' problems
and pydantic's errors alike."""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Mapping, NoReturn

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

from study.errors import UserError


class SpecError(UserError, ValueError):
    """An invalid study spec; the message names the field path, value and what is allowed."""


# A problem: (path, message). The path is relative to the value being validated
# (pydantic prefixes its location) unless it is an Absolute: marked by its type, not
# by a character, since a user's key may hold any character (a variant named
# '\x000' or '/0' stays relative).
Problem = tuple[str, str]


class Absolute(str):
    """A problem's path from the top of the spec."""


def _fail(path: str, message: str) -> NoReturn:
    _fail_all([(path, message)])


def _fail_all(problems: list[Problem]) -> NoReturn:
    # One validator reports every problem it found in one error; the messages go
    # through the context so braces in user values are not read as template fields.
    items = [[str(p), m, isinstance(p, Absolute)] for p, m in problems]
    raise PydanticCustomError("spec", "{spec_msg}", {"spec_items": items,
                                                     "spec_msg": "; ".join(m for _, m in problems)})


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _allowed_keys(root: type[BaseModel], loc: tuple) -> list[str]:
    """The keys allowed in the mapping at `loc` (the path of a key inside `root`, the spec's model)."""
    model: type[BaseModel] = root
    parts = list(loc[:-1])
    while parts:
        field = model.model_fields.get(parts.pop(0))
        ann = field.annotation if field is not None else None
        if typing.get_origin(ann) in (typing.Union, types.UnionType):  # design: DesignSpec | None
            ann = next((a for a in typing.get_args(ann) if a is not type(None)), None)
        if typing.get_origin(ann) is dict:  # variants: {name: VariantSpec}
            ann = typing.get_args(ann)[1]
            parts = parts[1:]
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _error_items(err: Mapping[str, Any], root: type[BaseModel]) -> list[Problem]:
    """(field path, problem) for one pydantic error inside model `root`: one per problem
    a validator of ours found."""
    loc = [str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]]
    ctx = err.get("ctx") or {}
    if err["type"] == "spec":
        items = [([path] if absolute else loc + [path], msg) for path, msg, absolute in ctx["spec_items"]]
    elif err["type"] in ("extra_forbidden", "invalid_key") or err["loc"][-1:] == ("[key]",):
        raw = err["loc"][:-1] if err["loc"][-1:] == ("[key]",) else err["loc"]  # a key of a free mapping
        key = str(raw[-1])  # quoted unless a plain name, so ' ' or 'a: b' stay readable
        shown = key if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_+-]*", key) else repr(key)
        allowed = _allowed_keys(root, tuple(raw))
        items = [(loc[:len(raw) - 1] + [shown], f"unknown key {key!r}" + (f"; allowed keys: {', '.join(allowed)}"
                                                                             if allowed else "; allowed: a name"))]
    elif err["type"] == "missing":
        items = [(loc, "required field is missing")]
    elif err["type"] == "value_error":
        items = [(loc, err["msg"].removeprefix("Value error, "))]
    else:
        items = [(loc, f"{err['msg']} (got {err['input']!r})")]
    return [(".".join(p for p in parts if p).replace(".[", "["), msg) for parts, msg in items]


def _describe(err: Mapping[str, Any], root: type[BaseModel]) -> list[str]:
    # user keys and values are quoted into the text: escape control characters so
    # each error stays on its one line
    return ["".join(c if c.isprintable() else repr(c)[1:-1] for c in f"{path or '<top level>'}: {msg}")
            for path, msg in _error_items(err, root)]
