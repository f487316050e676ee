"""`resstudy`: train one network, run and follow studies, open their UIs.

Built on typer: it is actively kept (by the FastAPI authors), sits on click
(so usage errors exit 2, `--flag/--no-flag` booleans, and bash/zsh/fish
completion come for free) and reads typed signatures. The `train` flags are
not written out here: they are derived from the options the variants declare
(study.config.variant_options), with their types, allowed values, defaults and
help, so a new variant's options become flags without touching this file.

Exit codes: 0 done; 1 the run failed (a diverged trial, or an unexpected
error, whose traceback is always kept); 2 bad input (any study.errors.UserError
or usage error, printed as one `resstudy CMD: error: ...` line); 130 stopped by
Ctrl-C. Each command imports only what it needs: `resstudy train` runs where
only torch, numpy and scikit-learn are installed (no Ray, MLflow, Optuna or
pyarrow is imported by this module).
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import typer
import typer.core

from study.presets import list_presets

# Typer >= 0.26 carries its own copy of click; its usage-error classes are
# reached through the public BadParameter so this works with either.
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

from study.errors import UserError

app = typer.Typer(name="resstudy", help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=True,
                  pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]})
STATE = {"verbose": False}
_NULL = object()  # an option given as "none"/"null" on the command line


class CliError(UserError):
    """A bad command line the parser cannot see (two sources given, a missing study)."""


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
    verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                          help="show MLflow's, Optuna's and Ray's INFO logs")] = False,
) -> None:
    """Distributed hyper-parameter studies of residual-network variants."""
    STATE["verbose"] = verbose
    if verbose:
        os.environ["RESSTUDY_VERBOSE"] = "1"  # read by the runner when it starts Ray


# ---------------------------------------------------------------- train (flags from the registry)


def _parser(opt):
    """Parse and check a flag's text with the option's own rules, so the error
    text is the same as the spec's and TrainConfig's."""
    def parse(value: Any) -> Any:
        if value is _NULL or not isinstance(value, str):
            return value
        from study.errors import OptionError

        try:
            parsed = opt.parse(value)
        except OptionError as e:
            raise typer.BadParameter(str(e)) from None
        return _NULL if parsed is None else parsed

    return parse


def _metavar(opt) -> str:
    if opt.choices is not None:
        return "[" + "|".join(map(str, opt.choices)) + "]" + ("|null" if opt.nullable else "")
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(opt.kind, "VALUE") + ("|null" if opt.nullable else "")


def _completer(values: list[str]):
    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


def _choice(name: str, allowed: list[str]):
    def parse(value: str) -> str:
        if value not in allowed:
            raise typer.BadParameter(f"{name}: {value!r} is not allowed; allowed: {', '.join(allowed)}")
        return value

    return parse


def _union_options() -> dict[str, Any]:
    """Every train option of every registered variant, with each variant's own
    default. A flag parses with the first declaration of its name; TrainConfig
    checks the value again against the chosen variant's own declaration."""
    from study.config import variant_options
    from study.variants import list_variants

    merged: dict[str, Any] = {}
    defaults: dict[str, dict[str, Any]] = {}
    for v in list_variants():
        for name, opt in variant_options(v).items():
            merged.setdefault(name, opt)
            defaults.setdefault(name, {})[v] = opt.default
    return {n: (o, defaults[n]) for n, o in merged.items()}


