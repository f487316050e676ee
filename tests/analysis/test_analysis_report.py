import json
import re
import pandas as pd
import pytest

from analysis.load import load_mlflow_runs
from analysis.report import analyze, log_artifacts

EXTERNAL = re.compile(r"""<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*["']?\s*(https?:)?//""", re.I)


@pytest.fixture
def analyzed(analyzed_report):
    return analyzed_report, analyzed_report.parent


def test_analyze_writes_report_plots_and_tables(analyzed):
    report, out = analyzed
    assert report == out / "report.html" and report.is_file()
    pngs = sorted((out / "plots").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"comparison", "curve-syn-epsilon-d8-epsilon", "epsilon-syn-epsilon-d8", "curve-syn-sgs-d8-sgs_k",
            "levels-syn-quotient-d8-quotient_rule", "importance-syn-epsilon-d8-final",
            "learning-syn-resnet-d8"} <= names
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # one copy of plotly.js in everything written: the report's (the interactive figures live there)
    with_plotly = [p.name for p in out.rglob("*") if p.is_file() and b"plotly.js v" in p.read_bytes()]
    assert with_plotly == ["report.html"], with_plotly
    assert not list((out / "plots").glob("*.html")) and (out / "conclusion.md").is_file()
    for t in ("comparison", "tuned_vs_tuned", "sensitivity_summary", "sensitivity_curves", "categorical_levels",
              "importance", "epsilon_tradeoff", "trial_counts"):
        assert (out / "tables" / f"{t}.csv").is_file()
        pd.read_parquet(out / "tables" / f"{t}.parquet")
    cmp = pd.read_csv(out / "tables" / "comparison.csv")
    assert set(cmp["variant"]) == {"resnet", "quotient", "epsilon", "sgs"}
    summ = pd.read_csv(out / "tables" / "sensitivity_summary.csv")
    eps = summ[(summ["param"] == "epsilon") & (summ["fidelity"] == "final")].iloc[0]
    assert eps["argmax_lo"] <= 1.0 <= eps["argmax_hi"]
    # sgs: 2 of 9 MI trials completed, so its curve comes only from rung fits,
    # labelled by epoch, and the one with every trial covers the planted k = 4
    sgs = summ[summ["param"] == "sgs_k"].set_index("fidelity")
    assert "final" not in sgs.index and "epoch 1" in sgs.index
    assert sgs.loc["epoch 1", "argmax_lo"] <= 4.0 <= sgs.loc["epoch 1", "argmax_hi"]


def test_claims_files_from_the_registry(analyzed):
    _, out = analyzed
    claims = pd.read_parquet(out / "claims.parquet")
    csv = pd.read_csv(out / "claims.csv")
    assert csv["key"].tolist() == claims["key"].tolist() and csv["verdict"].tolist() == claims["verdict"].tolist()
    md = (out / "claims.md").read_text()
    assert "| claim" in md and "Holm" in md
    from study.variants import get_variant

    declared = {c.key for v in ("quotient", "epsilon", "sgs") for c in get_variant(v).claims}
    assert declared and set(claims["key"]) == declared  # every studied variant's claims, no others
    twin = claims[claims["kind"] == "twin"].set_index("subject")
    assert twin.loc["quotient", "verdict"] == "reproduced"  # planted +0.02 over 3 seeds
    assert twin.loc["sgs", "verdict"] == "open" and twin.loc["sgs", "n"] == 2
    tested = claims["p_adj"].notna()
    assert (claims.loc[tested, "p_adj"] >= claims.loc[tested, "p_value"]).all()  # Holm never lowers a p


def test_report_is_self_contained(analyzed):
    report, _ = analyzed
    text = report.read_text()
    assert not EXTERNAL.search(text), EXTERNAL.search(text)
    assert "cdn.plot.ly" not in re.sub(r"<script[^>]*>.*?</script>", "", text, flags=re.S)  # outside JS code
    # plotly.js inlined exactly once; every figure is a div plus a newPlot call
    assert text.count("Plotly.newPlot(") + text.count("Plotly.newPlot (") >= 1
    assert len(re.findall(r"plotly\.js v\d", text)) == 1
    n_divs = len(re.findall(r'<div id="fig-\d+" class="plotly-graph-div', text))
    assert n_divs == len(list((report.parent / "plots").glob("*.png")))
    # too-few-trial fits are reported, not dropped silently
    assert "syn-sgs-d8 (final): only 2 completed search trial(s): too few" in text


def test_claims_are_the_first_screen(analyzed):
    report, _ = analyzed
    body = re.sub(r"<script[^>]*>.*?</script>", "", report.read_text(), flags=re.S).split("<body>", 1)[1]
    heads = re.findall(r"<h2[^>]*>(.*?)</h2>", body)
    assert heads[:2] == ["Conclusion", "Claims"]  # the conclusion opens it, the claims it sums up follow
    # the claims table is the first table and comes before any figure
    first_table = body.index("<table")
    assert 'class="dataframe tbl claims"' in body[first_table:first_table + 80]
    assert first_table < body.index('class="plotly-graph-div')
    assert "(empty)" not in body


