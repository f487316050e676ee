"""What a study's later trials pay for compilation once the first has compiled.

Runs the same short trial (compile on) in N fresh processes one after another,
all pointed at one new Inductor cache directory (as a study's trials on a node
share one), and prints each trial's `compile_seconds` (first step: compile plus
one step) and its steady images/s. The first pays the full compile; the later
ones should hit the cache.

    python benchmarks/compile_cache.py [--runs 3] [--depth 20] [--image-size 32] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
from study.config import TrainConfig
from study.train import train
rows = []
cfg = TrainConfig(variant="resnet", dataset="digits", depth={depth}, image_size={size}, batch_size=64, epochs=2,
                  limit_train_batches=4, val_size=0.15, precision={precision!r}, compile="on", device="cpu")
train(cfg, lambda m, i, s: rows.append(m))
print(json.dumps({{"compile_seconds": rows[0]["compile_seconds"], "images_per_s": rows[-1]["images_per_s"]}}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = p.parse_args()
    code = CHILD.format(depth=args.depth, size=args.image_size, precision=args.precision)
    with tempfile.TemporaryDirectory(prefix="resstudy-inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        first = None
        for i in range(args.runs):
            out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            got = json.loads(out)
            first = first or got["compile_seconds"]
            print(f"trial {i + 1}: compile_seconds {got['compile_seconds']:7.1f}  "
                  f"({got['compile_seconds'] / first:4.2f}x the first)   steady {got['images_per_s']:7.0f} images/s",
                  flush=True)


if __name__ == "__main__":
    main()
