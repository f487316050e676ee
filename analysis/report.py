"""`analyze`: the whole analysis of one study directory, written as PNG and
HTML plots, CSV/Parquet tables and ONE self-contained HTML report (plotly.js
inlined once, no network needed to open it), then logged to the study's
MLflow parent run."""

from __future__ import annotations

import html
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.offline
from matplotlib.figure import Figure

from . import plots
from .claims import MIN_N, claims_table, tuned_vs_tuned, write_claims
from .compare import compare_variants, spec_top_k
from .importance import MIN_TRIALS, importance_frame, importances_by_rung, study_importances
from .load import (StudyDirError, load_history, load_results, load_spec, load_study_meta, sqlite_path,
                   tracking_uri as study_tracking_uri)
from .sensitivity import epsilon_tradeoffs, rung_epochs, sensitivity

REPORT_NAME = "report.html"


def _say(msg: str) -> None:
    print(f"[analyze] {msg}", flush=True)


def _slug(*parts) -> str:
    s = "-".join(str(p) for p in parts if str(p))
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


@dataclass
class _Report:
    """Collects sections; writes each figure as PNG + standalone HTML on the way."""

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
        png.savefig(png_path, dpi=110)
        html_path = self.plot_dir / f"{name}.html"
        # "directory": each standalone HTML loads the plotly.min.js written next
        # to it once, instead of embedding 4 MB per plot.
        fig.write_html(html_path, include_plotlyjs="directory", full_html=True)
        self.files += [png_path, html_path]
        self._n += 1
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{self._n}",
                          config={"displaylogo": False, "responsive": True})
        parts.append(f'<div class="figure">{div}</div>')


def _table_html(df: pd.DataFrame, max_rows: int = 200, empty: str = "Nothing to show.") -> str:
    if df.empty:
        return f'<p class="note">{html.escape(empty)}</p>'
    more = f"<p><em>{len(df) - max_rows} more rows in the CSV</em></p>" if len(df) > max_rows else ""
    return df.head(max_rows).to_html(index=False, classes="tbl", border=0, na_rep="",
                                      float_format=lambda v: f"{v:.4g}") + more


def _write_table(df: pd.DataFrame, tables: Path, name: str, files: list[Path]) -> None:
    csv, pq = tables / f"{name}.csv", tables / f"{name}.parquet"
    df.to_csv(csv, index=False)
    df.to_parquet(pq, index=False)
    files += [csv, pq]


def trial_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Trials per experiment, phase and status, and the best completed val_acc."""
    c = df.pivot_table(index=["experiment", "variant", "depth", "phase"], columns="status", values="trial_id",
                       aggfunc="count", fill_value=0).reset_index()
    c.columns.name = None
    for s in ("completed", "pruned", "diverged", "failed"):
        if s not in c.columns:
            c[s] = 0
    best = df[df["status"] == "completed"].groupby(["experiment", "phase"])["val_acc"].max()
    c["best_val_acc"] = [best.get((e, p), float("nan")) for e, p in zip(c["experiment"], c["phase"])]
    return c


def _page(title: str, rep: _Report, intro: str) -> str:
    css = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1250px;
color:#222;padding:0 1em} h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin-top:1.4em} .tbl{border-collapse:collapse;font-size:.82em;margin:.6em 0}
.tbl th,.tbl td{border:1px solid #ddd;padding:3px 7px;text-align:right} .tbl th{background:#f3f3f3}
.figure{margin:.8em 0} .note{color:#8a4b00} nav a{margin-right:1em} img{max-width:100%}
.claims td:nth-child(1),.claims td:nth-child(10),.claims td:nth-child(11){text-align:left}
.supported{color:#1a7f1a;font-weight:600} .contradicted{color:#b00;font-weight:600} .inconclusive{color:#666}
"""
    # the claims section comes first: it is what the study was run to answer;
    # navigation and the notes (what could not be fitted) follow it
    nav = "<nav>" + " ".join(f'<a href="#s{i}">{html.escape(t)}</a>' for i, (t, _) in enumerate(rep.sections)) + "</nav>"
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
            f"<h1>{html.escape(title)}</h1>{intro}{first}{nav}{''.join(rest)}{notes}</body></html>")


