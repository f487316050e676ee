"""`resstudy` through its real entry point (the installed console script):
exit codes, help, booleans, errors before any output, the version, and
tracebacks kept for bugs; then, in-process, the commands on studies made
here without Ray (status, list, check, --set, train --from) and study.api.
A call that trains pays the torch import (~2 s), so few of them."""

from __future__ import annotations

import re

import contextlib
import io
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from study import cli

ROOT = Path(__file__).resolve().parents[2]
RESSTUDY = Path(sys.executable).with_name("resstudy")  # the console script installed beside this Python
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


@pytest.fixture(autouse=True, scope="module")
def _flag_cache(tmp_path_factory):
    """The train flag cache of these tests (in-process and in the commands they start), not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


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
    assert "--nesterov / --no-nesterov" in text
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

    def fake_train(cfg, report=None, resume=None, on_step=None):
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
    # about one line per finished trial, not one per change (63 lines for 28 trials before): the
    # summaries are rate-limited (one per 20 s, and one as an experiment ends, so their count
    # follows the wall time, not the trials), the claims are listed once at the end, and little
    # else is printed
    summaries = [ln for ln in lines if re.search(r"\d+/\d+ trials finished", ln)]
    at = [int(m[1]) * 60 + int(m[2]) for ln in summaries if (m := re.match(r"\[\S+ (\d+):(\d\d)\]", ln))]
    experiments = {m[1] for ln in lines if (m := re.search(r"\] (\S+ d\d+) ", ln))}
    assert len(at) == len(summaries) and len(at) <= (at[-1] - at[0]) / 20 + len(experiments) + 2, summaries
    claims = lines.index("claims (analysis/claims.csv; `resstudy analyze` for the report):")
    listed = [ln for ln in lines[claims + 1:] if ln.startswith("  ") and ", as " in ln]
    other = len(lines) - len(finished) - len(summaries) - len(listed)
    assert other <= 40, proc.stdout[-3000:]
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


# ---------------------------------------------------------------- the train flags without torch


def test_train_help_at_80_columns_keeps_every_flag_name_whole():
    p = subprocess.run([str(RESSTUDY), "train", "--help"], env={**os.environ, "COLUMNS": "80"},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert max(map(len, p.stdout.splitlines())) <= 80, p.stdout
    names = re.findall(r"--[a-z][a-z0-9-]*", p.stdout)
    for entry in cli.flag_table()["options"]:
        assert "--" + entry["name"].replace("_", "-") in names, entry["name"]
    assert "…" not in p.stdout


def test_a_refused_train_flag_reads_the_cached_flag_table_without_torch(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    code = ("import sys, atexit\n"
            "atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr))\n"
            "from study.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    first = subprocess.run([sys.executable, "-c", code, "train", "--epochs", "x"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 2 and first.stderr.strip().endswith("True"), first.stderr  # derived once
    assert len(list(tmp_path.rglob("train-flags-*.json"))) == 1
    again = subprocess.run([sys.executable, "-c", code, "train", "--epochs", "x"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stdout == ""
    lines = again.stderr.strip().splitlines()
    assert lines[0].startswith("resstudy train: error: ") and "epochs: 'x' is not allowed" in lines[0]
    assert lines[-1] == "False", again.stderr  # torch was never imported


@pytest.fixture
def fresh_table(tmp_path, monkeypatch):
    """flag_table() with an empty in-process table and a cache file under tmp_path."""
    monkeypatch.setattr(cli.flags, "_TABLE", {})
    monkeypatch.setattr(cli.flags, "flag_cache_file", lambda: tmp_path / "flags.json")
    return tmp_path / "flags.json"


def test_the_flag_cache_is_used_only_for_the_sources_it_was_derived_from(fresh_table, monkeypatch):
    import json

    real = cli.flag_table()
    assert json.loads(fresh_table.read_text())["key"] == cli._source_key()
    cached = json.loads(fresh_table.read_text())
    cached["table"]["options"][0]["help"] = "from the cache"
    fresh_table.write_text(json.dumps(cached))
    monkeypatch.setattr(cli.flags, "_TABLE", {})
    assert cli.flag_table()["options"][0]["help"] == "from the cache"  # the same sources: read, not derived
    cached["key"] = "sources that changed since"
    fresh_table.write_text(json.dumps(cached))
    monkeypatch.setattr(cli.flags, "_TABLE", {})
    assert cli.flag_table() == real  # stale: derived again from the registry
    assert json.loads(fresh_table.read_text())["key"] == cli._source_key()


def test_the_train_command_from_the_cache_is_the_one_from_the_registry(fresh_table):
    import json

    import typer

    def help_of(table) -> str:
        cmd = cli.train_command(table)
        return cmd.get_help(typer.Context(cmd, info_name="train"))

    table = cli.flag_table_from_registry()
    assert json.loads(json.dumps(table)) == table  # what the cache file holds is the table itself
    assert help_of(json.loads(json.dumps(table))) == help_of(table)


# ---------------------------------------------------------------- every user error: one line, exit 2, first


def test_a_cuda_device_this_machine_lacks_is_refused_before_the_header(captured, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_main(["train", "--device", "cuda", "--epochs", "1"])
    assert code == 2 and out == "" and err.count("\n") == 1 and "cfg" not in captured, err
    assert err.startswith("resstudy train: error: device: 'cuda' ") and "no CUDA device" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, out, err = run_main(["train", "--device", "cuda:3", "--epochs", "1"])
    assert code == 2 and out == "" and err.count("\n") == 1 and "cfg" not in captured, err
    assert "'cuda:3'" in err and "1 CUDA device(s)" in err and "cuda:0 to cuda:0" in err


def test_a_checkpoint_dir_that_is_a_file_is_refused_before_training(tmp_path, captured):
    (tmp_path / "afile").write_text("mine")
    code, out, err = run_main(["train", "--epochs", "1", "--checkpoint-dir", str(tmp_path / "afile")])
    assert code == 2 and out == "" and err.count("\n") == 1 and "cfg" not in captured, err
    assert err.startswith(f"resstudy train: error: --checkpoint-dir: {str(tmp_path / 'afile')!r} is a file")
    assert (tmp_path / "afile").read_text() == "mine"


def test_export_of_a_study_that_cannot_be_written_says_to_give_out(tmp_path, monkeypatch):
    study = make_study(tmp_path)
    study.chmod(0o555)
    try:
        if os.access(study, os.W_OK):  # root writes anyway: the OS refuses as a read-only mount would
            import tempfile

            real = tempfile.mkstemp

            def refuse(*a, dir=None, **k):
                if dir is not None and Path(dir).resolve().is_relative_to(study.resolve()):
                    raise PermissionError(13, "Permission denied")
                return real(*a, dir=dir, **k)

            monkeypatch.setattr(tempfile, "mkstemp", refuse)
        code, out, err = run_main(["export", str(study)])
    finally:
        study.chmod(0o755)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"resstudy export: error: study: {str(study)!r} cannot be written") and "--out" in err
    assert not (study / "export").exists()


def test_every_spec_problem_at_every_level_comes_in_one_error_before_anything_runs(tmp_path, monkeypatch):
    import study.driver.runner

    monkeypatch.setattr(study.driver.runner, "run_study", lambda *a, **k: pytest.fail("a study was started"))
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndataset: digits\ndepth: [8, 9]\nepoch: 3\nscheduler: {grace: 2}\n"
                    "variants: {quotient: {spce: {}, fixed: {alpha: 0.5}}}\ntrain: {lrr: 1, lr: -1}\n"
                    f"storage_path: {tmp_path / 'runs'}\n")
    for command in ("run", "check"):
        code, out, err = run_main([command, str(spec)])
        assert code == 2 and out == "" and err.startswith(f"resstudy {command}: error: invalid study spec"), err
        listed = [line.split(":")[0].strip() for line in err.splitlines()[1:]]
        assert set(listed) == {"depth[1]", "epoch", "scheduler.grace", "variants.quotient.spce",
                               "variants.quotient.fixed.alpha", "train.lrr", "train.lr"}, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv,named", [
    (["--set", "epochs"], "--set: 'epochs' is not KEY=VALUE"),
    (["--set", "epochs=["], "invalid YAML in --set 'epochs=['"),
    (["--set", "scheduler.grace=2"], "scheduler.grace: unknown key 'grace'"),
])
def test_a_bad_set_is_refused_in_one_error(tmp_path, argv, named):
    code, out, err = run_main(["check", "--preset", "quick", "--no-calibrate", *argv])
    assert code == 2 and out == "" and named in err, err


# ---------------------------------------------------------------- -v anywhere


@pytest.mark.parametrize("argv", [["-v", "status", "{d}"], ["status", "{d}", "-v"], ["status", "-v", "{d}"],
                                  ["status", "{d}", "--verbose"]])
def test_verbose_goes_before_or_after_the_command(tmp_path, argv):
    study = make_study(tmp_path)
    code, out, err = run_main([a.format(d=study) for a in argv])
    assert code == 0 and cli.STATE["verbose"] is True, err
    code, out, err = run_main(["status", str(study)])
    assert code == 0 and cli.STATE["verbose"] is False, err


# ---------------------------------------------------------------- studies made here, without Ray


def make_study(root: Path, name: str = "s", *, finished: bool = False, best: float = 0.7) -> Path:
    """A study directory as a driver leaves it (spec.yaml, study.json, ledger.jsonl), written
    here: resnet and quotient at depth 8, two search trials each, then each best at seed 0,
    and quotient's twin (running). Planned: resnet 2 + 1, quotient 2 + 1 + 1."""
    import json

    import yaml

    from study.config import TrainConfig

    d = root / name
    d.mkdir(parents=True)
    spec = {"name": name, "dataset": "digits", "depth": [8], "epochs": 2, "trials_per_variant": 2, "seeds": [0],
            "repeat_best": True, "variants": ["resnet", "quotient"], "storage_path": str(root)}
    (d / "spec.yaml").write_text(yaml.safe_dump(spec))
    (d / "study.json").write_text(json.dumps({"name": name, "finished": finished}))
    trials = [("resnet", "resnet", "variant", "search", 0, 0.1, "completed", best - 0.2),
              ("resnet", "resnet", "variant", "search", 1, 0.05, "completed", best),
              ("resnet", "resnet", "variant", "repeat", 0, 0.05, "completed", best - 0.01),
              ("quotient", "quotient", "variant", "search", 0, 0.2, "completed", best - 0.1),
              ("quotient", "quotient", "variant", "search", 1, 0.01, "pruned", 0.3),
              ("quotient", "quotient", "variant", "repeat", 0, 0.2, "completed", best - 0.09),
              ("quotient", "resnet", "twin", "twin", 0, 0.2, "running", None)]
    lines = []
    for n, (subject, variant, arm, phase, i, lr, status, acc) in enumerate(trials):
        exp = f"{name}-{subject}-d8"
        rid = f"{exp}-{phase[0]}{i:04d}"
        cfg = TrainConfig(subject, depth=8, epochs=2, lr=lr)
        cfg = cfg.twin() if arm == "twin" else cfg
        rec = {"rid": rid, "study": name, "experiment": exp, "subject": subject, "variant": variant, "arm": arm,
               "phase": phase, "depth": 8, "seed": 0, "optuna_number": i if phase == "search" else None,
               "config": cfg.to_dict(), "searched": ["lr"], "status": status, "updated": 1e9 + n}
        if acc is not None:
            rec["row"] = {"study": name, "experiment": exp, "subject": subject, "variant": variant, "arm": arm,
                          "phase": phase, "depth": 8, "trial_id": rid, "seed": 0, "status": status,
                          "searched": json.dumps(["lr"]), "val_acc": acc, "test_acc": acc - 0.01, **cfg.to_dict()}
        lines.append(json.dumps(rec))
    (d / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    return d


def test_status_json_counts_trials_and_names_the_best(tmp_path):
    import json

    study = make_study(tmp_path)
    code, out, err = run_main(["status", str(study), "--json"])
    assert code == 0, err
    s = json.loads(out)
    assert (s["name"], s["state"], s["done"], s["planned"], s["running"]) == ("s", "interrupted", 6, 7, 0)
    assert s["best"]["trial"] == "s-resnet-d8-s0001" and s["best"]["val_acc"] == pytest.approx(0.7)
    exps = {e["experiment"]: e for e in s["experiments"]}
    assert exps["s-quotient-d8"]["arms"] == {"search": 2, "repeat": 1, "twin": 1}
    assert exps["s-resnet-d8"]["arms"] == {"search": 2, "repeat": 1, "twin": 0}
    assert exps["s-quotient-d8"]["best_trial"] == "s-quotient-d8-s0000"
    assert exps["s-quotient-d8"]["best_config"] == {"lr": 0.2} and exps["s-quotient-d8"]["pruned"] == 1


def test_a_study_whose_driver_holds_it_is_running(tmp_path):
    from study import api
    from study.ledger import StudyLock

    study = make_study(tmp_path)
    with StudyLock(study):
        s = api.load(study).status()
        assert s["state"] == "running" and s["running"] == 1 and s["driver"]["pid"] == os.getpid()
    assert api.load(study).status()["state"] == "interrupted"


@pytest.mark.parametrize("columns", [60, 200])
def test_status_fits_the_width_unless_wide(tmp_path, monkeypatch, columns):
    study = make_study(tmp_path)
    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, err = run_main(["status", str(study)])
    assert code == 0 and max(map(len, out.splitlines())) <= columns, out
    code, wide, err = run_main(["status", str(study), "--wide"])
    assert code == 0 and "…" not in wide and any(len(line) > 60 for line in wide.splitlines()), wide


def test_list_shows_every_study_under_the_storage_path(tmp_path, monkeypatch):
    import json

    make_study(tmp_path, "first", finished=True, best=0.8)
    make_study(tmp_path, "second")
    (tmp_path / "not-a-study").mkdir()
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_main(["list", "--storage-path", str(tmp_path)])
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {"first", "second"}
    assert rows["first"][1:5] == ["finished", "6/7", "0.8000", "resnet"]
    assert rows["second"][1:5] == ["interrupted", "6/7", "0.7000", "resnet"]
    code, out, err = run_main(["list", "--storage-path", str(tmp_path), "--json"])
    assert [s["name"] for s in json.loads(out)] == ["first", "second"]
    code, out, err = run_main(["list", "--storage-path", str(tmp_path / "none")])
    assert code == 0 and out.startswith("no studies under ")


def test_train_from_a_study_retrains_its_best_or_a_named_trial(tmp_path, monkeypatch, captured):
    study = make_study(tmp_path)
    monkeypatch.setenv("RESSTUDY_STORAGE", str(tmp_path))
    code, out, err = run_main(["train", "--from", "s"])
    assert code == 0, err
    assert (captured["cfg"].variant, captured["cfg"].lr) == ("resnet", 0.05)  # the study's best search trial
    assert "from trial s-resnet-d8-s0001 of study s" in out.splitlines()[0]
    code, out, err = run_main(["train", "--from", "s", "--variant", "quotient", "--epochs", "5"])
    assert code == 0, err
    assert (captured["cfg"].variant, captured["cfg"].lr, captured["cfg"].epochs) == ("quotient", 0.2, 5)
    code, out, err = run_main(["train", "--from", f"{study}:s-quotient-d8-t0000"])
    assert code == 0 and captured["cfg"].variant == "resnet" and captured["cfg"].lr == 0.2, err  # the twin
    for argv, named in ((["--from", "s:nope"], "trial: no trial 'nope' in study 's'"),
                        (["--from", "nope"], "study: no study 'nope'"),
                        (["--from", "s", "--variant", "sgs"], "--from: study 's' has no completed search trial")):
        captured.clear()
        code, out, err = run_main(["train", *argv])
        assert code == 2 and out == "" and err.count("\n") == 1 and named in err and not captured, err


def test_set_changes_the_spec_that_runs(tmp_path, monkeypatch):
    import study.driver.runner

    seen = {}
    monkeypatch.setattr(study.driver.runner, "run_study", lambda spec, **k: seen.update(spec=spec))
    code, out, err = run_main(["run", "--preset", "quick", "--storage-path", str(tmp_path), "--set", "epochs=3",
                               "--set", "scheduler.grace_period=2", "--set", "depth=[8, 14]",
                               "--set", "variants=[resnet]"])
    assert code == 0, err
    spec = seen["spec"]
    assert (spec.epochs, spec.scheduler.grace_period, spec.depth, list(spec.variants)) == (3, 2, [8, 14], ["resnet"])
    assert spec.scheduler.reduction_factor == 2 and spec.train["batch_size"] == 32  # the rest as the preset says


def test_check_plans_and_estimates_and_starts_nothing(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: c\ndataset: digits\nimage_size: 8\ndepth: 8\nepochs: 2\ntrials_per_variant: 3\n"
                    f"seeds: [0, 1]\nrepeat_best: true\nvariants: [resnet, quotient]\n"
                    f"train: {{batch_size: 32}}\nstorage_path: {tmp_path / 'runs'}\n")
    code, out, err = run_main(["check", str(spec)])
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("c-")}
    assert [r[:4] for r in (rows["c-resnet-d8"], rows["c-quotient-d8"])] == [["3", "2", "0", "5"], ["3", "2", "2", "7"]]
    assert all(float(r[4]) > 0 for r in rows.values())  # seconds per epoch, timed here
    assert "total: 12 trials of 2 epochs" in out and "estimated training time: about" in out
    assert not (tmp_path / "runs").exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_the_train_table_fits_the_width_and_a_bar_shows_the_running_epoch():
    from study.config import TrainConfig

    cfg = TrainConfig("quotient", epochs=12)
    metrics = {"epoch": 3, "train_loss": 1.2345678, "train_acc": 0.5, "val_loss": 2.5e-05, "val_acc": 0.25,
               "lr": 0.1, "epoch_seconds": 12.5, "images_per_s": 812.4, "q_mean_stage1": 1.01}
    narrow, wide = cli.TrainView(cfg, width=80), cli.TrainView(cfg, width=200)
    for view in (narrow, wide):
        assert len(view.header()) == len(view.format_row(metrics))
    assert len(narrow.header()) <= 80 and "q_mean_stage1" not in narrow.header()
    assert narrow.header().split()[:5] == ["epoch", "loss", "acc", "val_loss", "val_acc"]
    assert "q_mean_stage3" in wide.header() and len(wide.header()) <= 200
    assert [c[0] for c in cli.TrainView(cfg, width=30).columns] == ["epoch", "train_loss", "val_acc"]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with cli.TrainView(cfg, width=80, stream=screen) as view:
        view.step(0, 7, 40)
        view._progress.refresh()
        view.row(metrics)
    text = screen.getvalue()
    assert "epoch 1/12 training" in text and "7/40" in text and "0.2500" in text, text


# ---------------------------------------------------------------- study.api


def test_the_api_loads_a_study_its_trials_results_and_best(tmp_path, monkeypatch):
    from study import api

    make_study(tmp_path, "a")
    make_study(tmp_path, "b", best=0.9)
    monkeypatch.setenv("RESSTUDY_STORAGE", str(tmp_path))
    assert [s.name for s in api.studies()] == ["a", "b"]
    s = api.load("b")
    assert s.path == (tmp_path / "b").resolve() and s.best()["val_acc"] == pytest.approx(0.9)
    assert s.best("quotient")["trial"] == "b-quotient-d8-s0000" and s.best("sgs") is None
    assert s.trial("b-quotient-d8-t0000")["variant"] == "resnet"
    results = s.results()
    assert len(results) == 6 and set(results["status"]) == {"completed", "pruned"}
    assert s.plan()[("quotient", 8)] == {"search": 2, "repeat": 1, "twin": 1}
    with pytest.raises(api.StudyNotFound, match="studies under .*: a, b"):
        api.load("c")


def test_the_api_report_is_written_when_missing_or_older_than_the_study(tmp_path, monkeypatch):
    import analysis.report

    from study import api

    study = make_study(tmp_path)
    calls = []

    def analyze(d, out_dir=None, log_to_mlflow=True):
        calls.append(log_to_mlflow)
        path = Path(d) / "analysis" / "report.html"
        path.parent.mkdir(exist_ok=True)
        path.write_text("<html>")
        return path

    monkeypatch.setattr(analysis.report, "analyze", analyze)
    s = api.load(study)
    assert s.report() == study / "analysis" / "report.html" and calls == [False]
    assert s.report() == study / "analysis" / "report.html" and len(calls) == 1  # current: not written again
    os.utime(study / "ledger.jsonl", (time.time() + 60, time.time() + 60))  # the study moved on
    s.report()
    assert len(calls) == 2


