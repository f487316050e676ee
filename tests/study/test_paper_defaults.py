"""Every variant's paper defaults, pinned three ways: literally here, in the
defaults table of docs/methods.md, and in what a short training run records.
Changing a default in the code or in the docs alone fails a test; changing it
on purpose means changing this file too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from study.config import TrainConfig
from study.train import load_checkpoint, train

DOCS = Path(__file__).resolve().parents[2] / "docs" / "methods.md"

PINNED: dict[str, dict[str, object]] = {
    "resnet": {"block": "post", "shortcut": "A", "init": "kaiming", "schedule": "step", "weight_decay": 1e-4,
               "weight_decay_scope": "all"},
    "quotient": {"block": "post", "shortcut": "conv3x3", "init": "default", "quotient_rule": "paper",
                 "quotient_stem": True, "quotient_shortcut": True, "schedule": "step", "weight_decay": 1e-4},
    "epsilon": {"block": "pre", "shortcut": "avgpool", "stem": "conv_bn_relu", "epsilon": 2.5, "side_weight": 0.1,
                "adaptive_lr": True, "schedule": "epsilon", "weight_decay": 2e-4, "weight_decay_scope": "conv_fc"},
    "sgs": {"sgs_mode": "mi", "sgs_k": 5.0, "sgs_interval": 30, "sgs_batches": 20, "sgs_warmup": 0,
            "sgs_branches": "3x3+3x1+1x1", "sgs_diagonal_removal": False, "schedule": "step",
            "weight_decay": 1e-4},
}
QUOTIENT_ALPHA = {8: 2.0, 14: 2.0, 20: 2.0, 32: 1.9, 44: 1.8, 56: 1.7, 110: 1.5}
TRAINER = {"lr": 0.1, "momentum": 0.9, "batch_size": 128, "nesterov": False, "eval_batch_size": 128}


def _text(v: object) -> str:
    return str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)


def doc_table() -> dict[tuple[str, str], str]:
    text = DOCS.read_text()
    section = text.split("## Each variant's defaults", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in PINNED:
            rows[(cells[0], cells[1])] = cells[2]
    return rows


def test_the_docs_table_states_the_pinned_defaults():
    rows = doc_table()
    expected = {(v, k): _text(x) for v, opts in PINNED.items() for k, x in opts.items()}
    assert {k: v for k, v in rows.items() if k[1] != "alpha"} == expected
    alpha = rows[("quotient", "alpha")]
    for depth, a in QUOTIENT_ALPHA.items():
        assert re.search(rf"\b{a:g} at (depth )?([0-9, ]*\b)?{depth}\b", alpha), (depth, a, alpha)


@pytest.mark.parametrize("variant", list(PINNED))
def test_the_code_defaults_are_the_pinned_ones(variant):
    cfg = TrainConfig(variant=variant, depth=20)
    assert {k: cfg.get(k) for k in PINNED[variant]} == PINNED[variant]
    assert {k: cfg.get(k) for k in TRAINER} == TRAINER


def test_quotient_alpha_per_depth_is_pinned():
    assert {d: TrainConfig(variant="quotient", depth=d).alpha for d in QUOTIENT_ALPHA} == pytest.approx(QUOTIENT_ALPHA)


@pytest.mark.parametrize("variant", list(PINNED))
def test_a_short_run_records_the_documented_options_and_the_epochs_it_trained(variant, tmp_path):
    # depth 8 on digits, 2 epochs: what the checkpoint records is what ran
    cfg = TrainConfig(variant=variant, dataset="digits", image_size=8, depth=8, batch_size=64, val_size=0.15,
                      epochs=2, threads=1)
    rows = []

    def report(metrics, info, save):
        rows.append(dict(metrics))
        save(tmp_path)

    last = train(cfg, report)
    recorded = load_checkpoint(tmp_path)["config"]
    assert {k: recorded[k] for k in PINNED[variant]} == PINNED[variant]
    if variant == "quotient":
        assert recorded["alpha"] == QUOTIENT_ALPHA[8]
    assert last["status"] == "completed" and [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == rows[-1]["epochs_planned"] == load_checkpoint(tmp_path)["epoch"]
    # the epochs trained are `epochs` unless an epsilon restart extended them (N + epochs)
    restarts = rows[-1].get("lr_restarts", 0)
    assert len(rows) == 2 if not restarts else len(rows) > 2
