"""A study's life around its trials: the storage it may use, the spec it was started
with, and how it stops on Ctrl-C or SIGTERM with its state saved."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from study import ledger as ledger_lib
from study.errors import UserError
from study.ledger import SpecChanged
from study.spec import StudySpec
from study.tracking import redact_uri


class StorageError(UserError):
    """The study's storage cannot be used; the message names the path."""


class StudyInterrupted(KeyboardInterrupt):
    """The study stopped on Ctrl-C/SIGTERM with its state saved (exit 130)."""


def check_storage(d: Path) -> None:
    """`d` can hold this study: a writable place, empty or a study directory already."""
    for p in [d, *d.parents]:
        if p.exists():
            if not p.is_dir():
                raise StorageError(f"storage: {p} is a file, not a directory; choose another storage_path")
            if not os.access(p, os.W_OK | os.X_OK):
                raise StorageError(f"storage: {p} is not writable by this user; choose a writable "
                                   "storage_path or fix its permissions")
            break
    # a `.lock` alone is what a driver killed before writing anything left: nothing to keep
    if d.is_dir() and any(p.name != ledger_lib.LOCK_FILE for p in d.iterdir()) and not ledger_lib.is_study_dir(d):
        raise StorageError(f"storage: {d} exists and is not a resstudy study directory ({ledger_lib.STUDY_DIR_RULE}); "
                           "choose another study name or storage_path")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"storage: cannot create {d} ({e.strerror}); choose a writable storage_path") from None


def redacted(spec: StudySpec) -> StudySpec:
    """The spec as it is saved: never a tracking password."""
    saved = spec.model_copy(deep=True)
    if saved.mlflow.tracking_uri:
        saved.mlflow.tracking_uri = redact_uri(saved.mlflow.tracking_uri)
    return saved


def check_spec(spec: StudySpec, study_dir: Path, state: dict[str, Any]) -> None:
    """A study resumes with the spec it was started with, or not at all."""
    new = redacted(spec).model_dump(mode="json")
    old = state.get("spec")
    if old is None or state.get("spec_fingerprint") == ledger_lib.fingerprint(new):
        return
    diff = ledger_lib.spec_diff(old, new)
    if not diff:
        return
    raise SpecChanged(
        f"study {spec.name} in {study_dir} was started with a different spec; differing: "
        + "; ".join(diff) + f". Resume it with its own spec (`resstudy resume {study_dir}`), or run the "
        "changed spec as a new study (`--new-name NAME`)")


class Stopper:
    """Ctrl-C/SIGTERM: the first sets `stop` (Tune stops the trials, then the study saves
    its state on the main thread); past `grace_s`, or on a second signal, `save_now` saves
    the state on this thread without Ray and the process exits 130 at once. Ray may never
    answer: a job's SIGTERM can reach Ray's processes too, and a driver that lost its GCS
    waits a minute, then dies."""

    def __init__(self, stop: threading.Event, save_now: Callable[[], None], name: str, study_dir: Path,
                 grace_s: float) -> None:
        self.stop, self.save_now, self.grace_s = stop, save_now, grace_s
        self.name, self.study_dir = name, study_dir
        self.saved = threading.Event()  # the study's state is what it will be
        self._signals = 0
        self._once = threading.Lock()  # held by whichever thread says the study stopped
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: the caller handles signals
                continue
            self._old.setdefault(sig, old)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def say_stopped(self) -> None:
        """One line, from whichever thread gets here first."""
        if self._once.acquire(blocking=False):
            self._said()

    def _said(self) -> None:
        print(f"resstudy: study {self.name} stopped; its state is saved. Resume with: "
              f"resstudy resume {self.study_dir}", file=sys.stderr, flush=True)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals > 1:
            print(f"\nresstudy: {name} again: stopping at once", file=sys.stderr, flush=True)
            self._now()
            return
        self.stop.set()
        print(f"\nresstudy: {name}: stopping the study (running trials keep their last checkpoint); "
              "press Ctrl-C again to stop at once", file=sys.stderr, flush=True)
        threading.Thread(target=self._unless_saved, name="resstudy-stop", daemon=True).start()

    def _unless_saved(self) -> None:
        if not self.saved.wait(self.grace_s):
            self._now()

    def _now(self) -> None:
        """Save the state and end every run without Ray, then exit 130 at once. The trials'
        processes die with the driver and keep their last checkpoint; what this cannot
        reach now (MLflow down) `resstudy resume` reconciles."""
        if not self._once.acquire(blocking=False):
            return  # the other thread is at it
        try:
            if not self.saved.is_set():
                self.save_now()
                self._said()
        except BaseException as e:
            print(f"resstudy: stopping: {type(e).__name__}: {e}; resume with: resstudy resume {self.study_dir}",
                  file=sys.stderr, flush=True)
        finally:
            os._exit(130)


def end_runs_without_tracker(uri: str, ids: dict[str, str], running: list[str], other_keys: list[str]) -> None:
    """The study's open MLflow runs ended as KILLED through a client of this thread's own
    (the tracker's queue belongs to the main thread): the running trials' (tagged
    interrupted), then `other_keys` (the study's and the open experiments')."""
    from mlflow.entities import RunStatus, RunTag
    from mlflow.tracking import MlflowClient

    store = MlflowClient(uri)._tracking_client.store  # noqa: SLF001 - no "View run" line
    now = int(time.time() * 1000)
    for key in [*(f"trial:{rid}" for rid in running), *other_keys]:
        if ids.get(key):
            if key.startswith("trial:"):
                store.set_tag(ids[key], RunTag("status", "interrupted"))
            store.update_run_info(ids[key], RunStatus.KILLED, end_time=now, run_name=None)


__all__ = ["StorageError", "Stopper", "StudyInterrupted", "check_spec", "check_storage", "end_runs_without_tracker",
           "redacted"]
