"""Checks that run before any Ray work, so a study that cannot succeed fails
at once with numbers instead of starting trials that crash, or wait forever.

    check_spec(spec)                  # storage, data, sizes, memory, time
    check_cluster(spec, resources)    # can any node ever run one trial?
    check_nodes(spec)                 # data on every node of a running Ray cluster

Every problem found is reported together in one PreflightError (a UserError:
the CLI prints it and exits 2). The estimates are deliberately rough (within a
factor of about two for CIFAR ResNets); they refuse only what is far outside
what a trial gets, and the error says which number to change.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from study.config import DATASET_INFO, depth_blocks
from study.errors import UserError
from study.variants import baseline_variant

GiB = 1024**3
# Optimistic sustained training throughput, FLOP/s: one CPU core, one whole GPU.
# Measured: ResNet-20 at 32x32 trains at ~720 images/s on 2 cores (~9e10 FLOP/s
# per core); a large GPU reaches ~1e13 on these small convolutions. Optimistic
# on purpose: a time estimate built on them is a lower bound.
FLOPS_PER_CPU, FLOPS_PER_GPU = 1e11, 2e13
MAX_TRIAL_DAYS = 365.0  # a trial whose lower-bound time exceeds this is refused
# Largest memory of one GPU that exists (for a cluster whose GPUs we cannot see).
MAX_GPU_BYTES = 192 * GiB
RUNTIME_BYTES = {"cpu": 0.4 * GiB, "gpu": 0.6 * GiB}  # torch + Python + CUDA context, roughly


class PreflightError(UserError):
    """A study that cannot run as specified; the message lists every problem."""


@dataclass(frozen=True)
class Estimate:
    """Rough per-trial sizes of one configuration."""

    params: int
    memory_bytes: float  # weights, gradients, momentum, saved activations, device data, runtime
    flops_per_epoch: float

    def seconds(self, flops_per_s: float) -> float:
        return self.flops_per_epoch / flops_per_s


def estimate(cfg: Mapping[str, Any]) -> Estimate:
    """Sizes of a trial of the CIFAR ResNet family (quotient, epsilon and SGS
    nets have the same convolutions; their extras are small) from a flat config:
    depth, width, image_size, batch_size, eval_batch_size, dataset, epochs."""
    depth = int(cfg.get("depth", 20))
    width = int(cfg.get("width") or 16)
    info = DATASET_INFO.get(str(cfg.get("dataset", "digits")), DATASET_INFO["cifar10"])
    side = int(cfg.get("image_size") or info.side)
    batch = int(cfg.get("batch_size", 128))
    eval_batch = int(cfg.get("eval_batch_size", batch))
    classes = info.classes
    n = depth_blocks(depth) or 1
    images = info.train_images

    params = 9 * 3 * width + classes * (4 * width + 1)
    macs = 9 * 3 * width * side * side
    saved = 3 * width * side * side  # per image: stem conv, BN, ReLU outputs
    c_in, s = width, side
    for stage in range(3):
        c = width * 2**stage
        s = s if stage == 0 else math.ceil(s / 2)
        convs = 9 * c_in * c + 9 * c * c + (n - 1) * 2 * 9 * c * c
        params += convs + 2 * n * 2 * c
        macs += convs * s * s
        saved += 2 * n * 4 * c * s * s  # per conv: conv out, BN out, ReLU out, the residual sum
        c_in = c
    state = 4 * params * 4  # fp32 weights, gradients, momentum, a compile/EMA-sized margin
    # evaluation keeps no graph: about two of the largest maps per image at once
    activations = 4 * saved * batch + 4 * 2 * width * side * side * eval_batch
    data = (images + images // 5) * 3 * side * side  # uint8 on the device, train + test
    memory = 1.2 * (state + activations) + data
    flops_per_epoch = 3 * 2 * macs * images  # backward is about twice the forward
    return Estimate(int(params), float(memory), float(flops_per_epoch))


# ------------------------------------------------------------------ check_spec


def check_spec(spec: Any, *, host_memory: float | None = None, cpus: int | None = None) -> None:
    """Refuse, before Ray starts, a study that cannot run: storage not writable,
    data missing, a trial that cannot fit in what it gets, or absurd sizes.
    `host_memory`/`cpus` describe the machine trials run on (default: this one,
    for the embedded Ray; on a cluster only the absolute bounds apply)."""
    _raise(spec_problems(spec, host_memory=host_memory, cpus=cpus))


def spec_problems(spec: Any, *, host_memory: float | None = None, cpus: int | None = None) -> list[str]:
    """What check_spec would refuse, one line each."""
    return [*_storage_problems(spec), *_data_problems(spec), *_size_problems(spec, host_memory, cpus)]


def check_local(spec: Any) -> None:
    """check_spec and check_cluster for the embedded Ray on this machine, every
    problem in one error (the cifar10 preset on a laptop: no data and no GPU)."""
    _raise(spec_problems(spec) + cluster_problems(spec, local_resources(), where="this machine"))


def _raise(problems: list[str]) -> None:
    if problems:
        raise PreflightError("the study cannot run as specified:\n  " + "\n  ".join(problems))


def _storage_problems(spec: Any) -> list[str]:
    path = str(spec.storage_path)
    if getattr(spec, "is_remote_storage", False):
        return []  # s3:// and friends: checked by the first write, not here
    return [p for p in (writable_dir_problem(Path(path), "storage_path"),) if p]


def writable_dir_problem(path: Path, field: str) -> str | None:
    """Why `path` cannot be (or become) a writable directory, or None."""
    if path.exists() and not path.is_dir():
        return f"{field}: {str(path)!r} is a file; allowed: a directory (created if missing)"
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{field}: {str(path)!r} lies under the file {str(probe)!r}; allowed: a directory path"
    try:
        fd, name = tempfile.mkstemp(prefix=".resstudy-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        where = "" if probe == path else f" (its nearest existing folder {str(probe)!r})"
        return f"{field}: {str(path)!r}{where} is not writable ({e.strerror}); allowed: a directory you can write"
    return None


def data_problem(dataset: str, data_root: str | None) -> str | None:
    """Why the torchvision files of `dataset` are not under `data_root`, or None."""
    info = DATASET_INFO.get(dataset)
    if info is None or not info.files:
        return None  # built in: digits, synthetic
    if not data_root:
        return f"data_root: dataset {dataset!r} is read from files; allowed: the folder holding them"
    root = Path(data_root)
    if not root.is_dir():
        files = info.files
        return (f"data_root: {data_root!r} does not exist (dataset {dataset!r} is read from it, nothing is "
                f"downloaded); allowed: a folder holding torchvision's {dataset} files ({files[0]} and "
                f"{len(files) - 1} more)")
    missing = [f for f in info.files if not (root / f).is_file()]
    if missing:
        return f"data_root: {data_root!r} lacks {dataset} file(s) {', '.join(missing)}"
    return None


def _data_problems(spec: Any) -> list[str]:
    if any(spec.trial_base_config(v, d).get("download") for v, d in spec.experiments()):
        return []  # torchvision fetches the files into data_root
    p = data_problem(spec.dataset, spec.data_root)
    return [p] if p else []


def _trial_budget(spec: Any, host_memory: float | None, cpus: int | None) -> tuple[float | None, str]:
    """(bytes one trial gets, how that was worked out)."""
    res = spec.resources
    if res.gpu > 0:
        per_gpu = _local_gpu_memory() if not os.environ.get("RAY_ADDRESS") else None
        if per_gpu is None:
            return MAX_GPU_BYTES * min(res.gpu, 1.0), f"{res.gpu:g} of the largest GPU made ({_gib(MAX_GPU_BYTES)})"
        return per_gpu * min(res.gpu, 1.0), f"{res.gpu:g} of this machine's GPU ({_gib(per_gpu)})"
    if os.environ.get("RAY_ADDRESS") and host_memory is None:
        return None, ""
    memory = host_memory if host_memory is not None else _available_memory()
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    if memory is None:
        return None, ""
    at_once = max(1, min(spec.max_concurrent, int(cpus // res.cpu) or 1))
    return memory / at_once, (f"{_gib(memory)} of available memory shared by {at_once} trial(s) running at once "
                              f"(max_concurrent {spec.max_concurrent}, {cpus} CPUs / resources.cpu {res.cpu:g})")


def _size_problems(spec: Any, host_memory: float | None, cpus: int | None) -> list[str]:
    problems: list[str] = []
    budget, how = _trial_budget(spec, host_memory, cpus)
    res = spec.resources
    speed = FLOPS_PER_GPU * res.gpu if res.gpu > 0 else FLOPS_PER_CPU * res.cpu
    seen: set[tuple] = set()
    for variant, depth in spec.experiments():
        cfg = dict(spec.trial_base_config(variant, depth))
        key = tuple(sorted((k, str(v)) for k, v in cfg.items() if k != "variant"))
        if key in seen:
            continue
        seen.add(key)
        problems += config_problems(cfg, budget=budget, how=how, speed=speed,
                                    runtime=RUNTIME_BYTES["gpu" if res.gpu > 0 else "cpu"])
        if len(problems) >= 6:
            break
    return problems


def config_problems(cfg: Mapping[str, Any], *, budget: float | None, how: str, speed: float, runtime: float,
                    more_memory: str = "fewer trials at once, or more memory per trial") -> list[str]:
    """The size rule for one trial's flat config (spec trials and `resstudy train` alike):
    more memory than `budget` bytes, or more than MAX_TRIAL_DAYS at `speed` FLOP/s."""
    problems = []
    e = estimate(cfg)
    need = e.memory_bytes + runtime
    native = DATASET_INFO.get(str(cfg.get("dataset", "digits")), DATASET_INFO["cifar10"]).side
    side = cfg.get("image_size")
    what = (f"depth {cfg.get('depth', 20)}, width {cfg.get('width') or 16}, "
            + (f"image_size {side}" if side else f"image side {native}")
            + f", batch {cfg.get('batch_size', 128)}")
    variant = cfg.get("variant") or baseline_variant()
    epochs = int(cfg.get("epochs", 1))

    def largest_side(fits) -> str:
        # only where image_size is the user's to choose (digits, synthetic)
        if not side or not fits(estimate({**cfg, "image_size": 4})):
            return ""
        lo, hi = 4, int(side)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(estimate({**cfg, "image_size": mid})) else (lo, mid)
        return f"image_size <= {lo} at this depth/width/batch_size, or "

    if budget is not None and need > budget:
        allowed = largest_side(lambda x: x.memory_bytes + runtime <= budget)
        problems.append(f"memory: a {variant} trial ({what}; {e.params / 1e6:.3g}M parameters) needs about "
                        f"{_gib(need)}, but one trial gets {_gib(budget)} ({how}); allowed: {allowed}smaller "
                        f"depth/width/image_size/batch_size, {more_memory}")
    days = e.seconds(speed) * epochs / 86400
    if days > MAX_TRIAL_DAYS:
        allowed = largest_side(lambda x: x.seconds(speed) * epochs / 86400 <= MAX_TRIAL_DAYS)
        problems.append(f"epochs: {epochs} epochs of a {variant} trial ({what}) take at "
                        f"least {days:,.0f} days ({days / 365.25:,.1f} years) at an optimistic "
                        f"{speed:.2g} FLOP/s ({e.flops_per_epoch:.3g} FLOP per epoch); allowed: {allowed}a trial of "
                        f"under {MAX_TRIAL_DAYS:g} days")
    return problems


def check_train(cfg: Mapping[str, Any], *, host_memory: float | None = None) -> None:
    """check_spec's size rule for one `resstudy train` run on this machine (its device,
    its memory, its threads), before any data is built: one PreflightError line."""
    device = str(cfg.get("device", "auto"))
    gpu = _local_gpu_memory() if device != "cpu" else None
    budget: float | None  # None: the memory is unknown, so not checked
    if gpu is not None:
        budget, how, speed = gpu, f"this machine's GPU ({_gib(gpu)})", FLOPS_PER_GPU
    else:
        memory = host_memory if host_memory is not None else _available_memory()
        budget, how = memory, "the memory this machine has available"
        speed = FLOPS_PER_CPU * (cfg.get("threads") or os.cpu_count() or 1)
    problems = config_problems(cfg, budget=budget, how=how, speed=speed,
                               runtime=RUNTIME_BYTES["gpu" if gpu is not None else "cpu"],
                               more_memory="or a machine with more memory")
    if problems:
        raise PreflightError("; ".join(problems))


def _available_memory() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _local_gpu_memory() -> float | None:
    try:
        import torch

        if torch.cuda.is_available():
            return float(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # no driver, a broken CUDA install: then we cannot tell
        return None
    return None


def _gib(n: float) -> str:
    return f"{n / GiB:,.1f} GiB" if n < 1024 * GiB else f"{n / 1024**4:,.1f} TiB"


# ------------------------------------------------------------------ the cluster


def local_resources() -> dict[str, float]:
    """What the embedded local Ray will have: this machine's CPUs and GPUs."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # torch missing or no driver: no GPU
        gpus = 0
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


