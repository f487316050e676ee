"""`resstudy train`: one network trained in this process, its epochs printed as a table that
fits the terminal; the command is built from the flag table when first asked for."""

from __future__ import annotations

import inspect
import sys
from typing import TYPE_CHECKING, Any

import typer
import typer.core

from study.cli.base import _NULL, CliError, _is_terminal, output_width
from study.cli.flags import _train_params, flag_table


if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


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
