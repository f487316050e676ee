"""`analyze`: the whole analysis of one study directory, written as PNG plots,
CSV/Parquet tables and ONE self-contained HTML report (plotly.js inlined once,
no network needed to open it; every interactive figure lives in it), then
logged to the study's MLflow parent run.

The report opens with its conclusion: what the claims table supports,
contradicts or leaves open, and for each open claim what would settle it and
what that costs at this study's pace. Tables show words, not column names
(labels.py), differences of accuracies in accuracy points; a figure that
would carry no information is not drawn, and the report says why instead."""

from __future__ import annotations

import html
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
from matplotlib.figure import Figure

from . import plots
from .budget import budget_table
from .claims import (DESIGNED, MIN_N, PUBLISHED, ROW_VERDICTS, claims_table, is_designed, load_design, reported_text,
                     stop_words, tuned_vs_tuned, verdict_sentence,
                     write_claims)
from .compare import compare_variants, spec_top_k
from .declared import level_rates, rate_owners, report_sections
from .importance import MIN_TRIALS, importance_frame, importances_by_rung, study_importances
from .labels import METRICS, column_label, fidelity_label, metric_label, param_label
from .load import (STATUSES, StudyDirError, load_history, load_results, load_spec, load_study_meta, sqlite_path,
                   tracking_uri as study_tracking_uri)
from .sensitivity import SWEEP_COLUMNS, level_order, rung_epochs, sensitivity, sweeps
from study.stats.intervals import zero_spread

REPORT_NAME = "report.html"
CONCLUSION_NAME = "conclusion.md"
PNG_DPI = 110
POINTS = 100.0  # differences of accuracies are shown in accuracy points


def _say(msg: str) -> None:
    print(f"[analyze] {msg}", flush=True)


def _slug(*parts) -> str:
    s = "-".join(str(p) for p in parts if str(p))
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


@dataclass
class _Report:
    """Collects sections; writes each figure's PNG on the way (its interactive
    version is only in the report: one copy of plotly.js in all)."""

    plot_dir: Path
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    _n: int = 0

    def section(self, title: str) -> list[str]:
        parts: list[str] = []
        self.sections.append((title, parts))
        return parts

    def figure(self, parts: list[str], name: str, png: Figure, fig: go.Figure) -> None:
        png_path = self.plot_dir / f"{name}.png"
        png.savefig(png_path, dpi=PNG_DPI)
        self.files.append(png_path)
        self._n += 1
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{self._n}",
                          config={"displaylogo": False, "responsive": True})
        parts.append(f'<div class="figure">{div}</div>')


# --- numbers and tables in words ------------------------------------------------------------

def _num(v, spec: str = ".4g") -> str:
    return "" if v is None or not np.isfinite(float(v)) else format(float(v), spec)


def _pts(v) -> str:
    """A difference of accuracies in points, signed."""
    return "" if v is None or not np.isfinite(float(v)) else f"{float(v) * POINTS:+.2f}"


def _ci(lo, hi, fmt=_pts) -> str:
    return f"{fmt(lo)} to {fmt(hi)}" if np.isfinite(float(lo)) and np.isfinite(float(hi)) else ""


def _p(p) -> str:
    if p is None or not np.isfinite(float(p)):
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


def _table_html(df: pd.DataFrame, max_rows: int = 200, empty: str = "Nothing to show.", cls: str = "tbl") -> str:
    """df (already in words) as an HTML table."""
    if df.empty:
        return f'<p class="note">{html.escape(empty)}</p>'
    more = f"<p><em>{len(df) - max_rows} more rows in the CSV</em></p>" if len(df) > max_rows else ""
    return df.head(max_rows).to_html(index=False, classes=cls, border=0, na_rep="",
                                      float_format=lambda v: f"{v:.4g}") + more


