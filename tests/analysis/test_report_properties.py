"""What a reader of the report is promised: a conclusion first, a flat fit
called flat, no figure without information, words instead of column names,
numeric categories in numeric order, a zero-spread row explained, and each
open claim's cost to settle."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.claims import ROW_VERDICTS, claims_markdown, claims_table
from analysis.labels import METRICS
from analysis.report import _claims_html, analyze, settle_cost
from analysis.sensitivity import categorical_levels, fit_curve
from study.variants import Claim

from .conftest import _row, twin_pairs

SPEC = {"epochs": 6, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}
RAW = re.compile(r"\b[a-z]+_[a-z_]+\b")  # an identifier such as n_baseline, p_adj, val_acc


def _legend(fig) -> str:
    return " ".join(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())


def test_a_flat_fit_says_no_detectable_effect_and_names_no_argmax():
    rng = np.random.default_rng(0)
    x = 10 ** rng.uniform(-3, -1, 30)
    flat = fit_curve(x, 0.9 + rng.normal(0, 0.01, 30), log=True, n_boot=50, param="weight_decay", metric="val_acc")
    assert not flat.detectable and flat.trend_p >= 0.05
    assert flat.result == f"no detectable effect in [{x.min():.3g}, {x.max():.3g}]"
    row = flat.summary()
    assert np.isnan(row["argmax"]) and np.isnan(row["argmax_lo"]) and row["result"] == flat.result
    legend = _legend(plots.curves_png([flat]))
    assert "no detectable effect in [" in legend and "best near" not in legend
    # the same trials with a planted optimum: found, and named
    peaked = fit_curve(x, 0.9 - 0.2 * (np.log10(x) + 2) ** 2 + rng.normal(0, 0.01, 30), log=True, n_boot=50,
                       param="weight_decay", metric="val_acc")
    assert peaked.detectable and peaked.result.startswith("best near ")
    assert abs(np.log10(peaked.summary()["argmax"]) + 2) < 0.3
    assert "best near" in _legend(plots.curves_png([peaked]))


def test_the_report_calls_irrelevant_parameters_flat(analyzed_report):
    out = analyzed_report.parent
    summ = pd.read_csv(out / "tables" / "sensitivity_summary.csv")
    final = summ[summ["fidelity"] == "final"].set_index(["experiment", "param"])
    # planted: side_weight and resnet's weight_decay do nothing; epsilon and lr have an optimum
    for key in (("syn-epsilon-d8", "side_weight"), ("syn-resnet-d8", "weight_decay")):
        assert not final.loc[key, "detectable"] and np.isnan(final.loc[key, "argmax"]), final.loc[key]
        assert final.loc[key, "result"].startswith("no detectable effect in [")
    for key in (("syn-epsilon-d8", "epsilon"), ("syn-resnet-d8", "lr")):
        assert final.loc[key, "detectable"] and final.loc[key, "result"].startswith("best near")
    text = analyzed_report.read_text()
    assert text.count("no detectable effect in [") >= 2


@pytest.fixture(scope="module")
def quiet_study(tmp_path_factory):
    """The synthetic study with nothing diverged or dead and no block discarded
    by any epsilon trial: figures that would show only zeros."""
    from .conftest import make_study_dir

    d = make_study_dir(tmp_path_factory.mktemp("quiet"), optuna_db=False)
    df = pd.read_parquet(d / "results.parquet")
    df.loc[df["status"] == "diverged", "status"] = "failed"
    df["q_dead_frac"] = df["q_dead_frac"].where(df["q_dead_frac"].isna(), 0.0)
    df.loc[df["variant"] == "epsilon", ["param_reduction", "discarded_ratio"]] = 0.0
    df.to_parquet(d / "results.parquet", index=False)
    out = d / "analysis"
    return analyze(d, out_dir=out, log_to_mlflow=False, n_boot=20), df


def test_no_figure_is_drawn_without_information(quiet_study):
    report, df = quiet_study
    plot_dir = report.parent / "plots"
    text = report.read_text()
    # every epsilon trial has parameter reduction 0: no trade-off figure, a sentence saying why
    assert not list(plot_dir.glob("epsilon-*.png"))
    assert "discarded a block: parameter reduction is 0 throughout, so there is no trade-off to draw" in text
    # no trial diverged or lost its signal: the levels figure has no rate panel, and its title says so
    levels = categorical_levels(df, spec=SPEC)
    fig = plots.levels_png(levels, "syn-quotient-d8", "quotient_rule")
    assert len(fig.axes) == 1 and "no trial diverged or lost its signal" in fig.axes[0].get_title().replace("\n", " ")
    assert "share of trials" not in plots.levels_plotly(levels, "syn-quotient-d8", "quotient_rule").to_json()
    # a parameter with one usable level compares nothing: not drawn
    one = levels[levels["param"] == "quotient_rule"].copy()
    one.loc[one["level"] != "paper", "mean"] = np.nan
    assert not plots.levels_drawable(one, "syn-quotient-d8", "quotient_rule")
    # and every PNG written is a figure of the report
    n_divs = len(re.findall(r'<div id="fig-\d+" class="plotly-graph-div', text))
    assert n_divs == len(list(plot_dir.glob("*.png")))


def test_tables_and_axes_speak_words(analyzed_report):
    text = re.sub(r"<script[^>]*>.*?</script>", "", analyzed_report.read_text(), flags=re.S)
    heads = [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<th[^>]*>(.*?)</th>", text, flags=re.S)]
    assert heads and "p (Holm)" in heads and "95% CI (points)" in heads
    # a raw name may only follow a description, as the option it is: "coupled L2 weight decay (weight_decay)"
    raw = [h for h in heads if RAW.search(h) and not re.search(r"\([a-z_]+\)$", h)]
    assert raw == [], raw
    for name in ("n_baseline", "p_adj", "ci_lo", "baseline_mean", "best_val_acc", "divergence_rate"):
        assert f"<th>{name}</th>" not in text
    # the claims' basis names metrics in words
    assert "test accuracy: repeat vs twin runs" in text and "test_acc: repeat" not in text
    rng = np.random.default_rng(1)
    x = rng.uniform(1.2, 4.0, 20)
    c = fit_curve(x, 0.9 - 0.03 * (x - 2.5) ** 2 + rng.normal(0, 0.003, 20), n_boot=20, param="alpha",
                  metric="val_acc")
    ax = plots.curves_png([c]).axes[0]
    assert ax.get_ylabel() == "validation accuracy" and ax.get_xlabel() == "upper bound of the quotient (alpha)"
    for fig in (plots.curves_png([c]), plots.curve_png(c)):
        for a in fig.axes:
            assert a.get_xlabel() not in METRICS and a.get_ylabel() not in METRICS


def test_log_axes_are_labelled_sparsely():
    for lo, hi in ((0.0234, 0.169), (1.08e-5, 9.16e-4), (0.107, 4.6), (0.5, 32), (0.12, 0.19), (1e-6, 1.0)):
        ticks = plots.log_ticks(lo, hi)
        assert 2 <= len(ticks) <= plots.MAX_LOG_TICKS and all(lo * 0.999 <= t <= hi * 1.001 for t in ticks[1:-1])
    rng = np.random.default_rng(2)
    x = 10 ** rng.uniform(-1.6, -0.8, 20)  # under a decade: where matplotlib's default labels minor ticks
    c = fit_curve(x, 0.9 + rng.normal(0, 0.01, 20), log=True, n_boot=20, param="lr", metric="val_acc")
    fig = plots.curves_png([c])
    fig.canvas.draw()
    ax = fig.axes[0]
    minor = [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    assert minor == []  # no minor labels: they are what overlapped
    boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), "tick labels overlap"


def test_numeric_levels_read_in_numeric_order():
    # levels 2, 3, 4, 10 have completed trials; level 1 only reached a rung: first-seen order was 2, 3, 4, 10, 1
    rows = []
    for i, (lv, status) in enumerate([(2, "completed"), (3, "completed"), (4, "completed"), (10, "completed"),
                                      (2, "completed"), (1, "pruned")]):
        rows.append({"experiment": "s", "variant": "sgs", "phase": "search", "trial_id": str(i), "seed": 0,
                     "status": status, "val_acc": 0.8 + 0.01 * i, "sgs_interval": lv,
                     "searched": json.dumps(["sgs_interval"])})
    df = pd.DataFrame(rows)
    final = categorical_levels(df, params={"s": ["sgs_interval"]})
    assert final["level"].tolist() == ["1", "2", "3", "4", "10"]
    rung = categorical_levels(df.assign(status="completed"), params={"s": ["sgs_interval"]}, epoch=1)
    levels = pd.concat([final[final["level"] != "1"], rung[rung["level"] == "1"]], ignore_index=True)
    fig = plots.levels_png(levels, "s", "sgs_interval")
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == ["1", "2", "3", "4", "10"]
    layout = plots.levels_plotly(levels, "s", "sgs_interval").layout
    assert list(layout.xaxis.categoryarray) == ["1", "2", "3", "4", "10"]


def _identical_twin_rows() -> list[dict]:
    """epsilon and its twin at three seeds, the gate never firing: the same accuracy every time."""
    rows = []
    for s in range(3):
        acc = 0.9 + 0.01 * s
        rows.append(_row("epsilon", f"e{s}", s, "completed", [], phase="repeat", val_acc=acc, test_acc=acc,
                         compressed_test_acc=acc, discarded_ratio=0.0))
        rows.append(_row("epsilon", f"t{s}", s, "completed", [], phase="twin", arm="twin", val_acc=acc,
                         test_acc=acc, compressed_test_acc=acc))
    return rows


def test_a_zero_spread_row_says_why_instead_of_p_0():
    claims = {"epsilon": [Claim("e", "discards blocks at little cost", "noninferior", margin=0.01,
                                metric="compressed_test_acc", gain_metric="discarded_ratio"),
                          Claim("t", "epsilon beats its twin", "twin")]}
    table, _ = claims_table(pd.DataFrame(_identical_twin_rows()), None, SPEC, claims=claims)
    assert (table["ci_lo"] == table["ci_hi"]).all() and (table["n"] == 3).all()  # the statistics as they were
    md = claims_markdown(table)
    assert md.count("no test (zero spread)") == 2 and md.count("none: all 3 pairs identical") == 2
    assert not re.search(r"\|\s*0\s*\|\s*inconclusive", md)
    page = _claims_html(table)
    assert page.count("<td>no test</td>") == 2 and page.count("<td>none: no spread</td>") == 2
    assert "gave the same test accuracy after compression at every one of the 3 seeds" in page
    assert "<td>0</td>" not in page


def test_settling_an_open_claim_is_costed_from_this_studys_runs():
    rows = twin_pairs("quotient", "resnet", 0.0, seeds=range(3))
    results = pd.DataFrame(rows).assign(seconds=60.0)
    open_row = {"kind": "twin", "n": 3, "n_needed": 10, "subject": "quotient", "depth": 8}
    assert settle_cost(open_row, results) == ("7 more seeds, a variant and a twin run each: 14 runs, about 14 min of "
                                              "training at this study's 60 s a run")
    level = {"kind": "level", "n": 1, "n_needed": 3, "subject": "quotient", "depth": 8}
    search = results.assign(phase="search", seconds=30.0)
    assert settle_cost(level, search) == ("2 more trials per level: 4 runs, about 2.0 min of training at this "
                                          "study's 30 s a run")
    assert settle_cost({**open_row, "n_needed": float("nan")}, results) == ""


def test_the_report_opens_with_a_quotable_conclusion(analyzed_report):
    out = analyzed_report.parent
    body = re.sub(r"<script[^>]*>.*?</script>", "", analyzed_report.read_text(), flags=re.S).split("<body>", 1)[1]
    assert re.findall(r"<h2[^>]*>(.*?)</h2>", body)[0] == "Conclusion"
    assert body.index('class="conclusion"') < body.index("<table")
    claims = pd.read_parquet(out / "claims.parquet")
    said = claims["verdicts"].fillna("").str.split("; ")
    n = {v: int(said.apply(lambda x, v=v: v in x).sum()) for v in ROW_VERDICTS}
    lead = f"of {len(claims)} claims, " + ", ".join(f"{n[v]} {v}" for v in ROW_VERDICTS) + "."
    md = (out / "conclusion.md").read_text()
    assert lead in md and lead in body
    for _, r in claims.iterrows():  # every claim is in it, under its verdict
        assert f"\u201c{r['claim']}\u201d (depth {r['depth']})" in md
    # the open sgs twin claim (2 seeds): what would settle it and at what cost
    sgs = next(line for line in md.splitlines() if "sgs beats its twin" in line.lower())
    assert "To settle: at least 3 seed pairs" in sgs and "runs, about" in sgs and "a run" in sgs
