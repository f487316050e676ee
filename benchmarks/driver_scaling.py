"""Does the study driver slow down as a study grows?

Runs one study of N tiny trials (10,000 by default) through `resstudy run` (3
epochs of one batch each on 8x8 digits, depth 8, 2 trials at a time, no early
stopping) and prints the trial throughput (trials/s) in the first and in the
last tenth of the trials, and their ratio (target >= 0.9: the driver's cost per
trial stays flat), then the trials/s of every tenth beside the driver process's
memory (RSS, sampled every second) at that tenth's end, and its peak.

Each trial stamps its finishing time from inside the trainer (a plugin variant,
the ResNet plus a `final` hook that appends `time.time()` to a file), so the
figure does not depend on how the runner logs or stores its results.

With --nodes N the study runs on a real multi-node Ray cluster on this machine
(cluster/local.sh up N: a head and N worker nodes, each its own raylet, token
auth on), the way a study on a cluster of many nodes drives its trials.

    python benchmarks/driver_scaling.py [--trials 10000] [--concurrent 2] [--nodes N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""The ResNet, stamping each trial's end into {ticks!r}."""
import time

from search_spaces.shared import Param
from study.models.resnet import backbone_options, resnet
from study.options import Option
from study.variants import Hooks, Variant, register_variant


def _build(depth=20, num_classes=10, in_channels=3, *, tick_knob=0.5, **backbone):
    return resnet(depth, num_classes, in_channels, **backbone)


class _Tick(Hooks):
    def final(self, metrics, evaluate_test):
        with open({ticks!r}, "a") as f:  # one short O_APPEND write per trial: atomic
            f.write(f"{{time.time():.6f}}\\n")


