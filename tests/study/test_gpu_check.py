"""benchmarks/gpu_check.py on CPU, small: the check a GPU machine runs, kept runnable.

The GPU machine has torch, numpy and scikit-learn only: the check runs here with
Ray, MLflow, Optuna and the other packages the study needs made unimportable.
Fast tier: no Ray, no compile, one subprocess with a timeout.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

# What the GPU machine lacks, unimportable in the check's process (imports that probe for
# them, as scikit-learn's and torch's do, find them missing).
_RUN = r"""
import importlib.abc, importlib.machinery, runpy, sys

ABSENT = {"ray", "mlflow", "optuna", "pydantic", "yaml", "typer", "torchvision", "pandas", "pyarrow", "psutil"}


class _Absent(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        raise ModuleNotFoundError(module.__name__, name=module.__name__)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        return importlib.machinery.ModuleSpec(name, _Absent()) if name.split(".")[0] in ABSENT else None


sys.meta_path.insert(0, _Finder())
sys.argv = ["gpu_check.py", *sys.argv[1:]]
runpy.run_path("benchmarks/gpu_check.py", run_name="__main__")
"""


def test_the_gpu_check_runs_on_cpu_with_torch_numpy_and_sklearn_only():
    args = ["--device", "cpu", "--depths", "8", "--counts", "1,2", "--images", "64", "--epochs", "2",
            "--pack-epochs", "2", "--variant-images", "64"]
    proc = subprocess.run([sys.executable, "-c", _RUN, *args], cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    table = out[out.index("gpu_check table"):].splitlines()
    rows = [line.split()[0:2] for line in table[2:] if line.strip()]
    assert ["limit", "ResNet-8"] in rows, table
    assert ["packing", "K=1"] in rows and ["packing", "K=2"] in rows, table
    for variant in ("resnet", "quotient", "epsilon", "sgs"):
        line = next(line for line in table if line.startswith("variants") and f" {variant} " in line)
        # the resumed run continued from the checkpoint of epoch 1: it trained epoch 2 only
        assert "checkpoint at epoch 1, resumed epochs [2] on cpu: ok" in line, line
