"""The single-trial trainer: determinism, exact resume, divergence, schedules, CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from study.config import TrainConfig
from study import data as data_lib
from study.models import create_model
from study.train import CheckpointError, Schedule, evaluate, load_checkpoint, resolve_precision, train

TINY = dict(dataset="digits", image_size=8, depth=8, batch_size=64, val_size=0.15, epochs=4, threads=1)


class Stop(Exception):
    pass


def run(cfg: TrainConfig, resume=None, stop_after: int | None = None, save_to=None) -> list[dict]:
    rows = []

    def report(metrics, info, save):
        rows.append(dict(metrics))
        if save_to is not None:
            save(save_to)
        if stop_after is not None and metrics["epoch"] == stop_after:
            raise Stop

    try:
        train(cfg, report, resume=resume)
    except Stop:
        pass
    return rows


def _comparable(rows):
    drop = {"epoch_seconds", "images_per_s"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_same_seed_same_metrics_and_other_seed_differs():
    cfg = TrainConfig(variant="resnet", **{**TINY, "epochs": 2})
    a, b = run(cfg), run(cfg)
    assert _comparable(a) == _comparable(b)
    c = run(TrainConfig(variant="resnet", seed=1, **{**TINY, "epochs": 2}))
    assert _comparable(c) != _comparable(a)


@pytest.mark.parametrize("options", [
    dict(variant="resnet"),
    dict(variant="sgs", sgs_mode="mi", sgs_interval=1, sgs_batches=2, sgs_warmup=1),
    dict(variant="epsilon", epsilon=0.5, adaptive_lr=True),
    dict(variant="quotient", quotient_rule="exact_one", schedule="cosine", warmup_epochs=1),
], ids=["resnet", "sgs-mi", "epsilon", "quotient"])
def test_resume_ends_exactly_where_an_unbroken_run_ends(tmp_path, options):
    cfg = TrainConfig(**options, **TINY)
    unbroken = run(cfg)
    first = run(cfg, stop_after=2, save_to=tmp_path)
    assert len(first) == 2 and load_checkpoint(tmp_path)["epoch"] == 2
    resumed = run(cfg, resume=tmp_path)
    assert [r["epoch"] for r in resumed] == [3, 4]
    assert _comparable(first + resumed) == _comparable(unbroken)
    assert unbroken[-1]["status"] == "completed" and "test_acc" in unbroken[-1]


def test_divergence_ends_the_trial_with_status_diverged():
    rows = run(TrainConfig(variant="resnet", lr=1e10, momentum=0.0, weight_decay=0.0, precision="fp32",
                           **{**TINY, "epochs": 3}))
    # the trial ends at the first epoch whose loss is not finite: no epoch is reported after it
    assert [r["status"] for r in rows] == ["running"] * (len(rows) - 1) + ["diverged"]
    assert all(math.isfinite(r["train_loss"]) for r in rows[:-1]) and not math.isfinite(rows[-1]["train_loss"])
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) < 3
    assert rows[-1]["val_acc"] == 0.0 and "test_acc" not in rows[-1]


def test_epsilon_reports_discards_and_compression():
    rows = run(TrainConfig(variant="epsilon", epsilon=50.0, **{**TINY, "epochs": 2}))
    last = rows[-1]
    # an epsilon far above any response kills every block: all discarded, params shrink
    assert last["discarded_blocks"] == last["total_blocks"] > 0
    assert last["discarded_ratio"] == 1.0 and last["params_compressed"] < last["params"]
    assert last["param_reduction"] == pytest.approx(1 - last["params_compressed"] / last["params"])
    # every gate stays shut on the test batches too, so the compressed net is exact
    assert last["compressed_test_acc"] == last["test_acc_last"]


def test_quotient_and_sgs_report_their_statistics():
    q = run(TrainConfig(variant="quotient", **{**TINY, "epochs": 1}))[-1]
    assert {"q_mean_stage1", "q_min_stage3", "q_max_stage2", "q_dead_frac"} <= set(q)
    s = run(TrainConfig(variant="sgs", sgs_mode="branches", sgs_branches="3x3+1x1", **{**TINY, "epochs": 1}))[-1]
    # 3x3+1x1 gives centre 2, rest 1, divided by the mean 10/9
    assert s["sgs_center"] == pytest.approx(2 / (10 / 9))


def test_schedules():
    step = Schedule(0.1, "step", 10)
    assert [round(step.lr(e), 6) for e in (0, 4.9, 5, 7.4, 7.5, 9.9)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    cos = Schedule(0.1, "cosine", 10)
    assert cos.lr(0) == pytest.approx(0.1) and cos.lr(5) == pytest.approx(0.05) and cos.lr(10) == pytest.approx(0)
    warm = Schedule(0.1, "step", 10, warmup=2)
    assert warm.lr(0) < 0.001 and warm.lr(1) == pytest.approx(0.05, rel=1e-2) and warm.lr(2) == pytest.approx(0.1)
    # epsilon-ResNet's adaptive restart: lr back to its start on the half-length schedule;
    # every restart uses that same half length (150 -> 150, not 150 -> 75 -> 37.5)
    run_len = 300
    sched = Schedule(0.1, "step", run_len)
    for restart_epoch in (40, 95, 160):
        sched.restart(restart_epoch)
        assert sched.length == run_len / 2
        assert sched.lr(restart_epoch) == pytest.approx(0.1)
        assert sched.lr(restart_epoch + 0.5 * run_len / 2 - 0.01) == pytest.approx(0.1)
        assert sched.lr(restart_epoch + 0.5 * run_len / 2) == pytest.approx(0.01)
        assert sched.lr(restart_epoch + 0.75 * run_len / 2) == pytest.approx(0.001)
    assert sched.restarts == 3


def test_epsilon_schedule_follows_the_official_steps_and_restarts_at_half_length():
    # official: [(0, 0.1), (82, 0.01), (123, 0.001), (300, 0.0002)] on the 164-epoch recipe,
    # restarted as [(N, 0.1), (N+41, 0.01), (N+61, 0.001), (N+150, 0.0002)]
    sched = Schedule(0.1, "epsilon", 164)
    assert [round(sched.lr(e), 6) for e in (0, 81.9, 82, 122.9, 123, 299.9, 300)] == [
        0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0002]
    assert sched.end(1000) == 164  # no restart: the recipe's length
    for n in (90, 200):  # every restart: the same half-length steps from the restart epoch
        sched.restart(n)
        assert [round(sched.lr(n + d), 6) for d in (0, 40.9, 41, 61.4, 61.5, 149.9, 150)] == [
            0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0002]
        # training extends to N + 164: past the fourth step, which the restarted run reaches
        assert sched.end(1000) == n + 164 and sched.lr(n + 163.9) == pytest.approx(0.0002)
    assert sched.end(300) == 300  # capped
    step = Schedule(0.1, "step", 164)
    step.restart(150)
    assert step.end(1000) == 164  # step and cosine keep the fixed budget


@pytest.fixture
def restart_at(monkeypatch):
    """Plant epsilon's moving-average discard count per epoch, so a restart fires where a
    test wants it (the trainer's own restart and extension logic runs as in production)."""
    import study.models.epsilon as eps

    def plant(counts):
        calls = iter(counts)
        monkeypatch.setattr(eps, "discarded_count", lambda model: float(next(calls, counts[-1])))

    return plant


def test_epsilon_restart_extends_training_to_finish_the_restarted_schedule(restart_at):
    restart_at([0.0, 0.0, 1.0])  # the count rises by 1 after epoch 3: restart at epoch index 3
    rows = run(TrainConfig(variant="epsilon", **{**TINY, "epochs": 4}))
    # restart at 3, then 4 more epochs (the half-length steps, then the fourth step)
    assert [r["epoch"] for r in rows] == list(range(1, 8)) and rows[-1]["status"] == "completed"
    assert [r["status"] for r in rows[:-1]] == ["running"] * 6
    assert rows[2]["lr_restarts"] == 1 and rows[2]["epochs_planned"] == 7 and rows[1]["epochs_planned"] == 4
    assert rows[3]["lr"] == pytest.approx(0.1)  # lr back to its start after the restart
    assert rows[-1]["lr"] == pytest.approx(0.1 * 0.002)  # the fourth step is reached
    assert "test_acc" in rows[-1] and "compressed_test_acc" in rows[-1]
    # capped by max_epochs
    restart_at([0.0, 0.0, 1.0])
    capped = run(TrainConfig(variant="epsilon", max_epochs=5, **{**TINY, "epochs": 4}))
    assert [r["epoch"] for r in capped] == [1, 2, 3, 4, 5] and capped[-1]["status"] == "completed"
    # the fixed-budget departure: the step schedule stops at `epochs` whatever restarts
    restart_at([0.0, 0.0, 1.0])
    fixed = run(TrainConfig(variant="epsilon", schedule="step", **{**TINY, "epochs": 4}))
    assert [r["epoch"] for r in fixed] == [1, 2, 3, 4] and fixed[2]["lr_restarts"] == 1


def test_a_matched_twin_trains_exactly_the_epochs_its_variant_trained():
    twin = TrainConfig(variant="epsilon", epsilon_gate=False, train_epochs=6, **{**TINY, "epochs": 4})
    rows = run(twin)
    assert [r["epoch"] for r in rows] == list(range(1, 7)) and rows[-1]["status"] == "completed"
    # its schedule still spans `epochs` (the variant's base schedule, no restart)
    sched = Schedule(0.1, "epsilon", 4)
    assert [r["lr"] for r in rows] == pytest.approx([sched.lr(e + 1 - 1e-9) for e in range(6)])
    assert all(r["lr_restarts"] == 0 for r in rows)


def test_epsilon_decays_conv_and_linear_weights_only():
    from study.train import param_groups

    cfg = TrainConfig(variant="epsilon", depth=8)
    assert (cfg.weight_decay, cfg.weight_decay_scope, cfg.schedule) == (2e-4, "conv_fc", "epsilon")
    assert cfg.twin().weight_decay_scope == "conv_fc" and cfg.twin().weight_decay == 2e-4  # the twin follows
    m = create_model("epsilon", depth=8)
    decayed, rest = param_groups(m, 2e-4, "conv_fc")
    assert decayed["weight_decay"] == 2e-4 and rest["weight_decay"] == 0.0
    names = {id(p): n for n, p in m.named_parameters()}
    assert sorted(names[id(p)] for p in decayed["params"]) == sorted(
        n for n, mod in m.named_modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))
        for n in [f"{n}.weight"])
    assert any("bn" in names[id(p)] for p in rest["params"]) and any(names[id(p)] == "fc.bias" for p in rest["params"])
    (only,) = param_groups(m, 1e-4, "all")
    assert len(only["params"]) == len(list(m.parameters())) and only["weight_decay"] == 1e-4
    # a training step leaves a BN scale without gradient untouched under conv_fc, decays it under all
    for scope, moved in (("conv_fc", False), ("all", True)):
        bn = torch.nn.BatchNorm2d(2)
        opt = torch.optim.SGD(param_groups(torch.nn.Sequential(bn), 0.5, scope), lr=0.1)
        bn.weight.grad = torch.zeros_like(bn.weight)
        opt.step()
        assert (not torch.equal(bn.weight, torch.ones(2))) == moved
    assert TrainConfig(variant="resnet").weight_decay_scope == "all"


