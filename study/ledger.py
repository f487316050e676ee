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

A study directory is self-contained: every path its files hold into it is
relative to it (study.json keeps the study's own MLflow store as
`sqlite:///mlflow.db`), and MLflow's absolute artifact locations are pointed at
where the study lies now whenever it is opened (`relocate_mlflow_artifacts`).
So a copied, moved or unpacked study is resumed, read and analysed where it
is, and writes only there.

The lock: `.lock` exists while a driver holds its flock and is removed when
that driver ends. The flock is the truth: a `.lock` left by a killed driver
(or copied along with a running study) is held by nobody and is taken over.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

from study.errors import UserError

STATE_FILE = "study.json"
LEDGER_FILE = "ledger.jsonl"
LOCK_FILE = ".lock"
SPEC_FILE = "spec.yaml"
# How a trial can end, in the order tables show them; every reader of statuses takes them from here.
FINISHED = ("completed", "pruned", "diverged", "failed")
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


class Disk:
    """How the driver's state files reach the disk: the whole of `data` written to
    `fd`, then synced. The seam where tests plug in a disk that fills up."""

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)


DISK = Disk()
TMP_SUFFIX = ".tmp"
# no space, or over quota: the study stops with one line and resumes once there is room
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException | None) -> BaseException | None:
    """The full-disk error that `error` is or was raised from (its cause or context), else
    None: an OSError ENOSPC/EDQUOT, or SQLite's (Optuna's, MLflow's) "database or disk is full"."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL or "database or disk is full" in str(error):
            return error
        error = error.__cause__ or error.__context__
    return None


def write_json_atomic(path: Path, data: Any, disk: Disk = DISK) -> None:
    """`data` as JSON at `path`, whole or not at all (a failed write leaves no .tmp behind)."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    text = json.dumps(data, indent=1, default=str).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            disk.write(fd, text)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sweep_tmp(study_dir: str | Path) -> list[Path]:
    """Remove the half-written files (`*.tmp`) a driver stopped mid-write left among the
    study's own files (a kill, a full disk). Only under the study's lock."""
    d = Path(study_dir)
    gone = [p for pattern in (f"*{TMP_SUFFIX}", f"samplers/*{TMP_SUFFIX}") for p in d.glob(pattern) if p.is_file()]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


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


