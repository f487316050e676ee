"""The study's own record of itself: which trials exist, their configs, Optuna
numbers, MLflow run ids, status and last checkpoint.

Two files in the study directory, both in formats that cannot run code:

- study.json: study-level state (spec fingerprint, tracking URI, MLflow ids of
  the study and variant runs, which phases are done), rewritten atomically.
- ledger.jsonl: one line per change of a trial, the whole trial record each
  time (latest line wins), appended and flushed before the change takes effect
  (a trial's line is written before it is launched). Appending keeps the
  driver's cost per trial flat; the file is compacted on every start. A line
  cut short by a kill can only be the last one and is dropped.

Ray Tune's experiment state and pickles are a cache resstudy never reads back:
resume starts from these two files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from study.errors import UserError

STATE_FILE = "study.json"
LEDGER_FILE = "ledger.jsonl"
LOCK_FILE = ".lock"
FINISHED = ("completed", "pruned", "failed", "diverged")
# Spec fields that change where or how fast a study runs, not what its trials compute:
# a resume may change them.
RUNTIME_FIELDS = ("storage_path", "mlflow", "max_concurrent", "resources", "shared_storage")


class StateError(UserError):
    """A study state file that cannot be used; the message names it and says what to do."""


class StudyLocked(UserError):
    """Another driver holds the study directory."""


class SpecChanged(UserError):
    """The spec differs from the one the study was started with."""


# ---------------------------------------------------------------- files


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_state(study_dir: str | Path) -> dict[str, Any]:
    path = Path(study_dir) / STATE_FILE
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        return state
    except (ValueError, UnicodeDecodeError) as e:
        raise StateError(
            f"study state {path} is damaged ({e}); restore it from a backup, or move the study directory "
            f"away and start the study again (its finished trials are in {path.parent / LEDGER_FILE})") from None


def write_state(study_dir: str | Path, state: dict[str, Any]) -> None:
    write_json_atomic(Path(study_dir) / STATE_FILE, state)


# ---------------------------------------------------------------- fingerprint


def spec_identity(spec_dict: dict[str, Any]) -> dict[str, Any]:
    """The part of a spec that decides what the study's trials compute."""
    return {k: v for k, v in spec_dict.items() if k not in RUNTIME_FIELDS}


def fingerprint(spec_dict: dict[str, Any]) -> str:
    text = json.dumps(spec_identity(spec_dict), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ, e.g. ['epochs', 'train.schedule']."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        if not prefix and key in RUNTIME_FIELDS:
            continue
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += spec_diff(a, b, name + ".")
        elif a != b:
            out.append(f"{name} ({json.dumps(a, default=str)} -> {json.dumps(b, default=str)})")
    return out


# ---------------------------------------------------------------- the lock


class StudyLock:
    """An exclusive flock on <study>/.lock holding the driver's pid and host.

    The kernel drops the lock when the holder dies (SIGKILL included), so a
    killed driver never leaves a stale lock behind."""

    def __init__(self, study_dir: Path) -> None:
        self.path = Path(study_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "StudyLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except ValueError:
                holder = {}
            os.close(fd)
            raise StudyLocked(
                f"study {self.path.parent} is in use by another resstudy driver (pid {holder.get('pid', '?')} "
                f"on host {holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it to end or "
                "stop it, then run again") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ---------------------------------------------------------------- the ledger


class Ledger:
    """Trial records keyed by resstudy's trial id (`rid`), and the study state."""

    def __init__(self, study_dir: str | Path) -> None:
        self.dir = Path(study_dir)
        self.path = self.dir / LEDGER_FILE
        self.state = read_state(self.dir)
        self.trials: dict[str, dict[str, Any]] = {}
        self._load()
        self._file = None

    def _load(self) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_bytes().split(b"\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rid = rec["rid"]
            except (ValueError, KeyError, TypeError) as e:
                if i >= len(lines) - 2:  # the last line, cut short by a kill mid-write
                    continue
                raise StateError(
                    f"trial ledger {self.path} is damaged at line {i + 1} ({type(e).__name__}: {e}); restore it "
                    "from a backup, or move the study directory away and start the study again") from None
            self.trials[rid] = rec

    # ------------------------------------------------------------ writes

    def put(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Record a trial's new state (durable before this returns)."""
        rec["updated"] = time.time()
        self.trials[rec["rid"]] = rec
        if self._file is None:
            self._file = open(self.path, "a")
        self._file.write(json.dumps(rec, default=str, allow_nan=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        return rec

    def update(self, rid: str, **fields: Any) -> dict[str, Any]:
        return self.put({**self.trials[rid], **fields})

    def compact(self) -> None:
        """Rewrite the journal as one line per trial."""
        if self._file is not None:
            self._file.close()
            self._file = None
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            for rec in self.trials.values():
                f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def save_state(self) -> None:
        write_state(self.dir, self.state)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # ------------------------------------------------------------ queries

    def select(self, **match: Any) -> Iterator[dict[str, Any]]:
        for rec in self.trials.values():
            if all(rec.get(k) == v for k, v in match.items()):
                yield rec

    def next_rid(self, experiment: str, phase: str) -> str:
        n = sum(1 for r in self.trials.values() if r["experiment"] == experiment and r["phase"] == phase)
        return f"{experiment}-{phase[0]}{n:04d}"


def is_study_dir(path: Path) -> bool:
    return any((path / name).exists() for name in (STATE_FILE, LEDGER_FILE, "spec.yaml"))
