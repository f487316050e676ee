"""A small Python API over study directories, for notebooks and scripts: what
`resstudy status`, `list`, `export` and `analyze` show, as Python objects.

    from study import api

    s = api.load("quick")        # a study name (under $RESSTUDY_STORAGE, else ./resstudy_runs) or a directory
    s.status()                    # dict: state, trials done/planned, best trial, last change, per experiment
    s.results()                   # pandas DataFrame: one row per finished trial (results.parquet)
    s.history()                   # one row per trial and epoch (history.parquet)
    s.best("quotient")            # the best completed search trial (of a variant): id, val_acc, config
    s.trial("quick-quotient-d8-s0003")   # one trial's record
    s.claims()                    # the claims table, computed from the results now
    s.report()                    # path of the HTML report (written when missing or older than the study)
    api.studies()                 # every study under the storage path

Reading never writes into the study, so a running study can be read as it is
now (the trials come from its ledger, which the driver keeps current); only
report() writes, into <study>/analysis (or `out_dir`).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from study.errors import UserError
from study.ledger import FINISHED, SPEC_FILE, STUDY_DIR_RULE, is_study_dir
from study.results import is_finite_number

DEFAULT_STORAGE = "resstudy_runs"
METRIC = "val_acc"  # what the search maximises: "best" is the best completed search trial by it


class StudyNotFound(UserError):
    """A name or path that is not a study; the message lists the studies there are."""


def storage_root(storage_path: str | os.PathLike | None = None) -> Path:
    """Where study names are looked up: `storage_path`, else $RESSTUDY_STORAGE, else ./resstudy_runs."""
    return Path(storage_path or os.environ.get("RESSTUDY_STORAGE", DEFAULT_STORAGE)).expanduser()


def find(name: str | os.PathLike, storage_path: str | os.PathLike | None = None) -> Path:
    """A study directory given directly, or a study name under the storage path.
    Anything that is not a study directory (study.ledger.is_study_dir) is refused."""
    name = str(name)
    if not name.strip():
        raise StudyNotFound("study: '' is not a study; allowed: a study name or a study directory")
    direct = Path(name).expanduser()
    if is_study_dir(direct):
        return direct.resolve()
    root = storage_root(storage_path)
    candidate = root / name
    if "/" not in name and name not in (".", "..") and is_study_dir(candidate):
        return candidate.resolve()
    known = sorted(p.name for p in root.iterdir() if is_study_dir(p)) if root.is_dir() else []
    what = f"{str(direct)!r} is not a study directory ({STUDY_DIR_RULE})" if direct.exists() \
        else f"no study {name!r} under {str(root)!r}"
    raise StudyNotFound(f"study: {what}; studies under {str(root)!r}: {', '.join(known) or 'none'}")


def load(name: str | os.PathLike, storage_path: str | os.PathLike | None = None) -> "Study":
    """The study of a name (under the storage path) or a directory."""
    return Study(find(name, storage_path))


def studies(storage_path: str | os.PathLike | None = None) -> list["Study"]:
    """Every study directly under the storage path, by name."""
    root = storage_root(storage_path)
    return [Study(p) for p in sorted(root.iterdir()) if is_study_dir(p)] if root.is_dir() else []


class Study:
    """One study directory. Every method reads the files anew (a running study moves on)."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path).expanduser()
        if not is_study_dir(path):
            raise StudyNotFound(f"study: {str(path)!r} is not a study directory; allowed: {STUDY_DIR_RULE}")
        self.path = path.resolve()

    def __repr__(self) -> str:
        return f"Study({str(self.path)!r})"

    @property
    def name(self) -> str:
        return str(self._state().get("name") or self.path.name)

    # ------------------------------------------------------------ the ledger

    def _state(self) -> dict[str, Any]:
        from study.ledger import read_state

        return read_state(self.path)

    def trials(self) -> list[dict[str, Any]]:
        """Every trial's latest record (id `rid`, experiment, subject, variant, arm,
        phase, depth, seed, status, config, and once finished `row`: its metrics)."""
        from study.ledger import LEDGER_FILE, read_trials

        return list(read_trials(self.path / LEDGER_FILE).values())

    def trial(self, trial_id: str) -> dict[str, Any]:
        """One trial, as best() gives it; a UserError lists the best trial ids when unknown."""
        records = {r["rid"]: r for r in self.trials()}
        if trial_id not in records:
            best = [b["trial"] for b in (self._best(g) for g in _by_experiment(records.values()).values()) if b]
            raise UserError(f"trial: no trial {trial_id!r} in study {self.name!r}; allowed: a trial id of it "
                            f"({len(records)} trials; the best of each experiment: {', '.join(best) or 'none'})")
        return _trial(records[trial_id])

    def best(self, variant: str | None = None, depth: int | None = None) -> dict[str, Any] | None:
        """The best completed search trial (by val_acc) of the study, or of one
        variant and/or depth: {trial, experiment, variant, subject, arm, phase, depth,
        seed, status, val_acc, test_acc, config, searched}; None when there is none yet."""
        return self._best([r for r in self.trials()
                           if (variant is None or r.get("subject", r["variant"]) == variant)
                           and (depth is None or r["depth"] == depth)])

    @staticmethod
    def _best(records) -> dict[str, Any] | None:
        done = [r for r in records if r["phase"] == "search" and r["status"] == "completed"
                and is_finite_number((r.get("row") or {}).get(METRIC))]
        if not done:
            return None
        return _trial(max(done, key=lambda r: (r["row"][METRIC], -(r.get("optuna_number") or 0))))

    def driver(self) -> dict[str, Any] | None:
        """The driver running the study now ({pid, host, since}), else None."""
        from study.ledger import StudyLock

        return StudyLock.holder(self.path)

    def changed(self) -> float:
        """When the study last changed (seconds since the epoch)."""
        files = [self.path / n for n in ("ledger.jsonl", "study.json", "results.parquet", SPEC_FILE)]
        return max((f.stat().st_mtime for f in files if f.exists()), default=self.path.stat().st_mtime)

    # ------------------------------------------------------------ the spec

    def spec(self):
        """The validated spec the study ran (study.spec.StudySpec)."""
        from study.spec import load_spec

        return load_spec(self.path / SPEC_FILE)

    def plan(self) -> dict[tuple[str, int], dict[str, int]] | None:
        """Trials planned per (variant, depth) and arm (study.driver.plan); None when
        the saved spec no longer loads (a plugin moved, an older version)."""
        try:
            from study.driver.plan import plan

            return plan(self.spec())
        except UserError:
            return None

    def status(self) -> dict[str, Any]:
        """What `resstudy status --json` prints: the study's state (running,
        finished, interrupted, not started) and its driver, trial counts (done =
        finished in any way, out of planned), the best trial, the last change, the
        same per experiment, and the claims table once `resstudy analyze` has run."""
        state, records, driver = self._state(), self.trials(), self.driver()
        running = driver is not None
        plan = self.plan()
        name = str(state.get("name") or self.path.name)
        experiments: dict[str, dict[str, Any]] = {}
        for (variant, depth), arms in (plan or {}).items():
            experiments[f"{name}-{variant}-d{depth}"] = {"variant": variant, "depth": depth,
                                                         "planned": sum(arms.values()), "arms": arms}
        groups = _by_experiment(records)
        for exp, recs in groups.items():
            experiments.setdefault(exp, {"variant": recs[0].get("subject", recs[0]["variant"]),
                                         "depth": recs[0]["depth"], "planned": None, "arms": None})
        rows = []
        for exp, info in experiments.items():
            recs = groups.get(exp, [])
            best = self._best(recs)
            rows.append({"experiment": exp, **info, **_counts(recs, running),
                         "best_val_acc": best["val_acc"] if best else None,
                         "best_trial": best["trial"] if best else None,
                         "best_config": {k: best["config"].get(k) for k in best["searched"]} if best else None})
        best = self._best(records)
        totals = _counts(records, running)
        planned = sum(e["planned"] or 0 for e in experiments.values()) if plan is not None else None
        return {
            "name": name, "path": str(self.path),
            "state": "running" if running else "finished" if state.get("finished")
            else "interrupted" if records else "not started", "driver": driver,
            **totals, "planned": planned,
            "best": None if best is None
            else {k: best[k] for k in ("trial", "variant", "depth", "val_acc", "test_acc")},
            "changed": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.changed())),
            "experiments": rows,
            "claims": self._claims_file(),
        }

    def _claims_file(self) -> list[dict[str, Any]] | None:
        from study.report import read_claims

        claims = read_claims(self.path)
        return None if claims is None else _plain(claims.to_dict(orient="records"))

    # ------------------------------------------------------------ tables and the report

    def results(self):
        """results.parquet as a pandas DataFrame: one row per finished trial."""
        from analysis.load import load_results

        return load_results(self.path)

    def history(self):
        """history.parquet as a pandas DataFrame: one row per trial and epoch."""
        from analysis.load import load_history

        return load_history(self.path)

    def claims(self):
        """The claims table (analysis.claims.claims_table) computed from the
        results now; its notes (claims that could not be tested) in .attrs["notes"]."""
        from analysis.claims import claims_table, load_design
        from analysis.load import load_spec

        try:
            history = self.history()
        except (FileNotFoundError, ValueError):
            history = None
        table, notes = claims_table(self.results(), history, load_spec(self.path), design=load_design(self.path))
        table.attrs["notes"] = notes
        return table

    def report(self, out_dir: str | os.PathLike | None = None, *, refresh: bool = False,
               log_to_mlflow: bool = False) -> Path:
        """The HTML report's path: written by `resstudy analyze`'s code when it is
        missing, older than the study's last change, or `refresh`."""
        path = Path(out_dir or self.path / "analysis") / "report.html"
        if refresh or not path.is_file() or path.stat().st_mtime < self.changed():
            from analysis.report import analyze

            return Path(analyze(self.path, out_dir=out_dir, log_to_mlflow=log_to_mlflow))
        return path




def _by_experiment(records) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r["experiment"], []).append(r)
    return out


def _counts(records: list[dict[str, Any]], running: bool) -> dict[str, int]:
    out = {"done": sum(r["status"] in FINISHED for r in records)}
    out.update({s: sum(r["status"] == s for r in records) for s in FINISHED})
    # a record left "running" by a driver that is gone is not running
    out["running"] = sum(r["status"] == "running" for r in records) if running else 0
    return out


def _trial(r: dict[str, Any]) -> dict[str, Any]:
    row = r.get("row") or {}
    return {"trial": r["rid"], "experiment": r["experiment"], "variant": r["variant"],
            "subject": r.get("subject", r["variant"]), "arm": r.get("arm"), "phase": r["phase"], "depth": r["depth"],
            "seed": r["seed"], "status": r["status"],
            "val_acc": row.get(METRIC), "test_acc": row.get("test_acc"), "config": dict(r["config"]),
            "searched": list(r.get("searched") or [])}


def _plain(v: Any) -> Any:
    """JSON-able: NaN as None, numpy scalars as Python ones."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


__all__ = ["Study", "StudyNotFound", "find", "load", "storage_root", "studies"]
