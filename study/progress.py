"""The live view of a running study.

On a terminal: one rich table that updates in place, a row per variant and
depth (done / running / pruned / failed, best *completed* val_acc, epochs/s,
ETA once an epoch has been timed). Elsewhere (a log file, CI, a Ray job):
plain lines, rate-limited, so a 400-trial study does not write thousands of
lines: a summary at most every `interval` seconds while epochs report, and
one line per finished trial.

    with Progress("quick", {"resnet d8": 7, "quotient d8": 7}) as p:
        p.trial_started("t1", "resnet d8", "search")
        p.trial_epoch("t1", 1, 6, val_acc=0.41, epoch_seconds=1.2)
        p.trial_finished("t1", "completed", best_val_acc=0.83)

Pruned trials stop early at a low fidelity, so their scores never enter the
"best" column, and each depth has its own row so depths are never merged.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from study.ledger import FINISHED
from study.results import is_finite_number


@dataclass
class _Trial:
    label: str
    phase: str
    status: str = "running"
    epoch: int = 0
    epochs: int = 0
    val_acc: float | None = None


@dataclass
class _Row:
    planned: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("running", "interrupted", *FINISHED), 0))
    best: float | None = None  # best val_acc of completed trials only
    epochs_done: int = 0
    epoch_seconds: float = 0.0  # summed over reported epochs (trial time, not wall time)
    epochs_per_trial: int = 0
    first_start: float | None = None


class Progress:
    """See the module docstring. `live=None` picks the in-place view when stdout
    is a terminal. `interval` is the plain log's minimum gap between summaries;
    `clock` and `stream` are for tests."""

    def __init__(self, name: str, plan: dict[str, int], live: bool | None = None, *, interval: float = 20.0,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.interval, self.clock = name, interval, clock
        self.stream = stream if stream is not None else sys.stdout
        self.rows: dict[str, _Row] = {label: _Row(int(n)) for label, n in plan.items()}
        self.trials: dict[str, _Trial] = {}
        self.t0 = clock()
        self._last_summary: float | None = None
        self._lock = threading.RLock()
        if live is None:
            live = _is_terminal(self.stream)
        self.live = bool(live)
        self._live = None
        self._closed = False
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._console = Console(file=self.stream, force_terminal=True)
            self._live = Live(self._table(), console=self._console, refresh_per_second=2, transient=False,
                              get_renderable=self._table)
            self._live.start()

    # ------------------------------------------------------------ events

    def restore(self, label: str, status: str, val_acc: float | None = None) -> None:
        """A trial a previous session finished (resume): counted, not announced."""
        with self._lock:
            row = self._row(label)
            row.counts[status if status in FINISHED else "failed"] += 1
            if status == "completed" and is_finite_number(val_acc):
                row.best = max(row.best if row.best is not None else -1.0, float(val_acc))

    def replan(self, label: str, n: int) -> None:
        """The experiment now plans `n` trials in all (designed trials are decided as the study runs)."""
        with self._lock:
            self._row(label).planned = int(n)
        self._changed(summary_only=True)

    def trial_started(self, trial_id: str, label: str, phase: str) -> None:
        with self._lock:
            row = self._row(label)
            old = self.trials.get(trial_id)
            if old is not None and old.status == "running":
                return  # a restart of a running trial (restored after a failure)
            if old is not None:
                row.counts[old.status] -= 1  # a finished trial started again: count it once
            self.trials[trial_id] = _Trial(label, phase)
            row.counts["running"] += 1
            if row.first_start is None:
                row.first_start = self.clock()
        self._changed()

    def trial_epoch(self, trial_id: str, epoch: int, epochs: int, val_acc: float | None = None,
                    epoch_seconds: float | None = None) -> None:
        with self._lock:
            t = self.trials.get(trial_id)
            if t is None:
                return
            row = self.rows[t.label]
            if epoch > t.epoch:  # a replayed epoch (restart from a checkpoint) is counted once
                row.epochs_done += epoch - t.epoch
                if epoch_seconds is not None and epoch_seconds == epoch_seconds:
                    row.epoch_seconds += float(epoch_seconds) * (epoch - t.epoch)
            t.epoch, t.epochs = max(t.epoch, int(epoch)), int(epochs)
            row.epochs_per_trial = max(row.epochs_per_trial, int(epochs))
            if is_finite_number(val_acc):
                t.val_acc = float(val_acc)
        self._changed(summary_only=True)

    def trial_finished(self, trial_id: str, status: str, best_val_acc: float | None = None, *,
                       label: str = "?", phase: str = "?") -> None:
        """`label` and `phase` name a trial that finishes without a start event (one a resumed
        study finds finished in its checkpoints)."""
        # interrupted (Ctrl-C, SIGTERM): resumable, so neither finished nor failed
        status = status if status in (*FINISHED, "interrupted") else "failed"
        with self._lock:
            t = self.trials.get(trial_id)
            if t is None:  # finished without a start event (a replay after resume)
                t = self.trials[trial_id] = _Trial(label, phase, status="running")
                self._row(label).counts["running"] += 1
            row = self.rows[t.label]
            if t.status == status:
                return
            row.counts[t.status] -= 1
            row.counts[status] += 1
            t.status = status
            if status == "completed" and is_finite_number(best_val_acc):
                row.best = max(row.best if row.best is not None else -1.0, float(best_val_acc))
            line = (f"[{self.name} {self._elapsed()}] {t.label} {t.phase} trial {trial_id}: {status}"
                    + (f" at epoch {t.epoch}/{t.epochs}" if status != "completed" and t.epochs else "")
                    + (f", best val_acc {best_val_acc:.4f}" if is_finite_number(best_val_acc) else ""))
        if self.live:
            self._refresh()
        else:
            self._print(line)

    def message(self, text: str) -> None:
        if self.live and self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            self._print(text)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._live is not None:
            self._live.update(self._table(), refresh=True)
            self._live.stop()
            self._live = None
        elif not self.live:
            self._print(self.summary())
            self._print(self.final_table())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ numbers

    def stats(self, label: str) -> dict[str, Any]:
        """For one row: planned, finished (any end), done (completed), running, pruned,
        failed (diverged included), best, epochs_per_s, eta_s."""
        with self._lock:
            row = self.rows[label]
            c = row.counts
            rate = row.epochs_done / row.epoch_seconds if row.epoch_seconds > 0 else None
            eta = None
            if rate and row.epochs_per_trial:
                running = [t for t in self.trials.values() if t.label == label and t.status == "running"]
                not_started = max(0, row.planned - sum(c.values()))
                left = not_started * row.epochs_per_trial + sum(max(0, t.epochs - t.epoch) for t in running)
                # trials of one row run side by side: wall time divides by how many run at once
                eta = left / rate / max(1, c["running"])
            return {"planned": row.planned, "finished": sum(c[s] for s in FINISHED), "done": c["completed"],
                    "running": c["running"], "pruned": c["pruned"], "failed": c["failed"] + c["diverged"],
                    "best": row.best, "epochs_per_s": rate, "eta_s": eta}

    def summary(self) -> str:
        """One line: totals, then the rows with trials running (a 12-row study
        would not fit on a line otherwise)."""
        stats = {label: self.stats(label) for label in self.rows}
        keys = ("planned", "finished", "done", "running", "pruned", "failed")
        total = {k: sum(s[k] for s in stats.values()) for k in keys}
        parts = [f"{total['finished']}/{total['planned']} trials finished ({total['done']} completed, "
                 f"{total['pruned']} pruned, {total['failed']} failed), {total['running']} running"]
        for label, s in stats.items():
            if s["running"]:
                parts.append(f"{label}: best {_fmt(s['best'], '.4f')}, {_fmt(s['epochs_per_s'], '.2f')} epochs/s"
                             + (f", ETA {_duration(s['eta_s'])}" if s["eta_s"] is not None else ""))
        return f"[{self.name} {self._elapsed()}] " + " | ".join(parts)

    def final_table(self) -> str:
        """The per-row table as plain text (for the end of a non-terminal run)."""
        lines = []
        for label in self.rows:
            s = self.stats(label)
            lines.append(f"  {label:<16} {s['finished']:>3}/{s['planned']:<3} finished  {s['done']:>3} completed  "
                         f"{s['pruned']:>3} pruned  {s['failed']:>3} failed  best val_acc {_fmt(s['best'], '.4f')}")
        return "\n".join(lines)

    # ------------------------------------------------------------ output

    def _row(self, label: str) -> _Row:
        if label not in self.rows:
            self.rows[label] = _Row(0)
        return self.rows[label]

    def _elapsed(self) -> str:
        return _duration(self.clock() - self.t0)

    def _changed(self, summary_only: bool = False) -> None:
        if self.live:
            self._refresh()
            return
        now = self.clock()
        if summary_only and self._last_summary is not None and now - self._last_summary < self.interval:
            return
        if summary_only or self._last_summary is None or now - self._last_summary >= self.interval:
            self._last_summary = now
            self._print(self.summary())

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.stream, flush=True)

    def _table(self):
        from rich import box
        from rich.table import Table

        # fits 80 columns: trials = finished/planned; best = best val_acc of completed trials
        table = Table(title=f"{self.name}  {self._elapsed()}", title_justify="left", expand=False,
                      box=box.SIMPLE_HEAD, caption="trials: finished/planned; best: best val_acc of completed trials",
                      caption_justify="left", pad_edge=False, collapse_padding=True)
        for col in ("experiment", "trials", "done", "pruned", "failed", "running", "best", "ep/s", "ETA"):
            table.add_column(col, justify="left" if col == "experiment" else "right", no_wrap=True)
        for label in list(self.rows):
            s = self.stats(label)
            table.add_row(label, f"{s['finished']}/{s['planned']}", str(s["done"]), str(s["pruned"]),
                          str(s["failed"]), str(s["running"]), _fmt(s["best"], ".4f"), _fmt(s["epochs_per_s"], ".2f"),
                          _duration(s["eta_s"]) if s["eta_s"] is not None and s["running"] else "")
        return table


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False




def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    if s < 86400 * 2:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s / 86400:.1f}d"


# ---------------------------------------------------------------- quiet libraries

_NOISY = ("mlflow", "ray", "ray.tune", "ray.train", "ray.air", "alembic", "urllib3", "filelock")


def quiet_libraries(verbose: bool = False) -> None:
    """Keep MLflow's, Optuna's and Ray's INFO lines (run links, trial-finished
    lines, Ray's token-auth notice) off the console unless `verbose`, so the
    progress view stays readable; their warnings and errors still show (Ray's
    token notice is a warning, silenced by choosing token mode explicitly).
    MLflow sets its loggers' level when first imported, from MLFLOW_LOGGING_LEVEL
    (a user's own setting stands), so it is not imported here: its import (about
    1.5 s) is the driver's, once the embedded Ray is up. Optuna,
    which the spec's search spaces import already, is set here; call it again
    after importing Ray."""
    if verbose:
        return
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # "View run ... at: URL" would print a tracking URI that may hold a password.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not os.environ.get("RAY_ADDRESS"):
        # The embedded Ray keeps token auth on (Ray 2.60's default); saying so
        # explicitly is what stops Ray warning about it on every start.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import optuna
    except ImportError:
        return
    optuna.logging.set_verbosity(logging.WARNING)


__all__ = ["Progress", "quiet_libraries"]