def check_cluster(spec: Any, resources: Mapping[str, float],
                  nodes: Iterable[Mapping[str, float]] | None = None) -> None:
    """Refuse a study whose trials ask for more than any node has (a trial
    needs its CPUs and GPU share on one node), instead of letting them sit
    PENDING forever. `resources`: the cluster total (ray.cluster_resources());
    `nodes`: per-node resources when known. An autoscaling cluster that will
    add GPU nodes later should be checked with what it can grow to."""
    _raise(cluster_problems(spec, resources, nodes))


def cluster_problems(spec: Any, resources: Mapping[str, float],
                     nodes: Iterable[Mapping[str, float]] | None = None, where: str = "the cluster") -> list[str]:
    """What check_cluster would refuse, one line each."""
    per_node = [dict(n) for n in nodes] if nodes else [dict(resources)]
    asked = {"CPU": float(spec.resources.cpu), "GPU": float(spec.resources.gpu)}
    problems = []
    for name, want in asked.items():
        if want <= 0:
            continue
        best = max(float(n.get(name, 0.0)) for n in per_node)
        if best < want:
            place = "any node" if nodes else where
            have = ", ".join(f"{k} {float(resources.get(k, 0.0)):g}" for k in ("CPU", "GPU"))
            fix = ("resources.gpu: 0 to train on CPUs" if name == "GPU"
                   else f"resources.cpu <= {best:g}")
            problems.append(f"resources.{name.lower()}: a trial asks for {want:g} {name}, but {place} has "
                            f"{best:g} ({have}), so no trial could ever start; allowed: {fix}, or a cluster "
                            f"with {name}s (RAY_ADDRESS)")
    return problems


