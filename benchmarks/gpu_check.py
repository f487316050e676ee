"""The GPU check: the trainer on one GPU, in one command, one table at the end.

Needs torch, numpy and scikit-learn only (study.train, study.models, study.data
import without Ray, MLflow or Optuna), so it runs on a GPU machine with its
own Python and torch and no package registry: copy the checkout, then

    python benchmarks/gpu_check.py                      # one CUDA GPU, under 8 minutes on an H100
    python benchmarks/gpu_check.py --device cpu         # the same checks, small, compile off (a test runs this)

Three sections, all on CIFAR-shaped synthetic data (3x32x32, 10 classes)
held on the device:

- limit: the trainer (study.train, bf16 autocast, torch.compile) against the
  best bare step (forward + loss + backward + SGD on one batch already on the
  device, eager and compiled: benchmarks/train_throughput.py's BareStep) at
  ResNet-20 and ResNet-56, epochs interleaved so both see the same device;
  the first epoch (compile) left out, medians of the rest. Target >= 0.95x.
- packing: 1, 2, 4 and 8 trainer processes on one GPU at once
  (benchmarks/gpu_packing.py): total images/s against one, and each trainer's
  peak GPU memory (reserved) and their sum: the `gpu` share per trial where the
  total stops growing.
- variants: every variant (resnet, quotient, epsilon, sgs) two epochs on the
  device: one epoch, a checkpoint, then a new run resumed from that checkpoint
  on the device trains the second (it must report epoch 2 only, on the
  device, and end completed).

Every figure comes from this run; nothing is compared with numbers measured
elsewhere.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the checkout (study) and the sibling benchmarks

import torch  # noqa: E402

import gpu_packing  # noqa: E402
import study.data as data_lib  # noqa: E402
from study.config import TrainConfig  # noqa: E402
from study.train import load_checkpoint, train  # noqa: E402
from train_throughput import BareStep, trainer_images_per_s  # noqa: E402

VARIANTS = ("resnet", "quotient", "epsilon", "sgs")
Row = tuple[str, str, str, str, str, str]  # section, what, images/s, against, memory, result


def _sizes(args: argparse.Namespace) -> None:
    """Defaults by device: full sizes on CUDA, small ones on CPU (compile off there)."""
    cuda = args.device.startswith("cuda")
    defaults: dict[str, Any] = dict(
        depths="20,56" if cuda else "8,14", counts="1,2,4,8" if cuda else "1,2", images=25_600 if cuda else 96,
        image_size=32 if cuda else 16, batch_size=128 if cuda else 32, epochs=4 if cuda else 3,
        pack_epochs=5 if cuda else 3, precision="bf16" if cuda else "fp32", compile="on" if cuda else "off",
        variant_images=10_240 if cuda else 96, pack_depth=20 if cuda else 8, variant_depth=20 if cuda else 8)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def _synthetic(images: int):
    """study.data.load_data with `images` training images of synthetic data (put back by the caller)."""
    original = data_lib.load_data

    def load(*a, **k):
        k["synthetic_size"] = images + int(k.get("val_size") or 0)
        return original(*a, **k)

    return original, load


def limit(args: argparse.Namespace, depth: int) -> list[Row]:
    steps = max(args.images // args.batch_size, 1)
    compiled = args.compile == "on"
    bare = {c: BareStep(args.device, args.precision, c, batch=args.batch_size, depth=depth,
                        image_size=args.image_size) for c in ((False, True) if compiled else (False,))}
    pairs: list[tuple[float, dict[bool, float]]] = []
    trainer_images_per_s(args.device, args.images, args.epochs, depth=depth, image_size=args.image_size,
                         batch_size=args.batch_size, precision=args.precision, compile=args.compile,
                         between=lambda m: pairs.append((m["images_per_s"],
                                                         {c: b.epoch(steps) for c, b in bare.items()})))
    pairs = pairs[1:] or pairs  # the first epoch compiles
    ours = statistics.median(p[0] for p in pairs)
    best = {c: statistics.median(p[1][c] for p in pairs) for c in bare}
    top = max(best, key=lambda c: best[c])
    ratio = ours / best[top]
    what = f"ResNet-{depth} {args.precision} compile {args.compile}"
    return [("limit", what, f"{ours:.0f}", f"{ratio:.2f}x best bare ({'compiled' if top else 'eager'} "
             f"{best[top]:.0f}/s)", "", "met" if ratio >= 0.95 else "below 0.95x")]


def packing(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    base = None
    pargs = SimpleNamespace(depth=args.pack_depth, epochs=args.pack_epochs, images=args.images,
                            batch_size=args.batch_size, precision=args.precision, compile=args.compile,
                            device=args.device, image_size=args.image_size)
    for k in [int(c) for c in args.counts.split(",")]:
        t0 = time.perf_counter()
        per, memory = gpu_packing.run_with_memory(k, pargs)  # type: ignore[arg-type]
        total = sum(gpu_packing.steady_rate(r) for r in per)
        base = base or total
        kind = "GPU reserved" if args.device.startswith("cuda") else "RSS"
        rows.append(("packing", f"K={k} ResNet-{args.pack_depth} processes", f"{total:.0f}",
                     f"{total / base:.2f}x K=1", f"{max(memory) / 2**30:.2f} GiB each, {sum(memory) / 2**30:.2f} "
                     f"GiB all ({kind})", f"wall {time.perf_counter() - t0:.0f} s"))
    return rows


def variant_resume(args: argparse.Namespace, variant: str, root: Path) -> Row:
    """Epoch 1, a checkpoint, then epoch 2 in a new run resumed from it, on the device."""
    cfg = TrainConfig(variant=variant, dataset="synthetic", depth=args.variant_depth, epochs=2,
                      batch_size=args.batch_size, device=args.device, precision=args.precision,
                      compile=args.variant_compile, val_size=min(512, max(args.variant_images // 4, 32)),
                      image_size=args.image_size, seed=0)
    original, load = _synthetic(args.variant_images)
    data_lib.load_data = load
    ckpt = root / variant
    first: list[dict[str, Any]] = []
    resumed: list[dict[str, Any]] = []

    class _Stop(Exception):
        pass

    def report_first(m, info, save) -> None:
        first.append(m)
        save(ckpt)
        raise _Stop  # the run ends after its first epoch, its checkpoint written

    try:
        try:
            train(cfg, report_first)
        except _Stop:
            pass
        state = load_checkpoint(ckpt)  # read back from disk, as a retried trial reads it
        final = train(cfg, lambda m, info, save: resumed.append(m), resume=state)
    finally:
        data_lib.load_data = original
    epochs = [int(m["epoch"]) for m in resumed]
    on_device = str(final.get("device", "")).startswith(torch.device(args.device).type)
    ok = int(state["epoch"]) == 1 and epochs == [2] and on_device and final["status"] == "completed"
    rate = statistics.median([first[0]["images_per_s"], *(m["images_per_s"] for m in resumed)])
    size = (ckpt / "state.pt").stat().st_size
    return ("variants", f"{variant} ResNet-{args.variant_depth} 2 epochs", f"{rate:.0f}", "",
            f"checkpoint {size / 2**20:.1f} MiB", f"checkpoint at epoch {int(state['epoch'])}, resumed "
            f"epochs {epochs} on {final.get('device')}: " + ("ok" if ok else "FAILED"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (small sizes)")
    p.add_argument("--sections", default="limit,packing,variants")
    p.add_argument("--depths", default=None, help="limit section's ResNet depths (cuda: 20,56)")
    p.add_argument("--counts", default=None, help="packing section's trainers at once (cuda: 1,2,4,8)")
    p.add_argument("--images", type=int, default=None, help="synthetic training images per epoch (cuda: 25600)")
    p.add_argument("--image-size", type=int, default=None, help="cuda: 32 (CIFAR)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="limit section's epochs (the first left out)")
    p.add_argument("--pack-epochs", type=int, default=None)
    p.add_argument("--pack-depth", type=int, default=None, help="cuda: 20")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"), help="cuda: bf16")
    p.add_argument("--compile", default=None, choices=("on", "off"), help="limit and packing (cuda: on)")
    p.add_argument("--variant-images", type=int, default=None)
    p.add_argument("--variant-depth", type=int, default=None, help="cuda: 20")
    p.add_argument("--variant-compile", default="off", choices=("on", "off", "auto"),
                   help="the variants' two epochs (off: eager, keeps the check under 8 minutes)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    _sizes(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); "
                 "run it with --device cpu for the small CPU version")
    sections = set(args.sections.split(","))
    with tempfile.TemporaryDirectory(prefix="resstudy-gpu-check-") as tmp:
        # one Inductor cache for every compile of the run (the packing trainers hit it)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tmp) / "inductor"))
        where = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "CPU"
        print(f"gpu_check on {args.device} ({where}), Python {platform.python_version()}, torch {torch.__version__}, "
              f"{os.cpu_count()} CPUs", flush=True)
        t_start = time.perf_counter()
        rows: list[Row] = []
        if "limit" in sections:
            for depth in [int(d) for d in args.depths.split(",")]:
                t0 = time.perf_counter()
                rows += limit(args, depth)
                print(f"  limit ResNet-{depth}: {rows[-1][2]} images/s, {rows[-1][3]} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if "packing" in sections:
            for row in packing(args):
                rows.append(row)
                print(f"  packing {row[1]}: {row[2]} images/s ({row[3]}), {row[4]}", flush=True)
        if "variants" in sections:
            for variant in args.variants.split(","):
                rows.append(variant_resume(args, variant, Path(tmp) / "checkpoints"))
                print(f"  {rows[-1][1]}: {rows[-1][5]}", flush=True)
        wall = time.perf_counter() - t_start
    header: Row = ("section", "what", "images/s", "against", "memory", "result")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\ngpu_check table ({args.device}, {args.precision}, synthetic {args.image_size}x{args.image_size}, "
          f"batch {args.batch_size}; {wall:.0f} s in all)")
    for r in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    failed = [r for r in rows if r[0] == "variants" and not r[5].endswith("ok")]
    if failed:
        sys.exit(f"gpu_check: {len(failed)} variant(s) did not resume from their checkpoint")


if __name__ == "__main__":
    main()
