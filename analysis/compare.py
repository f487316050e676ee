"""Each variant's best configuration against the ResNet baseline, over seeds.

Which runs represent a variant: its phase "repeat" rows (the best search
config re-run for every seed) when there are any. Otherwise the top_k
completed search trials by val_acc, each with its own seed: different
configs selected for being best, so their mean is optimistic; the table's
`source` column says "top-search" to flag it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.stats.intervals import clip, diff_test, holm, mean_ci

from .declared import baseline as declared_baseline

METRICS = ("val_acc", "test_acc")
COLUMNS = ["depth", "variant", "metric", "source", "n", "mean", "ci_lo", "ci_hi", "std", "n_diverged",
           "baseline", "diff", "diff_lo", "diff_hi", "test", "p_value", "p_adj", "seeds"]


def best_runs(df: pd.DataFrame, *, top_k: int = 5) -> tuple[pd.DataFrame, str, int]:
    """(completed runs, source, diverged count) representing one variant at one depth."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    phase = df["phase"] if "phase" in df.columns else pd.Series("search", index=df.index)
    rep = df[phase == "repeat"]
    if len(rep):
        return rep[rep["status"] == "completed"], "repeat", int((rep["status"] == "diverged").sum())
    done = df[(phase == "search") & (df["status"] == "completed")]
    top = done.sort_values("val_acc", ascending=False, kind="stable").head(top_k)
    return top, "top-search", 0


def _by_seed(runs: pd.DataFrame, metric: str) -> pd.Series | None:
    """metric indexed by seed, or None when seeds repeat (then no pairing)."""
    s = runs.set_index("seed")[metric].astype(float)
    return s if s.index.is_unique else None


def compare_variants(df: pd.DataFrame, *, baseline: str | None = None, metrics=METRICS, top_k: int = 5,
                     conf: float = 0.95) -> pd.DataFrame:
    """One row per (depth, variant, metric): mean with its t interval (clipped
    to [0, 1]) over seeds, and the difference from the baseline at the same
    depth with its interval (clipped to [-1, 1]), two-sided p-value and p_adj
    (Holm within each metric). Paired t-test (by seed) when both sides ran
    exactly the same seeds, Welch's t-test otherwise; NaN with n < 2."""
    baseline = baseline or declared_baseline()
    rows = []
    for depth, dg in df.groupby("depth", sort=True):
        # by the variant under study: a twin arm's rows (variant "resnet" for
        # quotient's twin) belong to their subject, never to the baseline
        key = dg["subject"].fillna(dg["variant"]) if "subject" in dg.columns else dg["variant"]
        runs = {str(v): best_runs(g, top_k=top_k) for v, g in dg.groupby(key, sort=True)}
        order = sorted(runs, key=lambda v: (v != baseline, v))
        for metric in metrics:
            if metric not in df.columns:
                continue
            base = runs.get(baseline)
            for v in order:
                r, source, n_div = runs[v]
                vals = r[metric].astype(float)
                m, lo, hi, n = mean_ci(vals, conf)
                lo, hi = clip(lo, hi, (0.0, 1.0))  # accuracies cannot leave [0, 1]
                row = {"depth": int(depth), "variant": v, "metric": metric, "source": source, "n": n,
                       "mean": m, "ci_lo": lo, "ci_hi": hi,
                       "std": float(vals.std(ddof=1)) if n > 1 else float("nan"), "n_diverged": n_div,
                       "baseline": baseline, "diff": np.nan, "diff_lo": np.nan, "diff_hi": np.nan,
                       "test": "none", "p_value": np.nan,
                       "seeds": ",".join(str(s) for s in sorted(r["seed"].dropna().unique()))}
                if v == baseline:
                    row["test"] = "baseline"
                elif base is not None:
                    a, b = _by_seed(r, metric), _by_seed(base[0], metric)
                    if a is not None and b is not None and len(a) > 0 and set(a.index) == set(b.index):
                        t = diff_test(a.sort_index().to_numpy(), b.sort_index().to_numpy(), paired=True,
                                      conf=conf)
                    else:
                        t = diff_test(vals.to_numpy(), base[0][metric].astype(float).to_numpy(), paired=False,
                                      conf=conf)
                    lo, hi = clip(t.lo, t.hi, (-1.0, 1.0))
                    row.update(diff=t.diff, diff_lo=lo, diff_hi=hi, test=t.test, p_value=t.p_value)
                rows.append(row)
    out = pd.DataFrame(rows, columns=COLUMNS)
    # Holm within each metric: every variant-vs-baseline difference is one test
    for _, g in out.groupby("metric"):
        out.loc[g.index, "p_adj"] = holm(g["p_value"].to_numpy())
    return out


def compare_study(study_dir, results: pd.DataFrame | None = None) -> pd.DataFrame:
    """compare_variants on a study directory; top_k = the number of spec seeds."""
    from .load import load_results

    df = load_results(study_dir) if results is None else results
    return compare_variants(df, top_k=spec_top_k(study_dir))


def spec_top_k(study_dir, default: int = 5) -> int:
    """How many top search trials stand in for missing repeats: one per spec seed."""
    from .load import load_spec

    try:
        seeds = load_spec(study_dir).get("seeds")
    except (FileNotFoundError, ValueError):
        return default
    return len(seeds) if isinstance(seeds, list) and seeds else default


__all__ = ["best_runs", "compare_variants", "compare_study", "spec_top_k", "METRICS"]
