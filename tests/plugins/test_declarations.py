"""A variant's declaration is checked when it is registered: its builder against the
options that target the model, its objectives and rates against its metrics. A
plugin file that gets one wrong is refused when it is loaded, with the variant,
the option and the fix named, and registers nothing. The built-ins register in
one explicit order, whichever module is imported first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from study.models.resnet import backbone_options, resnet
from study.options import Option
from study.spec import SpecError, load_spec
from study.variants import (DeclarationError, Feature, Hooks, LevelRate, UnknownVariantError, Variant, get_variant,
                            list_variants, register_feature, register_variant)
from tests.conftest import run_cli

TOY = Path(__file__).with_name("toy_variant.py")
ROOT = Path(__file__).resolve().parents[2]


def _forgetful_plugin(tmp_path: Path) -> Path:
    """toy_variant.py as a plugin author might write it: gamma0 declared without target="model"."""
    text = TOY.read_text()
    assert text.count('target="model"') == 1 and text.count('name="toy"') == 1
    text = text.replace(', target="model"', "").replace('name="toy"', 'name="forgetful"')
    path = tmp_path / "forgetful_variant.py"
    path.write_text(text)
    return path


def test_a_plugin_that_forgets_target_model_is_refused_when_loaded(tmp_path):
    plugin = _forgetful_plugin(tmp_path)
    spec = {"name": "p", "dataset": "digits", "plugins": [str(plugin)], "variants": ["resnet"]}
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    message = str(e.value)
    assert "plugins: variant 'forgetful': its builder toy takes keyword 'gamma0'" in message
    assert "declared with target=\"train\" (the default)" in message
    assert "fix: declare option 'gamma0' with target=\"model\"" in message
    with pytest.raises(UnknownVariantError):
        get_variant("forgetful")  # nothing half-registered
    # the command line says it in its one error, exit 2, before anything runs
    (tmp_path / "spec.yaml").write_text(f"name: p\ndataset: digits\nplugins: ['{plugin}']\nvariants: [resnet]\n")
    p = run_cli("check", str(tmp_path / "spec.yaml"), "--no-calibrate", check=False)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("resstudy check: error: invalid study spec") and 'target="model"' in p.stderr


@pytest.fixture(autouse=True)
def _registry(monkeypatch):
    """What a test registers stays in the test (the spec's default `variants` is every registered one)."""
    from study import variants

    list_variants()  # the built-ins first
    monkeypatch.setattr(variants, "_VARIANTS", dict(variants._VARIANTS))
    monkeypatch.setattr(variants, "_FEATURES", dict(variants._FEATURES))


def _variant(name: str, build, *options: Option, **fields) -> Variant:
    return Variant(name=name, build=build, options=(*backbone_options(), *options), **fields)


def test_a_model_option_the_builder_cannot_take_is_refused():
    def build(depth, num_classes, in_channels, *, block="post", shortcut="A", width=16, init="kaiming"):
        return resnet(depth, num_classes, in_channels, block=block, shortcut=shortcut, width=width, init=init)

    knob = Option("knob", float, 0.5, "a knob", low=0.0, target="model")
    with pytest.raises(DeclarationError, match=r"variant 'nokeyword': option 'knob' targets the model, but its "
                                               r"builder .*build takes no keyword 'knob'; fix: .*target=\"train\""):
        register_variant(_variant("nokeyword", build, knob))
    assert "nokeyword" not in list_variants()
    # declared for the trainer instead, the same builder is right
    register_variant(_variant("nokeyword", build, knob.replace(target="train")))
    assert get_variant("nokeyword").model_option_names() == ("block", "shortcut", "width", "init")


def test_a_builder_keyword_no_model_option_supplies_is_refused():
    def build(depth, num_classes, in_channels, *, gain=1.0, **backbone):
        return resnet(depth, num_classes, in_channels, **backbone)

    with pytest.raises(DeclarationError, match=r"variant 'unsupplied': its builder .*build takes keyword 'gain', "
                                               r"which is none of its options; fix: declare option 'gain' with "
                                               r"target=\"model\""):
        register_variant(_variant("unsupplied", build))
    with pytest.raises(DeclarationError, match=r"cannot take \(depth, num_classes, in_channels\) first"):
        register_variant(Variant("nodepth", build=lambda num_classes: nn.Identity(), options=()))
    assert not {"unsupplied", "nodepth"} & set(list_variants())


def test_objectives_rates_and_feature_options_are_checked_against_the_declaration():
    build = lambda depth, num_classes, in_channels: nn.Identity()  # noqa: E731
    with pytest.raises(DeclarationError, match=r"variant 'noobj': objective 'sparsity' is not one of its metrics"):
        register_variant(Variant("noobj", build=build, options=(), metrics=("gain",), objectives=("sparsity",)))
    rate = LevelRate("odd_rate", "oddness", 0.5, "odd rate", "went odd", "share of odd trials")
    with pytest.raises(DeclarationError, match=r"variant 'norate': level rate's metric 'oddness'"):
        register_variant(Variant("norate", build=build, options=(), level_rates=(rate,)))
    with pytest.raises(DeclarationError, match=r"feature 'shaper': option 'shape' is declared with target=\"model\""):
        register_feature(Feature("shaper", (Option("shape", int, 1, "a shape", low=1, target="model"),), Hooks,
                                 active=lambda values: True))
    assert not {"noobj", "norate"} & set(list_variants())


@pytest.mark.parametrize("first", ["study.sgs", "study.models.epsilon", "study.config", "study.variants"])
def test_the_builtins_register_in_their_declared_order_whatever_is_imported_first(first):
    code = (f"import {first}\n"
            "from study.variants import Variant, list_variants, register_variant\n"
            # a variant registered before anything asked for the registry still comes after the built-ins
            "register_variant(Variant('early', build=lambda depth, num_classes, in_channels: None, options=()))\n"
            "import study.models\n"
            "print(' '.join(list_variants()))\n"
            "print(' '.join(v.name for v in study.models.BUILTINS))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.splitlines() == ["resnet quotient epsilon sgs early", "resnet quotient epsilon sgs"]
