"""Claims answered by designed arms: the claims-table rows read from the driver's record
(study.json's "design"), and the words every view of a claim uses.

The verdict, its interval (valid under repeated looks), the level it was tested at
and the reported effect it was judged against come from the driver's last look; n,
the estimate, the fixed-n t and bootstrap intervals and the chance of beating the
other arm on a new seed are computed here from the arms' runs, paired by seed, for
display. A claim whose arms did not differ in what it is about is "not exercised",
with the reason the driver recorded, and never judged.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from study.stats.intervals import ALPHA, one_sample, paired_bootstrap
from study.stats.sequential import (CONTRADICTED, DIFF_RANGE, MIN_N, NOT_EXERCISED, OPEN, REPRODUCED, SMALLER,
                                    VERDICTS, p_beats, seeds_for_a_verdict, seeds_to_settle)

DESIGNED = "designed arms, paired by seed"
NOT_CONTROLLED = "not controlled"
PUBLISHED = "@published"  # a design key "<claim>@published": the paper's own configuration against its twin
SEQUENTIAL_TEST = "group-sequential paired t, O'Brien-Fleming-type alpha spending"
STOP_WORDS = {"settled": "reached a verdict", "max_seeds": "reached its maximum, {seeds}",
              "budget": "the study's budget ran out", "no_data": "no paired runs",
              "cannot_settle": "stopped early: no verdict was plausible within {seeds}", "running": "still running",
              "not_exercised": "not exercised"}
# Every verdict a claims-table row can hold: the stopping rule's four, and "not exercised".
ROW_VERDICTS = (*VERDICTS, NOT_EXERCISED)
OLD_VERDICTS = {"supported": REPRODUCED, "inconclusive": OPEN}  # what studies before the reported line recorded
# What a trial's seed draws (study/train.py seeds torch's init and the batch generator with it;
# study/data.py takes the held-out split, and the digits test set, from constants).
SEED_DRAWS = ("weight init", "data order")
AUGMENT_WORDS = {"crop_flip": "crop, flip", "crop": "crop"}
SEED_FIXES = "the train/validation split and the test set are the same at every seed"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def base_key(key: str) -> str:
    return key[: -len(PUBLISHED)] if key.endswith(PUBLISHED) else key


def load_design(study_dir) -> dict[str, Any] | None:
    """study.json's "design" (the driver's record of designed arms), or None
    for a study without one (older studies, or no study.json)."""
    from .load import StudyFileError, load_study_meta

    try:
        meta = load_study_meta(study_dir)
    except FileNotFoundError:
        return None
    design = meta.get("design")
    if design is not None and not isinstance(design, dict):
        raise StudyFileError(f"study.json in {str(study_dir)!r}: 'design' holds {type(design).__name__}, "
                             "expected an object keyed by experiment")
    return design or None


def variance_sources(rows: pd.DataFrame) -> str:
    """What differs between the seeds of a designed comparison, in words, from
    the runs' resolved options (augmentation only where it was on)."""
    parts = list(SEED_DRAWS)
    aug = sorted({str(a) for a in rows["augment"].dropna()} - {"none"}) if "augment" in rows.columns else []
    cut = "cutout" in rows.columns and (rows["cutout"].astype(float).fillna(0) > 0).any()
    what = [w for a in aug for w in AUGMENT_WORDS.get(a, a).split(", ")] + (["cutout"] if cut else [])
    if what:
        parts.append(f"augmentation ({', '.join(dict.fromkeys(what))})")
    return f"{', '.join(parts)}; {SEED_FIXES}"


def _per_seed(rows: pd.DataFrame, metric: str) -> pd.Series:
    """One value per seed (a retried run keeps its last record), completed runs only."""
    if metric not in rows.columns:
        return pd.Series(dtype=float)
    ok = rows[(rows["status"] == "completed") & np.isfinite(rows[metric].astype(float))]
    return ok.groupby("seed").tail(1).set_index("seed")[metric].astype(float)


def _shown(v: Any) -> str:
    return format(v, ".4g") if isinstance(v, float) else repr(v)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) else np.nan


