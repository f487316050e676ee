"""A fifth variant registered from one file (toy_variant.py) runs through a real
study and `resstudy analyze` with no other file of resstudy changed: its options,
search space, twin, hooks, metric and claim come from the registry, and where the
plugin is registered its own report section too. The study is the session's tiny
one (tests/conftest.py), whose spec loads the plugin beside the four built-ins."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import TINY_SPEC, run_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]
# read, not imported: importing the plugin would register the toy in this process
SECTION = re.search(r'^SECTION = "(.*)"$', (Path(__file__).with_name("toy_variant.py")).read_text(), re.M).group(1)


def test_toy_variant_runs_through_a_study_and_the_analysis(tiny_study_dir):
    study = tiny_study_dir
    results = pd.read_parquet(study / "results.parquet")
    toy = results[results["subject"] == "toy"]
    seeds = TINY_SPEC["seeds"]
    by_phase = toy.groupby("phase").size().to_dict()
    # its claim's arms (toy and twin at the spec's seeds) are the repeat and twin runs themselves
    assert by_phase == {"search": TINY_SPEC["trials_per_variant"], "repeat": len(seeds), "twin": len(seeds)}, by_phase
    twins = toy[toy["phase"] == "twin"]
    assert set(twins["variant"]) == {"resnet"} and set(twins["arm"]) == {"twin"}
    assert twins["gamma0"].isna().all()  # the twin has no toy option
    repeat = toy[toy["phase"] == "repeat"]
    assert set(repeat["variant"]) == {"toy"}
    assert repeat["gamma0"].nunique() == 1 and sorted(repeat["seed"]) == sorted(twins["seed"]) == seeds
    history = pd.read_parquet(study / "history.parquet")
    toy_rows = history[history["variant"] == "toy"]
    assert len(toy_rows) and toy_rows["gamma_mean"].notna().all()  # its hook's metric, every epoch
    # the search varied the plugin's own option within its declared bounds
    search = toy[toy["phase"] == "search"]
    assert search["gamma0"].between(0.0, 1.0).all() and search["gamma0"].nunique() > 1
    assert json.loads(search["searched"].iloc[0]).count("gamma0") == 1
    # the study recorded the plugin it loaded, by content
    manifest = json.loads((study / "study.json").read_text())["manifest"]
    assert any("toy_variant" in str(k) for k in manifest["plugins"]), manifest["plugins"]
    run_cli("analyze", str(study), "--no-mlflow")
    claims = pd.read_parquet(study / "analysis" / "claims.parquet")
    row = claims[claims["claim"] == "the toy beats its twin"]
    assert len(row) and set(row["subject"]) == {"toy"}, claims[["claim", "subject"]]


def test_toy_variant_adds_its_own_report_section(tiny_study_dir, tiny_plugins, tmp_path):
    # `resstudy analyze` loads no plugin (it reads what the study recorded); where the plugin is
    # registered, as here, the section its file declares is one of the report's
    from analysis.report import analyze

    report = analyze(tiny_study_dir, out_dir=tmp_path, log_to_mlflow=False, n_boot=20)
    heads = re.findall(r"<h2[^>]*>(.*?)</h2>", report.read_text())
    assert html.escape(SECTION) in heads and "epsilon-ResNet trade-offs" in heads, heads