def test_analyze_tolerates_sparse_study(sparse_study_dir, capsys):
    d = sparse_study_dir
    report = analyze(d, log_to_mlflow=False, n_boot=20)
    assert report == d / "analysis" / "report.html"
    text = report.read_text()
    assert "learning curves and rung fits skipped" in text and "history.parquet not found" in text
    assert "only 1 completed search trial" in text
    assert "Optuna DB" in text  # importance fell back to results.parquet, and says so
    out = capsys.readouterr().out
    assert "[analyze] loading" in out and "[analyze] wrote" in out


def _mlflow_study(d):
    import mlflow

    uri = f"sqlite:///{d / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("syn", artifact_location=str(d / "mlartifacts"))
    parent = client.create_run(exp, run_name="syn", tags={"resstudy.level": "study"})
    child = client.create_run(exp, tags={"mlflow.parentRunId": parent.info.run_id, "variant": "epsilon"})
    client.create_run(exp, tags={"mlflow.parentRunId": child.info.run_id, "trial": "eps-0"})
    client.create_run(exp, run_name="other-study")  # not part of this study
    client.set_terminated(parent.info.run_id)
    (d / "study.json").write_text(json.dumps({"tracking_uri": uri, "experiment_id": exp,
                                              "mlflow_parent_run_id": parent.info.run_id}))
    return client, parent.info.run_id


def test_mlflow_runs_and_artifact_logging(sparse_study_dir):
    d = sparse_study_dir
    client, run_id = _mlflow_study(d)
    runs = load_mlflow_runs(d)
    assert sorted(runs["level"]) == ["experiment", "study", "trial"]
    report = analyze(d, log_to_mlflow=True, n_boot=20)
    logged = {a.path for a in client.list_artifacts(run_id, "analysis")}
    assert "analysis/report.html" in logged and "analysis/plots" in logged and "analysis/tables" in logged
    tables = {a.path for a in client.list_artifacts(run_id, "analysis/tables")}
    assert "analysis/tables/comparison.csv" in tables
    assert "analysis/claims.md" in logged
    assert report.is_file()
    # the claims land on the study run as tags (and metrics where estimated); no run left open
    run = client.get_run(run_id)
    assert run.data.tags.get("claim.quotient_vs_twin.d8.verdict") == "open"
    assert "Hui et al. 2024, results table" in run.data.tags.get("claim.quotient_vs_twin.d8.reported", "")
    import mlflow

    assert mlflow.active_run() is None
    assert run.info.status == "FINISHED"


def test_unreachable_tracking_server_warns(sparse_study_dir):
    d = sparse_study_dir
    (d / "study.json").write_text(json.dumps({"tracking_uri": "http://127.0.0.1:9", "mlflow_parent_run_id": "x"}))
    with pytest.warns(UserWarning, match="not logged to MLflow.*not reachable"):
        report = analyze(d, log_to_mlflow=True, n_boot=20)
    assert report.is_file()
    (d / "study.json").unlink()
    with pytest.warns(UserWarning, match="study.json not found"):
        assert log_artifacts(d, d / "analysis") is False


def test_credentials_in_the_tracking_uri_are_never_printed(sparse_study_dir, capsys):
    d = sparse_study_dir
    (d / "study.json").write_text(json.dumps({"tracking_uri": "http://alice:s3cr3t@127.0.0.1:9/?token=t0k3n",
                                              "mlflow_parent_run_id": "x"}))
    with pytest.warns(UserWarning) as caught:
        assert log_artifacts(d, d) is False
    said = capsys.readouterr().out + " ".join(str(w.message) for w in caught)
    assert "not reachable" in said and "127.0.0.1:9" in said
    assert "s3cr3t" not in said and "t0k3n" not in said


def test_rerun_removes_stale_outputs(sparse_study_dir):
    stale = sparse_study_dir / "analysis" / "plots" / "curve-gone-param.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    analyze(sparse_study_dir, log_to_mlflow=False, n_boot=20)
    assert not stale.exists()


def test_moved_study_dir_reads_local_mlflow_db_and_logs_into_itself(sparse_study_dir, tmp_path):
    import shutil

    d = sparse_study_dir
    _mlflow_study(d)
    moved = tmp_path / "moved"
    shutil.copytree(d, moved)
    shutil.rmtree(d)
    runs = load_mlflow_runs(moved)  # study.json's sqlite file is gone: falls back to moved/mlflow.db
    assert sorted(runs["level"]) == ["experiment", "study", "trial"]
    analyze(moved, log_to_mlflow=True, n_boot=20)
    # the runs' artifact locations follow the study: the report lands in its own store
    assert list((moved / "mlartifacts").glob("*/artifacts/analysis/report.html"))
    assert not d.exists()  # nothing recreated at the old location


def test_the_report_names_the_budget_of_tuned_vs_tuned(analyzed):
    report, out = analyzed
    budget = pd.read_csv(out / "tables" / "tuned_at_budget.csv")
    assert set(budget["baseline"]) == {"resnet"} and budget["budget"].min() == 1
    # up to the smaller of the two searches, per subject
    for s, g in budget.groupby("subject"):
        assert list(g["budget"]) == list(range(1, len(g) + 1))
    html_text = report.read_text()
    assert "Tuned vs tuned at a stated budget" in html_text and "trials per search" in html_text
    assert (out / "plots" / "budget.png").is_file()
