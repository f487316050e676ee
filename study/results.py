"""The study's machine-readable results.

- epochs/<trial id>.jsonl: every epoch report as the driver received it, appended
  (one line each, with the trial's attempt number): the raw log, where an epoch
  trained twice would show twice. An epoch counts at its first report; a later
  report of the same epoch (trained again after a kill, or by a retry from an
  older checkpoint) is kept marked `repeat` and counts nowhere else.
- results.parquet (one row per finished trial, from the ledger) and
  history.parquet (one row per trial-epoch, the first report of each epoch) are
  compacted from those at the end of each experiment, on an interrupt and on
  every start, so the driver never rewrites a growing file per trial.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, TypeGuard

import pyarrow as pa
import pyarrow.parquet as pq

from study.errors import UserError

RESULTS_FILE = "results.parquet"
HISTORY_FILE = "history.parquet"
EPOCHS_DIR = "epochs"
# `claim`: the claim a designed arm trial answers ("" for search, repeat and twin trials)
IDENTITY = ("study", "experiment", "subject", "variant", "arm", "claim", "phase", "depth", "trial_id", "seed")
# Result keys that are Tune's or resstudy's bookkeeping, not trial metrics.
NOT_METRICS = {
    "epoch", "status", "training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "time_since_restore",
    "iterations_since_restore", "pid", "done", "hostname", "node_ip", "date", "trial_id", "experiment_id",
    "experiment_tag", "config", "checkpoint_dir_name", "should_checkpoint", "info_json", "rid", "node",
    "start_epoch", "ckpt_epoch", "should_checkpoint",
}
# Options a trial resolves when it runs (auto, null): the result's value replaces the config's.
RESOLVED = ("precision", "device", "augment")
# Per-epoch numbers that say nothing about the finished trial.
EPOCH_ONLY = {"epoch_seconds", "images_per_s", "lr"}
# An epoch log row's own bookkeeping, beside the trial's identity, its epoch and its metrics.
LOG_FIELDS = ("attempt", "replayed", "repeat", "logged_ms")


class ResultsError(UserError, RuntimeError):
    """A results file that cannot be read; the message names the file."""


def read_table(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for damaged files
        raise ResultsError(f"results file {path} is corrupt or not Parquet ({e}); move it away: "
                           "`resstudy resume` rebuilds it from the study's ledger") from e


def table_of(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows as the Parquet files hold them (one type per column)."""
    rows = list(rows)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return pa.Table.from_pylist([{c: _clean(row.get(c)) for c in columns} for row in rows]) if rows else pa.table({})


def ordered(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished trials' rows in results.parquet's order."""
    return sorted(rows, key=lambda r: (r.get("experiment", ""), r.get("phase", ""), r["trial_id"]))


def write_table(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    path = Path(path)
    table = table_of(rows)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _clean(v: Any) -> Any:
    # Parquet columns need one type: non-scalars become JSON text.
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    if isinstance(v, float) and math.isinf(v):
        return float("nan")
    return v


def is_number(v: Any) -> TypeGuard[float]:
    """A metric value MLflow and the tables take as a number (NaN included; bools are not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite_number(v: Any) -> TypeGuard[float]:
    """A number that can be compared and shown (no NaN, no infinity)."""
    return is_number(v) and math.isfinite(v)


def metrics_of(result: dict[str, Any]) -> dict[str, Any]:
    """A report's metrics: numbers, plus the resolved precision and device strings."""
    out: dict[str, Any] = {}
    for k, v in result.items():
        if k in NOT_METRICS:
            continue
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = v
        elif k in RESOLVED and isinstance(v, str):
            out[k] = v
    return out


def row_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """The metrics of an epoch log row (what the trial reported for that epoch)."""
    return {k: v for k, v in row.items() if k not in IDENTITY and k != "epoch" and k not in LOG_FIELDS}


class EpochLog:
    """Appends each epoch report to epochs/<trial id>.jsonl as it arrives.

    Each row carries `logged_ms`, the time it was logged: MLflow gets the epoch
    with that timestamp, so a replay of an epoch MLflow holds already is the same
    metric again, which its SQL stores keep once."""

    def __init__(self, study_dir: str | Path) -> None:
        self.dir = Path(study_dir) / EPOCHS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self._epochs: dict[str, set[int]] = {}  # per trial, read once per driver
        self._whole: set[str] = set()

    def append(self, identity: dict[str, Any], epoch: int, attempt: int, metrics: dict[str, Any],
               replayed: bool = False) -> dict[str, Any]:
        """Log one report; returns its row. A report of an epoch logged before is kept as a repeat."""
        trial_id, epoch = identity["trial_id"], int(epoch)
        seen = self._seen(trial_id)
        row = {**identity, "epoch": epoch, "attempt": attempt, **metrics, "logged_ms": int(time.time() * 1000)}
        if replayed:
            row["replayed"] = True
        if epoch in seen:
            row["repeat"] = True
        path = self.dir / f"{trial_id}.jsonl"
        with open(path, "a") as f:
            if trial_id not in self._whole and f.tell() and not _ends_with_newline(path):
                f.write("\n")  # a line cut short by a kill stays a line of its own, dropped on reading
            f.write(json.dumps(row, default=str) + "\n")
        self._whole.add(trial_id)  # this driver's lines end whole
        seen.add(epoch)
        return row

    def read(self, trial_id: str) -> list[dict[str, Any]]:
        """Every report, repeats included, in the order they came."""
        return _read_jsonl(self.dir / f"{trial_id}.jsonl")

    def first(self, trial_id: str) -> list[dict[str, Any]]:
        """The report each epoch counts by (its first), by epoch."""
        first = _first_reports(self.read(trial_id))
        return [first[e] for e in sorted(first)]

    def epochs(self, trial_id: str) -> list[int]:
        return sorted(self._seen(trial_id))

    def _seen(self, trial_id: str) -> set[int]:
        if trial_id not in self._epochs:
            self._epochs[trial_id] = set(_first_reports(self.read(trial_id)))
        return self._epochs[trial_id]


def _first_reports(rows: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        if not row.get("repeat"):
            out.setdefault(int(row["epoch"]), row)
    return out


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return rows


def compact(study_dir: str | Path, finished_rows: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Write results.parquet from the finished trials' rows and history.parquet
    from the epoch logs (the first report of each trial-epoch). Returns the row counts."""
    study_dir = Path(study_dir)
    rows = ordered(finished_rows)
    write_table(study_dir / RESULTS_FILE, rows)
    history = history_rows(study_dir)
    write_table(study_dir / HISTORY_FILE, history)
    return len(rows), len(history)


def history_rows(study_dir: str | Path) -> list[dict[str, Any]]:
    """history.parquet's rows from the epoch logs as they are now (a running study's too)."""
    history: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted((Path(study_dir) / EPOCHS_DIR).glob("*.jsonl")):
        for epoch, row in _first_reports(_read_jsonl(path)).items():
            row = {k: v for k, v in row.items() if k not in LOG_FIELDS}
            history[(row["trial_id"], epoch)] = row
    return [history[k] for k in sorted(history)]
