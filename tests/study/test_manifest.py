"""The manifest: what a study resolved when it started (study.driver.manifest),
recorded in study.json, and the analysis reading it instead of deciding again."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import load as analysis_load
from analysis.sensitivity import rung_epochs, sensitivity
from analysis.spaces import param_info
from study.driver import manifest
from study.searcher import Rungs
from study.spec import SchedulerSpec, load_spec

EPOCHS, GRACE, RF = 30, 1, 2.5  # ASHA puts its rungs at 1, 2, 6, 15; grace * rf**k rounded would say 16


def _spec(root: Path, **changes):
    return load_spec({"name": "m", "dataset": "synthetic", "image_size": 8, "depth": 8, "epochs": EPOCHS,
                      "trials_per_variant": 8, "seeds": [0, 1], "repeat_best": True,
                      "variants": {"resnet": {"space": {"lr": {"low": 0.02, "high": 0.2}}}, "quotient": {}},
                      "train": {"weight_decay": 5e-4},
                      "scheduler": {"type": "asha", "grace_period": GRACE, "reduction_factor": RF},
                      "storage_path": str(root / "runs"), **changes})


def _study_dir(root: Path, spec, *, recorded: dict | None = None, n: int = 12) -> Path:
    """A study dir as the driver leaves it: spec.yaml, study.json (with `recorded` as its
    manifest unless None: an older study), and resnet search trials that all trained
    every epoch, their val_acc peaking at lr 0.06 at every epoch."""
    d = root / spec.name
    d.mkdir(parents=True)
    (d / "spec.yaml").write_text(spec.to_yaml())
    if recorded is not None:
        (d / "study.json").write_text(json.dumps({"name": spec.name, "spec": spec.model_dump(mode="json"),
                                                  "manifest": recorded}))
    rng = np.random.default_rng(0)
    rows, hist = [], []
    for i in range(n):
        lr = float(10 ** rng.uniform(np.log10(0.02), np.log10(0.2)))
        final = 0.9 - 0.3 * (np.log10(lr / 0.06)) ** 2 + rng.normal(0, 0.005)
        rows.append({"experiment": "m-resnet-d8", "subject": "resnet", "variant": "resnet", "phase": "search",
                     "trial_id": f"t{i}", "seed": 0, "status": "completed", "depth": 8, "lr": lr,
                     "val_acc": final, "searched": json.dumps(["lr"])})
        hist += [{"experiment": "m-resnet-d8", "variant": "resnet", "trial_id": f"t{i}", "epoch": e,
                  "val_acc": final * (0.5 + e / 60)} for e in range(1, EPOCHS + 1)]
    pd.DataFrame(rows).to_parquet(d / "results.parquet", index=False)
    pd.DataFrame(hist).to_parquet(d / "history.parquet", index=False)
    return d


def test_rung_case_gives_the_same_epochs_in_scheduler_manifest_and_analysis(tmp_path):
    spec = _spec(tmp_path)
    scheduler = sorted(Rungs(EPOCHS, GRACE, RF).milestones)
    assert scheduler == [1, 2, 6, 15]
    m = manifest.resolve(spec)
    assert {name: x["rung_epochs"] for name, x in m["experiments"].items()} == \
        {"m-resnet-d8": scheduler, "m-quotient-d8": scheduler}

    d = _study_dir(tmp_path, spec, recorded=m)
    read_spec = analysis_load.load_spec(d)
    assert rung_epochs(read_spec) == scheduler
    # the analysis fits one curve per rung the scheduler compared trials at, and the final one
    res = sensitivity(analysis_load.load_results(d), n_boot=10, spec=read_spec,
                      history=analysis_load.load_history(d))
    assert sorted(c.epoch for c in res.curves if c.epoch is not None) == scheduler
    assert sum(c.epoch is None for c in res.curves) == 1
    # a bare spec mapping (no manifest) is placed by the same rule
    assert rung_epochs(spec.model_dump(mode="json")) == scheduler
    # below a factor of 2, two of Rungs' milestones can be one epoch: recorded once
    assert sorted(Rungs(5, 1, 1.5).milestones) == [1, 1, 2, 3]
    assert manifest.rung_epochs(5, SchedulerSpec(grace_period=1, reduction_factor=1.5)) == [1, 2, 3]


def test_analysis_takes_what_the_manifest_recorded_never_a_recomputation(tmp_path):
    spec = _spec(tmp_path)
    recorded = manifest.resolve(spec)
    exp = recorded["experiments"]["m-resnet-d8"]
    exp["rung_epochs"] = [3, 7, 30]  # a driver that decided otherwise; 30 is the last epoch, not a rung fit
    next(p for p in exp["space"] if p["name"] == "lr").update(low=0.05, high=0.1)
    read_spec = analysis_load.load_spec(_study_dir(tmp_path, spec, recorded=recorded))
    assert read_spec["manifest"] == recorded
    assert rung_epochs(read_spec) == [1, 2, 3, 6, 7, 15]  # resnet's record and quotient's
    lr = param_info("resnet", "lr", spec=read_spec)
    assert (lr.low, lr.high, lr.log) == (0.05, 0.1, True)


def test_space_override_shows_in_the_manifest_and_the_analysis_bounds(tmp_path):
    spec = _spec(tmp_path)
    m = manifest.resolve(spec)
    res, quo = m["experiments"]["m-resnet-d8"], m["experiments"]["m-quotient-d8"]
    lr = {"name": "lr", "kind": "float", "low": 0.02, "high": 0.2, "log": True, "condition": None}
    assert res["space"] == [lr]  # weight_decay: fixed by `train`, so not searched
    assert res["base_config"]["weight_decay"] == 5e-4 and res["base_config"]["epochs"] == EPOCHS
    assert [p["name"] for p in quo["space"]][:2] == ["lr", "quotient_rule"]
    assert next(p for p in quo["space"] if p["name"] == "lr")["low"] == 0.01  # the default range: no override
    assert "weight_decay" not in [p["name"] for p in quo["space"]]
    assert res["objectives"] == ["val_acc"] and res["arms"] == {"search": 8, "repeat": 2, "twin": 0}
    assert quo["twin"] == "resnet" and quo["arms"]["twin"] == 2
    assert {c["key"] for c in quo["claims"]} >= {"quotient_rule"}
    rule = next(c for c in quo["claims"] if c["key"] == "quotient_rule")
    assert (rule["kind"], rule["option"], rule["better"], rule["worse"]) == ("level", "quotient_rule", "paper",
                                                                             "unshifted")

    with_record = analysis_load.load_spec(_study_dir(tmp_path / "new", spec, recorded=m))
    older = _study_dir(tmp_path / "old", spec)  # no study.json: resolved now, by the same function
    without = analysis_load.load_spec(older)
    assert without["manifest"] == m == analysis_load.manifest(older)
    for read_spec in (with_record, without):
        info = param_info("resnet", "lr", spec=read_spec)
        assert (info.kind, info.low, info.high, info.log) == ("float", 0.02, 0.2, True)
        assert param_info("quotient", "lr", spec=read_spec).low == 0.01


def test_plugin_hash_recorded_and_the_analysis_loads_no_plugin(tmp_path, monkeypatch):
    plugin = tmp_path / "noop_plugin.py"
    plugin.write_text("# a plugin that registers nothing\n")
    spec = _spec(tmp_path, plugins=[str(plugin)])
    m = manifest.resolve(spec)
    assert m["plugins"] == [{"plugin": str(plugin), "file": str(plugin),
                             "sha256": hashlib.sha256(plugin.read_bytes()).hexdigest()}]
    d = _study_dir(tmp_path, spec, recorded=m)

    def refuse(paths):
        raise AssertionError(f"the analysis loaded plugins {paths}")

    import study.spec.models
    import study.variants

    monkeypatch.setattr(study.variants, "load_plugins", refuse)
    monkeypatch.setattr(study.spec.models, "load_plugins", refuse)  # where the spec's plugins field loads them
    assert analysis_load.load_spec(d)["manifest"]["plugins"] == m["plugins"]
    assert analysis_load.manifest(d) == m


def test_manifest_is_json_and_kept_across_sessions(tmp_path, monkeypatch):
    from study.ledger import write_state

    plugin = tmp_path / "noop_plugin.py"
    plugin.write_text("x = 1\n")
    spec = _spec(tmp_path, plugins=[str(plugin)])
    state: dict = {}  # record() runs before the driver counts the session starting
    first = manifest.record(state, spec)
    assert state["manifest"] is first and json.loads(json.dumps(first)) == first
    assert first["versions"]["resstudy"] == metadata.version("resstudy")
    assert set(first["versions"]) >= {"python", "torch", "torchvision", "ray", "optuna", "mlflow", "pyarrow",
                                      "numpy"}
    assert first["design"] is None
    designed = _spec(tmp_path, design={"alpha": 0.1})
    assert manifest.resolve(designed)["design"] == designed.design.model_dump(mode="json") and \
        manifest.resolve(designed)["design"]["alpha"] == 0.1
    write_state(tmp_path, state)
    assert manifest.read(tmp_path) == first == manifest.read(json.loads((tmp_path / "study.json").read_text()))
    assert manifest.read(tmp_path / "nowhere") is None and manifest.read({"sessions": 3}) is None

    state["sessions"] = 1  # a resume under the same versions and plugins: nothing to add
    assert manifest.record(state, spec) == first and "sessions" not in first
    plugin.write_text("x = 2\n")  # edited between sessions; and another numpy
    real = manifest.versions
    monkeypatch.setattr(manifest, "versions", lambda: {**real(), "numpy": "0.0.1"})
    state["sessions"] = 2
    kept = manifest.record(state, spec)
    assert kept is first and kept["versions"]["numpy"] != "0.0.1"  # the first start's record stays
    assert [(s["session"], s["versions"]["numpy"], s["plugins"][0]["sha256"]) for s in kept["sessions"]] == \
        [(3, "0.0.1", hashlib.sha256(b"x = 2\n").hexdigest())]
    state["sessions"] = 3
    manifest.record(state, spec)
    assert len(kept["sessions"]) == 1  # unchanged since session 3
