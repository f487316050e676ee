"""Facts declared once and read everywhere: the trial statuses, the datasets, the
depth rule, the device rule, what a study directory is, and when two option
values are the same. Each test asks every reader of a fact and checks they agree,
so a reader that grows its own copy again is caught."""

from __future__ import annotations

import re

import pytest

from study import ledger
from study.config import CORE, DATASET_INFO, DATASETS, DEPTH_RULE, FILE_DATASETS, TrainConfig
from study.errors import OptionError, UserError


def test_trial_statuses_are_the_ledgers():
    import analysis.load
    import study.api
    import study.progress
    import study.report

    for reader in (analysis.load.STATUSES, study.progress.FINISHED, study.api.FINISHED, study.report.FINISHED):
        assert reader is ledger.FINISHED


def test_datasets_are_declared_once():
    from study import data, preflight
    from study.spec import StudySpec

    assert CORE["dataset"].choices == DATASETS == tuple(DATASET_INFO)
    assert data.dataset_names() == list(DATASETS)
    assert set(data.EXPECTED_FILES) == set(FILE_DATASETS) == {n for n, d in DATASET_INFO.items() if d.files}
    assert StudySpec.model_fields["dataset"].annotation.__args__ == DATASETS
    for name, info in DATASET_INFO.items():
        # the preflight's size estimate and data check read the same declaration
        assert preflight.estimate({"dataset": name}).memory_bytes > 0
        assert (preflight.data_problem(name, None) is None) == (not info.files)


@pytest.mark.parametrize("depth", [8, 14, 20, 56, 110, 2, 7, 9, 10, 21, 0, -4, True, 8.0, "8"])
def test_every_reader_of_the_depth_rule_agrees(depth):
    from study.models import create_model
    from study.spec import SpecError, validate_spec

    def accepts(fn) -> bool:
        try:
            fn()
            return True
        except (UserError, ValueError, TypeError) as e:
            assert not isinstance(e, (UserError, ValueError)) or "depth" in str(e), e
            return False

    answers = {
        "spec": accepts(lambda: validate_spec({"name": "d", "dataset": "digits", "depth": depth})),
        "config": accepts(lambda: TrainConfig(depth=depth)),
        "model": accepts(lambda: create_model("resnet", depth=depth)),
    }
    want = depth in (8, 14, 20, 56, 110) and not isinstance(depth, bool) and isinstance(depth, int)
    assert answers == dict.fromkeys(answers, want)
    if not want and isinstance(depth, int) and not isinstance(depth, bool) and depth >= 8:
        with pytest.raises(SpecError, match=re.escape(f"allowed: {DEPTH_RULE}")):
            validate_spec({"name": "d", "dataset": "digits", "depth": depth})


@pytest.mark.parametrize("device", ["meta", "mps", "cuda:x", "CPU", "gpu"])
def test_a_device_the_trainer_cannot_use_is_refused_alike_everywhere(device):
    from study.data import resolve_device
    from study.spec import SpecError, validate_spec

    allowed = "allowed: auto, cpu, cuda or cuda:N"
    with pytest.raises(OptionError, match=allowed):
        TrainConfig(device=device)
    with pytest.raises(OptionError, match=allowed):
        resolve_device(device)
    with pytest.raises(SpecError, match=f"train.device: .*{allowed}"):
        validate_spec({"name": "d", "dataset": "digits", "train": {"device": device}})
    assert CORE["device"].check("cuda:3") == "cuda:3" and resolve_device("cpu").type == "cpu"


def test_one_criterion_says_what_a_study_directory_is(tmp_path):
    from analysis.load import StudyDirError, find_study
    from study.api import StudyNotFound, find
    from study.report import check_study_dir

    layouts = {"spec_only": ["spec.yaml"], "state_only": ["study.json"], "ledger_only": ["ledger.jsonl"],
               "results_only": ["results.parquet"], "empty": [], "all": ["spec.yaml", "study.json", "ledger.jsonl"]}
    for name, files in layouts.items():
        d = tmp_path / name
        d.mkdir()
        for f in files:
            (d / f).write_text("{}")

        def accepts(fn, error) -> bool:
            try:
                fn(d)
                return True
            except error as e:
                assert ledger.STUDY_DIR_RULE in str(e) or "not a study directory" in str(e)
                return False

        answers = {"ledger": ledger.is_study_dir(d), "api": accepts(find, StudyNotFound),
                   "analysis": accepts(find_study, StudyDirError), "report": accepts(check_study_dir, UserError)}
        assert answers == dict.fromkeys(answers, "spec.yaml" in files), name


