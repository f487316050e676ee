"""Bad input, generated: whatever a user feeds the spec loader, the CLI or the
file readers, the answer is one clear error naming the field or file, never a
traceback and never a started study."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from study import cli
from study.config import all_option_names
from study.results import ResultsError, read_table, write_table
from study.spec import SpecError, StudySpec, load_spec
from study.train import CheckpointError, load_checkpoint
from tests.conftest import importable

VALID = {"name": "p", "dataset": "digits", "depth": 8, "epochs": 2, "trials_per_variant": 1}
SCHEMA = set(StudySpec.model_fields)
VARIANTS = ("resnet", "quotient", "epsilon", "sgs")
SECTION_KEYS = {
    "search": ["algorithm", "seed", "n_startup_trials", "grid_points"],
    "scheduler": ["type", "grace_period", "reduction_factor"],
    "resources": ["cpu", "gpu"],
    "mlflow": ["tracking_uri", "experiment"],
    "train": all_option_names(),
}
SPACE_KEYS = ["low", "high", "log", "value", "choices", "step"]

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Junk values: what a typo, a wrong indent or a hostile file puts in a field.
scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.integers(-3, 40)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308])
           | st.text(max_size=12)
           | st.sampled_from(["", "~nobody-here/x", "file://", "s3://b/x", "auto", "grid", "asha", "8", "1e-4", "\0"]))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3), max_leaves=6)


@st.composite
def malformed_specs(draw) -> dict:
    """VALID with 1-4 mutations: a field replaced by junk, an unknown key, a
    required key deleted, or junk nested inside a section."""
    spec = dict(VALID)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "unknown", "delete", "nest", "nest"]))
        if op == "replace":
            spec[draw(st.sampled_from(sorted(SCHEMA)))] = draw(junk)
        elif op == "unknown":
            spec[draw(st.text(min_size=1, max_size=10))] = draw(junk)
        elif op == "delete":
            spec.pop(draw(st.sampled_from(sorted(spec) or ["name"])), None)
        else:
            section = draw(st.sampled_from(["variants", *SECTION_KEYS]))
            if section == "variants":
                variant = draw(st.sampled_from(VARIANTS) | st.text(max_size=6))
                param = draw(st.sampled_from(all_option_names()) | st.text(max_size=6))
                body = draw(st.sampled_from(["space", "fixed", "junk"]))
                if body == "space":
                    inner = {"space": {param: draw(st.dictionaries(st.sampled_from(SPACE_KEYS), junk, max_size=3))}}
                elif body == "fixed":
                    inner = {"fixed": {param: draw(junk)}}
                else:
                    inner = draw(junk)
                spec["variants"] = {variant: inner}
            else:
                key = draw(st.sampled_from(SECTION_KEYS[section]) | st.text(max_size=6))
                spec[section] = {key: draw(junk)}
    return spec


def check_spec_error(message: str, data: dict | None) -> None:
    """One header line, then one `field.path: problem` line per error whose
    path starts at a field of the input or of the schema."""
    assert message.strip(), "empty SpecError"
    lines = message.splitlines()
    assert "Traceback" not in message
    if not lines[0].startswith("invalid study spec"):
        return  # a file-level error (unreadable file, bad YAML, not a mapping): one line
    assert len(lines) >= 2, message
    keys = {str(k) for k in (data or {})}
    known = sorted(SCHEMA | keys | {repr(k) for k in keys} | {"<top level>"}, key=len, reverse=True)
    for line in lines[1:]:
        assert any(re.match(rf"  {re.escape(k)}[.\[:]", line) for k in known), \
            f"{line!r} does not start with a field of the input or the schema:\n{message}"


# ---------------------------------------------------------------- the spec loader


@FAST
@given(malformed_specs())
def test_any_malformed_mapping_is_a_spec_or_one_spec_error(data):
    try:
        spec = load_spec(data)
    except SpecError as e:
        check_spec_error(str(e), data)
    else:
        assert isinstance(spec, StudySpec)


def test_errors_found_by_fuzzing_name_the_field():
    # Each once escaped as a TypeError/ValueError/OverflowError/RuntimeError or
    # hung building an astronomically large grid.
    cases = {
        "resources.gpu": {"resources": {"gpu": math.inf}},
        "resources.cpu": {"resources": {"cpu": math.inf}},
        "search.seed": {"search": {"seed": 2**40}},
        "seeds[0]": {"seeds": [2**40]},
        "storage_path": {"storage_path": "~nobody-here/x"},
        "search.grid_points": {"search": {"algorithm": "grid", "grid_points": 10**8}},
        "train.label_smoothing": {"train": {"label_smoothing": math.nan}},
        "variants./0": {"variants": {"/0": {}}},  # a key that looked like the marker of an absolute path
        "variants.\\x000": {"variants": {"\x000": {}}},  # a key starting with the NUL that marked one later
    }
    for field, change in cases.items():
        with pytest.raises(SpecError) as info:
            load_spec({**VALID, **change})
        assert f"  {field}: " in str(info.value), (field, str(info.value))
    with pytest.raises(SpecError, match=r"search.grid_points: .* a grid of \d+ points; allowed: a grid of at most"):
        load_spec({**VALID, "search": {"algorithm": "grid", "grid_points": 20}})


YAML_TOKENS = ["name", "dataset", "depth", "train", "variants", "search", ":", ": ", "- ", "\n", "  ", "{", "}", "[",
               "]", ",", "? ", "&a ", "*a", "*b", "!!binary ", "!!timestamp", "!!python/object:os.system ", "!!set ",
               "!!int ", "!!float ", "!!bool ", "!!str ", "!!map ", "!!seq ", "!!omap ", "!!pairs ", "!!null ", "<<: ",
               "!local ", "!!merge ",
               "'", '"', "#", "2001-13-45", "0x_", "0b2", "1e400", ".nan", ".inf", "-", "8", "digits", "~", "null",
               "%YAML 1.1\n", "---\n", "...\n", "|\n", ">\n", "\t", "\\x", "@", "`"]


@FAST
@given(st.one_of(st.text(st.characters(codec="utf-8"), max_size=200),
                 st.lists(st.sampled_from(YAML_TOKENS), max_size=40).map("".join),
                 st.binary(max_size=200)))
def test_any_spec_file_content_is_a_spec_or_one_spec_error(content):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "spec.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        try:
            load_spec(path)
        except SpecError as e:
            try:
                data = yaml.safe_load(content)  # the keys the message may name
            except Exception:
                data = None
            check_spec_error(str(e), data if isinstance(data, dict) else None)


def test_yaml_errors_found_by_fuzzing(tmp_path):
    for text, expected in [("? [a]\n: 1\n", "line 1, column 3: found a list as a key"),
                           ("{[1]: 2}", "found a list as a key"),
                           ("a: 2001-13-45", "month must be in 1..12"),
                           ("a: 0x_", "invalid literal"),
                           ("!!timestamp", "AttributeError"),
                           ("a: " + "[" * 3000 + "]" * 3000, "RecursionError")]:
        path = tmp_path / "s.yaml"
        path.write_text(text)
        with pytest.raises(SpecError, match=re.escape(expected)) as info:
            load_spec(path)
        assert str(path) in str(info.value)
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(SpecError, match="cannot be read as UTF-8"):
        load_spec(path)


# ---------------------------------------------------------------- the CLI, in-process


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def ray_started() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(malformed_specs())
def test_run_with_a_malformed_spec_exits_2_before_any_work(data):
    with tempfile.TemporaryDirectory() as d:
        storage = Path(d) / "runs"
        path = Path(d) / "spec.yaml"
        path.write_text(yaml.safe_dump({"storage_path": str(storage), **data}, allow_unicode=True))
        try:
            load_spec(path)
            assume(False)  # a valid spec would start a study
        except SpecError:
            pass
        code, out, err = run_main(["run", str(path)])
        assert code == 2 and err.startswith("resstudy run: error: "), err
        assert "Traceback" not in err + out
        assert not storage.exists() and not ray_started()


words = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=10)
NULL_WORDS = ("none", "null")


def _parses(kind: type, text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def bad_values(opt):
    """Text that option `opt` must refuse, derived from its declaration: numbers
    outside its bounds, words of the wrong type, values outside its choices."""
    def null_ok(t):
        return opt.nullable and t.strip().lower() in NULL_WORDS

    if opt.choices is not None:
        shown = {str(c).lower() if isinstance(c, bool) else str(c) for c in opt.choices}
        return words.filter(lambda t: t not in shown and not null_ok(t))
    if opt.kind is str:  # free text (data_root, device): only device has a rule, checked in TrainConfig
        return st.sampled_from(["gpu", "cuda:x", "tpu"]) if opt.name == "device" else st.nothing()
    parts = [words.filter(lambda t: not _parses(opt.kind, t) and not null_ok(t))]
    if opt.kind is int:
        parts.append(st.sampled_from(["1.5", "1e3", "0x10", "--1"]))
        if opt.low is not None:
            parts.append(st.integers(-(10**6), int(opt.low) - (0 if opt.low_open else 1)).map(str))
        if opt.high is not None:
            parts.append(st.integers(int(opt.high) + 1, int(opt.high) + 10**6).map(str))
    else:
        parts.append(st.sampled_from(["nan", "inf", "-inf", "NaN", "1e999"]))
        if opt.low is not None:
            below = st.floats(-1e9, opt.low, exclude_max=not opt.low_open)
            parts.append(below.map(repr))
        if opt.high is not None:
            parts.append(st.floats(opt.high, 1e9, exclude_min=True).map(repr))
    return st.one_of(*parts)


def _options_by_flag():
    from study.config import variant_options
    from study.variants import list_variants

    out = {}
    for v in list_variants():
        for name, opt in variant_options(v).items():
            if name not in out:
                out[name] = (opt, [] if v == "resnet" else [f"--variant={v}"])
    return out


OPTIONS = _options_by_flag()
BOOLEANS = sorted(n for n, (o, _) in OPTIONS.items() if o.kind is bool)
VALUED = sorted(n for n, (o, _) in OPTIONS.items() if o.kind is not bool and n != "data_root")


@st.composite
def bad_train_flags(draw) -> tuple[list[str], list[str]]:
    names = draw(st.lists(st.sampled_from(VALUED + BOOLEANS + ["variant"]), min_size=1, max_size=2, unique=True))
    argv: list[str] = []
    for name in names:
        flag = "--" + name.replace("_", "-")
        if name == "variant":
            argv.append(f"--variant={draw(words.filter(lambda t: t not in OPTIONS_VARIANTS))}")
        elif name in BOOLEANS:  # a boolean is a flag: a value after = is refused
            argv.append(f"{flag}={draw(st.sampled_from(['true', 'false', '1', 'x']))}")
        else:
            opt, extra = OPTIONS[name]
            argv += extra + [f"{flag}={draw(bad_values(opt))}"]
    return names, argv


def _variants() -> tuple[str, ...]:
    from study.variants import list_variants

    return tuple(list_variants())


OPTIONS_VARIANTS = _variants()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_train_flags())
def test_train_with_bad_flag_values_exits_2_naming_the_field(case):
    names, argv = case
    # A fast, valid base: if a "bad" value were accepted, this trains for one batch
    # (and the exit code fails the test) instead of for minutes.
    base = ["train", "--epochs=1", "--limit-train-batches=1", "--image-size=8", "--depth=8", "--batch-size=16"]
    code, out, err = run_main(base + argv)
    assert code == 2, (argv, code, out[-500:], err)
    assert err.startswith("resstudy train: error: ") and err.count("\n") == 1, err
    assert out == "" and "Traceback" not in err  # every check comes before any output
    named = {n for n in names if n in err or n.replace("_", "-") in err}
    # two variant flags: the first one parsed is named
    assert named or ("--variant=" in " ".join(argv) and "variant" in err), (argv, err)


def test_every_option_has_a_bad_value_strategy():
    # Keeps the property above honest when a variant declares a new option: every
    # option but the free-text data_root is exercised, with values from its own rules.
    assert set(VALUED) | set(BOOLEANS) == set(OPTIONS) - {"data_root"}
    for name in VALUED:
        assert not bad_values(OPTIONS[name][0]).is_empty, name


# ---------------------------------------------------------------- the real entry point


@pytest.mark.ray  # `resstudy run`: a refusal that broke would start Ray
@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\0\0garbage", b"name: [unclosed\n", b"name: p\ndepth: 9\n"])
def test_cli_entry_point_on_a_junk_spec_prints_one_error_and_no_traceback(tmp_path, content):
    path = tmp_path / "junk.yaml"
    path.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "study.cli", "run", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("resstudy run: error: ") and "Traceback" not in proc.stderr + proc.stdout
    assert str(path) in proc.stderr
    assert not (tmp_path / "resstudy_runs").exists()


def _env() -> dict[str, str]:
    return importable({k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})


# ---------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    code, out, err = run_main(["train", "--epochs=1", "--limit-train-batches=1", "--image-size=8", "--depth=8",
                               "--batch-size=16", f"--checkpoint-dir={d}"])
    assert code == 0, err
    return d / "state.pt"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.floats(0.0, 0.999), noise=st.binary(max_size=64))
def test_a_damaged_checkpoint_is_a_checkpoint_error_naming_the_file(real_checkpoint, cut, noise):
    good = real_checkpoint.read_bytes()
    with tempfile.TemporaryDirectory() as d:
        file = Path(d) / "state.pt"
        file.write_bytes(good[: int(len(good) * cut)] + noise)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(d)
        assert str(file) in str(info.value)


def test_train_resume_from_a_corrupt_checkpoint_exits_2_naming_it(real_checkpoint, tmp_path):
    (tmp_path / "state.pt").write_bytes(real_checkpoint.read_bytes()[:1000])
    code, out, err = run_main(["train", "--epochs=2", "--image-size=8", "--depth=8", f"--resume={tmp_path}"])
    assert code == 2 and err.startswith("resstudy train: error: checkpoint ") and "Traceback" not in err
    assert str(tmp_path / "state.pt") in err
    import torch

    torch.save({"model": {}}, tmp_path / "state.pt")  # readable, but not ours
    code, out, err = run_main(["train", "--epochs=2", "--image-size=8", "--depth=8", f"--resume={tmp_path}"])
    assert code == 2 and "lacks" in err and str(tmp_path / "state.pt") in err


def _study_dir(root: Path) -> Path:
    d = root / "study"
    d.mkdir()
    (d / "study.json").write_text('{"name": "study", "experiments": {}}')
    (d / "spec.yaml").write_text(yaml.safe_dump(VALID))
    return d


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.floats(0.0, 0.999), noise=st.binary(max_size=64))
def test_a_damaged_results_file_is_a_results_error_naming_it(cut, noise):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "results.parquet"
        write_table(path, [{"trial_id": f"t{i}", "val_acc": i / 10, "variant": "resnet"} for i in range(5)])
        good = path.read_bytes()
        damaged = good[: int(len(good) * cut)] + noise
        assume(damaged != good)
        path.write_bytes(damaged)
        with pytest.raises(ResultsError) as info:
            read_table(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("command", ["status", "export"])
def test_study_commands_on_a_garbage_results_file_name_it_without_a_traceback(tmp_path, command):
    study = _study_dir(tmp_path)
    (study / "results.parquet").write_bytes(b"PAR1 this is not parquet")
    code, out, err = run_main([command, str(study)])
    assert "Traceback" not in out + err
    assert str(study / "results.parquet") in out + err
    if command == "status":  # the damage is one error line naming the file, exit 2
        assert code == 2 and "is corrupt or not Parquet" in err
    else:
        assert code == 2 and err.startswith(f"resstudy {command}: error: results file ")


def test_status_on_a_corrupt_state_file_names_it(tmp_path):
    study = _study_dir(tmp_path)
    (study / "study.json").write_text('{"name": "study", "experim')
    code, out, err = run_main(["status", str(study)])
    assert code == 2 and err.startswith("resstudy status: error: ") and "Traceback" not in err


# ---------------------------------------------------------------- names and folders from the command line


@pytest.mark.parametrize("name", ["../x", "a/b", "/tmp/abs", ".hidden", "", "x" * 101, "tab\there"])
def test_run_new_name_is_held_to_the_spec_name_rule_before_anything_is_created(tmp_path, monkeypatch, name):
    import study.driver.runner

    def started(*a, **k):
        raise AssertionError("a study was started")

    monkeypatch.setattr(study.driver.runner, "run_study", started)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({**VALID, "storage_path": str(tmp_path / "runs")}))
    with pytest.raises(SpecError):  # the very rule the spec's own `name` is held to
        load_spec(spec, overrides={"name": name})
    code, out, err = run_main(["run", str(spec), "--new-name", name])
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"resstudy run: error: --new-name: {name!r} is not a study name; allowed: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # no storage, nothing beside it


def _results_study(root: Path) -> Path:
    d = _study_dir(root)
    write_table(d / "results.parquet", [{"trial_id": f"t{i}", "experiment": "p-resnet-d8", "variant": "resnet",
                                         "status": "completed", "val_acc": i / 10} for i in range(3)])
    return d


@pytest.mark.parametrize("kind", ["a file", "under a file", "read-only"])
def test_export_out_that_cannot_be_a_writable_folder_exits_2_in_one_line(tmp_path, kind):
    study = _results_study(tmp_path)
    if kind == "read-only":
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o555)
        if os.access(out, os.W_OK):  # root writes anyway; /proc refuses root too
            out = Path("/proc") / "resstudy-export"
    else:
        (tmp_path / "afile").write_text("mine")
        out = tmp_path / "afile" / ("below" if kind == "under a file" else "")
    code, stdout, err = run_main(["export", str(study), "--out", str(out)])
    assert code == 2 and stdout == "" and err.count("\n") == 1, err
    assert err.startswith(f"resstudy export: error: --out: {str(out)!r}") and "allowed: " in err, err
    if kind == "read-only":
        assert not any(out.iterdir()) if out.exists() else True
    else:
        assert (tmp_path / "afile").read_text() == "mine"
    code, stdout, err = run_main(["export", str(study), "--out", str(tmp_path / "fine")])
    assert code == 0 and (tmp_path / "fine" / "results.csv").is_file(), err


# ---------------------------------------------------------------- the entry point: one line, exit 2, nothing before


@pytest.mark.parametrize("argv,named", [
    (["train", "--device", "cuda:99", "--epochs", "1"], "device: 'cuda:99' asked for but "),
    (["train", "--checkpoint-dir", "{file}", "--epochs", "1"], "--checkpoint-dir: '{file}' is a file"),
    (["train", "--epochs", "x"], "epochs: 'x' is not allowed; allowed: an integer >= 1"),
    (["train", "--from", "{file}"], "study: '{file}' is not a study directory"),
])
def test_the_entry_point_refuses_bad_train_input_in_one_line_before_any_output(tmp_path, argv, named):
    file = tmp_path / "afile"
    file.write_text("mine")
    argv = [a.format(file=file) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "study.cli", *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**_env(), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.startswith("resstudy train: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert named.format(file=file) in proc.stderr and file.read_text() == "mine"


def test_the_entry_point_lists_nested_spec_typos_together(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: p\ndataset: digits\ndepth: 8\nepoch: 3\nscheduler: {grace: 2}\n"
                    "variants: {sgs: {fixed: {sgs_k: -1}}}\n")
    # `check` validates as `run` does and starts nothing (`run` itself: test_cli, in-process)
    proc = subprocess.run([sys.executable, "-m", "study.cli", "check", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"resstudy check: error: invalid study spec {path}:"
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == [
        "epoch", "scheduler.grace", "variants.sgs.fixed.sgs_k"], proc.stderr
    assert not (tmp_path / "resstudy_runs").exists()


@pytest.fixture(autouse=True, scope="module")
def _flag_cache(tmp_path_factory):
    """The train flag cache of these tests, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield
