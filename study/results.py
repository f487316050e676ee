"""The study's machine-readable results: results.parquet (one row per trial)
and history.parquet (one row per trial-epoch), rewritten atomically as trials
finish so a killed driver loses no finished trial."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

RESULTS_FILE = "results.parquet"
HISTORY_FILE = "history.parquet"

# Per-epoch metric names kept in history.parquet (beyond the identity columns).
HISTORY_METRICS = (
    "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_s",
    "discarded_blocks", "discarded_ratio", "params", "params_compressed", "param_reduction",
    "q_dead_frac", "q_nonpos_frac",
    *(f"q_{s}_stage{i}" for s in ("mean", "min", "max") for i in (1, 2, 3)),
    "sgs_center",
)
FINAL_METRICS = (
    "val_acc", "val_loss", "train_acc", "train_loss", "best_val_acc", "best_epoch", "test_acc", "test_loss",
    "discarded_blocks", "discarded_ratio", "params", "params_compressed", "param_reduction", "compressed_test_acc",
    "q_dead_frac", "q_nonpos_frac", *(f"q_{s}_stage{i}" for s in ("mean", "min", "max") for i in (1, 2, 3)),
)
IDENTITY = ("study", "experiment", "variant", "depth", "phase", "trial_id", "seed")


class ResultsError(RuntimeError):
    """A results file that cannot be read; the message names the file."""


def read_table(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for damaged files
        raise ResultsError(f"results file {path} is corrupt or not Parquet ({e}); move it away to rebuild it") from e


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


class ResultsWriter:
    """Keeps every finished trial row and every epoch row; flushes both files."""

    def __init__(self, study_dir: str | Path) -> None:
        self.dir = Path(study_dir)
        self.epochs_dir = self.dir / "epochs"
        self.epochs_dir.mkdir(parents=True, exist_ok=True)
        self.results = {r["trial_id"]: r for r in read_table(self.dir / RESULTS_FILE)}
        self.history = {(r["trial_id"], r["epoch"]): r for r in read_table(self.dir / HISTORY_FILE)}
        # Epoch rows are also appended to one JSON-lines file per trial as they
        # arrive, so a killed driver keeps them even for trials still running.
        for path in sorted(self.epochs_dir.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                self.history[(row["trial_id"], row["epoch"])] = row

    def add_epoch(self, identity: dict[str, Any], metrics: dict[str, Any]) -> None:
        row = dict(identity)
        row["epoch"] = int(metrics["epoch"])
        row.update({k: _clean(metrics.get(k, float("nan"))) for k in HISTORY_METRICS})
        self.history[(row["trial_id"], row["epoch"])] = row
        with open(self.epochs_dir / f"{row['trial_id']}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def finish_trial(self, row: dict[str, Any]) -> None:
        self.results[row["trial_id"]] = row
        self.flush()

    def drop_epochs_after(self, trial_id: str, epoch: int) -> None:
        """A trial restored from a checkpoint re-runs later epochs: forget their old rows."""
        for key in [k for k in self.history if k[0] == trial_id and k[1] > epoch]:
            del self.history[key]

    def flush(self) -> None:
        write_table(self.dir / RESULTS_FILE, self.results.values())
        write_table(self.dir / HISTORY_FILE, sorted(self.history.values(), key=lambda r: (r["trial_id"], r["epoch"])))

    def finished_ids(self) -> set[str]:
        return set(self.results)
