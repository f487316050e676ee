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
import time
from pathlib import Path

import numpy as np
import pandas as pd

from study.variants import DeclaredTradeoff

from .. import plots
from ..budget import budget_table
from ..claims import MIN_N, claims_table, is_designed, load_design, tuned_vs_tuned, write_claims
from ..compare import compare_variants, spec_top_k
from ..declared import level_rates, rate_owners, report_sections
from ..importance import MIN_TRIALS, importance_frame, importances_by_rung, study_importances
from ..labels import fidelity_label, metric_label, param_label
from ..load import STATUSES, StudyDirError, load_history, load_results, load_spec
from ..sensitivity import SWEEP_COLUMNS, level_order, rung_epochs, sensitivity, sweeps
from .claims_html import _claims_html, _tuned_html
from .conclusion import conclusion
from .mlflow_log import log_artifacts
from .page import (CONCLUSION_NAME, REPORT_NAME, Sections, _ci, _figure_or_note, _human, _num, _p, _page, _Report,
                   _say, _slug, _table_html, _write_table, trial_counts)
from .tradeoffs import section as tradeoff_section


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
    for _, declared in report_sections(studied):
        if isinstance(declared, DeclaredTradeoff):
            tradeoff_section(own, declared)
        else:
            declared(own)

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
