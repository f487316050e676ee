"""The report's page and its parts: the HTML sections, figures (PNG and interactive) and tables
in words, the numbers' wording, and what a variant's own section is handed (Sections)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
from matplotlib.figure import Figure

from ..labels import column_label, metric_label, param_label
from ..load import STATUSES


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
