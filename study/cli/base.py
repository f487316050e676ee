"""What every command of the command line shares: the process's state (-v, the driver's
events and options main() was handed), the usage errors of whichever click typer carries,
the study arguments and options, -v after a command's name, and JSON output."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.core

from study.errors import UserError
from study.presets import list_presets


# Typer >= 0.26 carries its own copy of click; its usage-error classes are
# reached through the public BadParameter so this works with either (typed Any:
# which copy is known only at run time).
UsageError: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
ClickException: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


# This process's command: -v, and what main() was handed (the driver's events and runtime options)
STATE: dict[str, Any] = {"verbose": False, "events": None, "options": {}}
_NULL = object()  # an option given as "none"/"null" on the command line


class CliError(UserError):
    """A bad command line the parser cannot see (two sources given, a missing study)."""


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


VERBOSE_HELP = "show MLflow's, Optuna's and Ray's INFO logs"


def _set_verbose(ctx: Any, param: Any, value: bool) -> None:
    if value:
        STATE["verbose"] = True
        os.environ["RESSTUDY_VERBOSE"] = "1"  # read by the runner when it starts Ray


def _verbose_option():
    """-v/--verbose for a command (the root group has its own): typer's own option
    object, taken from a one-flag command, setting the state instead of passing a value."""
    if "option" not in _VERBOSE:
        sub = typer.Typer(add_completion=False)

        @sub.command()
        def _cmd(verbose: Annotated[bool, typer.Option("--verbose", "-v", help=VERBOSE_HELP)] = False) -> None:
            pass

        opt = next(p for p in typer.main.get_command(sub).params if p.name == "verbose")
        opt.expose_value, opt.callback = False, _set_verbose
        _VERBOSE["option"] = opt
    return _VERBOSE["option"]


_VERBOSE: dict[str, Any] = {}


# ---------------------------------------------------------------- studies

def _presets() -> list[str]:
    return list_presets()


StoragePath = Annotated[Optional[str], typer.Option("--storage-path", help="where studies live (default: "
                                                    "$RESSTUDY_STORAGE, else ./resstudy_runs)")]
TrackingUri = Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow tracking URI (a password in it is "
                                                    "never printed or saved)")]
SpecFile = Annotated[Optional[Path], typer.Argument(help="study spec YAML", show_default=False)]
Preset = Annotated[Optional[str], typer.Option("--preset", help="a shipped spec: " + ", ".join(list_presets()),
                                               autocompletion=lambda: _presets())]
Sets = Annotated[Optional[list[str]], typer.Option(
    "--set", help="change a spec field: KEY=VALUE, VALUE read as YAML, KEY dotted for a nested field "
                  "(--set epochs=3 --set scheduler.grace_period=2 --set 'depth=[8, 14]'); repeatable",
    metavar="KEY=VALUE", show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]


def study_dir(name: str, storage_path: str | None = None) -> Path:
    """A study directory given directly, or a study name under the storage path
    (study.api.find: anything that is not a study directory is refused)."""
    from study import api

    return api.find(name, storage_path)


def _json(data: Any) -> None:
    import json

    from study.api import _plain

    typer.echo(json.dumps(_plain(data), indent=1, default=str))


def output_width(stream: Any = None) -> int | None:
    """Columns to fit: the terminal's, else $COLUMNS, else None (no limit: a file or a pipe)."""
    stream = stream or sys.stdout
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        pass
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else None
