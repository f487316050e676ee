"""The cluster job commands: `submit`, `logs` and `stop` (Ray jobs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core

from study.cli.app import app
from study.cli.base import TrackingUri


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
