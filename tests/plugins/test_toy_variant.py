"""A fifth variant registered from one file (toy_variant.py) runs through a real
tiny study and `resstudy analyze` with no other file of resstudy changed: its
options, search space, twin, hooks, metric and claim come from the registry."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import run_cli

PLUGIN = Path(__file__).with_name("toy_variant.py")


@pytest.mark.ray
@pytest.mark.slow
def test_toy_variant_runs_through_a_study_and_the_analysis(tmp_path):
    spec = {
        "name": "toyrun", "plugins": [str(PLUGIN)], "dataset": "digits", "image_size": 8, "depth": 8, "epochs": 2,
        "trials_per_variant": 2, "seeds": [0, 1, 2], "repeat_best": True, "variants": {"toy": {}},
        "train": {"batch_size": 64, "val_size": 0.15, "precision": "fp32"},
        "search": {"algorithm": "random", "seed": 0}, "scheduler": {"type": "none"},
        "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 2, "storage_path": str(tmp_path / "runs"),
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_cli("run", str(path))
    study = tmp_path / "runs" / "toyrun"
    results = pd.read_parquet(study / "results.parquet")
    assert set(results["subject"]) == {"toy"}
    by_phase = results.groupby("phase").size().to_dict()
    assert by_phase == {"search": 2, "repeat": 3, "twin": 3}
    twins = results[results["phase"] == "twin"]
    assert set(twins["variant"]) == {"resnet"} and set(twins["arm"]) == {"twin"}
    assert twins["gamma0"].isna().all() if "gamma0" in twins else True  # the twin has no toy option
    repeat = results[results["phase"] == "repeat"]
    assert repeat["gamma0"].nunique() == 1 and sorted(repeat["seed"]) == sorted(twins["seed"]) == [0, 1, 2]
    history = pd.read_parquet(study / "history.parquet")
    toy_rows = history[history["variant"] == "toy"]
    assert toy_rows["gamma_mean"].notna().all() and len(toy_rows) > 0
    # the search varied the plugin's own option within its declared bounds
    search = results[results["phase"] == "search"]
    assert search["gamma0"].between(0.0, 1.0).all()
    run_cli("analyze", str(study), "--no-mlflow")
    claims = pd.read_parquet(study / "analysis" / "claims.parquet")
    assert "the toy beats its twin" in set(claims["claim"])
