"""`resstudy` through its real entry point (the installed console script):
exit codes, help, booleans, errors before any output, the version, and
tracebacks kept for bugs. Each call pays the imports (~2 s), so few of them;
what can be checked in-process is."""

from __future__ import annotations

import re

import contextlib
import io
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from study import cli

ROOT = Path(__file__).resolve().parents[2]
RESSTUDY = ROOT / ".venv" / "bin" / "resstudy"
FAST = ["--epochs=1", "--limit-train-batches=1", "--image-size=8", "--depth=8", "--batch-size=16"]


def resstudy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    exe = [str(RESSTUDY)] if RESSTUDY.exists() else [sys.executable, "-m", "study.cli"]
    return subprocess.run(exe + list(args), cwd=cwd or ROOT, env={**env, "COLUMNS": "200"}, capture_output=True,
                          text=True, timeout=300)


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- the entry point


def test_version_comes_from_the_package_metadata():
    p = resstudy("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"resstudy {version('resstudy')}"


def test_train_help_lists_allowed_values_defaults_and_boolean_flags():
    p = resstudy("train", "--help")
    assert p.returncode == 0, p.stderr
    text = " ".join(re.sub("[\u2500-\u257f]", " ", p.stdout).split())  # rich wraps lines inside its box
    assert "[resnet|quotient|epsilon|sgs]" in text
    assert "[paper|exact_one|unshifted|linear_clip]" in text  # a variant's own option
    assert "[off|branches|mi]" in text  # a feature's option
    assert "--nesterov --no-nesterov" in text
    assert "training epochs; allowed: an integer >= 1 (default: 10)" in text
    # a default that differs per variant says so
    assert "(default: resnet: post, quotient: post, epsilon: pre, sgs: post)" in text


@pytest.mark.parametrize("argv,named", [
    (["--variant", "nope"], "variant: 'nope' is not allowed; allowed: resnet, quotient, epsilon, sgs"),
    (["--epochs", "-1"], "epochs: -1 is not allowed; allowed: an integer >= 1"),
])
def test_bad_input_exits_2_with_one_line_and_nothing_before_it(argv, named):
    p = resstudy("train", *argv)
    assert p.returncode == 2
    assert p.stdout == ""  # no run header, no table
    assert p.stderr.startswith("resstudy train: error: ") and p.stderr.count("\n") == 1 and named in p.stderr


def test_a_run_that_fails_exits_1_and_one_that_completes_exits_0():
    p = resstudy("train", *FAST, "--lr=1e5", "--epochs=2", "--limit-train-batches=3")
    assert p.returncode == 1 and "status=diverged" in p.stdout, p.stdout + p.stderr
    p = resstudy("train", *FAST, "--nesterov", "--no-channels-last", "--grad-clip=null")
    assert p.returncode == 0 and "status=completed" in p.stdout, p.stdout + p.stderr


def test_an_unexpected_exception_keeps_its_traceback():
    # A bug that raises ValueError must not pass for bad input (exit 2, one line).
    code = ("import sys, study.train\n"
            "def boom(*a, **k):\n    raise ValueError('a bug, not bad input')\n"
            "study.train.train = boom\n"
            "from study.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    p = subprocess.run([sys.executable, "-c", code, "train", *FAST], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1
    assert "Traceback (most recent call last)" in p.stderr and "ValueError: a bug, not bad input" in p.stderr


def test_a_study_command_on_what_is_not_a_study_exits_2_and_writes_nothing(tmp_path):
    before = sorted(tmp_path.rglob("*"))
    p = resstudy("analyze", str(tmp_path), "--no-mlflow")
    assert p.returncode == 2 and "is not a study directory" in p.stderr and p.stdout == ""
    assert sorted(tmp_path.rglob("*")) == before


# ---------------------------------------------------------------- in-process


@pytest.fixture
def captured(monkeypatch):
    """Replace the trainer: record the config the flags produced."""
    import study.train

    seen = {}

    def fake_train(cfg, report=None, resume=None):
        seen["cfg"] = cfg
        return {"status": "completed", "val_acc": 0.5}

    monkeypatch.setattr(study.train, "train", fake_train)
    return seen


def test_boolean_flags_set_both_ways_and_absent_means_the_variants_default(captured):
    code, out, err = run_main(["train", "--nesterov", "--no-channels-last"])
    assert code == 0, err
    assert captured["cfg"].nesterov is True and captured["cfg"].channels_last is False
    code, _, err = run_main(["train", "--variant=epsilon", "--no-adaptive-lr"])
    assert code == 0, err
    cfg = captured["cfg"]
    assert cfg.adaptive_lr is False and cfg.epsilon_gate is True  # the variant's default kept
    assert cfg.block == "pre" and cfg.nesterov is False  # epsilon's own default; the trainer's


def test_null_and_typed_values_reach_the_config(captured):
    code, _, err = run_main(["train", "--variant=quotient", "--alpha=null", "--depth=56", "--grad-clip=none",
                             "--lr=0.05", "--sgs-mode=mi"])
    assert code == 0, err
    cfg = captured["cfg"]
    assert cfg.alpha == 1.7  # null: the paper's value at depth 56
    assert cfg.grad_clip is None and cfg.lr == 0.05 and cfg.sgs_mode == "mi"


def test_an_option_of_another_variant_is_refused_naming_its_owner(captured):
    code, out, err = run_main(["train", "--alpha=2"])
    assert code == 2 and out == "" and "captured" not in err
    assert err.startswith("resstudy train: error: alpha: not an option of variant 'resnet'")
    assert "quotient" in err and "cfg" not in captured


def test_a_boolean_given_a_value_says_booleans_are_flags(captured):
    code, out, err = run_main(["train", "--nesterov", "true"])
    assert code == 2 and out == "" and "a boolean is a flag without a value" in err


def test_missing_dataset_files_are_refused_before_the_header(tmp_path, captured):
    code, out, err = run_main(["train", "--dataset=cifar10", f"--data-root={tmp_path / 'none'}"])
    assert code == 2 and out == "" and "data_root: " in err and "does not exist" in err


def test_run_refuses_an_impossible_study_before_ray(tmp_path, monkeypatch):
    from study import preflight

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(preflight, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: big\ndataset: digits\ndepth: 9998\nimage_size: 64\nepochs: 2\n"
                    f"variants: [resnet]\nresources: {{cpu: 4, gpu: 0}}\nstorage_path: {tmp_path / 'runs'}\n")
    code, out, err = run_main(["run", str(spec)])
    assert code == 2 and out == ""
    assert "memory: a resnet trial (depth 9998" in err  # ~0.9 TiB: more than any machine here
    assert "resources.cpu: a trial asks for 4 CPU, but this machine has 2" in err
    assert not (tmp_path / "runs").exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


@pytest.mark.parametrize("name", ["", "..", "/etc"])
def test_status_refuses_what_is_not_a_study(name):
    code, out, err = run_main(["status", name])
    assert code == 2 and out == "" and err.startswith("resstudy status: error: study: ")


def test_cli_module_imports_no_heavy_library():
    code = ("import sys, study.cli\n"
            "print(sorted(m for m in ('ray', 'mlflow', 'optuna', 'pyarrow', 'torch') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.stdout.strip() == "[]", p.stdout + p.stderr


def test_shell_completion_offers_the_variants_and_the_commands():
    env = {**os.environ, "_RESSTUDY_COMPLETE": "complete_bash", "COMP_WORDS": "resstudy train --variant q",
           "COMP_CWORD": "3"}
    p = subprocess.run([str(RESSTUDY)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.split() == ["quotient"], p.stdout + p.stderr


def test_a_study_run_prints_a_short_clean_log(tiny_study_run):
    # Shares the session's tiny study (tests/conftest.py): its stdout is not a terminal,
    # so the progress view writes rate-limited lines, and third-party INFO stays quiet.
    study_dir, proc = tiny_study_run
    out = proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    import re

    assert not [ln for ln in out.splitlines() if re.match(r"\[I \d{4}-", ln)]  # Optuna's INFO lines
    assert "INFO mlflow" not in out and "View run" not in out  # MLflow's INFO lines and run links
    assert "Token authentication is" not in out  # Ray's token notice
    finished = [ln for ln in lines if re.search(r"trial \S+: (completed|pruned|failed|diverged)", ln)]
    assert finished, proc.stdout[-3000:]
    # about one line per finished trial, not one per change (63 lines for 28 trials before)
    assert len(lines) <= len(finished) + 40, proc.stdout[-3000:]
    assert f"study directory: {study_dir.resolve()}" in proc.stdout
    assert f"resstudy ui {study_dir.name}" in proc.stdout


def test_train_with_an_image_size_no_machine_holds_exits_2_before_training(captured):
    # the size rule `run` applies to its trials (study.preflight), for the one network `train` builds
    code, out, err = run_main(["train", "--image-size", "100000", "--epochs", "1"])
    assert code == 2 and out == "" and "cfg" not in captured, err
    assert err.startswith("resstudy train: error: memory: ") and err.count("\n") == 1, err
    assert "image_size 100000" in err and "allowed: image_size <= " in err, err
    code, out, err = run_main(["train", "--image-size", "16", "--epochs", "1"])
    assert code == 0 and "cfg" in captured, err  # a size that fits still trains
