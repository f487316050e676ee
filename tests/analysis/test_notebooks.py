"""The analysis notebooks are stored clean and run top to bottom from their own
folder (as Jupyter runs them), finding the study by name or absolute path."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from analysis.load import StudyDirError, find_study

ROOT = Path(__file__).resolve().parents[2]
NB_DIR = ROOT / "analysis" / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def test_both_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} == {"sensitivity.ipynb", "variant_comparison.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "STUDY =" in params[0].source  # one papermill-style parameter cell
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: a cell has outputs"
            # notebooks only import, call and plot: no function or class definitions
            assert "def " not in cell.source and "class " not in cell.source


@pytest.mark.notebook
def test_find_study_by_name_path_env_and_walking_up(synthetic_study_dir, tmp_path, monkeypatch):
    for var in ("RESSTUDY_STUDY", "RESSTUDY_STUDY_DIR", "RESSTUDY_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    proj = tmp_path / "proj"
    shutil.copytree(synthetic_study_dir, proj / "resstudy_runs" / "mine")
    deep = proj / "analysis" / "notebooks"
    deep.mkdir(parents=True)
    want = (proj / "resstudy_runs" / "mine").resolve()
    assert find_study("mine", start=deep) == want  # ./resstudy_runs found two folders up
    assert find_study(str(want), start=tmp_path) == want  # an absolute path, from anywhere
    monkeypatch.setenv("RESSTUDY_STORAGE", str(proj / "resstudy_runs"))
    assert find_study("mine", start=tmp_path) == want  # the storage root, from anywhere
    monkeypatch.setenv("RESSTUDY_STUDY", "mine")
    assert find_study(None, start=tmp_path) == want
    with pytest.raises(StudyDirError, match="no study named 'other'.*resstudy_runs"):
        find_study("other", start=deep)
    with pytest.raises(StudyDirError, match="is not a study directory"):
        find_study(str(deep), start=tmp_path)


def _execute(path: Path, cwd: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    # appended probe: the kernel must be this venv's python, not some other install
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(cwd)}}).execute()
    probe = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
    assert probe == sys.prefix  # the venv's prefix (a symlinked executable would hide another python)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # the notebooks extra brings ipywidgets: no "IProgress not found, update jupyter and ipywidgets"
    stderr = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.get("name") == "stderr")
    assert "ipywidgets" not in stderr and "IProgress" not in stderr, stderr
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert images, "no figure was displayed"
    return nb


def _stream(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")


@pytest.mark.notebook
def test_sensitivity_notebook_by_name_from_its_folder(synthetic_study_dir, monkeypatch):
    monkeypatch.delenv("RESSTUDY_STUDY_DIR", raising=False)
    monkeypatch.delenv("RESSTUDY_OTHER_STUDY", raising=False)
    monkeypatch.setenv("RESSTUDY_STORAGE", str(synthetic_study_dir.parent))
    monkeypatch.setenv("RESSTUDY_STUDY", synthetic_study_dir.name)
    monkeypatch.setenv("RESSTUDY_N_BOOT", "20")  # few resamples: this checks that the cells run, not the bands
    nb = _execute(NB_DIR / "sensitivity.ipynb", NB_DIR)
    out = _stream(nb)
    assert str(synthetic_study_dir.resolve()) in out
    assert "ASHA rungs: [1, 2, 4]" in out and "kept" in out and "on the subset" in out  # the subset re-fit ran


@pytest.mark.notebook
def test_comparison_notebook_by_path_and_a_second_study_found_walking_up(synthetic_study_dir, tmp_path,
                                                                         monkeypatch):
    # a project elsewhere: the notebook in proj/analysis/notebooks, a second study in proj/resstudy_runs
    proj = tmp_path / "proj"
    shutil.copytree(NB_DIR, proj / "analysis" / "notebooks")
    shutil.copytree(synthetic_study_dir, proj / "resstudy_runs" / "again", ignore=shutil.ignore_patterns("analysis"))
    for var in ("RESSTUDY_STUDY_DIR", "RESSTUDY_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RESSTUDY_STUDY", str(synthetic_study_dir.resolve()))
    monkeypatch.setenv("RESSTUDY_OTHER_STUDY", "again")
    monkeypatch.setenv("RESSTUDY_N_BOOT", "20")
    nb = _execute(proj / "analysis" / "notebooks" / "variant_comparison.ipynb", proj / "analysis" / "notebooks")
    out = _stream(nb)
    assert str(synthetic_study_dir.resolve()) in out
    html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "estimate syn" in html and "estimate again" in html  # the two studies side by side
    md = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert "| claim" in md and any(v in md for v in ("reproduced", "smaller than reported", "contradicted", "open"))
