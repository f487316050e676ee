"""Plain-text status and exports of a study directory (no Ray needed).

`status_text` fits the width it is given (100 columns unless told); once `resstudy analyze` has run, the
claims table (analysis/claims.csv) is at its top, since it is what the study
answers. `export` writes CSV files and a Markdown summary with real tables.
Both read the trials as the ledger and epoch logs hold them now: a running
study shows every trial that has finished, not only those compacted into its
Parquet files. Neither writes into the study unless asked to (export's default
folder is inside it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from study.errors import UserError
from study.ledger import (FINISHED, LEDGER_FILE, STUDY_DIR_RULE, StudyLock, finished_rows, is_study_dir,
                          read_trials)
from study.results import EPOCHS_DIR, HISTORY_FILE, RESULTS_FILE, history_rows, ordered, read_table, table_of

WIDTH = 100
CLAIMS_FILE = Path("analysis") / "claims.csv"


def check_study_dir(study_dir: str | Path) -> Path:
    """The path as a study directory, or a UserError naming it."""
    d = Path(study_dir)
    if not d.is_dir():
        raise UserError(f"{d} is not a study directory: it does not exist")
    if not is_study_dir(d):
        raise UserError(f"{d} is not a study directory; allowed: {STUDY_DIR_RULE} (a study name or the folder "
                        "`resstudy run` printed)")
    return d


def load(study_dir: Path) -> pd.DataFrame:
    """One row per finished trial: the ledger's as it is now, else results.parquet."""
    rows = finished_rows(study_dir)
    if rows is None:
        return pd.DataFrame(read_table(Path(study_dir) / RESULTS_FILE))
    return pd.DataFrame(table_of(ordered(rows)).to_pylist())


def load_history(study_dir: Path) -> pd.DataFrame:
    """One row per trial-epoch: the epoch logs as they are now, else history.parquet."""
    if any((Path(study_dir) / EPOCHS_DIR).glob("*.jsonl")):
        return pd.DataFrame(table_of(history_rows(study_dir)).to_pylist())
    return pd.DataFrame(read_table(Path(study_dir) / HISTORY_FILE))