def test_an_option_value_is_the_same_by_one_rule_in_options_and_spaces(monkeypatch):
    import optuna
    from torch import nn

    from search_spaces.shared import Param
    from study import spaces, variants
    from study.options import Option, same_value

    assert same_value(1, 1.0) and not same_value(True, 1) and not same_value(0, False) and same_value("a", "a")
    variants.list_variants()
    monkeypatch.setattr(variants, "_VARIANTS", dict(variants._VARIANTS))
    steps = Option("steps", int, 3, "steps per block", choices=(1, 3, 5), target="model")
    variants.register_variant(variants.Variant(
        "stepped", build=lambda depth, num_classes, in_channels, *, steps=3: nn.Identity(), options=(steps,),
        search=(Param("steps"),)))
    assert steps.check(5) == 5
    with pytest.raises(OptionError):
        steps.check(True)  # a bool is never a number's choice, in an option or in a space
    with pytest.raises(spaces.SpaceError, match=r"value=True is not allowed; allowed: \[1, 3, 5\]"):
        spaces.build_space("stepped", fixed={"steps": True})
    # a value YAML gave as 3.0 is the declared choice 3: a trial gets the option's own int
    trial = optuna.create_study().ask()
    for space in (spaces.build_space("stepped", fixed={"steps": 3.0}),
                  spaces.build_space("stepped", {"steps": {"choices": [3.0]}})):
        got = space(trial)["steps"]
        assert got == 3 and type(got) is int
        TrainConfig(variant="stepped", steps=got)


# Modules exempt from the scan below, each with why. analysis/labels.py names metrics, options and
# columns in words, once, for the report and the figures: display names are allowed there.
NAMING_ALLOWED = {
    "analysis/labels.py": None,  # None: the whole module
    # the results schema's derived column (param_reduction = 1 - params_compressed / params, filled
    # where a writer left it out); a variant cannot declare a derived metric yet
    "analysis/load.py": {"param_reduction", "params_compressed"},
}


def _scanned() -> list[str]:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    analysis = sorted(str(p.relative_to(root)) for p in (root / "analysis").rglob("*.py"))
    spec = sorted(str(p.relative_to(root)) for p in (root / "study" / "spec").glob("*.py"))
    return ["study/train.py", *spec, *(m for m in analysis if NAMING_ALLOWED.get(m, ()) is not None)]


@pytest.mark.parametrize("rel", _scanned())
def test_the_trainer_spec_and_analysis_name_no_variant(rel):
    """What a variant computes and reports reaches the trainer, the spec and the analysis
    through its declaration only (its hooks, objectives, level rates, report sections,
    claims): no module of them names a variant's metric or option, and no analysis module
    names a studied variant (the baseline, which has no twin, is every study's)."""
    from pathlib import Path

    from study.models import BUILTINS, FEATURES
    from study.models.resnet import backbone_options

    names: set[str] = set()
    for v in BUILTINS:
        names |= {*v.metrics, *v.final_metrics, *v.objectives, *(o.name for o in v.options)}
        names |= {n for r in v.level_rates for n in (r.column, r.metric)}
    for f in FEATURES:
        names |= {*f.metrics, *(o.name for o in f.options)}
    names -= {*CORE, *(o.name for o in backbone_options())}
    # one-word names (epsilon, alpha) are also plain words
    names = {n for n in names if "_" in n}
    names |= {v.name for v in BUILTINS if v.twin is not None}  # the schedules a variant declares are its own
    names -= NAMING_ALLOWED.get(rel) or set()
    text = _code(Path(__file__).resolve().parents[2] / rel)
    assert sorted(n for n in names if re.search(rf"\b{n}\b", text)) == [], rel


def _code(path) -> str:
    """The names and strings a module's code uses, without its docstrings and comments."""
    import ast

    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words = [node.value if isinstance(node, ast.Constant) else node.id if isinstance(node, ast.Name) else node.attr
             for node in ast.walk(tree)
             if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs)
             or isinstance(node, (ast.Name, ast.Attribute))]
    return "\n".join(words)


def test_a_spec_takes_the_objectives_its_variants_declare(monkeypatch):
    from torch import nn

    from study import variants
    from study.spec import SpecError, validate_spec

    def spec(name: str, objectives: list) -> dict:
        return {"name": "o", "dataset": "digits", "variants": {name: {"objectives": objectives}}}

    assert validate_spec(spec("epsilon", ["val_acc", "param_reduction"])).variants["epsilon"].objectives == \
        ["val_acc", "param_reduction"]
    with pytest.raises(SpecError, match=r"variants.quotient.objectives: \['val_acc', 'param_reduction'\] is not "
                                        r"allowed; allowed: \[val_acc\] \(variant 'quotient' declares no other"):
        validate_spec(spec("quotient", ["val_acc", "param_reduction"]))
    with pytest.raises(SpecError, match=r"allowed: val_acc first \(ASHA stops on it\), then any of param_reduction"):
        validate_spec(spec("epsilon", ["param_reduction", "val_acc"]))
    # a plugin's own objective: no other file names it
    variants.list_variants()
    monkeypatch.setattr(variants, "_VARIANTS", dict(variants._VARIANTS))
    variants.register_variant(variants.Variant("lean", build=lambda depth, num_classes, in_channels: nn.Identity(),
                                                options=(), metrics=("sparsity",), objectives=("sparsity",)))
    assert validate_spec(spec("lean", ["val_acc", "sparsity"])).variants["lean"].objectives == ["val_acc", "sparsity"]