def designed_rows(results: pd.DataFrame, design: Mapping[str, Any],
                  claims: Mapping[str, Sequence[Any]] | None = None) -> tuple[list[dict], list[str]]:
    """(rows, notes): one claims-table row per claim the design records, its
    "<key>@published" twin comparison included (setting "as published").

    The verdict, the interval valid under repeated looks and the level come
    from the driver's last recorded look; n, the estimate, the t and
    bootstrap intervals and the chance of winning on a new seed are computed
    from the arms' runs, paired by seed."""
    rows: list[dict] = []
    notes: list[str] = []
    if not design:
        return rows, notes
    family = sum(len((x or {}).get("claims") or {}) for x in design.values())
    texts = {(s, c.key): c.text for s, cl in (claims or {}).items() for c in cl}
    by_id = results.drop_duplicates("trial_id", keep="last").set_index("trial_id", drop=False)
    for exp, x in design.items():
        here = results[results["experiment"] == exp]
        if here.empty:
            notes.append(f"claims: the design names experiment {exp!r}, which has no finished trial yet")
            continue
        subject = str(subject_col(here).iloc[0])
        depth = int(here["depth"].iloc[0])
        for key, entry in ((x or {}).get("claims") or {}).items():
            text = texts.get((subject, base_key(key)), base_key(key).replace("_", " "))
            rows.append(_designed_row(by_id, subject, depth, key, text, entry, family))
    order = {"as tuned": 0, "as published": 1}
    rows.sort(key=lambda r: (r["subject"], r["depth"], base_key(r["key"]), order[r["setting"]]))
    return rows, notes


def _designed_row(by_id: pd.DataFrame, subject: str, depth: int, key: str, text: str, entry: Mapping,
                  family: int) -> dict:
    kind = str(entry.get("kind") or "twin")
    metric = str(entry.get("metric") or "test_acc")
    margin = _num(entry.get("margin"))
    null = -margin if kind == "noninferior" and np.isfinite(margin) else 0.0
    a, b = (list(entry.get("compare") or []) + ["", ""])[:2]
    arms = entry.get("arms") or {}
    rows_of = {arm: by_id.loc[by_id.index.intersection([str(r) for r in arms.get(arm) or []])] for arm in (a, b)}
    va, vb = _per_seed(rows_of[a], metric), _per_seed(rows_of[b], metric)
    seeds = sorted(set(va.index) & set(vb.index))
    d = (va.loc[seeds] - vb.loc[seeds]).to_numpy(dtype=float)
    looks = list(entry.get("looks") or [])
    last = looks[-1] if looks else {}
    row: dict[str, Any]
    row = {"claim": text, "subject": subject, "key": key, "depth": depth, "kind": kind, "metric": metric,
           "setting": "as published" if key.endswith(PUBLISHED) else "as tuned", "control": DESIGNED,
           "basis": f"{metric}: {a} minus {b}, paired by seed", "null": null, "test": SEQUENTIAL_TEST,
           "p_value": np.nan, "p_adj": np.nan, "gain": np.nan, "settle": "", "n_needed": np.nan,
           "stop": str(entry.get("stop") or "running"), "n_max": _num(last.get("n_max"))}
    both = pd.concat([rows_of[a], rows_of[b]])
    row["sources"] = variance_sources(both)
    row["seconds_per_seed"] = sum(float(rows_of[arm].loc[rows_of[arm]["status"] == "completed", "seconds"]
                                        .astype(float).median()) if "seconds" in rows_of[arm].columns
                                  else np.nan for arm in (a, b))
    level = _num(last.get("alpha"))
    row["alpha"] = level
    # the level each claim was tested at is its own column (alpha); NaN: the driver did not record it
    row["correction"] = f"Bonferroni across the study's {plural(family, 'designed claim')}"
    _reported(row, entry.get("reported"), last)
    acted = entry.get("acted") or []
    row["acted"] = "; ".join(f"{x['option']} {_shown(x['from'])} -> {_shown(x['to'])}" for x in acted)
    if acted:
        row["basis"] += f"; {row['acted']} (the claim was not exercised before: {acted[0]['why']})"
    t = one_sample(d, null=null, bounds=DIFF_RANGE)
    row.update(n=t.n, estimate=t.estimate, t_lo=t.lo, t_hi=t.hi, p_beat=p_beats(d), _sd=t.sd)
    row["boot_lo"], row["boot_hi"] = paired_bootstrap(d, bounds=DIFF_RANGE)
    row["ci_lo"], row["ci_hi"] = _num(last.get("lo")), _num(last.get("hi"))
    unpaired = sum(len(v) for v in (va, vb)) - 2 * len(seeds)
    if unpaired:
        row["basis"] += f" ({unpaired} run(s) without a partner at their seed: left out)"
    if last and int(last.get("n") or 0) != t.n:
        row["basis"] += f"; the last look saw {plural(int(last.get('n') or 0), 'pair')}"
    said = look_verdicts(last)
    if said != [OPEN] and t.n < MIN_N:  # a verdict from fewer than MIN_N pairs is no verdict
        said = [OPEN]
        row["basis"] += f"; the recorded verdict from {t.n} pair(s) is not taken"
    gain_metric = entry.get("gain_metric")
    if kind == "noninferior" and gain_metric:
        g = rows_of[a][rows_of[a]["status"] == "completed"]
        row["gain"] = float(g[gain_metric].astype(float).mean()) if gain_metric in g.columns and len(g) else np.nan
        if said != [OPEN] and not (np.isfinite(row["gain"]) and row["gain"] > 0):
            said = [NOT_EXERCISED]  # the method gave up nothing, so it was not put to the test
            row["settle"] = (f"the configuration tested has no {gain_metric.replace('_', ' ')} above 0: the claim "
                             "was not exercised")
    if row["stop"] == "not_exercised":
        said = [NOT_EXERCISED]
        row["settle"] = str(entry.get("why") or "the claim's arms did not differ in what it is about")
    row["verdict"], row["verdicts"] = said[0], "; ".join(said)
    if said == [OPEN] and not row["settle"]:
        row["settle"], row["n_needed"] = _designed_settle(row, level if np.isfinite(level) else ALPHA / family)
    return row


