"""The single-trial trainer: determinism, exact resume, divergence, schedules, CLI."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from study.config import TrainConfig
from study.train import CheckpointError, Schedule, load_checkpoint, resolve_precision, train

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
    rows = run(TrainConfig(variant="resnet", lr=1e6, momentum=0.0, weight_decay=0.0, precision="fp32",
                           **{**TINY, "epochs": 3}))
    assert rows[-1]["status"] == "diverged"
    assert not math.isfinite(rows[-1]["train_loss"])
    assert len(rows) < 3 or rows[-1]["epoch"] <= 3


def test_epsilon_reports_discards_and_compression():
    rows = run(TrainConfig(variant="epsilon", epsilon=50.0, **{**TINY, "epochs": 2}))
    last = rows[-1]
    # an epsilon far above any response kills every block: all discarded, params shrink
    assert last["discarded_blocks"] == last["total_blocks"] > 0
    assert last["discarded_ratio"] == 1.0 and last["params_compressed"] < last["params"]
    assert last["param_reduction"] == pytest.approx(1 - last["params_compressed"] / last["params"])
    assert last["compressed_test_acc"] == pytest.approx(last["test_acc"])


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
    # epsilon-ResNet's adaptive restart: lr back to its start on a schedule half as long
    step.restart(8)
    assert step.lr(8) == pytest.approx(0.1) and step.lr(8 + 2.5) == pytest.approx(0.01)


def test_precision_resolution():
    assert resolve_precision("fp32", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="schedule.*'linear'.*step or cosine"):
        train(TrainConfig(schedule="linear", **TINY))
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epoch": 3})


def test_corrupt_checkpoint_names_the_file(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(tmp_path / "state.pt")):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_cli_train_prints_a_table_per_epoch():
    proc = subprocess.run([sys.executable, "-m", "study.cli", "train", "--variant", "quotient", "--depth", "8",
                           "--dataset", "digits", "--image-size", "8", "--epochs", "2", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "train_loss" in line)
    assert "q_dead_frac" in lines[header]
    assert [line.split()[0] for line in lines[header + 1:header + 3]] == ["1", "2"]
    assert "final: status=completed" in proc.stdout


def test_cli_rejects_bad_values_clearly():
    proc = subprocess.run([sys.executable, "-m", "study.cli", "train", "--epochs", "many"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--epochs" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "study.cli", "train", "--dataset", "cifar10", "--data-root",
                           "/nonexistent/cifar", "--epochs", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "/nonexistent/cifar" in proc.stderr and "Traceback" not in proc.stderr
