"""Plain-text status and exports of a study directory (no Ray needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from study.results import HISTORY_FILE, RESULTS_FILE, read_table

STATUSES = ("completed", "pruned", "diverged", "failed")


def load(study_dir: Path) -> pd.DataFrame:
    rows = read_table(study_dir / RESULTS_FILE)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment: trial counts by status and the best trial."""
    out = []
    for exp, g in df.groupby("experiment", sort=True):
        row = {"experiment": exp, "variant": g["variant"].iloc[0], "trials": len(g)}
        row.update({s: int((g["status"] == s).sum()) for s in STATUSES})
        done = g[g["status"] == "completed"]
        if len(done):
            best = done.loc[done["val_acc"].idxmax()]
            row.update(best_val_acc=best["val_acc"], test_acc=best.get("test_acc"), best_trial=best["trial_id"],
                       best_config=_searched_values(best))
        out.append(row)
    return pd.DataFrame(out)


def _searched_values(row: pd.Series) -> str:
    names = json.loads(row.get("searched") or "[]")
    return ", ".join(f"{n}={_fmt(row.get(n))}" for n in names if n in row)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def status_text(study_dir: Path) -> str:
    state_file = study_dir / "study.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    lines = [f"study {state.get('name', study_dir.name)} at {study_dir}"]
    exps = state.get("experiments", {})
    if exps:
        lines.append("experiments finished: " + ", ".join(sorted(k for k, v in exps.items() if v == "done")))
    lines.append("state: " + ("finished" if state.get("finished") else "not finished (running, or interrupted: "
                              "`resstudy resume` finishes it)"))
    df = load(study_dir)  # a damaged results file raises ResultsError naming it (exit 2)
    if df.empty:
        return "\n".join(lines + ["no finished trials yet"])
    table = summary(df)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return "\n".join(lines)


def export(study_dir: Path, out: str | Path | None = None) -> list[Path]:
    out = Path(out) if out else study_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    df = load(study_dir)
    paths = []
    if not df.empty:
        df.to_csv(out / "results.csv", index=False)
        paths.append(out / "results.csv")
        table = summary(df)
        (out / "summary.md").write_text(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
        paths.append(out / "summary.md")
    history = pd.DataFrame(read_table(study_dir / HISTORY_FILE))
    if not history.empty:
        history.to_csv(out / "history.csv", index=False)
        paths.append(out / "history.csv")
    return paths


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
