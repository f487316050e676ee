"""`resstudy status` text and `export` files on a synthetic study directory."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml

from analysis.claims import ROW_VERDICTS, claims_table, write_claims
from study.errors import UserError
from study.report import export, status_text

from .conftest import SPEC_YAML, builtin_claims, synthetic_history


@pytest.fixture
def study(synthetic_study_dir, tmp_path):
    d = tmp_path / "syn"
    shutil.copytree(synthetic_study_dir, d, ignore=shutil.ignore_patterns("analysis"))
    return d


def _analysed(d):
    res = pd.read_parquet(d / "results.parquet")
    table, _ = claims_table(res, synthetic_history(res), yaml.safe_load(SPEC_YAML), claims=builtin_claims())
    write_claims(table, d / "analysis")
    return table


def test_status_fits_100_columns_and_leads_with_claims_after_analysis(study):
    before = status_text(study)
    assert all(len(line) <= 100 for line in before.splitlines()), max(before.splitlines(), key=len)
    assert before.startswith("study ") and "syn-quotient-d8" in before and "resstudy analyze" in before
    table = _analysed(study)
    after = status_text(study)
    lines = after.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    assert lines[0].startswith("Claims")
    # every claim row, in table order, above the trial table
    claim_lines = [ln for ln in lines if ln.startswith("  ") and ln.strip().startswith(ROW_VERDICTS)]
    assert [ln[2:23].strip() for ln in claim_lines] == table["verdicts"].str[:21].str.strip().tolist()
    assert after.index(claim_lines[-1]) < after.index("study syn")
    assert "-> needs >= 3 paired seeds (has 2)" in after  # what would settle sgs's twin claim
    q = table.set_index("key").loc["quotient_twin"]
    assert f"  {q['verdicts']:<21} d8   quotient beats its twin" in after
    # the effect each claim is judged against, with its source (here no figure: the smallest effect)
    assert f"reported {q['reported']:+.4f} (no published figure: design.smallest_effect 0.01)" in after


def test_long_configs_are_cut_not_wrapped(study):
    res = pd.read_parquet(study / "results.parquet")
    res["searched"] = '["lr", "weight_decay", "momentum", "batch_size", "schedule", "precision", "depth"]'
    res.to_parquet(study / "results.parquet")
    text = status_text(study)
    assert max(len(line) for line in text.splitlines()) == 100  # the best-config column hit the edge and was cut
    assert "…" in text


def test_export_writes_markdown_tables(study, tmp_path):
    _analysed(study)
    paths = export(study, tmp_path / "out")
    names = {p.name for p in paths}
    assert names == {"results.csv", "history.csv", "summary.md"}
    md = (tmp_path / "out" / "summary.md").read_text()
    # GitHub Markdown tables: a header row, a |---| rule, rows between pipes
    for heading, header in (("## Claims", "| claim"), ("## Trials", "| experiment")):
        block = md.split(heading, 1)[1].strip().splitlines()
        table = [ln for ln in block if ln.startswith("|")]
        assert table[0].startswith(header) and set(table[1]) <= set("|-: ")
        assert len(table) >= 3 and all(ln.endswith("|") for ln in table)
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == len(pd.read_parquet(study / "results.parquet"))


def test_not_a_study_dir_is_a_user_error_naming_it(tmp_path):
    (tmp_path / "plain").mkdir()
    for bad in (tmp_path / "plain", tmp_path / "missing"):
        for fn in (status_text, export):
            with pytest.raises(UserError, match=str(bad)):
                fn(bad)


def test_the_best_configuration_is_never_a_twins(study):
    """A twin runs another model, in the twin phase or as a designed arm ("published twin"):
    the experiment's best is its own variant's, however well the twin scored."""
    from study.report import summary

    res = pd.read_parquet(study / "results.parquet")
    exp = "syn-quotient-d8"
    own = res[(res.experiment == exp) & (res.variant == "quotient") & (res.status == "completed")]
    twin = own.iloc[[0]].copy()
    twin["trial_id"], twin["variant"], twin["phase"], twin["arm"] = "syn-tw", "resnet", "arms", "published twin"
    twin["val_acc"] = 1.0
    row = summary(pd.concat([res, twin], ignore_index=True)).set_index("experiment").loc[exp]
    assert row["best_trial"] != "syn-tw" and row["best_val_acc"] == own["val_acc"].max()
