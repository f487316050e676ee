"""A variant is named only in its own files: its model module, its search ranges
and (SGS) its feature's modules. Everything else (the trainer, the trainable, the
driver, results, the CLI, the analysis) reads what a variant declares from the
registry, so a new variant needs no edit there. Read with `ast`: any string
constant equal to a built-in variant's name, outside its own files, fails.
Presets, docs and tests may name variants freely.
"""

from __future__ import annotations

import ast

from tests.test_layers import ROOT, module_files

# Each built-in variant and the modules (prefixes) that are its own.
OWN = {
    "resnet": ("study.models.resnet", "search_spaces.resnet"),
    "quotient": ("study.models.quotient", "search_spaces.quotient"),
    "epsilon": ("study.models.epsilon", "search_spaces.epsilon"),
    "sgs": ("study.sgs", "search_spaces.sgs"),
}


def _own(mod: str, variant: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in OWN[variant])


def named_outside() -> list[str]:
    out = []
    for mod, path in sorted(module_files().items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in OWN and not _own(mod, node.value):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    return out


def test_the_built_ins_are_the_registered_variants() -> None:
    # the list above is the registry's (a new built-in joins it, with its own files)
    assert all((ROOT / "study/models" / f"{v}.py").is_file() or v == "sgs" for v in OWN)
    assert sorted(p.stem for p in (ROOT / "study/models").glob("*.py") if p.stem != "__init__") == \
        sorted(v for v in OWN if v != "sgs")


def test_no_variant_is_named_outside_its_own_files() -> None:
    assert named_outside() == []