def _show(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _default_text(per_variant: dict[str, Any], variants: list[str]) -> str:
    values = {_show(d) for d in per_variant.values()}
    if len(values) == 1:
        return values.pop()
    return ", ".join(f"{v}: {_show(d)}" for v, d in per_variant.items())


def _train_params() -> list[inspect.Parameter]:
    from study.config import VARIANT_HELP
    from study.variants import features, list_variants

    variants = list_variants()
    feature_of = {o.name: f.name.upper() if len(f.name) <= 4 else f.name for f in features() for o in f.options}
    params = [inspect.Parameter("variant", inspect.Parameter.KEYWORD_ONLY, default="resnet", annotation=Annotated[
        str, typer.Option("--variant", help=VARIANT_HELP,
                          parser=_choice("variant", variants), metavar="[" + "|".join(variants) + "]",
                          autocompletion=_completer(variants), rich_help_panel="What is trained")])]
    for name, (opt, per_variant) in _union_options().items():
        flag = "--" + name.replace("_", "-")
        owners = [v for v in variants if v in per_variant]
        if len(owners) < len(variants):
            panel = f"Options of {', '.join(owners)} only"
        elif name in feature_of:
            panel = f"{feature_of[name]} (any variant)"
        else:
            panel = "Model" if opt.target == "model" else "Training"
        # choices show in the metavar; bounds and null need words
        if opt.choices is not None or opt.kind is str:
            allowed = ""
        else:
            allowed = f"; allowed: {opt.allowed().replace(' (or null)', '')}"
        help_text = f"{opt.help}{allowed} (default: {_default_text(per_variant, variants)})"
        show = False
        if opt.kind is bool:
            info = typer.Option(f"{flag}/--no-{name.replace('_', '-')}", help=help_text, show_default=show,
                                rich_help_panel=panel)
            annotation = Annotated[Optional[bool], info]
        else:
            info = typer.Option(flag, help=help_text, show_default=show, parser=_parser(opt),
                                metavar=_metavar(opt), rich_help_panel=panel,
                                autocompletion=_completer([str(c) for c in opt.choices]) if opt.choices else None)
            annotation = Annotated[Optional[str], info]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    params.append(inspect.Parameter("checkpoint_dir", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[Path], typer.Option("--checkpoint-dir", help="write a full-state checkpoint here after every epoch",
                                     rich_help_panel="Checkpoints")]))
    params.append(inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[Path], typer.Option("--resume", help="continue from this checkpoint directory",
                                     rich_help_panel="Checkpoints")]))
    return params


