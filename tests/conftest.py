"""Shared fixtures. `tiny_study_dir` runs one small REAL study (embedded Ray,
Optuna, MLflow on SQLite) once per test session, through the CLI, and hands
its study directory to every test that inspects a study's outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY_SPEC = {
    "name": "tiny",
    "dataset": "digits",
    "image_size": 8,
    "depth": 8,
    "epochs": 3,
    "trials_per_variant": 4,
    "seeds": [0, 1],
    "repeat_best": True,
    "variants": {
        "resnet": {},
        "quotient": {},
        "epsilon": {},
        "sgs": {"space": {"sgs_interval": {"low": 1, "high": 3}, "sgs_batches": {"low": 1, "high": 2}}},
    },
    "train": {"batch_size": 64, "val_size": 0.15},
    "search": {"algorithm": "tpe", "seed": 0, "n_startup_trials": 2},
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0},
    "max_concurrent": 2,
}


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 900,
            check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "study.cli", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"resstudy {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_study_run(tmp_path_factory):
    """(study dir, CompletedProcess) of the tiny study.

    RESSTUDY_TEST_STUDY_DIR=<dir of a finished tiny study> skips the run (for
    iterating on the tests themselves; stdout checks then see a replayed log).
    """
    reuse = os.environ.get("RESSTUDY_TEST_STUDY_DIR")
    if reuse:
        log = Path(reuse) / "run.log"
        return Path(reuse), subprocess.CompletedProcess([], 0, log.read_text() if log.exists() else "", "")
    root = tmp_path_factory.mktemp("tiny-study")
    spec = dict(TINY_SPEC, storage_path=str(root / "runs"))
    spec_path = root / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    proc = run_cli("run", str(spec_path))
    return root / "runs" / "tiny", proc


@pytest.fixture(scope="session")
def tiny_study_dir(tiny_study_run) -> Path:
    return tiny_study_run[0]


# ---------------------------------------------------------------- the fault table

FAULTS: list[tuple[str, str, str]] = []


def record_fault(fault: str, expected: str, observed: str) -> None:
    """A fault-injection test that passed records what it tried and saw."""
    FAULTS.append((fault, expected, observed))


MARK_BEGIN, MARK_END = "<!-- observed faults: begin -->", "<!-- observed faults: end -->"


def pytest_terminal_summary(terminalreporter) -> None:
    if not FAULTS:
        return
    lines = ["| fault | required outcome | observed |", "|---|---|---|",
             *("| " + " | ".join(row) + " |" for row in FAULTS)]
    terminalreporter.section("fault injection: faults tried and their outcomes")
    for line in lines:
        terminalreporter.write_line(line)
    # RESSTUDY_FAULT_TABLE=docs/reliability.md: write the observed table between its markers
    target = os.environ.get("RESSTUDY_FAULT_TABLE")
    if target and Path(target).exists():
        text = Path(target).read_text()
        if MARK_BEGIN in text and MARK_END in text:
            head, rest = text.split(MARK_BEGIN, 1)
            tail = rest.split(MARK_END, 1)[1]
            Path(target).write_text(head + MARK_BEGIN + "\n" + "\n".join(lines) + "\n" + MARK_END + tail)