def test_precision_resolution():
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="schedule: 'linear' is not allowed; allowed: one of step, cosine"):
        TrainConfig(schedule="linear", **TINY)
    with pytest.raises(ValueError, match="epoch: not an option of variant 'resnet'"):
        TrainConfig.from_dict({"epoch": 3})


def test_a_small_net_learns_digits_far_above_chance():
    rows = run(TrainConfig(variant="resnet", dataset="digits", image_size=16, depth=8, epochs=5, batch_size=64,
                           lr=0.1, val_size=0.15, schedule="cosine", threads=1))
    last = rows[-1]
    # 10 classes: chance is 0.1; measured about 0.95 on this recipe
    assert last["best_val_acc"] > 0.8 and last["test_acc"] > 0.8
    assert rows[0]["train_loss"] > last["train_loss"]


def test_evaluate_matches_a_direct_computation_at_any_batch_size():
    torch.manual_seed(0)
    data = data_lib.load_data("digits", None, val_size=0.15, image_size=8, device=torch.device("cpu"))
    model = create_model("resnet", depth=8, num_classes=10, in_channels=data.in_channels).eval()
    x = next(iter(data_lib.eval_batches(data.test_x, data.test_y, data, len(data.test_y), channels_last=False)))[0]
    with torch.no_grad():
        out = model(x)
    acc = (out.argmax(1) == data.test_y).float().mean().item()
    loss = torch.nn.functional.cross_entropy(out, data.test_y).item()
    for bs in (7, 128, 10_000):
        got_loss, got_acc = evaluate(model, data.test_x, data.test_y, data, None, False, bs)
        assert got_acc == pytest.approx(acc, abs=1e-6) and got_loss == pytest.approx(loss, rel=1e-5)
    assert 0 < acc < 0.5  # untrained: the check is not of a constant


