"""What Ray Tune, Optuna and MLflow cost on top of training.

Runs a study of N trials (one at a time, every trial given the whole machine,
no early stopping) through `resstudy run`, then trains the very same N
configurations bare, one after another in one process with study.train, and
prints two ratios:
- steady: from the first trial's end to the last trial's end in the study,
  against the bare time of trials 2..N: what each trial costs on top of its
  training (reports, checkpoints, Optuna, MLflow, launching the next trial);
- whole: the study's wall time, Ray and MLflow start-up included, against the
  bare sum (the one-off start-up is printed apart; it does not grow with N).
Trial length is calibrated to --trial-seconds first.

    python benchmarks/study_overhead.py [--trials 6] [--trial-seconds 30]
    python benchmarks/study_overhead.py --trials 3 --trial-seconds 300   # 5-minute trials

Targets (issue 12): <= 3% at 30-s trials, <= 1% at 5-minute trials.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from study.config import TrainConfig, variant_options
from study.train import train

ROOT = Path(__file__).resolve().parents[1]


def bare_seconds(cfg: TrainConfig) -> float:
    t0 = time.perf_counter()
    train(cfg)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--trial-seconds", type=float, default=30.0)
    p.add_argument("--variant", default="resnet")
    p.add_argument("--depth", type=int, default=20,
                   help="ResNet depth (20: epochs of a few seconds, as in real studies)")
    args = p.parse_args()
    cpus = os.cpu_count() or 1
    base = dict(variant=args.variant, dataset="digits", depth=args.depth, image_size=32, batch_size=64, val_size=0.15,
                threads=cpus)

    # per-epoch cost after warm-up (the first epoch pays for kernel selection)
    seconds: list[float] = []
    train(TrainConfig(epochs=3, **base), lambda m, info, save: seconds.append(m["epoch_seconds"]))
    probe = sum(seconds[1:]) / len(seconds[1:])
    epochs = max(2, math.ceil(args.trial_seconds / probe))
    print(f"calibration: {probe:.1f} s/epoch -> {epochs} epochs per trial (~{epochs * probe:.0f} s)", flush=True)

    with tempfile.TemporaryDirectory(prefix="resstudy-overhead-") as tmp:
        spec = {
            "name": "overhead", "dataset": "digits", "image_size": 32, "depth": args.depth, "epochs": epochs,
            "trials_per_variant": args.trials, "variants": {args.variant: {}},
            "train": {"batch_size": 64, "val_size": 0.15},
            "search": {"algorithm": "random", "seed": 0}, "scheduler": {"type": "none"},
            "resources": {"cpu": cpus, "gpu": 0}, "max_concurrent": 1, "storage_path": tmp,
        }
        spec_path = Path(tmp) / "overhead.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        t0, t_wall0 = time.perf_counter(), time.time()
        subprocess.run([sys.executable, "-m", "study.cli", "run", str(spec_path)], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        study_s = time.perf_counter() - t0
        results = pd.read_parquet(Path(tmp) / "overhead" / "results.parquet")
        ledger = [json.loads(line) for line in (Path(tmp) / "overhead" / "ledger.jsonl").read_text().splitlines()]
        ends = {r["rid"]: r["finished"] for r in ledger if r.get("finished")}
        starts = {r["rid"]: r["started"] for r in ledger if r.get("started")}

    fields = set(variant_options(args.variant)) | {"variant"}
    results = results.assign(_end=results.trial_id.map(ends)).sort_values("_end")
    bare_each = []
    for _, row in results.iterrows():
        cfg = TrainConfig.from_dict({k: (None if isinstance(v, float) and math.isnan(v) else v)
                                     for k, v in row.items() if k in fields})
        bare_each.append(bare_seconds(cfg))
    bare = sum(bare_each)
    window = results._end.iloc[-1] - results._end.iloc[0]
    startup = min(starts.values()) - t_wall0 if starts else float("nan")
    print(f"{'study (resstudy run: Ray Tune + Optuna + MLflow)':<52} {study_s:8.1f} s")
    print(f"{'the same trials bare, in one process':<52} {bare:8.1f} s")
    print(f"{'one-off start-up (driver start -> first trial asked)':<52} {startup:8.1f} s")
    steady = window / sum(bare_each[1:])
    print(f"{'steady overhead (trials 2..N: study / bare)':<52} {steady:8.3f}x  ({100 * (steady - 1):+.1f}%)")
    print(f"{'whole overhead (study / bare, start-up included)':<52} {study_s / bare:8.3f}x  "
          f"({100 * (study_s / bare - 1):+.1f}%)")


if __name__ == "__main__":
    main()