def _variant_arm(g: pd.DataFrame, subject: str) -> pd.DataFrame:
    # a twin runs another model (quotient's twin is a resnet), in the twin phase or as a designed
    # arm ("published twin"): never the experiment's "best"
    if "arm" in g.columns:
        g = g[g["arm"] != "twin"]
    return g[g["variant"] == subject] if "variant" in g.columns else g


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment: trial counts by status and the best completed trial."""
    out = []
    for exp, g in df.groupby("experiment", sort=True):
        subject = g["subject"].dropna().iloc[0] if "subject" in g.columns and g["subject"].notna().any() \
            else g["variant"].iloc[0]
        row = {"experiment": exp, "variant": subject, "trials": len(g)}
        row.update({s: int((g["status"] == s).sum()) for s in FINISHED})
        done = _variant_arm(g, subject)
        done = done[(done["status"] == "completed") & done["val_acc"].notna()]
        if len(done):
            best = done.loc[done["val_acc"].astype(float).idxmax()]
            row.update(best_val_acc=best["val_acc"], test_acc=best.get("test_acc"), best_trial=best["trial_id"],
                       best_config=_searched_values(best))
        out.append(row)
    return pd.DataFrame(out)


def _searched_values(row: pd.Series) -> str:
    try:
        names = json.loads(row.get("searched") or "[]")
    except (TypeError, json.JSONDecodeError):
        names = []
    return ", ".join(f"{n}={_fmt(row.get(n))}" for n in names if n in row)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _num(v, spec: str = ".4f") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(f) else format(f, spec)


def _fit(text: str, width: int | None = WIDTH) -> str:
    """Every line cut to `width` columns (the last column is the long free text); None: uncut."""
    if width is None:
        return text
    return "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in text.splitlines())


def read_claims(study_dir: Path) -> pd.DataFrame | None:
    """analysis/claims.csv when `resstudy analyze` has written it, else None."""
    path = Path(study_dir) / CLAIMS_FILE
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except Exception as e:  # a damaged file must not hide the trial counts below it
        raise UserError(f"{path} cannot be read ({type(e).__name__}: {e}); rerun `resstudy analyze`") from e


def _claims_basis(claims: pd.DataFrame) -> str:
    """What the intervals and p-values of a claims table are, as its rows were computed."""
    designed = claims["control"].astype(str).str.startswith("designed") if "control" in claims else None
    parts: list[str] = []
    if designed is not None and designed.any():
        parts.append("designed claims: 95% intervals valid under the looks taken after every round, each tested "
                     "at its Bonferroni level against the effect its paper reports")
    if designed is None or not designed.all() or not parts:
        parts.append("other claims: 95% Student-t intervals clipped to the metric's range, p Holm-adjusted")
    return "; ".join(parts)


def claims_lines(claims: pd.DataFrame) -> list[str]:
    """The claims, three lines each: the verdicts and the claim, its numbers (and, when
    open or not exercised, what would settle it), the effect it is judged against."""
    if claims.empty:
        return ["  none tested (no studied variant declares a claim)"]
    out = []
    for _, r in claims.iterrows():
        setting = f" ({r['setting']})" if isinstance(r.get("setting"), str) and r["setting"] else ""
        said = r.get("verdicts") if isinstance(r.get("verdicts"), str) and r.get("verdicts") else r["verdict"]
        out.append(f"  {said:<21} {'d' + str(r['depth']):<5}{r['claim']}{setting}")
        nums = f"n={int(r['n'])}"
        if _num(r["estimate"]):
            same = _num(r["ci_lo"]) and r["ci_lo"] == r["ci_hi"]  # every pair gave the same difference
            interval = (" (no spread)" if same else f" [{_num(r['ci_lo'], '+.4f')}, {_num(r['ci_hi'], '+.4f')}]"
                        if _num(r["ci_lo"]) else "")
            nums = f"{_num(r['estimate'], '+.4f')}{interval}, {nums}"
        if _num(r["p_adj"]):
            nums += f", p Holm {_num(r['p_adj'], '.2g')}"
        if isinstance(r.get("stop"), str) and r["stop"]:
            nums += f", stopped: {r['stop'].replace('_', ' ')}"
        open_ = r["verdict"] in ("open", "not exercised", "inconclusive")
        settle = r["settle"] if open_ and isinstance(r["settle"], str) else ""
        out.append(f"{'':29}{nums}" + (f"; -> {settle}" if settle else ""))
        if _num(r.get("reported")):
            source = r.get("reported_source") if isinstance(r.get("reported_source"), str) else ""
            where = r.get("reported_at") if isinstance(r.get("reported_at"), str) and r.get("reported_at") else ""
            out.append(f"{'':29}reported {_num(r['reported'], '+.4f')} ({source}" + (f": {where})" if where else ")"))
    return out


def status_text(study_dir: Path, width: int | None = WIDTH) -> str:
    study_dir = check_study_dir(study_dir)
    state_file = study_dir / "study.json"
    try:
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
    except json.JSONDecodeError as e:
        raise UserError(f"{state_file} is not valid JSON ({e})") from e
    lines = []
    claims = read_claims(study_dir)
    if claims is not None:
        lines += [f"Claims (from `resstudy analyze`; {_claims_basis(claims)}):", *claims_lines(claims), ""]
    lines.append(f"study {state.get('name', study_dir.name)} at {study_dir}")
    lines.append("state: " + _state(study_dir, state))
    phases = state.get("phases", {})  # "<experiment>:<phase>": "done", as the driver records them
    if phases:
        lines.append("phases finished: " + ", ".join(sorted(k for k, v in phases.items() if v == "done")))
    df = load(study_dir)  # a damaged results file raises ResultsError naming it (exit 2)
    if df.empty:
        return _fit("\n".join(lines + ["no finished trials yet"]), width)
    table = summary(df)
    lines.append(_trials_table(table))
    if claims is None:
        lines.append("(run `resstudy analyze` for the claims table, curves and the report)")
    return _fit("\n".join(lines), width)


def _state(study_dir: Path, state: dict) -> str:
    """Finished, running (the flock on .lock is held: by whom), or stopped; with the
    ledger's count of trials finished and started so far while not finished."""
    if state.get("finished"):
        return "finished"
    if not (study_dir / LEDGER_FILE).is_file():
        return "not finished (running, or interrupted: `resstudy resume` finishes it)"
    trials = read_trials(study_dir / LEDGER_FILE).values()
    done = sum(r.get("status") in FINISHED for r in trials)
    running = sum(r.get("status") == "running" for r in trials)
    holder = StudyLock.holder(study_dir)
    if holder is not None:
        return (f"running (driver pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
                f"{holder.get('since', '?')}): {done} trials finished, {running} running")
    return f"stopped before the end ({done} trials finished); finish it with:\n  resstudy resume {study_dir}"