def write_state(study_dir: str | Path, state: dict[str, Any], disk: Disk = DISK) -> None:
    write_json_atomic(Path(study_dir) / STATE_FILE, state, disk)


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
    killed driver never leaves a stale lock behind: its `.lock` file stays, held
    by nobody, and the next driver takes it. A driver that ends removes the file
    (while still holding the lock), so a finished study has none; a driver that
    opened the file just before it was removed sees that and takes the new one."""

    PATIENCE_S = 0.5  # a `status` probing the lock holds it for microseconds: retry that long

    def __init__(self, study_dir: Path) -> None:
        self.path = Path(study_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "StudyLock":
        deadline = time.monotonic() + self.PATIENCE_S
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                if time.monotonic() < deadline:
                    os.close(fd)
                    time.sleep(0.05)
                    continue
                holder = _holder(fd)
                os.close(fd)
                raise StudyLocked(
                    f"study {self.path.parent} is in use by another resstudy driver (pid {holder.get('pid', '?')} "
                    f"on host {holder.get('host', '?')}, since {holder.get('since', '?')}); wait for it to end or "
                    "stop it, then run again") from None
            if _is_at(fd, self.path):
                break
            os.close(fd)  # its holder removed it between our open and our lock: lock the one there now
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            if _is_at(self._fd, self.path):  # only a holder removes it, so it is still ours
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def holder(study_dir: str | Path) -> dict[str, Any] | None:
        """The driver holding the study now ({pid, host, since}), else None. Writes nothing."""
        try:
            fd = os.open(Path(study_dir) / LOCK_FILE, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return _holder(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _holder(fd: int) -> dict[str, Any]:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _is_at(fd: int, path: Path) -> bool:
    try:
        here, ours = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (ours.st_dev, ours.st_ino)


# ---------------------------------------------------------------- the ledger


class Ledger:
    """Trial records keyed by resstudy's trial id (`rid`), and the study state."""

    def __init__(self, study_dir: str | Path, disk: Disk = DISK) -> None:
        self.dir = Path(study_dir)
        self.path = self.dir / LEDGER_FILE
        self.disk = disk
        self.state = read_state(self.dir)
        self.trials: dict[str, dict[str, Any]] = read_trials(self.path)
        self._fd: int | None = None
        # each (experiment, phase)'s unfinished trials, kept as records are put: a driver asks
        # for them at every step of Tune's loop, and a scan of every trial grows with the study
        self._open: dict[tuple[Any, Any], set[str]] = {}
        self._order: dict[str, int] = {}
        self._key: dict[str, tuple[Any, Any]] = {}
        for rec in self.trials.values():
            self._index(rec)

    # ------------------------------------------------------------ writes

    def put(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Record a trial's new state (durable before this returns). A write that fails
        (a full disk) leaves the ledger as it was, on disk and here, and raises."""
        rec["updated"] = time.time()
        line = (json.dumps(rec, default=str, allow_nan=True) + "\n").encode()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        try:
            self.disk.write(self._fd, line)
        except BaseException:
            try:  # no torn line for the next append to follow: cut back to the last whole one
                os.ftruncate(self._fd, size)
            except OSError:
                pass  # then the torn line is the last one, and the next load drops it
            raise
        self.trials[rec["rid"]] = rec
        self._index(rec)
        return rec

    def _index(self, rec: dict[str, Any]) -> None:
        rid, key = rec["rid"], (rec.get("experiment"), rec.get("phase"))
        self._order.setdefault(rid, len(self._order))
        was = self._key.setdefault(rid, key)
        if was != key:  # not done by the driver; kept right all the same
            self._open.get(was, set()).discard(rid)
            self._key[rid] = key
        rids = self._open.setdefault(key, set())
        if rec.get("status") in FINISHED:
            rids.discard(rid)
        else:
            rids.add(rid)

    def update(self, rid: str, **fields: Any) -> dict[str, Any]:
        return self.put({**self.trials[rid], **fields})

    def compact(self) -> None:
        """Rewrite the journal as one line per trial."""
        self.close()
        tmp = self.path.with_name(self.path.name + TMP_SUFFIX)
        text = "".join(json.dumps(rec, default=str) + "\n" for rec in self.trials.values()).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                self.disk.write(fd, text)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def save_state(self) -> None:
        write_state(self.dir, self.state, self.disk)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------ queries

    def select(self, **match: Any) -> Iterator[dict[str, Any]]:
        for rec in self.trials.values():
            if all(rec.get(k) == v for k, v in match.items()):
                yield rec

    def unfinished(self, experiment: str, phase: str) -> list[dict[str, Any]]:
        """The trials of one experiment's phase whose status is not FINISHED, in the order
        they were first recorded; its cost grows with those, not with the study."""
        rids = self._open.get((experiment, phase), ())
        return [self.trials[rid] for rid in sorted(rids, key=self._order.__getitem__)]


def read_trials(path: str | Path) -> dict[str, dict[str, Any]]:
    """The latest record of each trial in a ledger file ({} when there is none). Safe
    while a driver appends to it: a line cut short can only be the last one, and is dropped."""
    path = Path(path)
    trials: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return trials
    lines = path.read_bytes().split(b"\n")
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
                f"trial ledger {path} is damaged at line {i + 1} ({type(e).__name__}: {e}); restore it "
                "from a backup, or move the study directory away and start the study again") from None
        trials[rid] = rec
    return trials


def finished_rows(study_dir: str | Path) -> list[dict[str, Any]] | None:
    """The result rows of the finished trials as the ledger holds them now, a running
    study's included (results.parquet is compacted from them only at the end of each
    experiment); None for a study without a ledger."""
    path = Path(study_dir) / LEDGER_FILE
    if not path.is_file():
        return None
    return [r["row"] for r in read_trials(path).values() if r.get("status") in FINISHED and r.get("row")]


STUDY_DIR_RULE = f"a folder holding the {SPEC_FILE} a study was started with"


def is_study_dir(path: str | Path) -> bool:
    """Whether `path` is a study directory (STUDY_DIR_RULE): the spec is the one file every
    study has from its first start on (written before study.json, the ledger or any
    result), and what every reader and `resume` needs."""
    return (Path(path) / SPEC_FILE).is_file()


# ---------------------------------------------------------------- where the study lies

MLFLOW_DB = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


def sqlite_file(uri: str) -> Path | None:
    """The database file of an sqlite:/// URI (relative where the URI is), else None."""
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:///:memory:"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def own_tracking_uri(study_dir: str | Path) -> str:
    """The study's own MLflow store (the default), as an absolute URI for where it lies now."""
    return f"sqlite:///{Path(study_dir).resolve() / MLFLOW_DB}"


