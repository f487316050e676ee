"""The claims table: each variant's declared claims (study.variants.Claim), tested
on the study's own trials, with an estimate, a 95% interval and a verdict.

Kinds (see Claim):
- twin: the variant's repeat runs against its matched twin's runs at the same
  subject, depth and seed (phase "repeat" arm "variant" vs phase "twin" arm
  "twin"); estimate = mean paired difference of `metric`; paired t.
- noninferior: the same pairs; supported when the paired difference's lower
  bound is above -margin (p-value of H0: mean = -margin) and the variant's
  `gain_metric` (e.g. discarded_ratio) averages above 0.
- level: search trials of the subject with option = better against option =
  worse; Welch t. The final `metric` of completed trials when each side has
  >= 3 of them, else val_acc at the highest ASHA rung at which both sides
  have >= 3 trials (every trial that reached that epoch, pruned included):
  the `basis` column names the epoch.

Intervals: Student t, clipped to the metric's range ([-1, 1] for differences
of accuracies). Every claim is judged against the effect its paper reports
nearest the study's dataset and depth (Claim.judged_against; the spec's
design.smallest_effect where the paper gives none). Verdicts: n < 3 (pairs, or
trials on the smaller side) is always "open"; otherwise Holm across the
table's tests (each row's test against the null and its one-sided test
against the reported effect) at 0.05 decides "reproduced" (the claimed side of
the null), "contradicted" (the other side) and "smaller than reported" (below
the reported effect); a row can be reproduced and smaller than reported at
once. Open rows say what would settle it.
These rows are labelled "not controlled" (column `control`): a level claim
over search trials compares trials that differ in other options too, and the
twin pairs ran at a fixed number of seeds.

A study whose study.json holds "design" (the driver's record of designed
arms: see `designed_rows`) answers its claims with arms that differ only in
what the claim names, paired by seed and given seeds until the stopping rule
(study/stats/sequential.py) settles them (analysis/designed_claims.py). Those rows are read from the driver's
recorded looks (verdict and interval valid under repeated looks, never
re-decided here); the statistics beside them (t and bootstrap intervals, the
chance of beating the other arm on a new seed) are recomputed for display.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from study.stats.intervals import ALPHA, holm, n_for_power, one_sample, two_sample, zero_spread
from study.stats.sequential import CONTRADICTED, DIFF_RANGE, MIN_N, NOT_EXERCISED, OPEN, REPRODUCED, SMALLER
from study.variants import SMALLEST_EFFECT

from .declared import baseline as declared_baseline
from .designed_claims import (DESIGNED, NOT_CONTROLLED, PUBLISHED, ROW_VERDICTS, STOP_WORDS, base_key,
                              designed_rows, is_designed, load_design, plural, points, stop_words, subject_col,
                              variance_sources, verdict_reason, verdict_sentence)

# n_needed: the n "what would settle it" names (pairs, or trials per level), for costing it.
# Designed rows (control == DESIGNED) also fill: ci_lo/ci_hi, the interval valid under repeated
# looks; t_lo/t_hi and boot_lo/boot_hi, the fixed-n t and paired bootstrap intervals (display);
# p_beat, the predictive chance that the claimed arm beats the other on a new seed; sources,
# what the seed randomises; correction; alpha, the level the claim was tested at; stop, why it
# stopped; n_max; seconds_per_seed, median seconds of one run of each arm, for costing.
COLUMNS = ["claim", "subject", "key", "setting", "control", "kind", "depth", "metric", "basis", "n", "estimate",
           "ci_lo", "ci_hi", "t_lo", "t_hi", "boot_lo", "boot_hi", "p_beat", "p_value", "p_adj", "verdict", "settle",
           "stop", "null", "gain", "test", "sources", "correction", "alpha", "n_max", "n_needed", "seconds_per_seed",
           "verdicts", "reason", "reported", "reported_kind", "reported_source", "reported_at", "reported_match",
           "reported_arms", "acted"]
# reported..reported_arms: the effect each claim is judged against (value in the metric's units,
# "reported" or "smallest effect", where it comes from, its dataset and depth, how near the study
# that is, the paper's two numbers); verdicts: every verdict the row gives; reason: why, in one
# sentence (verdict_reason); acted: what the design moved to exercise the claim.
TUNED_COLUMNS = ["subject", "depth", "metric", "baseline", "test", "n", "n_baseline", "mean", "baseline_mean",
                 "diff", "ci_lo", "ci_hi", "p_value", "p_adj", "verdict"]


_subject_col = subject_col


def _arm(df: pd.DataFrame) -> pd.Series:
    if "arm" in df.columns:
        return df["arm"].fillna("variant")
    return pd.Series(np.where(df.get("phase", pd.Series("search", index=df.index)) == "twin", "twin", "variant"),
                     index=df.index)


def declared_claims(subjects: Iterable[str], plugins: Sequence[str] = ()) -> tuple[dict[str, list], list[str]]:
    """({subject: [Claim, ...]}, notes) from the variant registry; a variant with a
    twin and no explicit claims gets a default "beats its twin"."""
    notes: list[str] = []
    try:
        from study import variants as registry

        if plugins:
            registry.load_plugins(plugins)
    except Exception as e:  # a plugin that moved: analyse what can be analysed
        notes.append(f"claims: cannot load the variant registry or plugins ({type(e).__name__}: {e})")
        return {}, notes
    out: dict[str, list] = {}
    for s in subjects:
        try:
            v = registry.get_variant(s)
        except Exception as e:
            notes.append(f"claims: variant {s!r} is not registered here ({e}); its claims are not tested")
            continue
        claims = list(getattr(v, "claims", ()) or ())
        if not claims and getattr(v, "twin", None) is not None:
            claims = [registry.Claim(key=f"{s}_beats_twin", text=f"{s} beats its twin", kind="twin")]
        out[s] = claims
    return out, notes


def _norm(v: Any) -> str:
    """Option values compared as text: True/'True'/'true' are one level."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip().lower()