def _train(**kw: Any) -> None:
    """Train one network without Ray and print a per-epoch table."""
    from study.config import TrainConfig
    from study.preflight import data_problem
    from study.variants import features, get_variant

    checkpoint_dir, resume = kw.pop("checkpoint_dir"), kw.pop("resume")
    variant = kw.pop("variant")
    values = {k: (None if v is _NULL else v) for k, v in kw.items() if v is not None}
    cfg = TrainConfig(variant, **values)  # every check happens before anything is printed
    problem = None if cfg.get("download") else data_problem(cfg.dataset, cfg.data_root)
    if problem:
        raise CliError(problem)
    from study.preflight import check_train

    check_train(cfg.to_dict())  # `run`'s size rule: an image_size of 100000 is refused, not allocated
    from study.train import load_checkpoint, train  # torch import only now

    state = load_checkpoint(resume) if resume is not None else None

    columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_s"]
    extra = list(get_variant(cfg.variant).metrics[:3])
    for f in features():
        if f.active(cfg.to_dict()):
            extra += list(f.metrics[:1])
    header = columns + extra
    print(f"resstudy train: {cfg.variant} depth {cfg.depth} on {cfg.dataset}, {cfg.epochs} epochs, seed {cfg.seed}",
          flush=True)
    print("  ".join(f"{h:>13}" for h in header), flush=True)

    def report(metrics: dict, info: dict, save) -> None:
        cells = []
        for h in header:
            v = metrics.get(h, float("nan"))
            if isinstance(v, int) and not isinstance(v, bool):
                cells.append(f"{v:>13d}")
            elif isinstance(v, (int, float)):
                cells.append(f"{float(v):>13.4g}")
            else:
                cells.append(f"{str(v):>13}")
        print("  ".join(cells), flush=True)
        if checkpoint_dir is not None:
            save(str(checkpoint_dir))

    final = train(cfg, report, resume=state)
    summary = {k: final[k] for k in ("status", "val_acc", "best_val_acc", "test_acc", "compressed_test_acc")
               if k in final}
    print("final: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    if final["status"] != "completed":
        raise typer.Exit(1)


def train_command():
    """The `train` click command, built from the registry when first asked for
    (so `resstudy status` never imports torch)."""
    fn = _train
    fn.__signature__ = inspect.Signature(_train_params())  # type: ignore[attr-defined]
    sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    sub.command("train", context_settings={"help_option_names": ["-h", "--help"]})(fn)
    cmd = typer.main.get_command(sub)
    cmd.name = "train"
    return cmd


class _Group(typer.core.TyperGroup):
    """The root group: `train` is added lazily (see train_command)."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        return ["train", *[n for n in names if n != "train"]]

    def get_command(self, ctx: typer.Context, name: str):
        if name == "train":
            if "train" not in self.commands:
                self.commands["train"] = train_command()
            return self.commands["train"]
        return super().get_command(ctx, name)


app.info.cls = _Group


# ---------------------------------------------------------------- studies

StoragePath = Annotated[Optional[str], typer.Option("--storage-path", help="where studies live (default: "
                                                    "$RESSTUDY_STORAGE, else ./resstudy_runs)")]
TrackingUri = Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow tracking URI (a password in it is "
                                                    "never printed or saved)")]


def study_dir(name: str, storage_path: str | None = None) -> Path:
    """A study directory given directly, or a study name under the storage path.
    Anything that is not a study directory (no spec.yaml, no study.json) is refused."""
    def is_study(p: Path) -> bool:
        return p.is_dir() and ((p / "spec.yaml").is_file() or (p / "study.json").is_file())

    if not name.strip():
        raise CliError("study: '' is not a study; allowed: a study name or a study directory")
    direct = Path(name).expanduser()
    if is_study(direct):
        return direct.resolve()
    root = Path(storage_path or os.environ.get("RESSTUDY_STORAGE", "resstudy_runs")).expanduser()
    candidate = root / name
    if "/" not in name and name not in (".", "..") and is_study(candidate):
        return candidate.resolve()
    known = sorted(p.name for p in root.iterdir() if is_study(p)) if root.is_dir() else []
    what = f"{str(direct)!r} is not a study directory (no spec.yaml or study.json)" if direct.exists() \
        else f"no study {name!r} under {str(root)!r}"
    raise CliError(f"study: {what}; studies under {str(root)!r}: {', '.join(known) or 'none'}")


def _load_spec(spec: Optional[Path], preset: Optional[str], storage_path: str | None, tracking_uri: str | None):
    from study.spec import load_spec

    if (spec is None) == (preset is None):
        raise CliError("give a spec file or --preset NAME (one of them)")
    overrides: dict[str, Any] = {}
    if storage_path:
        overrides["storage_path"] = storage_path
    if tracking_uri:
        overrides["mlflow"] = {"tracking_uri": tracking_uri}
    return load_spec(spec, preset=preset, overrides=overrides or None)


def _preflight(spec) -> None:
    from study import preflight

    if os.environ.get("RAY_ADDRESS"):
        preflight.check_spec(spec)  # the cluster's resources are checked once Ray is up
    else:
        preflight.check_local(spec)  # the embedded Ray gets exactly this machine


@app.command()
def run(
    spec: Annotated[Optional[Path], typer.Argument(help="study spec YAML", show_default=False)] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="a shipped spec: " + ", ".join(list_presets()),
                                                  autocompletion=lambda: _presets())] = None,
    storage_path: StoragePath = None,
    tracking_uri: TrackingUri = None,
    new_name: Annotated[Optional[str], typer.Option("--new-name", help="run the spec as a new study of this name "
                                                    "(when a study of the spec's name exists with another spec)")] = None,
) -> None:
    """Run a study on the embedded local Ray, or on the cluster of RAY_ADDRESS."""
    if new_name is not None:
        from study.spec import check_study_name

        check_study_name(new_name, "--new-name")  # it becomes a directory name under storage_path
    s = _load_spec(spec, preset, storage_path, tracking_uri)
    _preflight(s)
    from study.progress import quiet_libraries

    quiet_libraries(STATE["verbose"])
    from study.runner import run_study

    quiet_libraries(STATE["verbose"])  # the libraries set their loggers to INFO on import
    out = run_study(s, new_name=new_name) if new_name else run_study(s)
    _where(Path(out) if out else None)


def _where(d: Path | None) -> None:
    if d is None or not d.is_dir():
        return
    typer.echo(f"study directory: {d}")
    for name, what in (("results.parquet", "one row per trial"), ("history.parquet", "one row per trial-epoch"),
                       ("optuna.db", "Optuna studies"), ("mlflow.db", "MLflow runs")):
        if (d / name).exists():
            typer.echo(f"  {name:<16} {what}")
    typer.echo(f"next: resstudy status {d.name} | resstudy analyze {d.name} | resstudy ui {d.name}")


def _presets() -> list[str]:
    return list_presets()


@app.command()
def resume(
    name: Annotated[str, typer.Argument(help="study name (under --storage-path) or study directory")],
    storage_path: StoragePath = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Finish an interrupted study without re-running finished trials."""
    d = study_dir(name, storage_path)
    from study.progress import quiet_libraries
    from study.runner import resume_study

    quiet_libraries(STATE["verbose"])
    out = resume_study(d, tracking_uri=tracking_uri)
    _where(Path(out) if out else d)


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="study name, study directory, or Ray job id")],
    storage_path: StoragePath = None,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray dashboard address, for a job id")] = None,
) -> None:
    """A study's trial counts and best results, or a submitted job's state."""
    if address or name.startswith("raysubmit_"):
        from study import jobs

        typer.echo(jobs.status(name, address))
        return
    from study.report import status_text

    typer.echo(status_text(study_dir(name, storage_path)))


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="study name or directory")],
    storage_path: StoragePath = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="folder (default: <study dir>/export)")] = None,
) -> None:
    """Write a study's results as CSV and a Markdown summary."""
    from study.report import export as export_study

    for path in export_study(study_dir(name, storage_path), out):
        typer.echo(str(path))