def look_verdicts(last: Mapping[str, Any]) -> list[str]:
    """The verdicts a recorded look gives (an older study's "supported" is "reproduced")."""
    said = [OLD_VERDICTS.get(str(v), str(v)) for v in (last.get("verdicts") or [last.get("verdict")]) if v]
    said = [v for v in said if v in VERDICTS and v != OPEN]
    return said or [OPEN]


def _reported(row: dict, line: Mapping[str, Any] | None, last: Mapping[str, Any]) -> None:
    """The reported effect the claim was judged against, as columns."""
    line = dict(line or {})
    value = line.get("value", last.get("reported"))
    row["reported"] = _num(value)
    row["reported_kind"] = str(line.get("kind") or ("reported" if value is not None else ""))
    row["reported_source"] = str(line.get("source") or "")
    where = [str(line[k]) for k in ("dataset",) if line.get(k)]
    if line.get("depth") is not None:
        where.append(f"depth {line['depth']}")
    row["reported_at"] = ", ".join(where)
    row["reported_match"] = str(line.get("match") or "")
    row["reported_arms"] = str(line.get("arms") or "")


def _designed_settle(row: Mapping, level: float) -> tuple[str, float]:
    """What would settle an open designed claim: the seeds a sequential design
    needs for an 80% chance at the difference and spread seen (n_needed, or
    NaN where none would)."""
    n, sd = int(row["n"]), float(row["_sd"]) if np.isfinite(row["_sd"]) else np.nan
    if row["stop"] == "running":
        return "still running: the study adds seeds while the claim is open", np.nan
    if n < MIN_N:
        return f"needs >= {MIN_N} paired seeds (has {n})", float(MIN_N)
    if sd == 0:
        return (f"every one of the {n} seeds gave the same difference: no spread to judge it against; more "
                "seeds would show one"), float(n + 1)
    reported = row.get("reported")
    line = reported if isinstance(reported, float) and np.isfinite(reported) else None
    sure = seeds_for_a_verdict(sd, row["null"], line, alpha=level)
    need = seeds_to_settle(row["estimate"] - row["null"], sd, alpha=level)
    if sure is not None and (need is None or sure <= need):
        sure = max(sure, n + 1)
        return (f"about {sure} paired seeds ({sure - n} more) make the interval narrower than the distance from "
                f"{row['null']:+.4g} to the reported {line:+.4g} at the spread seen, so that it must reach a "
                f"verdict (level {level:.3g}, a look after every seed)"), float(sure)
    if need is None:
        return ("no realistic number of seeds would settle it: the difference seen is tiny against the spread "
                "between seeds, and no reported effect bounds it"), np.nan
    need = max(need, n + 1)
    return (f"about {need} paired seeds ({need - n} more) for an 80% chance of a verdict at the difference and "
            f"spread seen so far (level {level:.3g}, a look after every seed)"), float(need)


def is_designed(table: pd.DataFrame) -> pd.Series:
    """Which rows come from designed arms (the others are not controlled)."""
    if "control" not in table.columns:
        return pd.Series(False, index=table.index)
    return table["control"] == DESIGNED