def pairs(df: pd.DataFrame, subject: str, depth: Any, metric: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Variant-arm repeat rows joined to twin-arm twin rows of one subject and
    depth on seed: columns seed, variant, twin (metric values) and, for
    noninferiority, the variant rows' other columns prefixed v_. Counts of
    rows left out (not completed, no partner) come back too."""
    subj, arm = _subject_col(df), _arm(df)
    phase = df["phase"] if "phase" in df.columns else pd.Series("search", index=df.index)
    here = (subj == subject) & (df["depth"] == depth)
    v = df[here & (arm == "variant") & (phase == "repeat")]
    t = df[here & (arm == "twin") & (phase == "twin")]
    counts = {"variant_rows": len(v), "twin_rows": len(t),
              "not_completed": int((v["status"] != "completed").sum() + (t["status"] != "completed").sum())}
    ok = lambda x: x[(x["status"] == "completed") & np.isfinite(x[metric].astype(float))]  # noqa: E731
    v, t = ok(v), ok(t)
    # one row per seed on each side (a retried repeat keeps its last record)
    v, t = v.groupby("seed").tail(1), t.groupby("seed").tail(1)
    m = v.add_prefix("v_").merge(t[["seed", metric]].rename(columns={metric: "twin"}), left_on="v_seed",
                                 right_on="seed")
    m["variant"] = m[f"v_{metric}"].astype(float)
    m["twin"] = m["twin"].astype(float)
    counts["unpaired"] = len(v) + len(t) - 2 * len(m)
    return m.sort_values("seed").reset_index(drop=True), counts


def _level_data(df: pd.DataFrame, history: pd.DataFrame | None, subject: str, depth: Any, claim,
                rungs: Sequence[int]) -> tuple[np.ndarray, np.ndarray, str, str | None]:
    """(better values, worse values, basis, why-not) for a level claim."""
    subj = _subject_col(df)
    phase = df["phase"] if "phase" in df.columns else pd.Series("search", index=df.index)
    g = df[(subj == subject) & (df["depth"] == depth) & (phase == "search")]
    opt = claim.option
    empty = np.array([])
    if opt not in g.columns or g[opt].isna().all():
        return empty, empty, "", f"{opt} is not an option of this study's {subject} trials"
    left_out = ""
    if claim.where is not None:
        keep = g.apply(lambda r: bool(claim.where(r.to_dict())), axis=1) if len(g) else pd.Series(dtype=bool)
        if (~keep).any():
            left_out = f"; {int((~keep).sum())} trial(s) left out, where the levels are one network"
        g = g[keep] if len(g) else g
        left_out = f"; only trials with {claim.where_text}" + left_out if claim.where_text else left_out
    lv = g[opt].map(_norm)
    b, w = g[lv == _norm(claim.better)], g[lv == _norm(claim.worse)]
    if not len(b) or not len(w):
        seen = sorted(set(lv.dropna()))
        return empty, empty, "", (f"search {opt} over both {claim.better!r} and {claim.worse!r} "
                                  f"(the search tried {', '.join(seen) or 'nothing'}{left_out})")
    metric = claim.metric

    def done(x):
        x = x[x["status"] == "completed"]
        return x[metric].astype(float).dropna().to_numpy() if metric in x.columns else empty

    fb, fw = done(b), done(w)
    if min(fb.size, fw.size) >= MIN_N:
        return fb, fw, f"final {metric} of completed search trials{left_out}", None
    best = (fb, fw, f"final {metric} of completed search trials{left_out}")
    if history is not None and len(history) and "val_acc" in history.columns:
        h = history[history["trial_id"].isin(g["trial_id"])]
        for e in sorted(rungs, reverse=True):
            at = h[h["epoch"] == e].groupby("trial_id").tail(1).set_index("trial_id")["val_acc"]
            rb = b["trial_id"].map(at).astype(float).dropna().to_numpy()
            rw = w["trial_id"].map(at).astype(float).dropna().to_numpy()
            if min(rb.size, rw.size) >= MIN_N:
                return rb, rw, f"val_acc at epoch {e} (ASHA rung; every search trial that reached it){left_out}", None
            if min(rb.size, rw.size) > min(best[0].size, best[1].size):
                best = (rb, rw, f"val_acc at epoch {e} (ASHA rung; every search trial that reached it){left_out}")
    return best[0], best[1], best[2], None


def _settle(kind: str, n: int, est: float, sd: float, null: float, m_tests: int, *,
            unit: str) -> tuple[str, int | None]:
    """What would settle an inconclusive row (more seeds, pairs, or trials),
    and the n it names (None where no n would)."""
    if n < MIN_N:
        return f"needs >= {MIN_N} {unit} (has {n})", MIN_N
    alpha = ALPHA / max(1, m_tests)  # Holm never tests stricter than Bonferroni
    delta = est - null
    need = n_for_power(delta, sd, alpha=alpha, groups=2 if kind == "level" else 1)
    if need is None:
        if not np.isfinite(delta) or delta == 0:
            return f"no difference observed: no realistic number of {unit} would decide it", None
        return (f"more than 10000 {unit}: the observed difference {delta:+.3g} is tiny against spread {sd:.3g}",
                None)
    more = max(need - n, 1)
    return (f"about {need} {unit} (+{more}) for 80% power at the observed difference {delta:+.3g} "
            f"and spread {sd:.3g} (alpha {alpha:.3g})"), max(need, n + 1)


def claims_table(results: pd.DataFrame, history: pd.DataFrame | None = None, spec: Mapping | None = None, *,
                 claims: Mapping[str, Sequence[Any]] | None = None, alpha: float = ALPHA,
                 design: Mapping[str, Any] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(table, notes): one row per (claim, depth) of every studied subject.

    claims: {subject: [Claim...]}; default: the variant registry's, for the
    subjects in the spec and the results. design: study.json's "design"
    (load_design); the claims it records are answered by their designed
    arms (designed_rows), the others as before, labelled not controlled."""
    from .sensitivity import rung_epochs

    spec = dict(spec or {})
    notes: list[str] = []
    subj = _subject_col(results)
    subjects = list(dict.fromkeys([*(spec.get("variants") or {}), *subj.dropna().astype(str).unique()]))
    if claims is None:
        claims, notes = declared_claims(subjects, tuple(spec.get("plugins") or ()))
    rungs = rung_epochs(spec)
    depths = sorted(results["depth"].dropna().unique()) if "depth" in results.columns else []
    drows, dnotes = designed_rows(results, design or {}, claims)
    notes += dnotes
    answered = {(r["subject"], r["depth"], base_key(r["key"])) for r in drows}
    rows = []
    for s, cl in claims.items():
        for depth in depths:
            if not ((subj == s) & (results["depth"] == depth)).any():
                continue
            for c in cl:
                if (s, int(depth), c.key) not in answered:
                    row = _row(results, history, s, depth, c, rungs)
                    _line(row, c, spec, int(depth))
                    rows.append(row)
    # the spread, and what a gain needs, feed "what would settle it"
    table = pd.DataFrame(drows + rows, columns=[*COLUMNS, "_sd", "_no_gain", "_p_small"])
    return finish(table, alpha), notes


def _line(row: dict, c: Any, spec: Mapping, depth: int) -> None:
    """The reported effect a row not answered by designed arms is judged against, and the
    one-sided p-value of "no smaller than it" (H0: difference >= reported)."""
    smallest = float(((spec.get("design") or {}).get("smallest_effect")) or SMALLEST_EFFECT)
    try:
        line = c.judged_against(str(spec.get("dataset") or ""), depth, smallest)
    except AttributeError:  # a claim object of an older declaration: no reported line
        return
    row.update(reported=line["value"], reported_kind=line["kind"], reported_source=line["source"],
               reported_match=line["match"], reported_arms=line["arms"],
               reported_at=", ".join([str(line["dataset"])] * bool(line["dataset"])
                                     + [f"depth {line['depth']}"] * (line["depth"] is not None)))
    n, est, sd = row["n"], row["estimate"], row["_sd"]
    if n >= MIN_N and np.isfinite(est) and np.isfinite(sd) and sd > 0:
        # the row's own t test moved to the reported line (Welch's se from the pooled spread and the
        # smaller group: a little conservative)
        from scipy import stats

        se = sd * np.sqrt((2 if row["kind"] == "level" else 1) / n)
        row["_p_small"] = float(stats.t.cdf((est - line["value"]) / se, n - 1))


def _no_gain(subject: str, gain_metric: str) -> str:
    """What would settle a noninferiority claim whose configuration gained nothing, from
    the subject's declaration: the options it sweeps (which set the method's strength)
    and the objectives a search may maximise beside val_acc."""
    from study.variants import UnknownVariantError, get_variant

    try:
        v = get_variant(subject)
        knobs, objectives = [s.option for s in v.sweeps], list(v.objectives)
    except UnknownVariantError:  # a plugin's variant not registered here: the claim's own words only
        knobs, objectives = [], []
    ways = [f"search a wider range of {' or '.join(knobs)}"] if knobs else []
    if objectives:
        ways.append(f"with objectives [{', '.join(['val_acc', *objectives])}]")
    said = f"the configuration tested has no {gain_metric.replace('_', ' ')} above 0"
    return f"{said}: {', or '.join(ways)}" if ways else f"{said}: the claim was not exercised"


def _row(df, history, subject, depth, c, rungs) -> dict:
    row = {"claim": c.text, "subject": subject, "key": c.key, "setting": "", "control": NOT_CONTROLLED,
           "kind": c.kind, "depth": int(depth),
           "metric": c.metric, "basis": "", "n": 0, "estimate": np.nan, "ci_lo": np.nan, "ci_hi": np.nan,
           "p_value": np.nan, "p_adj": np.nan, "verdict": OPEN, "settle": "", "null": 0.0,
           "gain": np.nan, "test": "", "_sd": np.nan, "_p_small": np.nan}
    if c.kind in ("twin", "noninferior"):
        if c.metric not in df.columns:
            row["settle"] = f"the results have no {c.metric} column"
            return row
        p, counts = pairs(df, subject, depth, c.metric)
        row["basis"] = f"{c.metric}: repeat vs twin runs, paired by seed"
        if counts["variant_rows"] == 0 or counts["twin_rows"] == 0:
            row["settle"] = (f"needs the repeat and twin phases ({counts['variant_rows']} repeat, "
                             f"{counts['twin_rows']} twin runs): repeat_best with >= {MIN_N} seeds")
            return row
        null = -float(c.margin or 0.0) if c.kind == "noninferior" else 0.0
        r = one_sample(p["variant"] - p["twin"], null=null, bounds=DIFF_RANGE)
        row.update(n=r.n, estimate=r.estimate, ci_lo=r.lo, ci_hi=r.hi, p_value=r.p_value, null=null, test=r.test,
                   _sd=r.sd)
        if c.kind == "noninferior" and c.gain_metric:
            col = f"v_{c.gain_metric}"
            row["gain"] = float(p[col].astype(float).mean()) if col in p.columns and len(p) else np.nan
            row["_no_gain"] = _no_gain(subject, c.gain_metric)
        if counts["unpaired"] or counts["not_completed"]:
            row["basis"] += (f" ({counts['not_completed']} run(s) not completed, {counts['unpaired']} without "
                             "a partner: left out)")
    elif c.kind == "level":
        b, w, basis, why = _level_data(df, history, subject, depth, c, rungs)
        row["basis"] = basis or f"{c.option}: {c.better} vs {c.worse} over search trials"
        row["claim_detail"] = None
        if why:
            row["settle"] = why
            return row
        r = two_sample(b, w, bounds=DIFF_RANGE)
        row.update(n=r.n, estimate=r.estimate, ci_lo=r.lo, ci_hi=r.hi, p_value=r.p_value, test=r.test, _sd=r.sd)
        row["basis"] += f"; {c.option}={c.better} ({b.size}) minus {c.option}={c.worse} ({w.size})"
    else:
        row["settle"] = f"unknown claim kind {c.kind!r} (twin, level, noninferior)"
    row.pop("claim_detail", None)
    return row


def finish(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm-adjust the table's tests (one family: every row with n >= 3 and a p-value,
    its test against the null and its one-sided test against the reported effect) and
    set verdicts and the "what would settle it" text. Designed rows keep the driver's."""
    t = table.copy()
    for c in ("_sd", "n_needed", "_p_small", "reported"):
        if c not in t.columns:
            t[c] = np.nan
    for c in ("verdicts", "reported_kind", "reported_source", "reported_at", "reported_match", "reported_arms",
              "acted"):
        t[c] = t[c].astype(object).fillna("") if c in t.columns else ""
    t["_no_gain"] = t["_no_gain"].astype(object).fillna("") if "_no_gain" in t.columns else ""
    # designed rows carry the driver's verdicts and their own correction: never re-decided here
    designed = (t["control"] == DESIGNED) if "control" in t.columns else pd.Series(False, index=t.index)
    testable = (t["n"] >= MIN_N) & t["p_value"].notna() & ~designed
    small = testable & t["_p_small"].notna()
    t["p_adj"] = np.nan
    t.loc[~designed, "n_needed"] = np.nan
    p_small_adj = pd.Series(np.nan, index=t.index)
    family = np.concatenate([t.loc[testable, "p_value"].to_numpy(float), t.loc[small, "_p_small"].to_numpy(float)])
    if family.size:
        adj = holm(family)
        t.loc[testable, "p_adj"] = adj[: int(testable.sum())]
        p_small_adj.loc[small] = adj[int(testable.sum()):]
    m_tests = int(family.size)
    if m_tests:
        t["correction"] = t["correction"].astype(object) if "correction" in t.columns else None
        t.loc[testable, "correction"] = f"Holm across the {plural(m_tests, 'test')} of this table"
    for i, r in t.iterrows():
        if designed[i]:
            continue
        if r["verdict"] != OPEN or (r["settle"] and not np.isfinite(r["estimate"])):
            t.at[i, "verdicts"] = t.at[i, "verdicts"] or r["verdict"]
            continue
        said = []
        if testable[i] and r["p_adj"] < alpha:
            said.append(REPRODUCED if r["estimate"] > r["null"] else CONTRADICTED)
        if CONTRADICTED not in said and p_small_adj[i] < alpha:
            said.append(SMALLER)
        if r["kind"] == "noninferior" and testable[i]:
            gain = r["gain"]
            if np.isfinite(gain) and gain <= 0:
                # the configuration tested discarded nothing: the claim was not exercised
                said = [NOT_EXERCISED]
                t.at[i, "settle"] = r["_no_gain"] or "the configuration tested has no gain above 0"
            elif said and not np.isfinite(gain):
                said = [OPEN]
                t.at[i, "settle"] = "the runs report no gain metric"
        said = said or [OPEN]
        t.at[i, "verdict"], t.at[i, "verdicts"] = said[0], "; ".join(said)
        if said == [OPEN] and not t.at[i, "settle"]:
            unit = "trials per level" if r["kind"] == "level" else "paired seeds"
            t.at[i, "settle"], need = _settle(r["kind"], int(r["n"]), r["estimate"], r["_sd"], r["null"],
                                              m_tests, unit=unit)
            t.at[i, "n_needed"] = np.nan if need is None else need
    t["reason"] = [verdict_reason(r) for _, r in t.iterrows()]
    return t.drop(columns=["_sd", "_no_gain", "_p_small"]).reindex(columns=COLUMNS)


def tuned_vs_tuned(results: pd.DataFrame, *, baseline: str | None = None, metric: str = "test_acc",
                   alpha: float = ALPHA) -> pd.DataFrame:
    """Each subject's repeat runs (its own best config) against the baseline's
    repeat runs at the same depth: paired t by seed when both ran the same
    seeds, Welch's t otherwise; t intervals clipped to [-1, 1]; Holm over this
    table (its own family)."""
    baseline = baseline or declared_baseline()
    subj, arm = _subject_col(results), _arm(results)
    phase = results["phase"] if "phase" in results.columns else pd.Series("search", index=results.index)
    rep = results[(phase == "repeat") & (arm == "variant") & (results["status"] == "completed")]
    rows = []
    if metric not in results.columns:
        return pd.DataFrame(columns=TUNED_COLUMNS)
    for depth in sorted(rep["depth"].unique()):
        here = rep[rep["depth"] == depth]
        base = here[subj.loc[here.index] == baseline].groupby("seed").tail(1)
        bs = base.set_index("seed")[metric].astype(float).dropna()
        for s in sorted(set(subj.loc[here.index]) - {baseline}):
            v = here[subj.loc[here.index] == s].groupby("seed").tail(1)
            vs = v.set_index("seed")[metric].astype(float).dropna()
            if len(bs) == 0 or len(vs) == 0:
                continue
            if set(vs.index) == set(bs.index):
                r = one_sample((vs - bs.loc[vs.index]).to_numpy(), bounds=DIFF_RANGE)
            else:
                r = two_sample(vs.to_numpy(), bs.to_numpy(), bounds=DIFF_RANGE)
            rows.append({"subject": s, "depth": int(depth), "metric": metric, "baseline": baseline, "test": r.test,
                         "n": int(len(vs)), "n_baseline": int(len(bs)), "mean": float(vs.mean()),
                         "baseline_mean": float(bs.mean()), "diff": r.estimate, "ci_lo": r.lo, "ci_hi": r.hi,
                         "p_value": r.p_value, "p_adj": np.nan, "verdict": "inconclusive"})
    t = pd.DataFrame(rows, columns=TUNED_COLUMNS)
    if len(t):
        ok = (t[["n", "n_baseline"]].min(axis=1) >= MIN_N) & t["p_value"].notna()
        t.loc[ok, "p_adj"] = holm(t.loc[ok, "p_value"].to_numpy())
        better = ok & (t["p_adj"] < alpha)
        t.loc[better & (t["diff"] > 0), "verdict"] = "better"
        t.loc[better & (t["diff"] < 0), "verdict"] = "worse"
    return t


def _fmt(v: Any, spec: str = ".3f") -> str:
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else format(float(v), spec)
    return str(v)


def _ci_text(r) -> str:
    if zero_spread(r["ci_lo"], r["ci_hi"], r["n"]):
        return f"none: all {int(r['n'])} {'pairs' if r['kind'] != 'level' else 'values'} identical"
    return f"[{_fmt(r['ci_lo'], '+.4f')}, {_fmt(r['ci_hi'], '+.4f')}]" if np.isfinite(r["ci_lo"]) else ""


def _p_text(r) -> str:
    """The Holm p, except where there was no spread: a t test is then undefined."""
    if zero_spread(r["ci_lo"], r["ci_hi"], r["n"]):
        return "no test (zero spread)"
    return _fmt(r["p_adj"], ".3g")


def reported_text(r) -> str:
    """The reported effect a row is judged against, with its source, in points."""
    rep = r.get("reported")
    if not isinstance(rep, (int, float)) or not np.isfinite(rep):
        return ""
    kind = "" if r.get("reported_kind") == "reported" else "smallest effect "
    where = f"; {r['reported_at']}" if r.get("reported_at") else ""
    return f"{kind}{points(rep)} ({r.get('reported_source')}{where})"


def claims_markdown(table: pd.DataFrame) -> str:
    """The claims as a Markdown table (what `resstudy status` and claims.md show)."""
    from tabulate import tabulate

    if table.empty:
        return "_No claims could be tested: no variant in this study declares one._\n"

    def said(r) -> str:
        return str(r.get("verdicts") or r["verdict"])

    if not is_designed(table).any():
        rows = [[r["claim"], r["depth"], r["n"], _fmt(r["estimate"], "+.4f"), _ci_text(r), reported_text(r),
                 _p_text(r), said(r), r["settle"]] for _, r in table.iterrows()]
        return tabulate(rows, headers=["claim", "depth", "n", "estimate", "95% CI", "reported (points)", "p (Holm)",
                                       "verdict", "what would settle it"], tablefmt="github",
                        disable_numparse=True) + "\n"
    rows = [[r["claim"] + (f" ({r['setting']})" if isinstance(r["setting"], str) and r["setting"] else ""),
             r["depth"], r["n"], _fmt(r["estimate"], "+.4f"), _ci_text(r), reported_text(r),
             f"level {_fmt(r['alpha'], '.3g')}" if d else _p_text(r), said(r),
             stop_words(r) if d else "", r["settle"]] for d, (_, r) in zip(is_designed(table), table.iterrows())]
    return tabulate(rows, headers=["claim", "depth", "n", "estimate", "95% CI (repeated looks where designed)",
                                   "reported (points)", "p (Holm) or level", "verdict", "stopped",
                                   "what would settle it"], tablefmt="github", disable_numparse=True) + "\n"


def write_claims(table: pd.DataFrame, out_dir) -> list:
    """claims.parquet, claims.csv and claims.md in out_dir."""
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "claims.parquet", out / "claims.csv", out / "claims.md"]
    table.to_parquet(paths[0], index=False)
    table.to_csv(paths[1], index=False)
    designed = ("Designed rows: arms that differ only in what the claim names, paired by seed, given seeds "
                "until a group-sequential paired t test reaches a verdict; their 95% interval stays valid under "
                "the looks taken after every round; Bonferroni across the designed claims (each row names its "
                "level). " if is_designed(table).any() else "")
    paths[2].write_text(
        "# Claims\n\nEstimate: mean difference (variant minus twin, or better minus worse level). Verdicts: "
        "reproduced (the interval above 0, or above minus the margin of a non-inferiority claim), smaller than "
        "reported (below the effect the paper reports, or the spec's smallest effect of interest), "
        "contradicted (below 0, or below minus the margin), open; not exercised: the arms did not differ in "
        "what the claim is about, so it was not judged. " + designed
        + "Rows not controlled: 95% Student-t interval clipped to [-1, 1]; p-values Holm-Bonferroni adjusted "
        f"across those rows. n < {MIN_N} is never a verdict.\n\n" + claims_markdown(table), encoding="utf-8")
    return paths


__all__ = ["claims_table", "declared_claims", "pairs", "finish", "tuned_vs_tuned", "claims_markdown",
           "write_claims", "COLUMNS", "TUNED_COLUMNS", "MIN_N", "ALPHA", "designed_rows", "load_design",
           "variance_sources", "is_designed", "stop_words", "DESIGNED", "NOT_CONTROLLED", "PUBLISHED",
           "ROW_VERDICTS", "STOP_WORDS", "points", "verdict_sentence", "reported_text"]
