"""The MLflow queue: calls for a run whose creation waits (server down) are kept
behind it, in order, and delivered when the server returns. The experiment a
study creates opens in MLflow's model-training view on its trials."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from mlflow.tracking import MlflowClient

from study.tracking import (EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, LEVEL_TAG, VIEW_KEY, VIEW_TAG, Tracker,
                            ensure_view, view_query)


def _down(tmp_path) -> tuple[str, Tracker, list[bool]]:
    """A tracker on a SQLite store whose every MLflow call fails as a stopped server's does
    while down[0] is True (it starts True)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "exp", "study", tmp_path)
    real_apply, down = tracker._apply, [True]

    def apply(kind, key, payload):
        if down[0]:
            raise ConnectionError("Connection refused")
        return real_apply(kind, key, payload)

    tracker._apply = apply
    return uri, tracker, down


def test_a_run_created_while_mlflow_is_down_still_ends_finished(tmp_path):
    uri, tracker, down = _down(tmp_path)
    tracker.create("trial:a", "study", "a", {"resstudy.level": "trial"}, params={"lr": 0.1})
    assert tracker.run_id("trial:a") is None and tracker.known("trial:a") and not tracker.known("trial:b")
    tracker.metrics("trial:a", {"val_acc": 0.5}, step=1)
    tracker.end("trial:a", "pruned")
    assert not tracker.flush()
    down[0] = False
    assert tracker.flush() and tracker.pending == 0
    run = MlflowClient(uri).get_run(tracker.run_id("trial:a"))
    assert run.info.status == "FINISHED" and run.data.metrics == {"val_acc": 0.5} and run.data.params == {"lr": "0.1"}


def test_a_trial_opened_twice_while_mlflow_is_down_gets_one_run(tmp_path):
    """A trial starts, errors and is retried while MLflow is down: its second open reopens the
    run its first one queued, instead of queuing a second creation."""
    uri, tracker, down = _down(tmp_path)
    for attempt, outcome in ((1, "failed"), (2, "completed")):
        tracker.create("trial:a", "study", "a", {LEVEL_TAG: "trial"})
        tracker.metrics("trial:a", {"val_acc": 0.5 + attempt / 10}, step=attempt)
        if attempt == 2:
            tracker.end("trial:a", outcome)
    down[0] = False
    assert tracker.flush()
    trials = MlflowClient(uri).search_runs([tracker.experiment_id], f"tags.`{LEVEL_TAG}` = 'trial'")
    assert [r.info.run_id for r in trials] == [tracker.run_id("trial:a")], [r.info.run_id for r in trials]
    assert trials[0].info.status == "FINISHED"


def test_a_create_whose_answer_was_lost_is_retried_without_a_second_run(tmp_path):
    """A busy server makes the run but answers after the client's timeout: the retry adopts that
    run (found by its create token) instead of making another one, left RUNNING for ever."""
    import requests

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "exp", "study", tmp_path)
    real_create, lost = tracker.client.create_run, [1]

    def create_run(*args, **kwargs):
        run = real_create(*args, **kwargs)  # the server made it ...
        if lost[0]:
            lost[0] -= 1
            raise requests.exceptions.ReadTimeout("Read timed out. (read timeout=10)")  # ... the answer was lost
        return run

    tracker.client.create_run = create_run
    tracker.create("trial:a", "study", "a", {LEVEL_TAG: "trial"})
    assert tracker.run_id("trial:a") is None and tracker.pending == 1
    tracker.metrics("trial:a", {"val_acc": 0.5}, step=1)
    tracker.end("trial:a", "completed")
    assert tracker.flush() and tracker.pending == 0
    client = MlflowClient(uri)
    trials = client.search_runs([tracker.experiment_id], f"tags.`{LEVEL_TAG}` = 'trial'")
    assert [r.info.run_id for r in trials] == [tracker.run_id("trial:a")]
    assert trials[0].info.status == "FINISHED" and trials[0].data.metrics == {"val_acc": 0.5}


