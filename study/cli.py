"""`resstudy`: train one network, run and follow studies, open their UIs.

Built on typer: it is actively kept (by the FastAPI authors), sits on click
(so usage errors exit 2, `--flag/--no-flag` booleans, and bash/zsh/fish
completion come for free) and reads typed signatures. The `train` flags are
not written out here: they are derived from the options the variants declare
(study.config.variant_options), with their types, allowed values, defaults and
help, so a new variant's options become flags without touching this file. The
derived table is cached (flag_table), so `--help`, completion and a refused
flag answer without importing torch.

Exit codes: 0 done; 1 the run failed (a diverged trial, or an unexpected
error, whose traceback is always kept); 2 bad input (any study.errors.UserError
or usage error, printed as one `resstudy CMD: error: ...` line); 130 stopped by
Ctrl-C. Each command imports only what it needs: `resstudy train` runs where
only torch, numpy and scikit-learn are installed (no Ray, MLflow, Optuna or
pyarrow is imported by this module).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, Sequence

import typer
import typer.core

from study.errors import UserError
from study.presets import list_presets

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

# Typer >= 0.26 carries its own copy of click; its usage-error classes are
# reached through the public BadParameter so this works with either (typed Any:
# which copy is known only at run time).
UsageError: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
ClickException: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

app = typer.Typer(name="resstudy", help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=True,
                  pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]})
# This process's command: -v, and what main() was handed (the driver's events and runtime options)
STATE: dict[str, Any] = {"verbose": False, "events": None, "options": {}}
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show MLflow's, Optuna's and Ray's INFO logs "
                                                                  "(also accepted after the command)")] = False,
) -> None:
    """Distributed hyper-parameter studies of residual-network variants."""
    _set_verbose(None, None, verbose)


# ---------------------------------------------------------------- train (flags from the registry)
#
# The flags are derived from the options the variants declare. Importing the
# registry imports torch (the variants' modules hold their networks), which costs
# seconds, so the derived table is kept in a cache file keyed by the content of
# every source file of this package: `--help`, completion and a refused flag read
# it without torch; any edit to the package makes it stale, and it is derived again.

FLAG_TABLE_VERSION = 1
_TABLE: dict[str, Any] = {}
_KINDS = {"bool": bool, "int": int, "float": float, "str": str}


def flag_table_from_registry() -> dict[str, Any]:
    """Every train option of every registered variant (the first declaration of
    a name, with each variant's own default), as JSON-able data. TrainConfig
    checks a value again against the chosen variant's own declaration."""
    import dataclasses

    from study.config import VARIANT_HELP, variant_options
    from study.variants import features, list_variants

    variants = list_variants()
    merged: dict[str, Any] = {}
    defaults: dict[str, dict[str, Any]] = {}
    for v in variants:
        for name, opt in variant_options(v).items():
            merged.setdefault(name, opt)
            defaults.setdefault(name, {})[v] = opt.default
    feature_of = {o.name: f.name.upper() if len(f.name) <= 4 else f.name for f in features() for o in f.options}
    options = []
    for name, opt in merged.items():
        fields = {f.name: getattr(opt, f.name) for f in dataclasses.fields(opt)}
        fields.update(kind=opt.kind.__name__, choices=None if opt.choices is None else list(opt.choices))
        options.append({**fields, "defaults": defaults[name], "feature": feature_of.get(name)})
    return {"variants": variants, "variant_help": VARIANT_HELP, "options": options}


def _source_key() -> str:
    root = Path(__file__).resolve().parent
    h = hashlib.sha256(f"{FLAG_TABLE_VERSION} {sys.version}".encode())
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def flag_cache_file() -> Path | None:
    """The cache of the train flag table ($XDG_CACHE_HOME, else ~/.cache), one per
    installed copy of the package; None without a home."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:
        return None
    where = hashlib.sha256(str(Path(__file__).resolve().parent).encode()).hexdigest()[:12]
    return base / "resstudy" / f"train-flags-{where}.json"


def flag_table() -> dict[str, Any]:
    """The train flag table: from the cache when it was derived from these very
    sources, else from the registry (and the cache is rewritten)."""
    if _TABLE:
        return _TABLE
    import json

    key, path = _source_key(), flag_cache_file()
    try:
        cached = json.loads(path.read_text()) if path is not None else {}
        if cached.get("key") == key and isinstance(cached["table"]["options"], list):
            _TABLE.update(cached["table"])
            return _TABLE
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # none, unreadable or damaged: derive it again
    table = flag_table_from_registry()
    if path is not None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"key": key, "table": table}))
            os.replace(tmp, path)
        except OSError:  # a read-only home: derived again next time
            tmp.unlink(missing_ok=True)
    _TABLE.update(table)
    return _TABLE


def _option(entry: dict[str, Any]):
    from study.options import Option

    fields = {k: v for k, v in entry.items() if k not in ("defaults", "feature")}
    fields["kind"] = _KINDS[fields["kind"]]
    fields["choices"] = None if fields["choices"] is None else tuple(fields["choices"])
    return Option(**fields)


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


def _show(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _default_text(per_variant: dict[str, Any]) -> str:
    values = {_show(d) for d in per_variant.values()}
    if len(values) == 1:
        return values.pop()
    return ", ".join(f"{v}: {_show(d)}" for v, d in per_variant.items())


def _train_params(table: dict[str, Any]) -> list[inspect.Parameter]:
    variants = table["variants"]

    def param(name: str, annotation: Any) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)

    params = [param("variant", Annotated[Optional[str], typer.Option(
        "--variant", help=f"{table['variant_help']} (default: {variants[0]}; with --from: the variant whose best "
                          "trial is trained)", show_default=False, parser=_choice("variant", variants),
        metavar="[" + "|".join(variants) + "]", autocompletion=_completer(variants),
        rich_help_panel="What is trained")])]
    params.append(param("from_", Annotated[Optional[str], typer.Option(
        "--from", help="train a study's best configuration (STUDY: a name under $RESSTUDY_STORAGE or "
                       "./resstudy_runs, or a directory), or one trial's (STUDY:TRIAL); --variant and --depth pick "
                       "the experiment, every other flag changes the configuration", metavar="STUDY[:TRIAL]",
        show_default=False, rich_help_panel="What is trained")]))
    for entry in table["options"]:
        opt, per_variant, name = _option(entry), entry["defaults"], entry["name"]
        flag = "--" + name.replace("_", "-")
        owners = [v for v in variants if v in per_variant]
        if len(owners) < len(variants):
            panel = f"Options of {', '.join(owners)} only"
        elif entry["feature"]:
            panel = f"{entry['feature']} (any variant)"
        else:
            panel = "Model" if opt.target == "model" else "Training"
        # choices show in the metavar; bounds and null need words
        allowed = "" if opt.choices is not None or opt.kind is str \
            else f"; allowed: {opt.allowed().replace(' (or null)', '')}"
        help_text = f"{opt.help}{allowed} (default: {_default_text(per_variant)})"
        if opt.kind is bool:
            info = typer.Option(f"{flag}/--no-{name.replace('_', '-')}", help=help_text, show_default=False,
                                rich_help_panel=panel)
            params.append(param(name, Annotated[Optional[bool], info]))
        else:
            info = typer.Option(flag, help=help_text, show_default=False, parser=_parser(opt),
                                metavar=_metavar(opt), rich_help_panel=panel,
                                autocompletion=_completer([str(c) for c in opt.choices]) if opt.choices else None)
            params.append(param(name, Annotated[Optional[str], info]))
    params.append(param("checkpoint_dir", Annotated[Optional[Path], typer.Option(
        "--checkpoint-dir", help="write a full-state checkpoint here after every epoch", show_default=False,
        rich_help_panel="Checkpoints")]))
    params.append(param("resume", Annotated[Optional[Path], typer.Option(
        "--resume", help="continue from this checkpoint directory", show_default=False,
        rich_help_panel="Checkpoints")]))
    return params


def _from_study(source: str, variant: str | None, depth: int | None) -> tuple[dict[str, Any], str]:
    """(the trial's config, where it came from) for --from STUDY[:TRIAL]."""
    from study import api

    try:
        study, trial = api.load(source), None
    except api.StudyNotFound:
        name, sep, trial = source.rpartition(":")
        if not sep:
            raise
        study = api.load(name)
    picked: dict[str, Any] | None
    if trial:
        picked = study.trial(trial)
        if variant is not None and picked["variant"] != variant:
            raise CliError(f"--variant: {variant!r} is not the variant of trial {trial!r} "
                           f"({picked['variant']!r}); allowed: leave --variant out with a named trial")
    else:
        picked = study.best(variant, depth)
        if picked is None:
            what = " ".join(f"{k} {v}" for k, v in (("variant", variant), ("depth", depth)) if v is not None)
            raise CliError(f"--from: study {study.name!r} has no completed search trial{' of ' + what if what else ''}"
                           " yet; allowed: a study with one, or STUDY:TRIAL")
    config = dict(picked["config"])
    from study.variants import list_variants

    if config["variant"] not in list_variants():
        study.spec()  # a plugin variant: validating the study's spec loads the plugin files it names
    return config, (f"trial {picked['trial']} of study {study.name}"
                    + (f" (val_acc {picked['val_acc']:.4f})" if isinstance(picked["val_acc"], float) else ""))


def _checked_device(name: str) -> None:
    """Refuse a CUDA device this machine does not have before anything is printed."""
    from study.data import resolve_device

    resolve_device(name)


def _train(**kw: Any) -> None:
    """Train one network without Ray: a progress bar per epoch and a row per epoch."""
    from study.config import TrainConfig
    from study.preflight import data_problem, writable_dir_problem

    checkpoint_dir, resume, source = kw.pop("checkpoint_dir"), kw.pop("resume"), kw.pop("from_")
    variant = kw.pop("variant")
    given = {k: (None if v is _NULL else v) for k, v in kw.items() if v is not None}
    origin = ""
    if source is not None:
        config, origin = _from_study(source, variant, given.get("depth"))
        variant = config.pop("variant")
        given = {**config, **given}
    cfg = TrainConfig(variant or None, **given)  # every check happens before anything is printed
    problem = None if cfg.get("download") else data_problem(cfg.dataset, cfg.data_root)
    if checkpoint_dir is not None:
        problem = problem or writable_dir_problem(checkpoint_dir, "--checkpoint-dir")
    if problem:
        raise CliError(problem)
    from study.preflight import check_train

    check_train(cfg.to_dict())  # `run`'s size rule: an image_size of 100000 is refused, not allocated
    _checked_device(cfg.device)  # imports torch
    from study.train import load_checkpoint, train

    state = load_checkpoint(resume) if resume is not None else None
    view = TrainView(cfg)
    print(f"resstudy train: {cfg.variant} depth {cfg.depth} on {cfg.dataset}, {cfg.epochs} epochs, seed {cfg.seed}"
          + (f", from {origin}" if origin else ""), flush=True)

    def report(metrics: dict, info: dict, save) -> None:
        view.row(metrics)
        if checkpoint_dir is not None:
            save(str(checkpoint_dir))

    with view:
        final = train(cfg, report, resume=state, on_step=view.step)
    from study.variants import get_variant

    keys = ("status", "val_acc", "best_val_acc", "test_acc", *get_variant(cfg.variant).final_metrics)
    summary = {k: final[k] for k in keys if k in final}
    print("final: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    if final["status"] != "completed":
        raise typer.Exit(1)


# (key, header, format): the table's columns left to right; PRIORITY: which stay when the width is short
TRAIN_COLUMNS = [("epoch", "epoch", "d"), ("train_loss", "loss", ".4g"), ("train_acc", "acc", ".4f"),
                 ("val_loss", "val_loss", ".4g"), ("val_acc", "val_acc", ".4f"), ("lr", "lr", ".3g"),
                 ("epoch_seconds", "s", ".1f"), ("images_per_s", "img/s", ".0f")]
TRAIN_PRIORITY = ["epoch", "val_acc", "train_loss", "val_loss", "train_acc", "epoch_seconds", "lr", "images_per_s"]


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


class TrainView:
    """`train`'s output: one row per epoch with the columns that fit the width
    (all of them in a file or a pipe), and on a terminal a progress bar of the
    running epoch (rich), drawn below the rows."""

    def __init__(self, cfg: Any, width: int | None = None, stream: Any = None) -> None:
        from study.variants import features, get_variant

        self.stream = stream or sys.stdout
        width = width if width is not None else output_width(self.stream)
        columns = list(TRAIN_COLUMNS)
        extra = list(get_variant(cfg.variant).metrics[:3])
        extra += [m for f in features() if f.active(cfg.to_dict()) for m in f.metrics[:1]]
        columns += [(m, m, ".4g") for m in extra]
        least = {".4g": 9, ".3g": 8, "d": len(str(cfg.epoch_limit()))}  # "0.0001234", "1.23e-05"
        self.widths = {key: max(len(head), least.get(fmt, 6)) for key, head, fmt in columns}
        keep: list[str] = []
        for key in TRAIN_PRIORITY + extra:  # the variant's own metrics come after the trainer's
            need = sum(self.widths[k] + 2 for k in keep) + self.widths[key]
            if width is None or need <= width:
                keep.append(key)
        self.columns = [c for c in columns if c[0] in keep]
        self.epochs = cfg.epoch_limit()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._live = _is_terminal(self.stream)

    def header(self) -> str:
        return "  ".join(f"{head:>{self.widths[key]}}" for key, head, _ in self.columns)

    def format_row(self, metrics: dict[str, Any]) -> str:
        cells = []
        for key, _, fmt in self.columns:
            v = metrics.get(key)
            text = format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-" if v is None \
                else str(v)
            cells.append(f"{text:>{self.widths[key]}}")
        return "  ".join(cells)

    def _print(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, highlight=False, markup=False, soft_wrap=True)
        else:
            print(line, file=self.stream, flush=True)

    def row(self, metrics: dict[str, Any]) -> None:
        self._print(self.format_row(metrics))

    def step(self, epoch: int, step: int, steps: int) -> None:
        if self._progress is None:
            return
        what = "validating" if step >= steps else "training"
        assert self._task is not None  # added with the progress bar
        self._progress.update(self._task, completed=step, total=steps,
                              description=f"epoch {epoch + 1}/{self.epochs} {what}")

    def __enter__(self) -> "TrainView":
        if self._live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("batches"), TimeElapsedColumn(), transient=True,
                                      console=Console(file=self.stream), refresh_per_second=4)
            self._task = self._progress.add_task(f"epoch 1/{self.epochs} starting", total=None)
            self._progress.start()
        self._print(self.header())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


class _TrainCommand(typer.core.TyperCommand):
    """`train`'s help: its ~50 flags grouped by panel, each name whole (rich's
    option table cuts long names short at 80 columns), the text wrapped to the
    terminal."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record:
                groups.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        for panel, rows in groups.items():
            with formatter.section(panel):
                formatter.write_dl(rows)


def train_command(table: dict[str, Any] | None = None):
    """The `train` click command, built from the flag table when first asked for
    (so `resstudy status` never reads it)."""
    fn = _train
    fn.__signature__ = inspect.Signature(_train_params(table or flag_table()))  # type: ignore[attr-defined]
    sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    sub.command("train", cls=_TrainCommand, context_settings={"help_option_names": ["-h", "--help"],
                                                              "max_content_width": 120})(fn)
    cmd = typer.main.get_command(sub)
    cmd.name = "train"
    return cmd


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
            if self._listing and not _TABLE:
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


# ---------------------------------------------------------------- studies

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


def _load_spec(spec: Optional[Path], preset: Optional[str], storage_path: str | None, tracking_uri: str | None,
               sets: list[str] | None = None):
    from study.spec import load_spec, parse_overrides

    if (spec is None) == (preset is None):
        raise CliError("give a spec file or --preset NAME (one of them)")
    overrides: dict[str, Any] = parse_overrides(sets or [])
    if storage_path:
        overrides["storage_path"] = storage_path
    if tracking_uri:
        overrides["mlflow.tracking_uri"] = tracking_uri
    return load_spec(spec, preset=preset, overrides=overrides or None)


def _preflight(spec) -> None:
    from study import preflight

    if os.environ.get("RAY_ADDRESS"):
        preflight.check_spec(spec)  # the cluster's resources are checked once Ray is up
    else:
        preflight.check_local(spec)  # the embedded Ray gets exactly this machine


def _driver_deps() -> dict[str, Any]:
    from study.driver import RuntimeOptions

    options = RuntimeOptions.from_environment(**{"verbose": STATE["verbose"], **STATE["options"]})
    return {"options": options, "events": STATE["events"]}


@app.command()
def run(
    spec: SpecFile = None,
    preset: Preset = None,
    sets: Sets = None,
    storage_path: StoragePath = None,
    tracking_uri: TrackingUri = None,
    new_name: Annotated[Optional[str], typer.Option(
        "--new-name", help="run the spec as a new study of this name "
                           "(when a study of the spec's name exists with another spec)")] = None,
) -> None:
    """Run a study on the embedded local Ray, or on the cluster of RAY_ADDRESS."""
    if new_name is not None:
        from study.spec import check_study_name

        check_study_name(new_name, "--new-name")  # it becomes a directory name under storage_path
    s = _load_spec(spec, preset, storage_path, tracking_uri, sets)
    _preflight(s)
    from study.progress import quiet_libraries

    quiet_libraries(STATE["verbose"])
    from study.driver import run_study

    quiet_libraries(STATE["verbose"])  # the libraries set their loggers to INFO on import
    out = run_study(s, new_name=new_name, **_driver_deps()) if new_name else run_study(s, **_driver_deps())
    _where(Path(out) if out else None)


@app.command()
def check(
    spec: SpecFile = None,
    preset: Preset = None,
    sets: Sets = None,
    storage_path: StoragePath = None,
    tracking_uri: TrackingUri = None,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="time a few training steps of each "
                                            "experiment on this machine for the time estimate")] = True,
) -> None:
    """Check a spec as `run` would and plan it (trials per experiment and arm, time); starts nothing."""
    s = _load_spec(spec, preset, storage_path, tracking_uri, sets)
    _preflight(s)
    from study.driver.plan import plan as trials_plan

    plan = trials_plan(s)
    times = estimate_times(s, plan) if calibrate else None
    typer.echo("\n".join(plan_lines(s, plan, times)))


def _slots(spec) -> tuple[int, str]:
    """(trials that run at once, why): max_concurrent, bounded by this machine for the embedded Ray."""
    if os.environ.get("RAY_ADDRESS"):
        return spec.max_concurrent, f"max_concurrent {spec.max_concurrent}; the cluster's size is not known here"
    from study.preflight import local_resources

    have = local_resources()
    fit = int(have["CPU"] // spec.resources.cpu) or 1
    why = f"max_concurrent {spec.max_concurrent}, {have['CPU']:g} CPUs / resources.cpu {spec.resources.cpu:g}"
    if spec.resources.gpu > 0:
        fit = min(fit, int(have["GPU"] // spec.resources.gpu) or 1)
        why += f", {have['GPU']:g} GPUs / resources.gpu {spec.resources.gpu:g}"
    return max(1, min(spec.max_concurrent, fit)), why


class _Calibrated(Exception):
    """Raised from the step callback: enough steps were timed."""


def calibrate(config: dict[str, Any], *, seconds: float = 2.0, max_steps: int = 30) -> dict[str, float]:
    """Time the first epoch of one configuration on this machine: a few training
    steps (after the first, which may compile), extrapolated to the epoch and its
    validation pass. {epoch_s, setup_s (data and model, once per trial), steps}."""
    from study.config import TrainConfig
    from study.train import train

    cfg = TrainConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_")})
    marks: list[float] = []
    total = {"steps": 0}
    t0 = time.perf_counter()

    def on_step(epoch: int, step: int, steps: int) -> None:
        marks.append(time.perf_counter())
        total["steps"] = steps
        if step >= steps or (len(marks) >= 4 and (marks[-1] - marks[1] >= seconds or len(marks) > max_steps)):
            raise _Calibrated

    try:
        train(cfg, on_step=on_step)
    except _Calibrated:
        pass
    timed = marks[1:] if len(marks) > 1 else marks
    per_step = (timed[-1] - timed[0]) / max(len(timed) - 1, 1) if len(timed) > 1 else marks[0] - t0
    steps = total["steps"]
    # validation: a forward pass (about a third of a training step) over the held-out images
    train_images = steps * cfg.batch_size
    val_images = cfg.val_size if cfg.val_size >= 1 else train_images * cfg.val_size / (1 - cfg.val_size)
    val_s = val_images / cfg.eval_batch_size * per_step * (cfg.eval_batch_size / cfg.batch_size) / 3
    return {"epoch_s": steps * per_step + val_s, "setup_s": max(marks[0] - t0 - per_step, 0.0), "steps": steps}


def estimate_times(spec, plan: dict[tuple[str, int], dict[str, int]]) -> dict[str, Any]:
    """Seconds per epoch, per trial and per experiment, from calibrate() on each
    experiment's base configuration (the search's choices at their defaults)."""
    slots, why = _slots(spec)
    out: dict[str, Any] = {"slots": slots, "why": why, "experiments": {}}
    for (variant, depth), arms in plan.items():
        config = dict(spec.trial_base_config(variant, depth))
        if spec.resources.gpu == 0 and config.get("threads") is None:
            config["threads"] = max(1, int(spec.resources.cpu))  # what a trial's share of the CPUs gives it
        c = calibrate(config)
        trial_s = c["setup_s"] + spec.epochs * c["epoch_s"]
        later = sum(n for name, n in arms.items() if name != "search")  # repeat, twin, designed arms
        waves = math.ceil(arms["search"] / slots) + math.ceil(later / slots)
        out["experiments"][(variant, depth)] = {"epoch_s": c["epoch_s"], "trial_s": trial_s,
                                                "total_s": waves * trial_s}
    out["total_s"] = sum(e["total_s"] for e in out["experiments"].values())
    return out


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def plan_lines(spec, plan: dict[tuple[str, int], dict[str, int]], times: dict[str, Any] | None) -> list[str]:
    where = "the cluster of RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "this machine"
    phases = list(dict.fromkeys(name for arms in plan.values() for name in arms))  # as the spec plans them
    lines = [f"spec {spec.name}: valid, and runs on {where} as far as can be checked before Ray starts",
             f"{'experiment':<24}" + "".join(f"{name:>7}" for name in phases) + f"{'trials':>7}"
             + (f"{'s/epoch':>9}{'trial':>9}{'time':>9}" if times else "")]
    for (variant, depth), arms in plan.items():
        line = (f"{spec.name + '-' + variant + '-d' + str(depth):<24}"
                + "".join(f"{arms.get(name, 0):>7}" for name in phases) + f"{sum(arms.values()):>7}")
        if times:
            t = times["experiments"][(variant, depth)]
            line += f"{t['epoch_s']:>9.2f}{_duration(t['trial_s']):>9}{_duration(t['total_s']):>9}"
        lines.append(line)
    import textwrap

    trials = sum(sum(a.values()) for a in plan.values())
    prose = [f"total: {trials} trials of {spec.epochs} epochs"
             + ("; repeat: the best searched configuration at each seed, twin: its matched twin at each seed"
                if spec.repeat_best else "")
             + ("; arms: the claims' designed arms and the sweeps that are not the repeat or the twin (round "
                "one, estimated before the search; open claims may add seeds up to design.max_seeds)"
                if spec.design is not None and spec.repeat_best else "")]
    if times:
        prose.append(f"estimated training time: about {_duration(times['total_s'])}, {times['slots']} trial(s) at "
                     f"once ({times['why']}); from a few training steps of each experiment timed here and "
                     "extrapolated to whole epochs; less where ASHA stops search trials early; Ray's start-up and "
                     "each trial's own overhead (checkpoints, MLflow) come on top")
    prose.append("nothing was started: `resstudy run` with the same arguments runs it")
    width = min(output_width() or 100, 100)
    return lines + [part for text in prose for part in textwrap.wrap(text, width, subsequent_indent="  ")]


def _where(d: Path | None) -> None:
    if d is None or not d.is_dir():
        return
    _claims_at_end(d)
    typer.echo(f"study directory: {d}")
    for name, what in (("results.parquet", "one row per trial"), ("history.parquet", "one row per trial-epoch"),
                       ("optuna.db", "Optuna studies"), ("mlflow.db", "MLflow runs")):
        if (d / name).exists():
            typer.echo(f"  {name:<16} {what}")
    typer.echo(f"next: resstudy status {d.name} | resstudy analyze {d.name} | resstudy ui {d.name}")


def _claims_at_end(d: Path) -> None:
    """The claims as the driver left them: analysis/claims.{parquet,csv,md}, each claim in one
    line, and the verdicts as tags of the study's MLflow run. A failure here is a warning:
    the study's own record is complete without it."""
    try:
        from analysis.claims import verdict_sentence, write_claims
        from study import api

        table = api.Study(d).claims()
        if table.empty:
            return
        write_claims(table, d / "analysis")
        typer.echo("claims (analysis/claims.csv; `resstudy analyze` for the report):")
        for _, r in table.iterrows():
            setting = f", {r['setting']}" if isinstance(r.get("setting"), str) and r["setting"] else ""
            typer.echo(f"  {r['subject']} d{r['depth']}{setting}: {r['claim']}: {verdict_sentence(r)}")
        from analysis.report import log_claims

        log_claims(d, table)
    except Exception as e:  # the claims are re-made by `resstudy analyze`; the study is done
        typer.echo(f"WARNING: claims table not written ({type(e).__name__}: {e}); `resstudy analyze` makes it",
                   err=True)


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
    from study.driver import resume_study

    quiet_libraries(STATE["verbose"])
    out = resume_study(d, tracking_uri=tracking_uri, **_driver_deps())
    _where(Path(out) if out else d)


def _json(data: Any) -> None:
    import json

    from study.api import _plain

    typer.echo(json.dumps(_plain(data), indent=1, default=str))


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="study name, study directory, or Ray job id")],
    storage_path: StoragePath = None,
    address: Annotated[Optional[str], typer.Option("--address", help="Ray dashboard address, for a job id")] = None,
    json_out: Json = False,
    wide: Annotated[bool, typer.Option("--wide", help="never cut lines to the terminal's width")] = False,
) -> None:
    """A study's trial counts and best results, or a submitted job's state."""
    if address or name.startswith("raysubmit_"):
        from study import jobs

        typer.echo(jobs.status(name, address))
        return
    d = study_dir(name, storage_path)
    if json_out:
        from study import api

        _json(api.Study(d).status())
        return
    from study.report import status_text

    typer.echo(status_text(d, width=None if wide else output_width()))