def _trials_table(table: pd.DataFrame, fmt: str = "simple") -> str:
    from tabulate import tabulate

    cols = ["experiment", "trials", *FINISHED, "best_val_acc", "test_acc", "best_config"]
    t = table.reindex(columns=cols)
    heads = ["experiment", "trials", "done", "pruned", "div", "fail", "best val", "test", "best config"]
    rows = [[r["experiment"], r["trials"], r["completed"], r["pruned"], r["diverged"], r["failed"],
             _num(r["best_val_acc"]), _num(r["test_acc"]), r["best_config"] if isinstance(r["best_config"], str)
             else ""] for _, r in t.iterrows()]
    return tabulate(rows, headers=heads, tablefmt=fmt, disable_numparse=True)


def export(study_dir: Path, out: str | Path | None = None) -> list[Path]:
    """results.csv, history.csv and summary.md (Markdown tables: the claims
    when analysed, then the trials per experiment) into `out`."""
    from tabulate import tabulate

    from study.preflight import writable_dir_problem

    study_dir = check_study_dir(study_dir)
    out = Path(out) if out else study_dir / "export"
    problem = writable_dir_problem(out, "--out")  # a file there, or a folder we may not write
    if problem:
        raise UserError(problem)
    out.mkdir(parents=True, exist_ok=True)
    df = load(study_dir)
    paths = []
    if not df.empty:
        df.to_csv(out / "results.csv", index=False)
        paths.append(out / "results.csv")
        parts = [f"# Study {study_dir.name}\n"]
        claims = read_claims(study_dir)
        if claims is not None:
            rows = [[r["claim"], r["depth"], int(r["n"]), _num(r["estimate"], "+.4f"),
                     f"[{_num(r['ci_lo'], '+.4f')}, {_num(r['ci_hi'], '+.4f')}]" if _num(r["ci_lo"]) else "",
                     _num(r["p_adj"], ".3g"), r["verdict"],
                     r["settle"] if isinstance(r["settle"], str) else ""] for _, r in claims.iterrows()]
            basis = _claims_basis(claims)
            parts += ["## Claims\n", basis[:1].upper() + basis[1:] + ".\n",
                      tabulate(rows, headers=["claim", "depth", "n", "estimate", "95% CI", "p (Holm)", "verdict",
                                              "what would settle it"], tablefmt="github",
                               disable_numparse=True) + "\n"]
        parts += ["## Trials\n", _trials_table(summary(df), fmt="github") + "\n"]
        (out / "summary.md").write_text("\n".join(parts), encoding="utf-8")
        paths.append(out / "summary.md")
    history = load_history(study_dir)
    if not history.empty:
        history.to_csv(out / "history.csv", index=False)
        paths.append(out / "history.csv")
    return paths
