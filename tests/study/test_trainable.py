"""The trainable's reporting: epoch reports leave on their own thread, rung epochs in step."""

from __future__ import annotations

import threading
import time

import pytest

from study.trainable import Reporter, checkpoint_epochs


def test_a_report_does_not_wait_for_the_driver_unless_asked():
    gate, got = threading.Event(), []

    def deliver(result):
        gate.wait(10)
        got.append(result["epoch"])

    r = Reporter(deliver)
    t0 = time.monotonic()
    r.report({"epoch": 1})
    r.report({"epoch": 2})
    assert time.monotonic() - t0 < 1.0 and got == []  # both queued while the first delivery blocks
    threading.Timer(0.3, gate.set).start()
    r.report({"epoch": 3}, wait=True)  # a rung: returns once delivered
    assert got == [1, 2, 3]
    r.close()


def test_a_stop_or_an_error_in_delivery_reaches_the_training_thread():
    def deliver(result):
        if result["epoch"] == 2:
            raise SystemExit(0)  # how Tune stops a trial inside tune.report

    r = Reporter(deliver)
    r.report({"epoch": 1})
    with pytest.raises(SystemExit):
        r.report({"epoch": 2}, wait=True)
    with pytest.raises(SystemExit):
        r.report({"epoch": 3})
    r.close()

    failed = Reporter(lambda result: (_ for _ in ()).throw(ValueError("bad metric")))
    failed.report({"epoch": 1})
    failed.close()
    with pytest.raises(ValueError, match="bad metric"):
        failed.check()


def test_close_delivers_every_queued_report_in_order():
    got = []
    r = Reporter(lambda result: (time.sleep(0.05), got.append(result["epoch"])))
    for e in range(1, 6):
        r.report({"epoch": e})
    r.close()
    assert got == [1, 2, 3, 4, 5]


def _run_trainable(tmp_path, monkeypatch, rungs, first_report_waits_for, limit_s, events=None):
    """The real trainable outside Ray, with a tune.report that holds epoch 1's report until
    `first_report_waits_for(ckpt_root)` is true (or `limit_s` pass); returns (delivered epochs, held s)."""
    from ray import tune

    from study import trainable as trainable_lib
    from study.config import TrainConfig

    cfg = TrainConfig.from_dict({"variant": "resnet", "dataset": "digits", "image_size": 8, "depth": 8, "epochs": 3,
                                 "batch_size": 64, "seed": 0, "threads": 1}).to_dict()
    root = str(tmp_path / "t")
    delivered, held = [], []

    def report(metrics, checkpoint=None):
        if metrics["epoch"] == 1:
            t0 = time.monotonic()
            while not first_report_waits_for(root) and time.monotonic() - t0 < limit_s:
                time.sleep(0.05)
            held.append(time.monotonic() - t0)
        delivered.append(metrics["epoch"])

    monkeypatch.setattr(tune, "report", report)
    trainable_lib.trainable({"config": cfg, "control": {"rid": "t", "ckpt": root, "ckpt_epochs": rungs,
                                                        "ckpt_every_s": 0}}, events=events)
    return delivered, held[0]


def test_the_trainer_goes_on_while_the_driver_holds_a_report(tmp_path, monkeypatch):
    # epoch 1's report is held until epoch 3's checkpoint exists: only a trainer that does
    # not wait for the driver gets there
    delivered, held = _run_trainable(tmp_path, monkeypatch, rungs=[],
                                     first_report_waits_for=lambda root: 3 in checkpoint_epochs(root), limit_s=60)
    assert delivered == [1, 2, 3] and held < 60


def test_the_events_passed_in_are_called_after_each_epoch_while_its_report_is_still_in_flight(tmp_path, monkeypatch):
    """The seam tests plug faults into: the trial calls the events object it was handed (never
    one named by the environment) after each epoch, with the trial's control data, and the
    reports stay asynchronous: epoch 1's report is still held while epochs 2 and 3 are called."""
    from study.driver.options import Events

    calls = []

    class Seen(Events):
        def after_epoch(self, config, control, epoch):
            calls.append((control["rid"], config["variant"], epoch, 3 in checkpoint_epochs(control["ckpt"])))

    monkeypatch.setenv("RESSTUDY_TRIAL_HOOK", "os:abort")  # the seam of old: must not be read
    delivered, held = _run_trainable(tmp_path, monkeypatch, rungs=[], events=Seen(), limit_s=60,
                                     first_report_waits_for=lambda root: len(calls) == 3)
    assert [c[:3] for c in calls] == [("t", "resnet", 1), ("t", "resnet", 2), ("t", "resnet", 3)]
    assert delivered == [1, 2, 3] and held < 60  # epoch 3 was called while epoch 1 was still held
    assert calls[-1][3], "after_epoch came before its epoch's checkpoint"