register_variant(Variant(
    name="ticks", build=_build, hooks=_Tick,
    options=(*backbone_options(), Option("tick_knob", float, 0.5, "searched, unused", low=0.0, high=1.0,
                                         target="model")),
    description="benchmark: the ResNet, stamping its end", search=(Param("tick_knob", 0.0, 1.0),),
))
'''


def rate(stamps: list[float]) -> float:
    """Trials per second over a run of consecutive finishing times."""
    return (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9)


class RssSampler:
    """The resident memory of one process (the driver), sampled every `every_s` seconds
    on a thread of its own: [(time, bytes)]."""

    def __init__(self, pid: int, every_s: float = 1.0, log: Path | None = None) -> None:
        self.samples: list[tuple[float, int]] = []
        self._log = log.open("w") if log is not None else None  # kept as they come: a run cut short keeps them
        self._proc, self._every = psutil.Process(pid), every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            try:
                self.samples.append((time.time(), self._proc.memory_info().rss))
            except psutil.Error:
                return
            if self._log is not None:
                self._log.write(f"{self.samples[-1][0]:.3f} {self.samples[-1][1]}\n")
                self._log.flush()
            self._done.wait(self._every)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
        if self._log is not None:
            self._log.close()

    def at(self, t: float) -> int:
        """The last sample at or before `t` (the first sample where none is)."""
        before = [rss for ts, rss in self.samples if ts <= t]
        return before[-1] if before else (self.samples[0][1] if self.samples else 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_cluster(state: Path, nodes: int) -> tuple[dict[str, str], list[str]]:
    """(the environment after `source cluster.env`, the `local.sh down` command) for a local
    cluster of `nodes` worker nodes of one CPU each; no MLflow server (the study tracks to SQLite)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "RESSTUDY_"))}
    agent = _free_port()
    env.update(RESSTUDY_LOCAL_CLUSTER=str(state), RESSTUDY_MLFLOW="0", RESSTUDY_GCS_PORT=str(_free_port()),
               RESSTUDY_DASHBOARD_PORT=str(_free_port()), RESSTUDY_CLIENT_PORT=str(_free_port()),
               RESSTUDY_AGENT_PORT=str(agent if agent + nodes < 65000 else 52400),
               RESSTUDY_VENV=str(Path(sys.executable).parent.parent))
    sh = ["bash", str(ROOT / "cluster" / "local.sh")]
    subprocess.run([*sh, "up", str(nodes)], env=env, check=True, stdout=subprocess.DEVNULL)
    for line in (state / "cluster.env").read_text().splitlines():
        m = re.match(r"export (\w+)=(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2)
    return env, [*sh, "down"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10_000)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--nodes", type=int, default=0, help="run on a local cluster of this many worker nodes")
    p.add_argument("--keep", default=None, help="write the study here (kept) instead of a temporary directory")
    args = p.parse_args()
    if args.trials < 20:
        p.error("--trials must be >= 20 (a tenth must hold at least two trials)")
    tmp = tempfile.TemporaryDirectory(prefix="resstudy-driver-") if args.keep is None else None
    work = Path(args.keep or tmp.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    ticks = work / "ticks.txt"
    ticks.unlink(missing_ok=True)
    plugin = work / "ticks_variant.py"
    plugin.write_text(PLUGIN.format(ticks=str(ticks)))
    spec = {
        "name": "driver-scaling", "plugins": [str(plugin)], "dataset": "digits", "image_size": 8, "depth": 8,
        "epochs": 3, "trials_per_variant": args.trials, "variants": {"ticks": {}},
        "train": {"batch_size": 32, "limit_train_batches": 1, "val_size": 0.15, "threads": 1,
                  "precision": "fp32"},
        "search": {"algorithm": "random", "seed": 0}, "scheduler": {"type": "none"},
        "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": args.concurrent, "storage_path": str(work / "runs"),
    }
    spec_path = work / "driver-scaling.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env, down = dict(os.environ), None
    if args.nodes:
        state = Path(tempfile.mkdtemp(prefix="rsds", dir="/tmp"))  # Ray's socket paths limit its length
        print(f"starting a local cluster: head + {args.nodes} worker nodes ...", flush=True)
        env, down = local_cluster(state, args.nodes)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        t0 = time.time()
        with tempfile.TemporaryFile(mode="w+") as err:
            proc = subprocess.Popen([sys.executable, "-m", "study.cli", "run", str(spec_path)], cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=err, text=True)
            rss = RssSampler(proc.pid, log=work / "driver_rss.txt")
            proc.wait()
            rss.stop()
            err.seek(0)
            stderr = err.read()
        wall = time.time() - t0
    finally:
        if down is not None:
            subprocess.run(down, env=env, stdout=subprocess.DEVNULL)
            shutil.rmtree(env["RESSTUDY_LOCAL_CLUSTER"], ignore_errors=True)
    stamps = sorted(float(s) for s in ticks.read_text().split()) if ticks.exists() else []
    if proc.returncode != 0 or len(stamps) < 20:
        sys.exit(f"study failed (exit {proc.returncode}, {len(stamps)} trials finished):\n{stderr[-3000:]}")
    tenth = len(stamps) // 10
    first, last = rate(stamps[:tenth]), rate(stamps[-tenth:])
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    where = f"on head + {args.nodes} worker nodes" if args.nodes else "on an embedded single-node Ray"
    print(f"{len(stamps)} trials finished of {args.trials} {where}, {args.concurrent} at a time, in {wall:.0f} s "
          f"(first trial ended {stamps[0] - t0:.0f} s after the start: Ray, MLflow start-up)")
    print(f"{'first tenth':<14} {first:7.2f} trials/s   median gap {statistics.median(gaps[:tenth]):.3f} s")
    print(f"{'last tenth':<14} {last:7.2f} trials/s   median gap {statistics.median(gaps[-tenth:]):.3f} s")
    print(f"{'ratio last/first':<14} {last / first:7.2f}x   (target >= 0.9)")
    mib = 1 << 20
    print("\ntenth   trials/s   driver RSS at its end")
    for i in range(10):
        part = stamps[i * tenth:(i + 1) * tenth] if i < 9 else stamps[9 * tenth:]
        print(f"{i + 1:>5}   {rate(part):8.2f}   {rss.at(part[-1]) / mib:8.0f} MiB")
    peak = max((b for _, b in rss.samples), default=0)
    print(f"driver RSS: {rss.at(stamps[tenth - 1]) / mib:.0f} MiB after the first tenth, "
          f"{rss.at(stamps[-1]) / mib:.0f} MiB at the last trial, peak {peak / mib:.0f} MiB "
          f"({len(rss.samples)} samples, one a second)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