@app.command()
def analyze(
    name: Annotated[str, typer.Argument(help="study name or directory")],
    storage_path: StoragePath = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="folder (default: <study dir>/analysis)")] = None,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="log the report to the study's MLflow "
                                                                      "run")] = True,
    tracking_uri: TrackingUri = None,
) -> None:
    """Sensitivity fits, importances, claims and an HTML report."""
    d = study_dir(name, storage_path)
    from study.progress import quiet_libraries

    quiet_libraries(STATE["verbose"])
    from analysis.report import analyze as analyze_study

    kwargs = {"tracking_uri": tracking_uri} if tracking_uri else {}
    report = analyze_study(d, out_dir=out, log_to_mlflow=mlflow, **kwargs)
    typer.echo(f"report: {report}")


@app.command()
def ui(
    name: Annotated[str, typer.Argument(help="study name or directory")],
    storage_path: StoragePath = None,
    mlflow_port: Annotated[int, typer.Option("--mlflow-port", help="0: a free port", min=0, max=65535)] = 0,
    dashboard_port: Annotated[int, typer.Option("--dashboard-port", help="0: a free port", min=0, max=65535)] = 0,
) -> None:
    """Serve the study's MLflow UI and optuna-dashboard on 127.0.0.1 until Ctrl-C."""
    from study import ui as study_ui

    study_ui.serve(study_dir(name, storage_path), mlflow_port=mlflow_port, dashboard_port=dashboard_port)


# ---------------------------------------------------------------- cluster jobs

ADDRESS_HELP = ("Ray dashboard address (default: RAY_API_SERVER_ADDRESS, an http RAY_ADDRESS, else "
                "http://127.0.0.1:8265); the token comes from RAY_AUTH_TOKEN(_PATH) or ~/.ray/auth_token")
Address = Annotated[Optional[str], typer.Option("--address", help=ADDRESS_HELP)]


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="study spec YAML, inside --working-dir")],
    address: Address = None,
    shared_storage: Annotated[bool, typer.Option("--shared-storage", help="storage_path is a mount every node "
                                                                          "can reach")] = False,
    tracking_uri: TrackingUri = None,
    working_dir: Annotated[Path, typer.Option("--working-dir", help="folder shipped to the cluster")] = Path("."),
) -> None:
    """Submit a study to a Ray cluster through Ray Jobs."""
    from study import jobs

    job_id = jobs.submit(spec, address, shared_storage=shared_storage, tracking_uri=tracking_uri,
                         working_dir=working_dir)
    typer.echo(f"submitted job {job_id} to {address or jobs.default_address()}")
    typer.echo(f"follow it with: resstudy logs {job_id} --follow" + (f" --address {address}" if address else ""))


@app.command()
def logs(
    job_id: Annotated[str, typer.Argument(help="a job id from `resstudy submit`")],
    address: Address = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False,
) -> None:
    """Print a submitted study's logs."""
    from study import jobs

    jobs.logs(job_id, address, follow=follow)


@app.command()
def stop(
    job_id: Annotated[str, typer.Argument(help="a job id from `resstudy submit`")],
    address: Address = None,
) -> None:
    """Stop a submitted study."""
    from study import jobs

    typer.echo(jobs.stop(job_id, address))


# ---------------------------------------------------------------- main


def _user_errors() -> tuple[type[BaseException], ...]:
    """UserError, plus older error classes that name a bad file or setting and
    are not (yet) UserErrors. Looked up only in modules already imported, so
    `resstudy train` never imports pyarrow or mlflow to catch them."""
    names = (("study.results", "ResultsError"), ("study.train", "CheckpointError"),
             ("study.tracking", "TrackingError"), ("study.spec", "SpecError"), ("study.jobs", "JobError"),
             ("study.data", "DatasetError"), ("search_spaces", "SpaceError"),
             ("analysis.load", "InsufficientDataError"))
    return (UserError, *(getattr(sys.modules[m], n) for m, n in names
                         if m in sys.modules and hasattr(sys.modules[m], n)))


def _command_name(argv: Sequence[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise  # a bug: keep the whole traceback (exit 1)
        print(prefix + str(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