def _waits_for_delivery(thread_id: int) -> bool:
    """Whether the thread is blocked in Reporter.report, waiting for its report's delivery."""
    import sys

    from study.trainable import Reporter

    frame, codes = sys._current_frames().get(thread_id), set()
    while frame is not None:
        codes.add(frame.f_code)
        frame = frame.f_back
    return Reporter.report.__code__ in codes and threading.Event.wait.__code__ in codes


def test_the_trainer_waits_at_a_rung_epoch(tmp_path, monkeypatch):
    # epoch 1 is a rung: its report is held until one of two things is seen, the training
    # thread blocked waiting for that delivery (right) or epoch 2 checkpointed (trained past
    # the rung: wrong); no clock decides
    training = threading.get_ident()
    seen = []

    def waiting_or_trained_on(root) -> bool:
        if 2 in checkpoint_epochs(root):
            seen.append("epoch 2 trained while its rung's report was held")
            return True
        if _waits_for_delivery(training):
            seen.append("training waits for the rung's report")
            return True
        return False

    delivered, _ = _run_trainable(tmp_path, monkeypatch, rungs=[1], first_report_waits_for=waiting_or_trained_on,
                                  limit_s=300)
    assert seen == ["training waits for the rung's report"] and delivered == [1, 2, 3], seen


# ---------------------------------------------------------------- a checkpoint that cannot be read


def _checkpoints(root: str, epochs) -> None:
    import torch

    from study.trainable import _write_checkpoint

    reports = []
    for e in epochs:
        reports.append({"epoch": e, "val_acc": 0.1 * e})
        state = {"model": {}, "optimizer": {}, "schedule": {}, "epoch": e, "rng": {}}
        _write_checkpoint(root, e, lambda d, s=state: torch.save(s, f"{d}/state.pt"), list(reports), keep=3)


@pytest.mark.parametrize("damaged", ["state.pt", "done.json"])
def test_a_checkpoint_that_cannot_be_read_is_set_aside_for_the_one_before(tmp_path, capsys, damaged):
    from pathlib import Path

    from study.trainable import resume_point

    root = str(tmp_path / "t")
    _checkpoints(root, [1, 2, 3])
    bad = Path(root) / "epoch-0003" / damaged
    garbage = bytes(range(256)) * 8  # what a torn write or a bad disk leaves
    bad.write_bytes(garbage)
    capsys.readouterr()
    epoch, state, reports = resume_point(root)
    assert (epoch, state["epoch"], [r["epoch"] for r in reports]) == (2, 2, [1, 2])
    assert checkpoint_epochs(root) == [1, 2]  # the driver's replay no longer sees epoch 3
    assert (Path(root) / "epoch-0003.corrupt" / damaged).read_bytes() == garbage  # kept for a look, not deleted
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "set aside" in err[0], err
    assert resume_point(root)[0] == 2 and capsys.readouterr().err == ""  # set aside once, not at every retry


def test_with_no_checkpoint_readable_the_trial_starts_over(tmp_path, capsys):
    from pathlib import Path

    from study.trainable import resume_point

    root = str(tmp_path / "t")
    _checkpoints(root, [1, 2])
    for e in (1, 2):
        (Path(root) / f"epoch-{e:04d}" / "state.pt").write_bytes(b"\x00" * 100)
    assert resume_point(root) == (0, None, [])
    assert checkpoint_epochs(root) == []
    assert sorted(p.name for p in Path(root).iterdir()) == ["epoch-0001.corrupt", "epoch-0002.corrupt"]
    assert len(capsys.readouterr().err.splitlines()) == 2  # one line per checkpoint set aside


def test_the_trainable_goes_on_from_the_newest_intact_checkpoint(tmp_path, monkeypatch, capsys):
    """The real trainable outside Ray: epoch 3's state.pt holds random bytes, so the retry trains
    epoch 3 again from epoch 2 (no traceback, no failed trial at epoch 0)."""
    import os
    from pathlib import Path

    from ray import tune

    from study import trainable as trainable_lib
    from study.config import TrainConfig

    cfg = TrainConfig.from_dict({"variant": "resnet", "dataset": "digits", "image_size": 8, "depth": 8, "epochs": 3,
                                 "batch_size": 64, "seed": 0, "threads": 1}).to_dict()
    root = str(tmp_path / "t")
    delivered = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: delivered.append(metrics))
    trial = {"config": cfg, "control": {"rid": "t", "ckpt": root, "ckpt_epochs": [], "ckpt_every_s": 0}}
    trainable_lib.trainable(trial)
    assert checkpoint_epochs(root) == [2, 3]
    (Path(root) / "epoch-0003" / "state.pt").write_bytes(os.urandom(4096))
    delivered.clear()
    capsys.readouterr()
    trainable_lib.trainable(trial)
    assert [(r["epoch"], r["start_epoch"], r["status"]) for r in delivered] == [(3, 2, "completed")]
    assert checkpoint_epochs(root) == [2, 3] and (Path(root) / "epoch-0003.corrupt" / "state.pt").is_file()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "set aside" in line]
    assert len(warnings) == 1 and str(Path(root) / "epoch-0003" / "state.pt") in warnings[0]
