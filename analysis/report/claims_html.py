"""The claims table, the designed rows and the tuned comparison as the report shows them."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd

from study.stats.intervals import zero_spread

from ..claims import (PUBLISHED, ROW_VERDICTS, is_designed, reported_text,
                     stop_words)
from ..labels import METRICS, metric_label, param_label
from .page import _ci, _num, _p, _pts, _table_html


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
