"""Time from `resstudy run` to the first trial's first epoch, and where it goes.

Runs `resstudy run` on a small study (one ResNet trial of two epochs on the
embedded digits, the embedded local Ray) with RESSTUDY_TIMELINE set, so the
driver and the trial mark each step (study/timeline.py), and prints the
timeline from the command's start to the first reported epoch: Python and the
CLI's imports, the spec checks, the driver's imports, the ledger, MLflow and
Optuna, Ray's local start, Tune's start, the trial's actor and imports, data,
model, the first step (compile, where on) and the first epoch. Then the total,
and as a reference measured in the same run, the same first epoch trained bare
in a fresh Python process (imports, data, model, one epoch: the floor any
driver adds to). With --repeat N every step's median over N runs is printed.

    python benchmarks/first_epoch.py [--repeat 3] [--preset quick] [--set KEY=VALUE ...]

Target (issue 31): the first epoch under 5 s after the command on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study import timeline  # noqa: E402

FIRST_EPOCH = "trial: first epoch trained and evaluated"
SPEC = {
    "name": "first-epoch", "dataset": "digits", "image_size": 12, "depth": 8, "epochs": 2,
    "trials_per_variant": 1, "variants": {"resnet": {}},
    "train": {"batch_size": 32, "val_size": 0.15, "precision": "fp32"},
    "search": {"algorithm": "random", "seed": 0}, "scheduler": {"type": "none"},
    "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 1,
}
BARE = r'''
import sys, time
t0 = float(sys.argv[1])
from study.config import TrainConfig
from study.train import train
t_import = time.time()
marks = []
def report(m, info, save):
    marks.append(time.time())
    raise SystemExit(0) if len(marks) == 1 else None
cfg = TrainConfig(variant="resnet", dataset="digits", image_size={image_size}, depth={depth}, epochs=2,
                  batch_size={batch_size}, val_size=0.15, precision="fp32", threads=1)
try:
    train(cfg, report)
except SystemExit:
    pass
print(f"{{t_import - t0:.3f}} {{marks[0] - t0:.3f}}")
'''


def run_study(spec_args: list[str], env: dict[str, str]) -> tuple[float, float, list[tuple[float, int, str]]]:
    """(seconds to the first epoch, the command's wall seconds, the marks relative to the start)."""
    with tempfile.TemporaryDirectory(prefix="resstudy-first-epoch-") as tmp:
        marks_file = Path(tmp) / "timeline.txt"
        env = dict(env, **{timeline.ENV: str(marks_file)})
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "study.cli", "run", *spec_args, "--storage-path",
                               str(Path(tmp) / "runs")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            sys.exit(f"resstudy run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        marks = [(t - t0, pid, event) for t, pid, event in timeline.read(marks_file)]
    first = next((t for t, _, e in marks if e == FIRST_EPOCH), float("nan"))
    return first, wall, marks


def bare_first_epoch(spec: dict, env: dict[str, str]) -> tuple[float, float]:
    """(imports, first epoch) seconds after a fresh Python started, training bare."""
    code = BARE.format(image_size=spec["image_size"], depth=spec["depth"],
                       batch_size=spec.get("train", {}).get("batch_size", 128))
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code, f"{t0:.6f}"], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def steps(marks: list[tuple[float, int, str]]) -> list[tuple[str, float]]:
    """(event, seconds since the command started) up to the first epoch, the first of each event."""
    seen: dict[str, float] = {}
    for t, _, event in marks:
        key = event.split(" (")[0] if event.startswith(("tune: trial started", "trial: trainable called",
                                                           "driver: first epoch result")) else event
        seen.setdefault(key, t)
        if event == FIRST_EPOCH:
            break
    return sorted(seen.items(), key=lambda kv: kv[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=1, help="runs of the study (medians printed)")
    p.add_argument("--preset", default=None, help="run this preset instead of the one-trial study")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a spec override (resstudy run --set)")
    p.add_argument("--raw", action="store_true", help="also print every mark of every run (time, pid, event)")
    args = p.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="resstudy-first-epoch-spec-") as tmp:
        if args.preset:
            from study.presets import presets_dir

            spec_args = ["--preset", args.preset]
            spec = yaml.safe_load(presets_dir().joinpath(f"{args.preset}.yaml").read_text())
        else:
            path = Path(tmp) / "first-epoch.yaml"
            path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
            spec_args, spec = [str(path)], SPEC
        for s in args.sets:
            spec_args += ["--set", s]
        runs = []
        bare = []
        for i in range(args.repeat):
            runs.append(run_study(spec_args, env))
            bare.append(bare_first_epoch(spec, env))  # interleaved: both see the same machine
            print(f"run {i + 1}: first epoch {runs[-1][0]:6.2f} s after the command (study wall {runs[-1][1]:.1f} s); "
                  f"bare: imports {bare[-1][0]:.2f} s, first epoch {bare[-1][1]:.2f} s", flush=True)
    if args.raw:
        for i, (_, _, marks) in enumerate(runs):
            print(f"\nrun {i + 1}, every mark:")
            for t, pid, event in marks:
                print(f"  {t:7.2f}  {pid:>7}  {event}")
    per_run = [dict(steps(marks)) for _, _, marks in runs]
    order = [e for e, _ in steps(runs[0][2])]
    print(f"\ntimeline, command start to the first epoch (median of {len(runs)} run(s); seconds):")
    print(f"{'step':<62} {'at':>7} {'took':>7}")
    prev = 0.0
    for event in order:
        at = statistics.median(r[event] for r in per_run if event in r)
        print(f"{event:<62} {at:7.2f} {at - prev:7.2f}")
        prev = at
    first = statistics.median(r[0] for r in runs)
    bare_first = statistics.median(b[1] for b in bare)
    print(f"\n{'first epoch after `resstudy run` (median)':<62} {first:7.2f} s   (target < 5 s)")
    print(f"{'the same first epoch bare, fresh Python (median)':<62} {bare_first:7.2f} s")
    print(f"{'what the study adds before its first epoch':<62} {first - bare_first:7.2f} s  "
          f"({first / bare_first:.2f}x the bare one)")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
