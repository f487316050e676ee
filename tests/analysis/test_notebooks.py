"""The analysis notebooks are stored clean and run top to bottom on a study dir."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "analysis" / "notebooks").glob("*.ipynb"))


@pytest.fixture
def study_dir(request) -> Path:
    """The lead's real tiny study when tests/conftest.py provides it, else the synthetic one."""
    try:
        return Path(request.getfixturevalue("tiny_study_dir"))
    except pytest.FixtureLookupError:
        return Path(request.getfixturevalue("synthetic_study_dir"))


def test_both_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} == {"sensitivity.ipynb", "variant_comparison.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: a cell has outputs"
            # notebooks only import, call and plot: no function or class definitions
            assert "def " not in cell.source and "class " not in cell.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, study_dir, monkeypatch):
    monkeypatch.setenv("RESSTUDY_STUDY_DIR", str(study_dir))
    nb = nbformat.read(path, as_version=4)
    # appended probe: the kernel must be this venv's python, not some other install
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    probe = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
    assert probe == sys.prefix  # the venv's prefix (a symlinked executable would hide another python)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert images, "no figure was displayed"
    assert str(study_dir) in "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