def _human(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The columns picked and named in words (labels.COLUMNS); metric and parameter cells in words too."""
    out = df[[c for c in columns if c in df.columns]].copy()
    if "metric" in out.columns:
        out["metric"] = out["metric"].map(metric_label)
    if "param" in out.columns:
        out["param"] = out["param"].map(param_label)
    return out.rename(columns=column_label)


def _write_table(df: pd.DataFrame, tables: Path, name: str, files: list[Path]) -> None:
    csv, pq = tables / f"{name}.csv", tables / f"{name}.parquet"
    df.to_csv(csv, index=False)
    df.to_parquet(pq, index=False)
    files += [csv, pq]


@dataclass
class Sections:
    """What a variant's own report section (study.variants.Variant.report_sections)
    is given: the study's results, spec and history, and where to add a section,
    a figure, a table or a note."""

    results: pd.DataFrame
    spec: dict
    history: pd.DataFrame | None
    n_boot: int
    seed: int
    _rep: _Report
    _tables: Path

    def section(self, title: str) -> list[str]:
        """A new section: append HTML to the list returned."""
        _say(title)
        return self._rep.section(title)

    def figure(self, parts: list[str], name: str, png: Figure, fig: go.Figure) -> None:
        self._rep.figure(parts, _slug(name), png, fig)

    def table(self, df: pd.DataFrame, name: str) -> None:
        """`df` written as tables/<name>.csv and .parquet."""
        _write_table(df, self._tables, name, self._rep.files)

    def html_table(self, df: pd.DataFrame, columns: list[str]) -> str:
        """`columns` of `df` as an HTML table in words (labels.COLUMNS)."""
        return _table_html(_human(df, columns))

    def note(self, text: str) -> None:
        """A line under "what could not be fitted, and why"."""
        self._rep.notes.append(text)


def trial_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Trials per experiment, phase and status, and the best completed val_acc."""
    c = df.pivot_table(index=["experiment", "variant", "depth", "phase"], columns="status", values="trial_id",
                       aggfunc="count", fill_value=0).reset_index()
    c.columns.name = None
    for s in STATUSES:
        if s not in c.columns:
            c[s] = 0
    best = df[df["status"] == "completed"].groupby(["experiment", "phase"])["val_acc"].max()
    c["best_val_acc"] = [best.get((e, p), float("nan")) for e, p in zip(c["experiment"], c["phase"])]
    return c


def _claims_html(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p><em>No claim could be tested: no studied variant declares one.</em></p>"
    designed = is_designed(table)
    if designed.any():
        rest = table[~designed]
        return _designed_html(table[designed]) + (
            "<h3>Claims not controlled</h3><p>Not answered by designed arms: the old basis (repeat and twin runs "
            "at the study's seeds, or search trials that differ in other options too), Student-t intervals, "
            "Holm across these rows.</p>" + _claims_html(rest) if len(rest) else "")
    rows = []
    for _, r in table.iterrows():
        flat = zero_spread(r["ci_lo"], r["ci_hi"], r["n"])
        rows.append({"claim": r["claim"], "variant": r["subject"], "depth": r["depth"], "n": r["n"],
                     "estimate (points)": _pts(r["estimate"]),
                     "95% CI (points)": "none: no spread" if flat else _ci(r["ci_lo"], r["ci_hi"]),
                     "reported (points)": reported_text(r),
                     "p (Holm)": "no test" if flat else _p(r["p_adj"]), "verdict": _said(r),
                     "what would settle it": _settle_words(r), "basis": _metric_words(r["basis"])})
    return _verdict_cells(pd.DataFrame(rows).to_html(index=False, classes="tbl claims", border=0, na_rep="",
                                                     escape=True))


def _said(r) -> str:
    """Every verdict a row gives ("reproduced; smaller than reported")."""
    return str(r.get("verdicts") or r["verdict"])


def verdict_class(v: str) -> str:
    return v.replace(" ", "-")


def _verdict_cells(out: str) -> str:
    for v in sorted({*ROW_VERDICTS, "; ".join(ROW_VERDICTS[:2])}, key=len, reverse=True):
        out = out.replace(f"<td>{v}</td>", f'<td class="{verdict_class(v.split("; ")[0])}">{v}</td>')
    return out


def _one_or_column(rows: list[dict], table: pd.DataFrame, col: str, label: str) -> str:
    """A value every row shares is said once, above the table; otherwise it is a column."""
    vals = list(dict.fromkeys(str(v) for v in table[col].fillna("")))
    if len(vals) == 1:
        return f"<p><b>{html.escape(label)}</b>: {html.escape(vals[0])}.</p>" if vals[0] else ""
    for row, v in zip(rows, table[col].fillna("")):
        row[label] = v
    return ""


def _designed_html(table: pd.DataFrame) -> str:
    """Designed claims: the verdict's interval (valid under repeated looks) beside the fixed-n t and
    bootstrap intervals, the chance of winning on a new seed, why it stopped; then "as published"
    and "as tuned" side by side where a claim has both."""
    rows = []
    for _, r in table.iterrows():
        rows.append({"claim": r["claim"], "variant": r["subject"], "depth": r["depth"], "configuration": r["setting"],
                     "seeds": r["n"], "estimate (points)": _pts(r["estimate"]),
                     "95% CI, repeated looks (points)": _ci(r["ci_lo"], r["ci_hi"]),
                     "t interval (points)": _ci(r["t_lo"], r["t_hi"]),
                     "bootstrap interval (points)": _ci(r["boot_lo"], r["boot_hi"]),
                     "wins on a new seed": _share(r["p_beat"]), "level": _num(r["alpha"], ".3g"),
                     "reported (points)": reported_text(r),
                     "verdict": _said(r), "stopped": stop_words(r), "what would settle it": _settle_words(r),
                     "basis": _option_words(_metric_words(r["basis"]))})
    head = (_one_or_column(rows, table, "sources", "What a seed changes")
            + _one_or_column(rows, table, "correction", "Correction for several claims"))
    out = head + _verdict_cells(pd.DataFrame(rows).to_html(index=False, classes="tbl claims designed", border=0,
                                                           na_rep="", escape=True))
    side = _side_by_side(table)
    if len(side):
        out += ("<h3>As published and as tuned</h3><p>The paper's own configuration against its twin, beside "
                "the study's tuned configuration against its twin.</p>" + _verdict_cells(side.to_html(
                    index=False, classes="tbl claims designed", border=0, na_rep="", escape=True)))
    return out


def _share(p) -> str:
    return "" if p is None or not np.isfinite(float(p)) else f"{float(p):.0%}"


def _side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """One row per claim that has an "as published" comparison: both settings' numbers side by side."""
    pub = table[table["key"].str.endswith(PUBLISHED)]
    rows = []
    for _, p in pub.iterrows():
        tuned = table[(table["key"] == p["key"][: -len(PUBLISHED)]) & (table["subject"] == p["subject"])
                      & (table["depth"] == p["depth"])]
        row = {"claim": p["claim"], "variant": p["subject"], "depth": p["depth"]}
        for what, r in (("as published", p), ("as tuned", tuned.iloc[0] if len(tuned) else None)):
            row[f"{what}: estimate (points)"] = "" if r is None else _pts(r["estimate"])
            row[f"{what}: 95% CI (points)"] = "" if r is None else _ci(r["ci_lo"], r["ci_hi"])
            row[f"{what}: seeds"] = "" if r is None else r["n"]
            row[f"{what}: verdict"] = "not run" if r is None else _said(r)
        rows.append(row)
    return pd.DataFrame(rows)


def _option_words(text: str) -> str:
    """Arm labels such as quotient_rule=paper in words: the option's label, then its value."""
    return re.sub(r"\b([a-z][a-z0-9_]*)=(\S+)", lambda m: f"{param_label(m.group(1))} {m.group(2)}", text)


def _metric_words(text) -> str:
    """Metric names in a sentence (a claim's basis) in words."""
    text = text if isinstance(text, str) else ""
    for name in sorted(METRICS, key=len, reverse=True):
        text = re.sub(rf"\b{name}\b", METRICS[name], text)
    return text


def _settle_words(r) -> str:
    """A row's "what would settle it", led by why a zero-spread row has no test."""
    text = r["settle"] if isinstance(r["settle"], str) else ""
    if zero_spread(r["ci_lo"], r["ci_hi"], r["n"]):
        who = "variant and twin" if r["kind"] != "level" else "the two levels"
        why = (f"{who} gave the same {metric_label(r['metric'])} at every one of the {int(r['n'])} seeds: "
               "no spread, so no test")
        return f"{why}; {text}" if text else why
    return text


def _tuned_html(tuned: pd.DataFrame) -> str:
    rows = [{"variant": r["subject"], "depth": r["depth"], "seeds": f"{r['n']} vs {r['n_baseline']}",
             f"{metric_label(r['metric'])}": _num(r["mean"]),
             f"{r['baseline']}": _num(r["baseline_mean"]), "difference (points)": _pts(r["diff"]),
             "95% CI (points)": ("none: no spread" if zero_spread(r["ci_lo"], r["ci_hi"], r["n"])
                                 else _ci(r["ci_lo"], r["ci_hi"])),
             "p (Holm)": _p(r["p_adj"]), "verdict": r["verdict"], "test": r["test"]} for _, r in tuned.iterrows()]
    return _table_html(pd.DataFrame(rows), empty="No repeat runs of resnet and another variant at the same depth: "
                                                 "nothing to compare.")


# --- the conclusion ---------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "an unknown time"
    for unit, s in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= s * (2 if unit == "days" else 1):
            return f"about {seconds / s:.1f} {unit}" if seconds < 10 * s else f"about {seconds / s:.0f} {unit}"
    return f"about {seconds:.0f} s"


def _run_seconds(results: pd.DataFrame, subject: str, depth, phases: tuple[str, ...]) -> float:
    """Mean seconds of this subject's completed runs of `phases` (a run's cost here)."""
    if "seconds" not in results.columns:
        return float("nan")
    subj = results["subject"].fillna(results["variant"]) if "subject" in results.columns else results["variant"]
    phase = results["phase"] if "phase" in results.columns else pd.Series("search", index=results.index)
    s = results[(subj == subject) & (results["depth"] == depth) & phase.isin(phases)
                & (results["status"] == "completed")]["seconds"].astype(float)
    return float(s.mean()) if len(s.dropna()) else float("nan")


def settle_cost(r, results: pd.DataFrame) -> str:
    """What settling an open claim costs: the runs "what would settle it" asks
    for, times the mean seconds such a run took in this study."""
    need = r.get("n_needed")
    if need is None or not np.isfinite(float(need)):
        return ""
    more = max(int(need) - int(r["n"]), 1)
    if r.get("control") == DESIGNED:
        per_seed = float(r.get("seconds_per_seed", np.nan))
        pace = f" at this study's median of {per_seed / 2:.0f} s a run" if np.isfinite(per_seed) else ""
        return (f"{_plural(more, 'more seed')}, a run of each arm each: {2 * more} runs, "
                f"{_duration(more * per_seed)} of training{pace}")
    if r["kind"] == "level":
        runs, what = 2 * more, f"{_plural(more, 'more trial')} per level"
        secs = _run_seconds(results, r["subject"], r["depth"], ("search",))
    else:
        runs, what = 2 * more, f"{_plural(more, 'more seed')}, a variant and a twin run each"
        secs = _run_seconds(results, r["subject"], r["depth"], ("repeat", "twin"))
    pace = f" at this study's {secs:.0f} s a run" if np.isfinite(secs) else ""
    return f"{what}: {runs} runs, {_duration(runs * secs)} of training{pace}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _designed_line(r, results: pd.DataFrame) -> str:
    """A designed claim in a sentence or two: the reported effect, what the arms measured and
    the verdict, why it stopped, and for an open one how many seeds would settle it at what cost."""
    head = f"\u201c{r['claim']}\u201d ({r['subject']}, depth {r['depth']}, {r['setting']})"
    n = int(r["n"])
    if r["verdict"] == "not exercised":
        return f"{head}: not exercised: {_settle_words(r).rstrip('.')}."
    if not np.isfinite(float(r["estimate"])):
        return f"{head}: not tested: {(_settle_words(r) or stop_words(r)).rstrip('.')}."
    seen = f"{verdict_sentence(r)}; {_plural(n, 'seed pair')}, {stop_words(r)}"
    if r.get("acted"):
        seen += f"; to exercise it the design moved {r['acted']}"
    if zero_spread(r["ci_lo"], r["ci_hi"], r["n"]):  # no spread: no interval, no test, no seed count from it
        return f"{head}: {seen}; {_settle_words(r).rstrip('.')}."
    if r["verdict"] != "open" or r["stop"] == "running":
        return f"{head}: {seen}."
    return _to_settle(f"{head}: {seen}", r, results,
                      lambda need: f"at least {MIN_N} seed pairs" if n < MIN_N else f"about {need} seed pairs in all")


def _to_settle(text: str, r, results: pd.DataFrame, phrase) -> str:
    """An open claim's sentence ended by what would settle it: `phrase(seeds needed)` and its cost,
    or the claim's own words where no seed count can be given."""
    need = r.get("n_needed")
    if need is None or not np.isfinite(float(need)):
        return f"{text}. To settle: {_settle_words(r).rstrip('.')}."
    return f"{text}. To settle: {phrase(int(need))} ({settle_cost(r, results)})."


def _claim_line(r, results: pd.DataFrame) -> str:
    """One claim in a sentence or two: what was seen, and for an open one what would settle it, at what cost."""
    if r.get("control") == DESIGNED:
        return _designed_line(r, results)
    head = f"\u201c{r['claim']}\u201d (depth {r['depth']})"
    n = int(r["n"])
    units = "seed pairs" if r["kind"] != "level" else "trials per level"
    count = _plural(n, "seed pair") if r["kind"] != "level" else f"{_plural(n, 'trial')} per level"
    if not np.isfinite(float(r["estimate"])):
        return f"{head}: not tested: {_settle_words(r).rstrip('.')}."
    if zero_spread(r["ci_lo"], r["ci_hi"], r["n"]):
        seen = f"{_pts(r['estimate'])} points; {_settle_words(r).rstrip('.')}"
        return f"{head}: {seen}."
    if np.isfinite(float(r["ci_lo"])):
        seen = f"{_pts(r['estimate'])} points (95% CI {_ci(r['ci_lo'], r['ci_hi'])}) over {count}"
        if np.isfinite(float(r["p_adj"])):
            seen += f", Holm p {_p(r['p_adj'])}"
    else:
        seen = f"{_pts(r['estimate'])} points from {count}"
    if np.isfinite(float(r.get("reported", np.nan))):
        seen = f"{verdict_sentence(r)}; {seen}"
    if r["verdict"] != "open":
        return f"{head}: {seen}."
    return _to_settle(f"{head}: {seen}", r, results, lambda need: f"at least {MIN_N} {units}" if n < MIN_N
                      else f"about {need} {units} for 80% power at this difference")


def conclusion_items(ctable: pd.DataFrame, tuned: pd.DataFrame, curves: list, results: pd.DataFrame,
                     spec: dict, name: str, sweeps: list | tuple = ()
                     ) -> tuple[str, list[tuple[str, str | list[str]]]]:
    """(lead sentence, [(heading, sentence or one line per claim)]): the
    report's opening, in plain text. Each claim against the effect its paper
    reports: reproduced, smaller than reported, contradicted, open (and what
    would settle it at what cost) or not exercised (and why), the tuned
    comparison, the designed sweeps and the sensitivity fits."""
    n_exp = results["experiment"].nunique() if "experiment" in results.columns else 0
    depths = sorted({int(d) for d in results["depth"].dropna()}) if "depth" in results.columns else []
    setup = ", ".join(x for x in (
        f"{len(results)} trials in {n_exp} searches",
        f"depth {', '.join(map(str, depths))}" if depths else "",
        f"{spec.get('epochs')} epochs" if spec.get("epochs") else "",
        f"on {spec.get('dataset')}" if spec.get("dataset") else "") if x)
    said = ctable.get("verdicts", ctable["verdict"]).fillna("").astype(str) if len(ctable) else pd.Series(dtype=str)
    holds = {v: said.str.split("; ").apply(lambda x, v=v: v in x) for v in ROW_VERDICTS} if len(ctable) else {}
    count = {v: int(holds[v].sum()) if len(ctable) else 0 for v in ROW_VERDICTS}
    lead = (f"Study {name} ({setup}): of {_plural(len(ctable), 'claim')}, "
            + ", ".join(f"{count[v]} {v}" for v in ROW_VERDICTS) + ".")
    both = int((holds["reproduced"] & holds["smaller than reported"]).sum()) if len(ctable) else 0
    if both:
        lead += f" {_plural(both, 'claim')} {'is' if both == 1 else 'are'} both reproduced and smaller than reported."
    designed = int(is_designed(ctable).sum()) if len(ctable) else 0
    if designed:
        lead += (f" {designed} of them {'was' if designed == 1 else 'were'} answered by designed arms that differ "
                 "only in what the claim names, paired by seed and given seeds until a verdict (intervals valid "
                 "under a look after every round, Bonferroni across the designed claims), each judged against "
                 "the effect its paper reports.")
    items: list[tuple[str, str | list[str]]] = []
    for verdict in ROW_VERDICTS:
        rows = ctable[ctable["verdict"] == verdict] if len(ctable) else ctable
        items.append((verdict.capitalize(), [_claim_line(r, results) for _, r in rows.iterrows()] if len(rows)
                      else "none."))
    if len(tuned):
        base = tuned["baseline"].iloc[0]
        decided = tuned[tuned["verdict"] != "inconclusive"]
        what = ("; ".join(f"{r['subject']} is {r['verdict']}" for _, r in decided.iterrows())
                if len(decided) else "no variant differs detectably")
        diffs = "; ".join(f"{r['subject']} {_pts(r['diff'])}" for _, r in tuned.iterrows())
        items.append((f"Against {base}", f"{metric_label(tuned['metric'].iloc[0])}, each variant's own best "
                                         f"configuration: {what} (difference in points: {diffs})."))
    if sweeps:
        items.append(("Sweeps", "; ".join(f"{s.experiment} {param_label(s.param)}: {s.result}" for s in sweeps)
                      + " (designed arms around the best configuration, the same seeds at every level)."))
    if curves:
        found = [c for c in curves if c.detectable]
        some = "; ".join(f"{c.experiment} {c.param} ({c.fidelity}): {c.result}" for c in found)
        items.append(("Sensitivity", f"{len(found)} of {len(curves)} fits show an effect of their parameter"
                                     + (f" ({some})" if found else "")
                                     + f"; {'the other ' if found else ''}{len(curves) - len(found)} show none "
                                       "in the range searched (F-test of a quadratic trend, p >= 0.05)."))
    return lead, items


def conclusion(ctable: pd.DataFrame, tuned: pd.DataFrame, curves: list, results: pd.DataFrame,
               spec: dict, name: str, sweeps: list | tuple = ()) -> tuple[str, str]:
    """The opening as (HTML, Markdown): see conclusion_items."""
    lead, items = conclusion_items(ctable, tuned, curves, results, spec, name, sweeps)
    e = html.escape
    h, md = [], []
    for title, body in items:
        if isinstance(body, str):
            h.append(f"<li><b>{e(title)}</b>: {e(body)}</li>")
            md.append(f"- **{title}**: {body}")
        else:
            h.append(f"<li><b>{e(title)}</b>:<ul>" + "".join(f"<li>{e(b)}</li>" for b in body) + "</ul></li>")
            md.append(f"- **{title}**:\n" + "\n".join(f"  - {b}" for b in body))
    return (f'<div class="conclusion"><p class="lead">{e(lead)}</p><ul>{"".join(h)}</ul></div>',
            "# Conclusion\n\n" + lead + "\n\n" + "\n".join(md) + "\n")


def _page(title: str, rep: _Report, opening: str, generated: str) -> str:
    css = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1250px;
color:#222;padding:0 1em} h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-top:1.4em} .tbl{border-collapse:collapse;font-size:.82em;margin:.6em 0}
.tbl th,.tbl td{border:1px solid #ddd;padding:3px 7px;text-align:right} .tbl th{background:#f3f3f3}
.figure{margin:.8em 0} .note{color:#8a4b00} nav a{margin-right:1em} img{max-width:100%}
.claims td:nth-child(1),.claims td:nth-child(9),.claims td:nth-child(10){text-align:left}
.claims.designed td{text-align:left}
.reproduced,.better{color:#1a7f1a;font-weight:600} .contradicted,.worse{color:#b00;font-weight:600}
.smaller-than-reported{color:#a15c00;font-weight:600} .open,.inconclusive{color:#666}
.not-exercised{color:#666;font-style:italic}
.conclusion{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.4em 1.2em;line-height:1.45}
.conclusion .lead{font-size:1.08em} .conclusion li{margin:.25em 0} .generated{color:#666;font-size:.85em}
"""
    # the conclusion comes first, then the claims section it summarises;
    # navigation and the notes (what could not be fitted) follow them
    links = (f'<a href="#s{i}">{html.escape(t)}</a>' for i, (t, _) in enumerate(rep.sections))
    nav = "<nav>" + " ".join(links) + "</nav>"
    body = [f'<h2 id="s{i}">{html.escape(t)}</h2>' + "".join(parts) for i, (t, parts) in enumerate(rep.sections)]
    notes = ""
    if rep.notes:
        notes = ('<h2 id="notes">Notes: what could not be fitted, and why</h2><ul>'
                 + "".join(f'<li class="note">{html.escape(n)}</li>' for n in rep.notes) + "</ul>")
    # plotly.js once, inline: the report must render on an offline machine.
    js = plotly.offline.get_plotlyjs()
    first, rest = (body[0], body[1:]) if body else ("", [])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{css}</style><script type="text/javascript">{js}</script></head><body>'
            f"<h1>{html.escape(title)}</h1><h2 id=\"conclusion\">Conclusion</h2>{opening}{first}{nav}"
            f"{''.join(rest)}{notes}<p class=\"generated\">{html.escape(generated)}</p></body></html>")


def _figure_or_note(rep: _Report, parts: list[str], name: str, png, fig, note: str) -> None:
    """Draw only what has data: otherwise one line saying so."""
    if png is None or fig is None:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
        return
    rep.figure(parts, name, png, fig)


def _levels_view(levels: pd.DataFrame) -> pd.DataFrame:
    """The categorical levels in reading order (fidelity by epoch, final last; levels numerically)."""
    if levels.empty:
        return levels
    fid_key = levels["fidelity"].map(lambda f: float("inf") if f == "final" else float(str(f).split()[-1]))
    rank = {}
    for (e, p), g in levels.groupby(["experiment", "param"]):
        rank.update({(e, p, lv): i for i, lv in enumerate(level_order(g["level"]))})
    lv_key = [rank[(e, p, str(lv))] for e, p, lv in zip(levels["experiment"], levels["param"], levels["level"])]
    v = levels.assign(_f=fid_key.to_numpy(), _l=lv_key).sort_values(["experiment", "param", "_f", "_l"])
    v = v.assign(mean_ci=[f"{_num(m, '.3f')}" + (f" ({_num(lo, '.3f')} to {_num(hi, '.3f')})"
                                                  if np.isfinite(lo) else "")
                          for m, lo, hi in zip(v["mean"], v["ci_lo"], v["ci_hi"])])
    v = v.rename(columns={"mean_ci": f"mean {metric_label('val_acc')} (95% CI)"})
    return _human(v, ["experiment", "param", "fidelity", "level", "n_trials", "n_completed",
                      f"mean {metric_label('val_acc')} (95% CI)", "n_diverged", "divergence_rate",
                      *(r.column for r in level_rates())])


def analyze(study_dir: str | Path, out_dir: str | os.PathLike[str] | None = None, log_to_mlflow: bool = True,
            tracking_uri: str | None = None, *, n_boot: int = 200, seed: int = 0,
            claims: dict | None = None) -> Path:
    """Analyse a study directory; returns the path of the HTML report.

    Writes into out_dir (default study_dir/analysis): report.html,
    conclusion.md, claims.parquet, claims.csv, claims.md, plots/ (a PNG per
    figure; the interactive versions are in the report), tables/ (CSV +
    Parquet). With log_to_mlflow, uploads all of it under "analysis/" to the
    study's MLflow parent run (study.json; `tracking_uri` overrides its URI),
    warning instead when that is not reachable. `claims` ({subject:
    [Claim...]}) replaces the variant registry's declared claims.
    """
    t0 = time.perf_counter()
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise StudyDirError(f"study directory {str(study_dir)!r} does not exist")
    out = Path(out_dir) if out_dir is not None else study_dir / "analysis"
    plot_dir, table_dir = out / "plots", out / "tables"
    plot_dir.mkdir(parents=True, exist_ok=True)
    table_dir.mkdir(parents=True, exist_ok=True)
    # a previous run's figures/tables (e.g. a curve that now has too few
    # trials) must not linger and get logged as if current; only our own kinds
    for pattern, d in (("*.png", plot_dir), ("*.html", plot_dir), ("*.js", plot_dir), ("*.csv", table_dir),
                       ("*.parquet", table_dir)):
        for f in d.glob(pattern):
            f.unlink()
    rep = _Report(plot_dir)

    _say(f"loading {study_dir}")
    df = load_results(study_dir)
    spec: dict = {}
    try:
        spec = load_spec(study_dir)
    except (FileNotFoundError, ValueError) as e:
        rep.notes.append(f"spec: {e}")
    name = str(spec.get("name") or (df["study"].iloc[0] if "study" in df.columns and len(df) else study_dir.name))
    history = None
    try:
        history = load_history(study_dir)
    except (FileNotFoundError, ValueError) as e:
        rep.notes.append(f"learning curves and rung fits skipped: {e}")
    _say(f"{len(df)} trials in {df['experiment'].nunique()} experiment(s)")

    # -- claims: what the conclusion summarises, the section right below it
    _say("testing the variants' claims")
    design = load_design(study_dir)
    ctable, cnotes = claims_table(df, history, spec, claims=claims, design=design)
    rep.notes += cnotes
    rep.files += write_claims(ctable, out)
    tuned = tuned_vs_tuned(df)
    _write_table(tuned, table_dir, "tuned_vs_tuned", rep.files)
    sec = rep.section("Claims")
    if is_designed(ctable).any():
        sec.append("<p>Claims answered by designed arms: two arms that differ only in what the claim names "
                   "(the method on and off, one level of an option and another, or the paper's own configuration "
                   "and its twin), run at the same seeds and compared seed by seed. After each round the study "
                   "gave more seeds only to claims still open that could be settled within their maximum "
                   "(docs/methods.md, <i>Seeds until settled</i>). The verdict comes from the 95% interval "
                   "that stays valid under those repeated looks (a group-sequential paired t test); the fixed-n "
                   "t and the paired bootstrap intervals are shown beside it for comparison only (both are too "
                   "narrow after looks, the bootstrap more so at few seeds). <i>Wins on a new seed</i>: the "
                   "predictive chance that the claimed side comes out ahead at one more seed (Student t, flat "
                   f"prior). Differences in accuracy points. n &lt; {MIN_N} is never a verdict.</p>")
    else:
        sec.append("<p>Each studied variant's declared claims, tested on this study's trials. Twin claims pair "
                   "the variant's repeat runs with its matched twin's runs at the same seed; level claims compare "
                   "search trials of one option value with another (the basis column names the epoch: final, or "
                   "an ASHA rung when pruning left too few completed trials). Estimate: mean difference in "
                   "accuracy points (percentage points); 95% Student-t interval, clipped to what accuracies allow; "
                   f"p-values Holm-adjusted across this table. n &lt; {MIN_N} is never a verdict; where every pair "
                   "was identical there is no spread and no test, and the table says so.</p>")
    sec.append(_claims_html(ctable))
    sec.append("<h3>Tuned vs tuned</h3><p>Each variant's repeat runs (its own best configuration) against "
               "resnet's repeat runs at the same depth, on test accuracy: paired t by seed when both ran the "
               "same seeds, Welch's t otherwise; differences in accuracy points; Holm over this table.</p>")
    sec.append(_tuned_html(tuned))
    _figure_or_note(rep, sec, "comparison", plots.differences_png(ctable, tuned),
                    plots.differences_plotly(ctable, tuned), "No claim or comparison has an estimate yet.")
    budget, budget_notes = budget_table(df)
    _write_table(budget, table_dir, "tuned_at_budget", rep.files)
    sec.append("<h3>Tuned vs tuned at a stated budget</h3><p>Which variant is better depends on how many "
               "configurations one may try: the expected best validation accuracy of n search trials (Dodge et "
               "al. 2019), estimated without bias from each search's trials (pruned ones at the best they "
               "reached), up to the smaller search. Where the curves cross, the answer changes with the "
               "budget.</p>")
    if budget_notes:
        sec.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in budget_notes) + "</ul>")
    _figure_or_note(rep, sec, "budget", plots.budget_png(budget), plots.budget_plotly(budget),
                    "No variant and baseline both have search trials at one depth.")

    counts = trial_counts(df)
    _write_table(counts, table_dir, "trial_counts", rep.files)
    sec = rep.section("Trials")
    sec.append(f"<p>Study <b>{html.escape(name)}</b> ({html.escape(str(study_dir))}): {len(df)} trials.</p>")
    sec.append(_table_html(_human(counts, ["experiment", "variant", "depth", "phase", *STATUSES, "best_val_acc"])))
    cmp = compare_variants(df, top_k=spec_top_k(study_dir))
    _write_table(cmp, table_dir, "comparison", rep.files)
    sec.append("<h3>Per variant</h3><p>Mean of each variant's repeat runs (else its top completed search "
               "trials, runs from top-search: optimistic) with a 95% t interval, clipped to [0, 1].</p>")
    view = cmp.assign(ci=[_ci(lo, hi, lambda v: _num(v, ".4f")) for lo, hi in zip(cmp["ci_lo"], cmp["ci_hi"])])
    sec.append(_table_html(_human(view, ["depth", "variant", "metric", "source", "n", "mean", "ci", "std",
                                         "n_diverged", "seeds"])))

    # -- designed sweeps: the sensitivity view; the fits over search trials below are the landscape
    sws, sweep_notes = sweeps(df, design, spec=spec)
    rep.notes += sweep_notes
    if sws:
        _say("designed sweeps")
        _write_table(pd.concat([s.levels for s in sws], ignore_index=True).reindex(columns=SWEEP_COLUMNS)
                     .assign(value=lambda t: t["value"].map(str)), table_dir, "sweeps", rep.files)
        sec = rep.section("Sensitivity: designed sweeps")
        sec.append("<p>Each swept option set to each level around the best configuration (everything else as "
                   "the best configuration), every level at the same seeds: the mean over seeds at each level "
                   "with its 95% t interval; orange marks the search's best configuration. Whether the levels "
                   "differ at all is an F test with seeds as blocks (what a seed does to every level alike is "
                   "taken out, so it can find differences smaller than the intervals suggest); where it finds "
                   "none (p &ge; 0.05) the sweep says <i>no detectable effect</i> over the levels tried.</p>")
        summ = pd.DataFrame([s.summary() for s in sws])
        sec.append(_table_html(_human(summ.assign(p_value=summ["p_value"].map(_p)),
                                      ["experiment", "param", "metric", "levels", "seeds", "result", "p_value",
                                       "test"])))
        for s in sws:
            rep.figure(sec, _slug("sweep", s.experiment, s.param), plots.sweep_png(s), plots.sweep_plotly(s))

    # -- sensitivity
    _say(f"fitting sensitivity curves, final and per ASHA rung ({n_boot} bootstrap resamples each)")
    sens = sensitivity(df, n_boot=n_boot, seed=seed, spec=spec, history=history)
    rep.notes += sens.notes
    summ = sens.summary()
    _write_table(summ, table_dir, "sensitivity_summary", rep.files)
    grid = pd.concat([c.to_frame() for c in sens.curves], ignore_index=True) if sens.curves else pd.DataFrame()
    _write_table(grid, table_dir, "sensitivity_curves", rep.files)
    sec = rep.section("Sensitivity landscape over search trials: numeric parameters" if sws
                      else "Sensitivity: numeric parameters")
    if sws:
        sec.append("<p>A secondary view: the search's own trials differ in every searched option at once, so "
                   "these fits show the landscape the search explored, not the effect of one option; the "
                   "designed sweeps above answer that.</p>")
    rungs = rung_epochs(spec)
    sec.append("<p>Validation accuracy against each searched parameter (axes from this study's search space): "
               "Gaussian-process fit (log axis for log-scale parameters) with a 95% bootstrap band of the fitted "
               "mean. Whether the parameter matters at all is an F-test of a quadratic trend against a constant: "
               "where it finds none (p &ge; 0.05) the fit says <i>no detectable effect</i> and is dashed; "
               "elsewhere it names the best value with its 95% bootstrap interval. One fit per fidelity: "
               "<b>final</b> uses completed trials; <b>epoch N</b> uses every search trial that reached ASHA rung "
               f"N (rungs here: {', '.join(map(str, rungs)) or 'none'}), pruned ones included, at that epoch.</p>")
    if sens.curves:
        shown = summ.assign(trend_p=summ["trend_p"].map(_p), fidelity=summ["fidelity"].map(fidelity_label),
                            peak=[f"{_num(m, '.3f')} ({_num(lo, '.3f')} to {_num(hi, '.3f')})"
                                  for m, lo, hi in zip(summ["max_mean"], summ["max_lo"], summ["max_hi"])])
        shown = shown.rename(columns={"peak": f"highest fitted {metric_label('val_acc')} (95% band)"})
        sec.append(_table_html(_human(shown, ["experiment", "param", "fidelity", "n", "result", "trend_p",
                                              f"highest fitted {metric_label('val_acc')} (95% band)"])))
        by: dict[tuple[str, str], list] = {}
        for c in sens.curves:
            by.setdefault((c.experiment, c.param), []).append(c)
        for (exp, param), cs in sorted(by.items()):
            rep.figure(sec, _slug("curve", exp, param), plots.curves_png(cs), plots.curves_plotly(cs))
    else:
        sec.append('<p class="note">No experiment had enough trials at any fidelity for a curve (see Notes).</p>')

    _say("categorical levels")
    _write_table(sens.levels, table_dir, "categorical_levels", rep.files)
    sec = rep.section("Sensitivity: categorical parameters")
    rates = "".join(f"; {html.escape(r.label)} ({html.escape(v)}) = {html.escape(r.text)}" for v, r in rate_owners())
    sec.append("<p>Per level and fidelity: mean validation accuracy with its 95% t interval clipped to [0, 1]; "
               f"divergence rate (final) = diverged / all search trials at that level{rates}. A rate that is "
               "zero at every level gets no panel: the figure's title says so.</p>")
    drawn = 0
    for (exp, param), _ in sens.levels.groupby(["experiment", "param"], sort=True):
        if plots.levels_drawable(sens.levels, exp, param):
            rep.figure(sec, _slug("levels", exp, param), plots.levels_png(sens.levels, exp, param),
                       plots.levels_plotly(sens.levels, exp, param))
            drawn += 1
        else:
            have = sorted({str(v) for v in sens.levels.loc[(sens.levels["experiment"] == exp)
                                                            & (sens.levels["param"] == param)
                                                            & sens.levels["mean"].notna(), "level"]})
            sec.append(f'<p class="note">{html.escape(exp)}: {html.escape(param_label(param))}: '
                       + (f"only level {html.escape(have[0])} has trials with a validation accuracy"
                          if have else "no level has a trial with a validation accuracy")
                       + ": nothing to compare, no figure.</p>")
    if drawn:
        sec.append(_table_html(_levels_view(sens.levels)))
    else:
        sec.append('<p class="note">No categorical parameter has a level with a usable trial.</p>')

    # -- the studied variants' own sections (epsilon's trade-offs)
    own = Sections(df, spec, history, n_boot, seed, rep, table_dir)
    studied = {*df["variant"].dropna(), *(df["subject"].dropna() if "subject" in df.columns else ())}
    for _, add in report_sections(studied):
        add(own)

    # -- importance
    _say("parameter importance (fANOVA, PED-ANOVA), final and per ASHA rung")
    imps, why = study_importances(study_dir, df, seed=seed, spec=spec)
    if why:
        rep.notes.append(why)
    if history is not None and len(history):
        imps += importances_by_rung(df, history, spec, seed=seed)
    imp = importance_frame(imps)
    _write_table(imp, table_dir, "importance", rep.files)
    sec = rep.section("Parameter importance")
    sec.append(f"<p>fANOVA and PED-ANOVA (Optuna), each normalised to sum 1, restricted to the parameters "
               f"searched in every trial used; final = completed trials, epoch N = every trial at that ASHA rung "
               f"scored by its validation accuracy then. Needs >= {MIN_TRIALS} trials.</p>")
    drawn = 0
    for r in imps:
        title = f"{r.experiment} ({r.fidelity}): importance (n={r.n}, from {r.source})"
        if r.note and r.table.empty:
            rep.notes.append(f"{r.experiment} ({r.fidelity}): no importance: {r.note}")
        elif r.note:
            sec.append(f'<p class="note">{html.escape(r.experiment)} ({r.fidelity}): {html.escape(r.note)}</p>')
        if not r.table.empty:
            rep.figure(sec, _slug("importance", r.experiment, r.fidelity.replace(" ", "")),
                       plots.importance_png(r.table, title), plots.importance_plotly(r.table, title))
            drawn += 1
    if not drawn:
        sec.append(f'<p class="note">No experiment had >= {MIN_TRIALS} trials at any fidelity: no importance.</p>')

    # -- learning curves
    if history is not None and len(history):
        _say("learning curves")
        sec = rep.section("Learning curves")
        for exp in sorted(history["experiment"].unique()):
            rep.figure(sec, _slug("learning", exp), plots.learning_png(history, exp, df),
                       plots.learning_plotly(history, exp, df))

    opening, opening_md = conclusion(ctable, tuned, sens.curves, df, spec, name, sws)
    (out / CONCLUSION_NAME).write_text(opening_md, encoding="utf-8")
    rep.files.append(out / CONCLUSION_NAME)
    generated = f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from {study_dir}."
    path = out / REPORT_NAME
    path.write_text(_page(f"resstudy analysis: {name}", rep, opening, generated), encoding="utf-8")
    _say(f"wrote {path} ({len(rep.files)} plot/table files)")

    if log_to_mlflow:
        log_artifacts(study_dir, out, tracking_uri=tracking_uri)
    _say(f"done in {time.perf_counter() - t0:.1f}s")
    return path


def _reachable(uri: str) -> tuple[bool, str]:
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as r:
                return r.status == 200, f"HTTP {r.status}"
        except (urllib.error.URLError, OSError) as e:
            return False, str(e)
    if uri.startswith("sqlite:"):
        p = sqlite_path(uri)
        if p is None:
            return False, "not an SQLite file URI (sqlite:///relative/path or sqlite:////absolute/path)"
        return p.is_file(), f"{p} missing"
    if uri.startswith("file:"):
        p = Path(urllib.parse.urlparse(uri).path)
        return p.exists(), f"{p} missing"
    return True, ""


def _local_artifact_root(artifact_uri: str, run_id: str) -> Path | None:
    """For a local (file) artifact URI, the experiment's store above the run's folder."""
    parsed = urllib.parse.urlparse(artifact_uri)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(urllib.parse.unquote(parsed.path))
    for parent in path.parents:
        if parent.name == run_id:
            return parent.parent
    return path.parent


def _redact(text: str) -> str:
    try:
        from study.tracking import redact_text
    except Exception:
        return text
    return redact_text(text)


def _study_run(study_dir: str | Path, tracking_uri: str | None, warn):
    """(client, run id, uri) of the study's MLflow parent run, or None after warn(why)."""
    try:
        meta = load_study_meta(study_dir)
    except (FileNotFoundError, ValueError) as e:
        return warn(str(e)) and None
    run_id = meta.get("mlflow_parent_run_id")
    if not (tracking_uri or meta.get("tracking_uri")) or not run_id:
        return warn(f"study.json lacks tracking_uri or mlflow_parent_run_id (keys: {sorted(meta)})") and None
    uri = tracking_uri or study_tracking_uri(study_dir, meta)
    ok, why = _reachable(uri)
    if not ok:
        return warn(f"tracking server {uri} not reachable ({why})") and None
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri), run_id, uri


def _claim_records(t: pd.DataFrame) -> tuple[list, list]:
    """The claims as MLflow metrics (claim.<key>.d<depth>.estimate / .p_holm / .reported) and
    tags (.verdict, .verdicts, .reported with its source)."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics, tags = [], []
    for _, r in t.iterrows():
        k = _slug(f"claim.{r['key']}.d{r['depth']}")
        for col, suffix in (("estimate", "estimate"), ("p_adj", "p_holm"), ("reported", "reported")):
            if col in r and pd.notna(r[col]):
                metrics.append(Metric(f"{k}.{suffix}", float(r[col]), now, 0))
        tags.append(RunTag(f"{k}.verdict", str(r["verdict"])))
        tags.append(RunTag(f"{k}.verdicts", str(r.get("verdicts") or r["verdict"])))
        if pd.notna(r.get("reported")):
            tags.append(RunTag(f"{k}.reported", reported_text(r)[:5000]))
    return metrics, tags


def log_claims(study_dir: str | Path, table: pd.DataFrame, tracking_uri: str | None = None) -> bool:
    """The claims' verdicts and reported effects as metrics and tags of the study's MLflow
    parent run (see _claim_records); a warning, not an error, when it cannot be reached.
    Opens no run, so none is left RUNNING."""
    def warn(msg: str) -> bool:
        _say(_redact(f"WARNING: claims not logged to MLflow: {msg}"))
        return False

    found = _study_run(study_dir, tracking_uri, warn)
    if not found:
        return False
    client, run_id, _ = found
    try:
        metrics, tags = _claim_records(table)
        for i in range(0, max(len(tags), len(metrics)), 900):  # MLflow's batch limits: 1000 tags, 1000 metrics
            client.log_batch(run_id, metrics=metrics[i:i + 900], tags=tags[i:i + 900])
    except Exception as e:  # an MLflow failure must not fail the command that finished the study
        return warn(f"{type(e).__name__}: {e}")
    return True


def log_artifacts(study_dir: str | Path, out_dir: str | Path, tracking_uri: str | None = None) -> bool:
    """Upload out_dir under "analysis/" to the study's MLflow parent run, and
    the claims as that run's metrics and tags (_claim_records); warn (not raise)
    when study.json, the server or the run is unavailable. Opens no run (it
    writes to the existing parent run by id), so none is left RUNNING; URIs in
    messages have credentials masked."""
    def warn(msg: str) -> bool:
        msg = _redact(f"analysis not logged to MLflow: {msg}")
        warnings.warn(msg, stacklevel=3)
        _say(f"WARNING: {msg}")
        return False

    found = _study_run(study_dir, tracking_uri, warn)
    if not found:
        return False
    client, run_id, uri = found
    try:
        run = client.get_run(run_id)
        store = _local_artifact_root(run.info.artifact_uri, run_id)
        if store is not None and not store.parent.exists():
            # a moved study dir: its runs still name the old local store, whose
            # folder is gone; writing would recreate a stale tree there
            return warn(f"the run's local artifact store {store} does not exist (study dir moved?)")
        client.log_artifacts(run_id, str(out_dir), artifact_path="analysis")
        claims = Path(out_dir) / "claims.parquet"
        if claims.is_file():
            metrics, tags = _claim_records(pd.read_parquet(claims))
            for i in range(0, max(len(tags), len(metrics)), 900):
                client.log_batch(run_id, metrics=metrics[i:i + 900], tags=tags[i:i + 900])
    except Exception as e:  # any MLflow/IO failure must not lose the report already on disk
        return warn(f"{type(e).__name__}: {e}")
    _say(_redact(f"logged {out_dir} to MLflow run {run_id} ({uri}) under analysis/"))
    return True


__all__ = ["analyze", "conclusion", "settle_cost", "log_artifacts", "log_claims", "trial_counts", "REPORT_NAME",
           "CONCLUSION_NAME"]
