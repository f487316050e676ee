"""The import graph of study/, analysis/ and search_spaces/: no circle, and every
arrow points down the layers (or sideways within one layer).

The graph is read with `ast`, imports inside functions included (a lazy import
is still a dependency: it runs the module it names), relative imports resolved,
`from pkg import submodule` counted as an arrow to the submodule and
`importlib.import_module("a.b")` as an import of a.b. Run this
file directly (`python tests/test_layers.py`) to print the graph's circles, its
upward arrows and the longest files.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "analysis", "search_spaces")
MAX_LINES = 600

# Bottom to top: a module may import from its own layer or any layer below it.
# A module's layer is the one of the longest prefix listed here (a package
# stands for every module under it); every module must fall in one.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # the start-up timeline and the per-machine cache (no project imports), errors, options, the
    # variant registry and its dataclasses, the configs a variant's declaration derives
    # (TrainConfig, search spaces, the study spec) and the search ranges
    ("core", ("study.timeline", "study.cache", "study.errors", "study.options", "study.variants", "study.presets",
              "study.config", "study.spaces", "study.spec", "study.artifacts", "search_spaces")),
    ("models", ("study.models", "study.sgs")),
    ("training", ("study.data", "study.compile", "study.optim", "study.train")),
    ("trainable", ("study.trainable",)),
    ("stats", ("study.stats",)),
    # what a study writes and reads back: the ledger, epoch logs, MLflow, Optuna, progress
    ("records", ("study.ledger", "study.results", "study.searcher", "study.tracking", "study.progress",
                 "study.preflight", "study.report")),
    ("driver", ("study.driver", "study.jobs")),
    ("analysis", ("analysis",)),
    ("api", ("study.api", "study.ui")),
    ("cli", ("study.cli",)),
    # the package root wires the registry to the built-in variants (study/__init__.py)
    ("root", ("study",)),
)


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of PACKAGES."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports(mod: str, path: Path, known: set[str]) -> dict[str, int]:
    """The modules of `known` that `mod` imports, anywhere in its file -> first line."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        # the longest known prefix: `import study.models.resnet` runs study.models.resnet
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != mod:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, is_pkg, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, node.lineno)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value, node.lineno)  # importlib.import_module("a.b") imports a.b all the same
    return found


def graph() -> dict[str, dict[str, int]]:
    files = module_files()
    known = set(files)
    return {m: imports(m, p, known) for m, p in files.items()}


def layer_of(mod: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    return rank


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, dict[str, int]]) -> list[str]:
    """Arrows from a module to one of a higher layer, as 'a:line -> b (layer -> layer)'."""
    out = []
    for a, targets in sorted(g.items()):
        for b, line in sorted(targets.items()):
            la, lb = layer_of(a), layer_of(b)
            if lb > la:
                out.append(f"{a}:{line} -> {b} ({LAYERS[la][0]} -> {LAYERS[lb][0]})")
    return out


def long_files(limit: int = MAX_LINES) -> list[str]:
    files = module_files()
    return [f"{m}: {n} lines" for m, p in sorted(files.items())
            if (n := len(p.read_text().splitlines())) > limit]


def test_the_reader_sees_lazy_relative_submodule_and_importlib_imports(tmp_path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from . import b\n")
    (tmp_path / "pkg" / "a.py").write_text("def f():\n    from .b import g\n    import importlib\n"
                                           "    importlib.import_module('pkg.c')\n")
    (tmp_path / "pkg" / "b.py").write_text("from pkg import a\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    g = {m: imports(m, tmp_path / f, known) for m, f in
         (("pkg", "pkg/__init__.py"), ("pkg.a", "pkg/a.py"), ("pkg.b", "pkg/b.py"))}
    assert g == {"pkg": {"pkg.b": 1}, "pkg.a": {"pkg.b": 2, "pkg.c": 4}, "pkg.b": {"pkg.a": 1}}
    assert cycles(g) == [["pkg.a", "pkg.b"]]


def test_every_module_has_a_layer() -> None:
    assert [m for m in module_files() if layer_of(m) < 0] == []


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_every_import_points_down() -> None:
    assert upward(graph()) == []


def test_no_long_file() -> None:
    assert long_files() == []


if __name__ == "__main__":
    g = graph()
    cs = cycles(g)
    print(f"modules {len(g)}, arrows {sum(len(t) for t in g.values())}, circles {len(cs)}")
    for c in cs:
        print(f"  circle of {len(c)}: {' '.join(c)}")
    up = upward(g)
    print(f"upward arrows {len(up)}")
    for u in up:
        print("  " + u)
    lf = long_files()
    print(f"files over {MAX_LINES} lines {len(lf)}")
    for f in lf:
        print("  " + f)