def stop_words(r) -> str:
    """Why a designed claim stopped, in words."""
    n_max = _num(r.get("n_max"))
    seeds = f"{int(n_max)} seeds" if np.isfinite(n_max) else "the seeds allowed"
    return STOP_WORDS.get(str(r.get("stop")), str(r.get("stop"))).format(seeds=seeds)




def subject_col(df: pd.DataFrame) -> pd.Series:
    if "subject" in df.columns:
        return df["subject"].fillna(df["variant"])
    return df["variant"]


def points(v: Any, signed: bool = True) -> str:
    """An accuracy (difference) in points: 0.0026 -> "+0.26"."""
    x = _num(v)
    return "" if not np.isfinite(x) else format(100 * x, "+.2f" if signed else ".2f")


def verdict_reason(r: Mapping[str, Any]) -> str:
    """Why a row says what it says, in one sentence: the interval against the null and the
    reported line (designed rows), the adjusted tests (the others), or why it was not judged."""
    said = [v for v in str(r.get("verdicts") or r.get("verdict") or OPEN).split("; ") if v]
    if said == [NOT_EXERCISED]:
        return f"not exercised: {r.get('settle') or 'the arms did not differ in what the claim is about'}"
    lo, hi, null, rep = (_num(r.get(k)) for k in ("ci_lo", "ci_hi", "null", "reported"))
    null = null if np.isfinite(null) else 0.0
    line = f"the reported {points(rep)}" if r.get("reported_kind") == "reported" else (
        f"the line {points(rep)}" if np.isfinite(rep) else "no reported line")
    if r.get("control") != DESIGNED:
        p, n = _num(r.get("p_adj")), _num(r.get("n"))
        if said == [OPEN]:
            why = (f"{int(n)} run(s), too few to test" if np.isfinite(n) and n < MIN_N else
                   f"no adjusted test below alpha (p_adj {p:.3g})" if np.isfinite(p) else "no test")
            return f"open: {why}; {r.get('settle') or ''}".rstrip("; ")
        return f"{' and '.join(said)}: adjusted tests against the null {points(null)} and {line} (p_adj {p:.3g})"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"open: no interval yet; {stop_words(r)}"
    iv = f"interval [{points(lo)}, {points(hi)}]"
    parts = []
    for v in said:
        if v == REPRODUCED:
            parts.append(f"reproduced: its lower end is above the null {points(null)}")
        elif v == SMALLER:
            parts.append(f"smaller than reported: its upper end is below {line}")
        elif v == CONTRADICTED:
            parts.append(f"contradicted: its upper end is below the null {points(null)}")
        else:
            parts.append(f"open: it holds the null {points(null)}" + (f" and {line}" if np.isfinite(rep) else "")
                         + f"; {stop_words(r)}")
    return f"{iv} points; " + "; ".join(parts)


def verdict_sentence(r: Mapping[str, Any]) -> str:
    """One claim for a person: "reported +0.26 points (Hui et al. 2024, results table: cifar10,
    depth 56), measured +0.12 [-0.40, +0.64] points at this scale: open"."""
    rep = _num(r.get("reported"))
    kind = r.get("reported_kind") or "reported"
    where = f": {r['reported_at']}" if r.get("reported_at") else ""
    null = _num(r.get("null"))
    if not np.isfinite(rep):
        head = "no reported effect"
    elif kind == "reported":
        head = f"reported {points(rep)} points ({r.get('reported_source')}{where})"
    elif r.get("kind") == "noninferior" and np.isfinite(null):
        # its line is no loss, its null the margin: say both, not a "smallest effect" of 0
        head = (f"no published figure: judged against no loss ({points(rep)} points) and the margin "
                f"({points(null)} points)")
    else:
        head = f"no published figure: smallest effect of interest {points(rep)} points (design.smallest_effect)"
    lo, hi = _num(r.get("ci_lo")), _num(r.get("ci_hi"))
    if np.isfinite(lo) and np.isfinite(hi):
        measured = f"measured {points(r.get('estimate'))} [{points(lo)}, {points(hi)}] points at this scale"
    elif np.isfinite(_num(r.get("estimate"))):
        measured = f"measured {points(r.get('estimate'))} points at this scale (no interval)"
    else:
        measured = "not measured"
    said = str(r.get("verdicts") or r.get("verdict") or OPEN).replace("; ", " and ")
    if said == NOT_EXERCISED and r.get("settle"):
        said += f" ({r['settle']})"
    return f"{head}, {measured}: {said}"