def check_nodes(spec: Any, timeout_s: float = 120.0) -> None:
    """On a running Ray cluster (ray.init done): check the data files (and a
    shared storage path) on every alive node, with a tiny task pinned to each
    node. Trials run wherever Ray places them, so one node without the data
    would fail its trials only."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    shared = None if getattr(spec, "is_remote_storage", False) or not spec.shared_storage else spec.storage_path

    @ray.remote(num_cpus=0, max_retries=0)
    def probe(dataset: str, data_root: str | None, storage: str | None) -> list[str]:
        out = [data_problem(dataset, data_root)]
        if storage:
            out.append(writable_dir_problem(Path(storage), "storage_path"))
        return [p for p in out if p]

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {n["NodeManagerAddress"]: probe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            spec.dataset, spec.data_root, shared) for n in nodes}
    problems = []
    for address, ref in refs.items():
        try:
            problems += [f"node {address}: {p}" for p in ray.get(ref, timeout=timeout_s)]
        except ray.exceptions.GetTimeoutError:
            problems.append(f"node {address}: did not answer the data check within {timeout_s:g} s")
    if problems:
        raise PreflightError("the study cannot run on every node:\n  " + "\n  ".join(problems))


__all__ = ["Estimate", "PreflightError", "check_cluster", "check_local", "check_nodes", "check_spec",
           "check_train", "cluster_problems", "config_problems", "spec_problems", "data_problem", "estimate",
           "local_resources", "writable_dir_problem"]