@app.command("list")
def list_studies(
    storage_path: StoragePath = None,
    json_out: Json = False,
) -> None:
    """The studies under the storage path: state, trials done/planned, best trial, last change."""
    from study import api

    found = []
    for study in api.studies(storage_path):
        try:
            found.append(study.status())
        except UserError as e:  # one damaged study does not hide the others
            found.append({"name": study.path.name, "path": str(study.path), "state": "unreadable", "error": str(e),
                          "done": None, "planned": None, "best": None, "changed": ""})
    if json_out:
        _json(found)
        return
    if not found:
        typer.echo(f"no studies under {str(api.storage_root(storage_path))!r}")
        return
    width = output_width()

    def lines(with_trial: bool) -> list[str]:
        rows = [(s["name"], s["state"], f"{s['done'] if s['done'] is not None else '?'}/"
                 f"{s['planned'] if s['planned'] is not None else '?'}",
                 f"{s['best']['val_acc']:.4f} {s['best']['variant']} d{s['best']['depth']}"
                 + (f" ({s['best']['trial']})" if with_trial else "") if s["best"] else "-", s["changed"])
                for s in found]
        heads = ("study", "state", "trials", "best val_acc", "last change")
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
        return ["  ".join(f"{c:<{w}}" for c, w in zip(r, widths)).rstrip() for r in [heads, *rows]]

    out = lines(True)
    if width is not None and max(map(len, out)) > width:
        out = lines(False)  # the best trial's id goes first
    for line in out:
        typer.echo(line if width is None or len(line) <= width else line[: width - 1] + "…")


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="study name or directory")],
    storage_path: StoragePath = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="folder (default: <study dir>/export)")] = None,
) -> None:
    """Write a study's results as CSV and a Markdown summary."""
    from study.preflight import writable_dir_problem
    from study.report import export as export_study

    d = study_dir(name, storage_path)
    if out is None and writable_dir_problem(d / "export", "--out"):
        raise CliError(f"study: {str(d)!r} cannot be written, and the export goes to its export/ folder unless "
                       "--out says otherwise; allowed: --out FOLDER you can write")
    for path in export_study(d, out):
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

    kwargs: dict[str, Any] = {"tracking_uri": tracking_uri} if tracking_uri else {}
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


if __name__ == "__main__":
    sys.exit(main())
