"""`resstudy`: train one network, run and follow studies, open their UIs.

Built on typer: it is actively kept (by the FastAPI authors), sits on click
(so usage errors exit 2, `--flag/--no-flag` booleans, and bash/zsh/fish
completion come for free) and reads typed signatures.

Exit codes: 0 done; 1 the run failed (a diverged trial, or an unexpected
error, whose traceback is always kept); 2 bad input (any study.errors.UserError
or usage error, printed as one `resstudy CMD: error: ...` line); 130 stopped by
Ctrl-C."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional, Sequence

import typer
import typer.core

from study.cli import flags
from study.cli.base import STATE, ClickException, UsageError, _set_verbose, _verbose_option
from study.cli.train import _train, train_command
from study.errors import UserError

app = typer.Typer(name="resstudy", help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=True,
                  pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]})


# ---------------------------------------------------------------- global options


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("resstudy")
        except PackageNotFoundError:  # run from a checkout that was never installed
            v = "unknown (not installed)"
        typer.echo(f"resstudy {v}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="print the version and exit")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show MLflow's, Optuna's and Ray's INFO logs "
                                                                  "(also accepted after the command)")] = False,
) -> None:
    """Distributed hyper-parameter studies of residual-network variants."""
    _set_verbose(None, None, verbose)


class _Group(typer.core.TyperGroup):
    """The root group: `train` is added lazily (see train_command); every
    command also takes -v/--verbose after its name."""

    _listing = False  # the group's help or a completion of command names: train's short help is enough

    # ctx: click's Context, of whichever copy of click (see UsageError)
    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        return ["train", *[n for n in names if n != "train"]]

    def get_command(self, ctx: Any, name: str):
        if name == "train" and "train" not in self.commands:
            if self._listing and not flags._TABLE:
                return typer.core.TyperCommand("train", help=_train.__doc__)
            self.commands["train"] = train_command()
        cmd = self.commands["train"] if name == "train" else super().get_command(ctx, name)
        if cmd is not None and not any(p.name == "verbose" for p in cmd.params):
            cmd.params.append(_verbose_option())
        return cmd

    def format_help(self, ctx, formatter) -> None:
        _Group._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            _Group._listing = False

    def shell_complete(self, ctx, incomplete: str):
        _Group._listing = True
        try:
            return super().shell_complete(ctx, incomplete)
        finally:
            _Group._listing = False


app.info.cls = _Group


# ---------------------------------------------------------------- main


def _command_name(argv: Sequence[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: Sequence[str] | None = None, *, events: Any = None, options: dict[str, Any] | None = None) -> int:
    """The command line. `events` (study.driver.Events) and `options` (RuntimeOptions fields)
    reach the study driver of `run` and `resume`: the seam where tests plug faults in."""
    argv = list(sys.argv[1:] if argv is None else argv)
    STATE.update(verbose=False, events=events, options=dict(options or {}))
    name = _command_name(argv)
    prefix = f"resstudy {name}: error: " if name else "resstudy: error: "
    cli = typer.main.get_command(app)
    try:
        rv = cli.main(argv, prog_name="resstudy", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except UsageError as e:
        known = name in ("train", *(c.name for c in app.registered_commands))
        hint = "" if isinstance(e, typer.BadParameter) else f" (see resstudy {name + ' ' if known else ''}--help)"
        if "unexpected extra argument" in e.format_message():
            hint = " (a boolean is a flag without a value: --nesterov or --no-nesterov)" + hint
        print(prefix + e.format_message() + hint, file=sys.stderr)
        return 2
    except ClickException as e:
        print(prefix + e.format_message(), file=sys.stderr)
        return e.exit_code if e.exit_code != 1 else 2
    except (KeyboardInterrupt, typer.Abort):
        print(f"resstudy {name}: interrupted", file=sys.stderr)
        return 130
    except UserError as e:  # anything else is a bug: it keeps its whole traceback (exit 1)
        print(prefix + str(e), file=sys.stderr)
        return 2


def entry() -> int:
    """The `resstudy` program: `main`, then the process's end made short."""
    rc = main()
    leave()
    return rc


def leave() -> None:
    """Ready the process to exit: the embedded Ray stopped now, not by its own exit hook,
    which first sleeps 0.5 s for worker log lines that this driver never forwards
    (log_to_driver=False); then every object frozen out of the garbage collector, whose
    last collections at the interpreter's exit walk all that torch, Ray, MLflow and pandas
    made (1.4 s after a small study on 2 cores) only for the process to drop it anyway.
    The exit hooks still run. Only where the process ends: `main` itself is called in
    process (tests, notebooks), which keep their Ray."""
    import gc

    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        ray.shutdown()
    gc.freeze()