def stored_tracking_uri(study_dir: str | Path, uri: str) -> str:
    """`uri` as study.json keeps it: an SQLite store inside the study directory relative
    to it (`sqlite:///mlflow.db`), so that a copy tracks to its own store; any other URI
    (a server, a database elsewhere) as given."""
    path = sqlite_file(uri)
    if path is None or not path.is_absolute():
        return uri
    try:
        return f"sqlite:///{path.resolve().relative_to(Path(study_dir).resolve()).as_posix()}"
    except ValueError:
        return uri


def tracking_uri(study_dir: str | Path, state: dict[str, Any]) -> str | None:
    """The MLflow URI of the study in `study_dir`, from its study.json, as it lies now.
    A relative SQLite path is inside the study. An absolute one that study.json's spec
    says was the default store (a study written before paths were kept relative) is the
    study's own mlflow.db, wherever the study was when it was written."""
    uri = state.get("tracking_uri")
    if not uri:
        return None
    path = sqlite_file(uri)
    if path is None:
        return uri
    if not path.is_absolute():
        return f"sqlite:///{(Path(study_dir).resolve() / path)}"
    spec = state.get("spec")
    if isinstance(spec, dict) and isinstance(spec.get("mlflow"), dict) and spec["mlflow"].get("tracking_uri") is None:
        return own_tracking_uri(study_dir)
    return uri


def relocate_mlflow_artifacts(study_dir: str | Path) -> int:
    """Point the artifact locations in the study's own mlflow.db at its mlartifacts/ where
    the study lies now; returns the rows changed (0 where they already point there).

    MLflow keeps them absolute (each experiment's artifact_location, each run's
    artifact_uri): without this, a copied study would log its artifacts into the
    original's folder and a moved one into its old place. A location is moved when it
    lies in (or is) a folder named mlartifacts other than this study's. Writes nothing
    where nothing moved; a store that cannot be written is left as it is."""
    d = Path(study_dir).resolve()
    db = d / MLFLOW_DB
    if not db.is_file():
        return 0
    here = d / ARTIFACTS_DIR
    marker = f"/{ARTIFACTS_DIR}"
    try:
        con = sqlite3.connect(db, timeout=30)
    except sqlite3.Error:
        return 0
    try:
        moves: dict[str, str] = {}
        for (location,) in con.execute("SELECT artifact_location FROM experiments"):
            location = location or ""
            cut = location.rfind(marker + "/")
            cut = cut if cut >= 0 else (len(location) - len(marker) if location.endswith(marker) else -1)
            if cut < 0 or not (location.startswith("file:") or location.startswith("/")):
                continue
            old = location[:cut + len(marker)]
            new = here.as_uri() if old.startswith("file:") else str(here)
            if old != new:
                moves[old] = new
        changed = 0
        with con:
            for old, new in moves.items():
                for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                    changed += con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 (fixed names)
                        f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                        (new, len(old) + 1, old, len(old) + 1, old + "/")).rowcount
        return changed
    except sqlite3.Error:
        return 0
    finally:
        con.close()
