import shutil

import pandas as pd
import pytest

from analysis.load import (load_history, load_optuna_studies, load_results, load_spec, searched_list,
                           searched_params)


def test_load_synthetic_study(synthetic_study_dir):
    df = load_results(synthetic_study_dir)
    assert set(df["variant"]) == {"resnet", "quotient", "epsilon", "sgs"}
    assert searched_params(df[df["variant"] == "epsilon"]) == ["epsilon", "side_weight"]
    h = load_history(synthetic_study_dir)
    assert set(h["trial_id"]) == set(df["trial_id"])
    assert load_spec(synthetic_study_dir)["seeds"] == [0, 1, 2]
    studies = load_optuna_studies(synthetic_study_dir)
    assert len(studies["syn-epsilon-d8"].trials) == 42  # 40 complete + 1 pruned + 1 failed


@pytest.mark.parametrize("name,loader", [("results.parquet", load_results), ("history.parquet", load_history),
                                         ("spec.yaml", load_spec), ("optuna.db", load_optuna_studies)])
def test_missing_file_is_named(synthetic_study_dir, tmp_path, name, loader):
    d = tmp_path / "s"
    shutil.copytree(synthetic_study_dir, d)
    (d / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        loader(d)


@pytest.mark.parametrize("name,loader", [("results.parquet", load_results), ("history.parquet", load_history),
                                         ("optuna.db", load_optuna_studies), ("spec.yaml", load_spec)])
def test_corrupt_file_is_named(synthetic_study_dir, tmp_path, name, loader):
    d = tmp_path / "s"
    shutil.copytree(synthetic_study_dir, d)
    (d / name).write_text("{[ this is not a " + name)
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        loader(d)


def test_missing_study_dir_and_bad_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_results(tmp_path / "nope")
    pd.DataFrame({"experiment": ["e"], "variant": ["resnet"]}).to_parquet(tmp_path / "results.parquet")
    with pytest.raises(ValueError, match="lacks required column"):
        load_results(tmp_path)
    pd.DataFrame({"experiment": ["e"], "variant": ["resnet"], "phase": ["search"], "trial_id": ["1"], "seed": [0],
                  "status": ["exploded"], "val_acc": [0.5]}).to_parquet(tmp_path / "results.parquet")
    with pytest.raises(ValueError, match="exploded"):
        load_results(tmp_path)


def test_searched_list_parsing():
    assert searched_list('["lr", "alpha"]') == ["lr", "alpha"]
    assert searched_list(None) == [] and searched_list(float("nan")) == []
    with pytest.raises(ValueError, match="JSON list"):
        searched_list("lr,alpha")


def _own_store(d, experiment="syn"):
    """A study dir whose study.json names its own MLflow store, as a study written before
    paths were kept relative did: an absolute URI, and a spec with the default store."""
    import json

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{d / 'mlflow.db'}")
    exp = client.create_experiment(experiment, artifact_location=(d / "mlartifacts").as_uri())
    run = client.create_run(exp, run_name="study", tags={"resstudy.level": "study"})
    client.set_terminated(run.info.run_id)
    (d / "study.json").write_text(json.dumps({
        "tracking_uri": f"sqlite:///{d / 'mlflow.db'}", "experiment_id": exp, "mlflow_parent_run_id": run.info.run_id,
        "spec": {"name": "syn", "mlflow": {"tracking_uri": None, "experiment": None}}}))
    return run.info.run_id


def test_a_copy_of_an_older_study_reads_and_logs_to_its_own_store(synthetic_study_dir, tmp_path):
    import mlflow

    from analysis.load import tracking_uri

    orig = tmp_path / "orig"
    shutil.copytree(synthetic_study_dir, orig)
    run_id = _own_store(orig)
    before = (orig / "mlflow.db").read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(orig, copy)  # the original stays where study.json's absolute URI says
    uri = tracking_uri(copy)
    assert uri == f"sqlite:///{(copy / 'mlflow.db').resolve()}"
    run = mlflow.MlflowClient(uri).get_run(run_id)  # and its artifact location follows the copy
    assert run.info.artifact_uri.startswith((copy / "mlartifacts").resolve().as_uri() + "/")
    assert (orig / "mlflow.db").read_bytes() == before


def test_a_study_tracking_to_a_server_keeps_its_uri(tmp_path):
    import json

    from analysis.load import tracking_uri

    (tmp_path / "study.json").write_text(json.dumps({"tracking_uri": "http://127.0.0.1:5000",
                                                     "spec": {"mlflow": {"tracking_uri": "http://127.0.0.1:5000"}}}))
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    (tmp_path / "study.json").write_text(json.dumps({"tracking_uri": "sqlite:////elsewhere/team.db",
                                                     "spec": {"mlflow": {"tracking_uri": "sqlite:////elsewhere/t.db"}}}))
    assert tracking_uri(tmp_path) == "sqlite:////elsewhere/team.db"
