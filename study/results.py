"""The study's machine-readable results.

- epochs/<trial id>.jsonl: every epoch report as the driver received it, appended
  (one line each, with the trial's attempt number): the raw log, where an epoch
  trained twice would show twice.
- results.parquet (one row per finished trial, from the ledger) and
  history.parquet (one row per trial-epoch, the last report of each epoch) are
  compacted from those at the end of each experiment, on an interrupt and on
  every start, so the driver never rewrites a growing file per trial.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from study.errors import UserError

RESULTS_FILE = "results.parquet"
HISTORY_FILE = "history.parquet"
EPOCHS_DIR = "epochs"
IDENTITY = ("study", "experiment", "subject", "variant", "arm", "phase", "depth", "trial_id", "seed")
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


def write_table(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    rows = list(rows)
    path = Path(path)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    table = pa.Table.from_pylist([{c: _clean(row.get(c)) for c in columns} for row in rows]) if rows else pa.table({})
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


def metrics_of(result: dict[str, Any]) -> dict[str, Any]:
    """A report's metrics: numbers, plus the resolved precision and device strings."""
    out = {}
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


class EpochLog:
    """Appends each epoch report to epochs/<trial id>.jsonl as it arrives."""

    def __init__(self, study_dir: str | Path) -> None:
        self.dir = Path(study_dir) / EPOCHS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)

    def append(self, identity: dict[str, Any], epoch: int, attempt: int, metrics: dict[str, Any],
               replayed: bool = False) -> None:
        row = {**identity, "epoch": int(epoch), "attempt": attempt, **metrics}
        if replayed:
            row["replayed"] = True
        with open(self.dir / f"{identity['trial_id']}.jsonl", "a") as f:
            f.write(json.dumps(row, default=str) + "\n")

    def read(self, trial_id: str) -> list[dict[str, Any]]:
        return _read_jsonl(self.dir / f"{trial_id}.jsonl")

    def epochs(self, trial_id: str) -> list[int]:
        return [int(r["epoch"]) for r in self.read(trial_id)]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
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
    from the epoch logs (the last report of each trial-epoch). Returns the row counts."""
    study_dir = Path(study_dir)
    rows = sorted(finished_rows, key=lambda r: (r.get("experiment", ""), r.get("phase", ""), r["trial_id"]))
    write_table(study_dir / RESULTS_FILE, rows)
    history: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted((study_dir / EPOCHS_DIR).glob("*.jsonl")):
        for row in _read_jsonl(path):
            row.pop("attempt", None)
            row.pop("replayed", None)
            history[(row["trial_id"], int(row["epoch"]))] = row
    write_table(study_dir / HISTORY_FILE, [history[k] for k in sorted(history)])
    return len(rows), len(history)