def _claims_html(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p><em>No claim could be tested: no studied variant declares one.</em></p>"
    show = table[["claim", "subject", "depth", "n", "estimate", "ci_lo", "ci_hi", "p_adj", "verdict", "settle",
                  "basis"]].rename(columns={"ci_lo": "95% lo", "ci_hi": "95% hi", "p_adj": "p (Holm)",
                                            "settle": "what would settle it"})
    out = show.to_html(index=False, classes="tbl claims", border=0, na_rep="", escape=True,
                       float_format=lambda v: f"{v:.4g}")
    for v in ("supported", "contradicted", "inconclusive"):
        out = out.replace(f"<td>{v}</td>", f'<td class="{v}">{v}</td>')
    return out


def _figure_or_note(rep: _Report, parts: list[str], name: str, png, fig, note: str) -> None:
    """Draw only what has data: otherwise one line saying so."""
    if png is None or fig is None:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
        return
    rep.figure(parts, name, png, fig)


def analyze(study_dir: str | Path, out_dir: str | Path | None = None, log_to_mlflow: bool = True,
            tracking_uri: str | None = None, *, n_boot: int = 200, seed: int = 0,
            claims: dict | None = None) -> Path:
    """Analyse a study directory; returns the path of the HTML report.

    Writes into out_dir (default study_dir/analysis): report.html, claims.parquet,
    claims.csv, claims.md, plots/ (PNG + interactive HTML per figure), tables/
    (CSV + Parquet). With log_to_mlflow, uploads all of it under "analysis/"
    to the study's MLflow parent run (study.json; `tracking_uri` overrides
    its URI), warning instead when that is not reachable. `claims` ({subject:
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
    for pattern, d in (("*.png", plot_dir), ("*.html", plot_dir), ("*.csv", table_dir), ("*.parquet", table_dir)):
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

    # -- claims: the first screen
    _say("testing the variants' claims")
    ctable, cnotes = claims_table(df, history, spec, claims=claims)
    rep.notes += cnotes
    rep.files += write_claims(ctable, out)
    tuned = tuned_vs_tuned(df)
    _write_table(tuned, table_dir, "tuned_vs_tuned", rep.files)
    sec = rep.section("Claims")
    sec.append("<p>Each studied variant's declared claims, tested on this study's trials. Twin claims pair "
               "the variant's repeat runs with its matched twin's runs at the same seed (test_acc); level "
               "claims compare search trials of one option value with another (the basis column names the "
               "epoch: final, or an ASHA rung when pruning left too few completed trials). Estimate: mean "
               "difference; 95% Student-t interval clipped to [-1, 1]; p-values Holm-Bonferroni adjusted "
               f"across this table. n &lt; {MIN_N} is never a verdict.</p>")
    sec.append(_claims_html(ctable))
    sec.append("<h3>Tuned vs tuned</h3><p>Each variant's repeat runs (its own best configuration) against "
               "resnet's repeat runs at the same depth, on test_acc: paired t by seed when both ran the same "
               "seeds, Welch's t otherwise; intervals clipped to [-1, 1]; Holm over this table.</p>")
    sec.append(_table_html(tuned, empty="No repeat runs of resnet and another variant at the same depth: "
                                        "nothing to compare."))
    _figure_or_note(rep, sec, "comparison", plots.differences_png(ctable, tuned),
                    plots.differences_plotly(ctable, tuned), "No claim or comparison has an estimate yet.")

    counts = trial_counts(df)
    _write_table(counts, table_dir, "trial_counts", rep.files)
    sec = rep.section("Trials")
    sec.append(f"<p>Study <b>{html.escape(name)}</b> ({html.escape(str(study_dir))}): {len(df)} trials.</p>")
    sec.append(_table_html(counts))
    cmp = compare_variants(df, top_k=spec_top_k(study_dir))
    _write_table(cmp, table_dir, "comparison", rep.files)
    sec.append("<h3>Per variant</h3><p>Mean of each variant's repeat runs (else its top completed search "
               "trials, source=top-search, optimistic) with a t interval clipped to [0, 1].</p>")
    sec.append(_table_html(cmp[["depth", "variant", "metric", "source", "n", "mean", "ci_lo", "ci_hi", "std",
                                "n_diverged", "seeds"]]))

    # -- sensitivity
    _say(f"fitting sensitivity curves, final and per ASHA rung ({n_boot} bootstrap resamples each)")
    sens = sensitivity(df, n_boot=n_boot, seed=seed, spec=spec, history=history)
    rep.notes += sens.notes
    summ = sens.summary()
    _write_table(summ, table_dir, "sensitivity_summary", rep.files)
    grid = pd.concat([c.to_frame() for c in sens.curves], ignore_index=True) if sens.curves else pd.DataFrame()
    _write_table(grid, table_dir, "sensitivity_curves", rep.files)
    sec = rep.section("Sensitivity: numeric parameters")
    rungs = rung_epochs(spec)
    sec.append("<p>val_acc against each searched parameter (axes from this study's search space): "
               "Gaussian-process fit (log10 axis for log-scale parameters), 95% bootstrap band of the fitted "
               "mean, and the argmax with its 95% bootstrap interval. One fit per fidelity: <b>final</b> uses "
               "completed trials; <b>epoch N</b> uses every search trial that reached ASHA rung N "
               f"(rungs here: {', '.join(map(str, rungs)) or 'none'}), pruned ones included, at that epoch.</p>")
    if sens.curves:
        sec.append(_table_html(summ))
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
    sec.append("<p>Per level and fidelity: mean val_acc with its 95% t interval clipped to [0, 1]; divergence "
               "rate (final) = diverged / all search trials at that level; dead-signal rate (quotient) = fraction "
               "of trials whose final q_dead_frac (share of quotient elements &lt; 1e-3) exceeds 0.5.</p>")
    drawn = 0
    for (exp, param), _ in sens.levels.groupby(["experiment", "param"], sort=True):
        if plots.levels_drawable(sens.levels, exp, param):
            rep.figure(sec, _slug("levels", exp, param), plots.levels_png(sens.levels, exp, param),
                       plots.levels_plotly(sens.levels, exp, param))
            drawn += 1
    if drawn:
        sec.append(_table_html(sens.levels))
    else:
        sec.append('<p class="note">No categorical parameter has a level with a usable trial.</p>')

    # -- epsilon
    trades = epsilon_tradeoffs(df, n_boot=n_boot, seed=seed, spec=spec)
    if trades:
        _say("epsilon trade-offs")
        sec = rep.section("epsilon-ResNet trade-offs")
        sec.append("<p>Compression against epsilon, and validation accuracy against parameter reduction over "
                   "every completed search trial. The Pareto front holds the trials no other beats on both; it "
                   "is drawn on val_acc so the test set plays no part in choosing. test_acc is shown only for "
                   "the final pick (the front's best val_acc).</p>")
        pts = []
        for t in trades:
            rep.notes += t.notes
            if len(t.points):
                rep.figure(sec, _slug("epsilon", t.experiment), plots.tradeoff_png(t), plots.tradeoff_plotly(t))
                front = t.front().rename(columns={"acc": "val_acc"})
                sec.append(f"<h3>{html.escape(t.experiment)}: Pareto front</h3>" + _table_html(front))
            else:
                sec.append(f'<p class="note">{html.escape(t.experiment)}: no completed search trial: no '
                           "trade-off to draw.</p>")
            pts.append(t.points.assign(experiment=t.experiment, acc_col=t.acc_col))
        _write_table(pd.concat(pts, ignore_index=True), table_dir, "epsilon_tradeoff", rep.files)

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
               f"searched in every trial used; final = COMPLETE trials, epoch N = every trial at that ASHA rung "
               f"scored by its val_acc then. Needs >= {MIN_TRIALS} trials.</p>")
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

    n_sup = int((ctable["verdict"] == "supported").sum()) if len(ctable) else 0
    intro = (f"<p>Study <b>{html.escape(name)}</b>: {len(df)} trials; {len(ctable)} claim row(s), {n_sup} "
             f"supported. Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>")
    path = out / REPORT_NAME
    path.write_text(_page(f"resstudy analysis: {name}", rep, intro), encoding="utf-8")
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


def log_artifacts(study_dir: str | Path, out_dir: str | Path, tracking_uri: str | None = None) -> bool:
    """Upload out_dir under "analysis/" to the study's MLflow parent run, and
    the claims as that run's metrics (claim.<key>.d<depth>.estimate / .p_holm)
    and tags (.verdict); warn (not raise) when study.json, the server or the
    run is unavailable. Opens no run (it writes to the existing parent run by
    id), so none is left RUNNING; URIs in messages have credentials masked."""
    def warn(msg: str) -> bool:
        msg = _redact(f"analysis not logged to MLflow: {msg}")
        warnings.warn(msg, stacklevel=3)
        _say(f"WARNING: {msg}")
        return False

    try:
        meta = load_study_meta(study_dir)
    except (FileNotFoundError, ValueError) as e:
        return warn(str(e))
    run_id = meta.get("mlflow_parent_run_id")
    if not (tracking_uri or meta.get("tracking_uri")) or not run_id:
        return warn(f"study.json lacks tracking_uri or mlflow_parent_run_id (keys: {sorted(meta)})")
    uri = tracking_uri or study_tracking_uri(study_dir, meta)
    ok, why = _reachable(uri)
    if not ok:
        return warn(f"tracking server {uri} not reachable ({why})")
    import mlflow
    from mlflow.entities import Metric, RunTag

    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.get_run(run_id)
        store = _local_artifact_root(run.info.artifact_uri, run_id)
        if store is not None and not store.parent.exists():
            # a moved study dir: its runs still name the old local store, whose
            # folder is gone; writing would recreate a stale tree there
            return warn(f"the run's local artifact store {store} does not exist (study dir moved?)")
        client.log_artifacts(run_id, str(out_dir), artifact_path="analysis")
        claims = Path(out_dir) / "claims.parquet"
        if claims.is_file():
            t = pd.read_parquet(claims)
            now = int(time.time() * 1000)
            metrics, tags = [], []
            for _, r in t.iterrows():
                k = _slug(f"claim.{r['key']}.d{r['depth']}")
                for col, suffix in (("estimate", "estimate"), ("p_adj", "p_holm")):
                    if pd.notna(r[col]):
                        metrics.append(Metric(f"{k}.{suffix}", float(r[col]), now, 0))
                tags.append(RunTag(f"{k}.verdict", str(r["verdict"])))
            if metrics or tags:
                client.log_batch(run_id, metrics=metrics, tags=tags)
    except Exception as e:  # any MLflow/IO failure must not lose the report already on disk
        return warn(f"{type(e).__name__}: {e}")
    _say(_redact(f"logged {out_dir} to MLflow run {run_id} ({uri}) under analysis/"))
    return True


__all__ = ["analyze", "log_artifacts", "trial_counts", "REPORT_NAME"]
