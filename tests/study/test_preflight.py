"""Preflight: a study that cannot run is refused before Ray starts, with the
numbers that show why (storage, data, memory per trial, time, resources)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from study import preflight
from study.config import TrainConfig
from study.data import EXPECTED_FILES
from study.preflight import PreflightError, check_cluster, check_spec, estimate, writable_dir_problem
from study.spec import load_spec
from study.variants import get_variant

GiB = 1024**3


def spec(tmp_path: Path, **changes):
    base = {"name": "pf", "dataset": "digits", "depth": 8, "epochs": 2, "trials_per_variant": 1,
            "storage_path": str(tmp_path / "runs"), "variants": ["resnet"]}
    return load_spec({**base, **changes})


# ---------------------------------------------------------------- estimates


@pytest.mark.parametrize("depth,width", [(8, 16), (20, 16), (56, 16), (20, 32)])
def test_parameter_estimate_matches_the_real_network(depth, width):
    cfg = TrainConfig("resnet", depth=depth, width=width)
    model = get_variant("resnet").build(depth, 10, 3, **cfg.model_options())
    real = sum(p.numel() for p in model.parameters())
    assert abs(estimate({"depth": depth, "width": width, "dataset": "cifar10"}).params - real) / real < 0.01


def test_flop_estimate_matches_the_known_resnet20_cost():
    # ResNet-20 on 32x32: 40.8M multiply-adds per forward pass (He et al. 2016, table 6);
    # training is ~3 passes, 50k images an epoch.
    e = estimate({"depth": 20, "dataset": "cifar10"})
    assert e.flops_per_epoch == pytest.approx(3 * 2 * 40.8e6 * 50_000, rel=0.05)


def test_memory_estimate_grows_with_what_a_trial_holds():
    small = estimate({"depth": 20, "dataset": "cifar10", "batch_size": 128}).memory_bytes
    assert estimate({"depth": 20, "dataset": "cifar10", "batch_size": 256}).memory_bytes > 1.8 * small - 0.2 * GiB
    assert estimate({"depth": 56, "dataset": "cifar10"}).memory_bytes > 2.5 * small - 0.5 * GiB
    assert 0.1 * GiB < small < 2 * GiB  # a ResNet-20 trial: hundreds of MB, not KB or tens of GB


# ---------------------------------------------------------------- sizes


def test_a_valid_small_study_passes(tmp_path):
    check_spec(spec(tmp_path), host_memory=8 * GiB, cpus=2)
    assert not (tmp_path / "runs").exists()  # preflight writes nothing


def test_depth_9998_is_refused_with_the_memory_numbers(tmp_path):
    with pytest.raises(PreflightError) as info:
        check_spec(spec(tmp_path, depth=9998, image_size=16), host_memory=24 * GiB, cpus=2)
    msg = str(info.value)
    assert "memory: a resnet trial (depth 9998" in msg and "GiB, but one trial gets 24.0 GiB" in msg
    assert "shared by 1 trial(s) running at once" in msg  # the spec runs one trial at a time


def test_image_size_100000_is_refused_before_allocating(tmp_path):
    with pytest.raises(PreflightError,
                       match=r"memory: .*image_size 100000.* needs about [\d,.]+ TiB.*allowed: image_size <= \d+ "):
        check_spec(spec(tmp_path, image_size=100_000), host_memory=24 * GiB, cpus=2)


def test_a_billion_epochs_is_refused_with_what_it_means(tmp_path):
    with pytest.raises(PreflightError,
                       match=r"epochs: 1000000000 epochs .* take at least [\d,]+ days \([\d,.]+ years\)"):
        check_spec(spec(tmp_path, epochs=10**9), host_memory=24 * GiB, cpus=2)
    check_spec(spec(tmp_path, epochs=1000), host_memory=24 * GiB, cpus=2)  # long but sane: allowed


def test_width_100000_is_refused_by_its_declared_bound(tmp_path):
    with pytest.raises(Exception, match="width"):
        load_spec({"name": "pf", "dataset": "digits", "depth": 8, "storage_path": str(tmp_path),
                   "train": {"width": 100_000}})


def test_the_memory_budget_is_shared_by_concurrent_trials(tmp_path):
    # depth 110 at batch 1024 on 32x32 synthetic data: several GiB a trial
    s = spec(tmp_path, dataset="synthetic", depth=110, train={"batch_size": 1024}, max_concurrent=4,
             resources={"cpu": 1, "gpu": 0})
    need = estimate(dict(s.trial_base_config("resnet", 110))).memory_bytes
    check_spec(s, host_memory=need * 1.5, cpus=1)  # one trial at a time: fits
    with pytest.raises(PreflightError, match=r"shared by 4 trial\(s\) running at once"):
        check_spec(s, host_memory=need * 1.5, cpus=4)


# ---------------------------------------------------------------- storage


def test_storage_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(PreflightError, match=r"storage_path: '.*/file' is a file; allowed: a directory"):
        check_spec(spec(tmp_path, storage_path=str(f)))
    with pytest.raises(PreflightError, match=r"lies under the file '.*/file'"):
        check_spec(spec(tmp_path, storage_path=str(f / "runs")))


def test_storage_that_cannot_be_written_is_refused(tmp_path):
    # root ignores permission bits; a read-only file system stops everyone
    assert "is not writable" in writable_dir_problem(Path("/proc/resstudy-runs"), "storage_path")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert "is not writable (Permission denied)" in writable_dir_problem(ro / "runs", "storage_path")
        finally:
            ro.chmod(0o700)
    assert writable_dir_problem(tmp_path / "new" / "deeper", "storage_path") is None


# ---------------------------------------------------------------- data


def test_missing_or_incomplete_dataset_files_are_named(tmp_path):
    root = tmp_path / "cifar"
    s = spec(tmp_path, dataset="cifar10", data_root=str(root))
    with pytest.raises(PreflightError, match=r"data_root: '.*/cifar' does not exist"):
        check_spec(s, host_memory=64 * GiB, cpus=2)
    for f in EXPECTED_FILES["cifar10"][:-1]:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"")
    with pytest.raises(PreflightError, match=r"lacks cifar10 file\(s\) cifar-10-batches-py/batches.meta"):
        check_spec(s, host_memory=64 * GiB, cpus=2)
    (root / EXPECTED_FILES["cifar10"][-1]).write_bytes(b"")
    check_spec(s, host_memory=64 * GiB, cpus=2)


# ---------------------------------------------------------------- resources


def test_a_gpu_share_on_a_machine_without_gpus_is_refused(tmp_path):
    s = spec(tmp_path, resources={"cpu": 2, "gpu": 0.25})
    with pytest.raises(PreflightError) as info:
        check_cluster(s, {"CPU": 2.0})
    assert "resources.gpu: a trial asks for 0.25 GPU, but the cluster has 0" in str(info.value)
    check_cluster(s, {"CPU": 2.0, "GPU": 1.0})


def test_a_trial_must_fit_on_one_node(tmp_path):
    s = spec(tmp_path, resources={"cpu": 4, "gpu": 0})
    check_cluster(s, {"CPU": 4.0})
    with pytest.raises(PreflightError, match=r"resources.cpu: a trial asks for 4 CPU, but any node has 2"):
        check_cluster(s, {"CPU": 4.0}, nodes=[{"CPU": 2.0}, {"CPU": 2.0}])


def test_the_cifar10_preset_on_a_cpu_machine_fails_at_once_naming_data_and_gpu(monkeypatch):
    monkeypatch.setattr(preflight, "local_resources", lambda: {"CPU": 2.0, "GPU": 0.0})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    s = load_spec(preset="cifar10")
    if Path(s.data_root).is_dir():
        pytest.skip(f"{s.data_root} exists on this machine")
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()  # an earlier test's Ray
    with pytest.raises(PreflightError) as info:
        preflight.check_local(s)
    msg = str(info.value)
    assert "data_root: '/data/cifar10' does not exist" in msg
    assert "resources.gpu: a trial asks for 0.25 GPU, but this machine has 0" in msg
    # the check itself starts no Ray
    assert ("ray" in sys.modules and sys.modules["ray"].is_initialized()) == ray_before


CHECK_NODES = """
import os, sys
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
import ray
from pathlib import Path
from study.data import EXPECTED_FILES
from study.preflight import PreflightError, check_nodes
from study.spec import load_spec
root = Path(sys.argv[1])
spec = load_spec({"name": "n", "dataset": "cifar10", "data_root": str(root), "depth": 8,
                  "storage_path": str(root.parent / "runs"), "variants": ["resnet"]})
for attempt in range(4):  # a busy machine can miss Ray's fixed 30-s start-up window
    try:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        break
    except Exception as e:
        if "timed out during startup" not in str(e) or attempt == 3:
            raise
        ray.shutdown()
try:
    check_nodes(spec)
except PreflightError as e:
    print("refused:", e)
for f in EXPECTED_FILES["cifar10"]:
    (root / f).parent.mkdir(parents=True, exist_ok=True)
    (root / f).write_bytes(b"")
check_nodes(spec)
print("passed")
ray.shutdown()
"""


@pytest.mark.ray
@pytest.mark.slow
def test_check_nodes_looks_for_the_data_on_every_node(tmp_path):
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    p = subprocess.run([sys.executable, "-c", CHECK_NODES, str(tmp_path / "cifar")], capture_output=True, text=True,
                       timeout=300, env=env, cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert "refused: the study cannot run on every node:" in lines
    assert any(ln.startswith("  node 127.0.0.1: data_root: ") and "does not exist" in ln for ln in lines), p.stdout
    assert lines[-1] == "passed"  # with the files in place on the node, the check passes
