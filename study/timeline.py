"""Start-up timeline: where the time goes from `resstudy run` to the first epoch.

Where RESSTUDY_TIMELINE names a file, `mark(event)` appends one line to it:
`<unix time> <pid> <event>`, from the driver and from the trials (Ray's worker
processes inherit the driver's environment), so one file holds the whole path
from the command to the first reported epoch. Unset (the default), `mark` reads
one environment variable and returns: no file, no lock, no cost worth naming.
benchmarks/first_epoch.py sets it and prints the timeline.

The file is opened for each mark in append mode and written in one call: lines
from several processes do not interleave. Standard library only: the trainer
imports it where neither Ray nor MLflow is installed.
"""

from __future__ import annotations

import os
import time

ENV = "RESSTUDY_TIMELINE"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def mark(event: str) -> None:
    """Append `event` with the time and this process's id, where the timeline is on."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = f"{time.time():.6f} {os.getpid()} {' '.join(event.split())}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # a timeline is a measurement: it never fails a study


def read(path: str | os.PathLike) -> list[tuple[float, int, str]]:
    """The marks in `path`, in time order: (time, pid, event)."""
    out = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) == 3:
                out.append((float(parts[0]), int(parts[1]), parts[2]))
    return sorted(out)


__all__ = ["ENV", "enabled", "mark", "read"]