def test_test_acc_is_taken_at_the_best_validation_epoch(tmp_path):
    cfg = TrainConfig(variant="resnet", **{**TINY, "epochs": 4, "lr": 0.4})
    saved = []

    def report(metrics, info, save):
        d = tmp_path / str(metrics["epoch"])
        save(d)
        saved.append((metrics["epoch"], metrics["val_acc"]))

    final = train(cfg, report)
    best_epoch = max(saved, key=lambda e: (e[1], -e[0]))[0]
    assert final["best_epoch"] == best_epoch
    state = load_checkpoint(tmp_path / str(best_epoch))
    data = data_lib.load_data("digits", None, val_size=0.15, image_size=8, device=torch.device("cpu"))
    model = create_model("resnet", depth=8, num_classes=10, in_channels=data.in_channels)
    model.load_state_dict(state["model"])
    assert evaluate(model, data.test_x, data.test_y, data, None, False, 128)[1] == final["test_acc"]
    model.load_state_dict(load_checkpoint(tmp_path / "4")["model"])
    assert evaluate(model, data.test_x, data.test_y, data, None, False, 128)[1] == final["test_acc_last"]


def test_corrupt_checkpoint_names_the_file(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(tmp_path / "state.pt")):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_cli_train_prints_a_table_per_epoch():
    proc = subprocess.run([sys.executable, "-m", "study.cli", "train", "--variant", "quotient", "--depth", "8",
                           "--dataset", "digits", "--image-size", "8", "--epochs", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})  # the table fits $COLUMNS: wide enough for all
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "loss"])
    assert "q_mean_stage1" in lines[header]
    assert [line.split()[0] for line in lines[header + 1:header + 3]] == ["1", "2"]
    assert "final: status=completed" in proc.stdout


def test_cli_rejects_bad_values_clearly():
    proc = subprocess.run([sys.executable, "-m", "study.cli", "train", "--epochs", "many"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--epochs" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "study.cli", "train", "--dataset", "cifar10", "--data-root",
                           "/nonexistent/cifar", "--epochs", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "/nonexistent/cifar" in proc.stderr and "Traceback" not in proc.stderr