def test_list_shows_a_damaged_study_as_unreadable_beside_the_others(tmp_path, monkeypatch):
    import json

    make_study(tmp_path, "good")
    (make_study(tmp_path, "bad") / "study.json").write_text('{"name": "bad", "trunc')
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run_main(["list", "--storage-path", str(tmp_path)])
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:]}
    assert rows == {"bad": ["unreadable", "?/?"], "good": ["interrupted", "6/7"]}
    code, out, err = run_main(["list", "--storage-path", str(tmp_path), "--json"])
    bad = json.loads(out)[0]
    assert bad["state"] == "unreadable" and str(tmp_path / "bad" / "study.json") in bad["error"]


@pytest.mark.parametrize("content", ['{"key": "KEY", "table": {}}', '{"key": "KEY", "tab', "[]", ""])
def test_a_damaged_flag_cache_is_derived_again(fresh_table, content):
    fresh_table.write_text(content.replace("KEY", cli._source_key()))
    assert cli.flag_table() == cli.flag_table_from_registry()
    assert '"options"' in fresh_table.read_text()


def test_the_program_stops_ray_itself_and_freezes_the_heap_before_it_exits(monkeypatch):
    """entry (the console script) ends an embedded Ray without Ray's exit-hook wait and
    freezes the heap for the exit; main alone (in process: tests, notebooks) leaves both."""
    import gc
    import importlib
    import types

    app = importlib.import_module("study.cli.app")  # the module (study.cli's `app` is the typer app)

    calls: list[str] = []
    fake = types.SimpleNamespace(is_initialized=lambda: True, shutdown=lambda: calls.append("shutdown"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    gc.unfreeze()
    assert run_main(["list", "--storage-path", "/nonexistent-resstudy"])[0] in (0, 2) and calls == []
    monkeypatch.setattr(app, "main", lambda: 3)
    try:
        assert app.entry() == 3
        assert calls == ["shutdown"] and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
