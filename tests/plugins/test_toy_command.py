"""A new command is one function on the command line's app, in the module of its
group (study/cli/studies.py, read.py, cluster.py; docs/architecture.md): the
root group lists it, `main` runs it with its usage errors and -v, and nothing
else of the command line changes. Registered here for one test and removed after."""

from __future__ import annotations

import contextlib
import io
from typing import Annotated

import pytest
import typer

from study import cli
from study.cli.app import app
from study.cli.base import STATE


@pytest.fixture
def toy_command():
    seen: dict = {}

    @app.command("toy")
    def toy(times: Annotated[int, typer.Option("--times", help="how many times")] = 1) -> None:
        """Say toy (a test's command)."""
        seen.update(times=times, verbose=STATE["verbose"])
        typer.echo("toy " * times)

    yield seen
    app.registered_commands[:] = [c for c in app.registered_commands if c.name != "toy"]


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_a_command_added_to_the_app_is_listed_and_runs_with_the_shared_options(toy_command):
    code, out, _ = _main(["--help"])
    assert code == 0 and "toy" in out and "Say toy" in out
    code, out, _ = _main(["toy", "--times", "2", "-v"])
    assert code == 0 and out.strip() == "toy toy" and toy_command == {"times": 2, "verbose": True}
    code, out, err = _main(["toy", "--times", "x"])
    assert code == 2 and out == "" and err.startswith("resstudy toy: error: ")


def test_the_command_is_gone_after_its_test():
    assert "toy" not in [c.name for c in app.registered_commands]
