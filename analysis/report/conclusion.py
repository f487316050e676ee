"""The report's opening: what the claims table supports, contradicts or leaves open, and for each
open claim what would settle it and what that costs at this study's pace."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from study.stats.intervals import zero_spread

from ..claims import DESIGNED, MIN_N, ROW_VERDICTS, is_designed, stop_words, verdict_sentence
from ..labels import metric_label, param_label
from .claims_html import _settle_words
from .page import _ci, _p, _pts


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
