"""The commands that read studies: `status`, `list`, `export`, `analyze` and `ui`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.core

from study.errors import UserError
from study.cli.app import app
from study.cli.base import STATE, CliError, Json, StoragePath, TrackingUri, _json, output_width, study_dir


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
