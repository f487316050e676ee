"""The MLflow queue: calls for a run whose creation waits (server down) are kept
behind it, in order, and delivered when the server returns."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from study.tracking import Tracker


def test_a_run_created_while_mlflow_is_down_still_ends_finished(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "exp", "study", tmp_path)
    real_apply, down = tracker._apply, [True]

    def apply(kind, key, payload):
        if down[0]:
            raise ConnectionError("Connection refused")
        return real_apply(kind, key, payload)

    tracker._apply = apply
    tracker.create("trial:a", "study", "a", {"resstudy.level": "trial"}, params={"lr": 0.1})
    assert tracker.run_id("trial:a") is None and tracker.known("trial:a") and not tracker.known("trial:b")
    tracker.metrics("trial:a", {"val_acc": 0.5}, step=1)
    tracker.end("trial:a", "pruned")
    assert not tracker.flush()
    down[0] = False
    assert tracker.flush() and tracker.pending == 0
    run = MlflowClient(uri).get_run(tracker.run_id("trial:a"))
    assert run.info.status == "FINISHED" and run.data.metrics == {"val_acc": 0.5} and run.data.params == {"lr": "0.1"}
