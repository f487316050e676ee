"""The one root of errors a user can fix (a bad spec, flag, file or setting).

The CLI prints these as one line and exits 2; anything else is a bug and keeps
its traceback. Subclasses name the field or file, the value and what is allowed.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; the message says what and how."""


class OptionError(UserError, ValueError):
    """A training option with a value outside what it allows. `field` names it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


__all__ = ["UserError", "OptionError"]