def _study(tmp_path, name="exp"):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, name, "study", tmp_path)
    tracker.create("exp:a", "study", "a", {LEVEL_TAG: "experiment"})
    for i, acc in enumerate((0.7, 0.9, 0.8)):
        tracker.create(f"trial:{i}", "exp:a", f"t{i}", {LEVEL_TAG: "trial", "subject": "resnet", "phase": "search"})
        tracker.metrics(f"trial:{i}", {"val_acc": acc, "test_acc": acc - 0.01, "best_val_acc": acc}, step=1)
        tracker.end(f"trial:{i}", "completed")
    for key in ("exp:a", "study"):
        tracker.end(key, "completed")
    return uri, tracker


def test_the_experiment_opens_on_its_trials_with_their_metrics(tmp_path):
    uri, tracker = _study(tmp_path)
    client = MlflowClient(uri)
    tags = client.get_experiment(tracker.experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND  # not the GenAI pages
    view = json.loads(tags[VIEW_TAG])
    # the view's filter and order, run by MLflow's own search: the trials, best val_acc first, not their parents
    order = "DESC" if not view["orderByAsc"] else "ASC"
    runs = client.search_runs([tracker.experiment_id], filter_string=view["searchFilter"],
                              order_by=[f"{view['orderByKey']} {order}"])
    assert [r.info.run_name for r in runs] == ["t1", "t2", "t0"]
    # its columns are the trials' key metrics, named as the trials log them
    logged = set(runs[0].data.metrics)
    metrics = [c.split("`")[1] for c in view["selectedColumns"] if c.startswith("metrics.")]
    assert metrics[:3] == ["val_acc", "test_acc", "best_val_acc"] and set(metrics) <= logged
    tags_shown = [c.split("`")[1] for c in view["selectedColumns"] if c.startswith("tags.")]
    assert {"subject", "phase"} <= set(tags_shown) and view["columnOrder"] == view["selectedColumns"]


def test_the_link_names_the_view_and_the_model_training_side_bar():
    query = parse_qs(view_query())
    assert query == {"workflowType": ["machine_learning"], "viewStateShareKey": [VIEW_KEY]}
    assert VIEW_TAG == f"mlflow.sharedViewState.{VIEW_KEY}"  # the tag MLflow's UI reads for that key


def test_an_experiment_made_before_the_view_gets_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("old", artifact_location=(tmp_path / "a").as_uri())  # an older study: untagged
    assert ensure_view(uri, old)
    tags = client.get_experiment(old).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND and json.loads(tags[VIEW_TAG])["searchFilter"]
    resumed = client.create_experiment("again", artifact_location=(tmp_path / "b").as_uri())
    Tracker(uri, "again", "study", tmp_path)  # a resumed study's tracker sets them too
    assert VIEW_TAG in client.get_experiment(resumed).tags
    assert not ensure_view(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}", "1")  # unwritable: the plain link


def test_a_new_sqlite_store_is_a_copy_of_one_mlflow_made_once(tmp_path, monkeypatch):
    from study.tracking import new_sqlite_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ids = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        uri = f"sqlite:///{tmp_path / name / 'mlflow.db'}"
        assert new_sqlite_store(uri) and not new_sqlite_store(uri)  # an existing store is left alone
        tracker = Tracker(uri, "exp", "study", tmp_path / name)
        ids.append(tracker.experiment_id)
        assert MlflowClient(uri).get_experiment(tracker.experiment_id).name == "exp"
    assert ids[0] == ids[1]  # two empty stores alike
    assert [p.name.split("-")[0] for p in (tmp_path / "cache" / "resstudy").iterdir()] == ["mlflow"]
    assert not new_sqlite_store("http://127.0.0.1:5000") and not new_sqlite_store(f"sqlite:///{tmp_path}/none/x.db")
