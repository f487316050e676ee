"""Several trials on one GPU: does packing raise total throughput?

Starts K trainer processes at once on one GPU (K = 1, 2, 4, 8 by default),
each training ResNet-20 with study.train on synthetic CIFAR-shaped data held
on the GPU, and prints each K's total images/s (sum of the trainers' steady
rates) against K = 1. The cluster presets' `gpu` share per trial should be
1/K for the K where the total stops growing. Needs torch and CUDA only (no Ray).

    python benchmarks/gpu_packing.py [--counts 1,2,4,8] [--epochs 6] [--images 25600]
                                     [--precision bf16] [--compile on] [--depth 20]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time


def _worker(rank: int, args: argparse.Namespace, barrier, out) -> None:
    import resource

    import torch

    import study.data as data_lib
    from study.config import TrainConfig
    from study.train import train

    original = data_lib.load_data

    def load(*a, **k):
        k["synthetic_size"] = args.images + 512
        return original(*a, **k)

    data_lib.load_data = load
    device = getattr(args, "device", "cuda")
    cfg = TrainConfig(variant="resnet", dataset="synthetic", depth=args.depth, epochs=args.epochs,
                      batch_size=args.batch_size, device=device, precision=args.precision, compile=args.compile,
                      val_size=512, image_size=getattr(args, "image_size", 32), seed=rank,
                      threads=1 if device == "cpu" else None)
    rates: list[float] = []
    barrier.wait()  # everyone starts (data, model, compile) together
    train(cfg, lambda m, info, save: rates.append(m["images_per_s"]))
    if device.startswith("cuda"):
        memory = torch.cuda.max_memory_reserved()  # what this trainer holds of the GPU at its peak
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak RSS (Linux: KiB)
    out.put((rank, rates, memory))


def run_with_memory(k: int, args: argparse.Namespace) -> tuple[list[list[float]], list[int]]:
    """K trainers at once: (each one's epoch images/s, each one's peak memory in bytes)."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    barrier, out = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, args, barrier, out)) for r in range(k)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            sys.exit(f"a trainer exited with {p.exitcode} at K={k}")
    results.sort()
    return [rates for _, rates, _ in results], [memory for _, _, memory in results]


def run(k: int, args: argparse.Namespace) -> list[list[float]]:
    return run_with_memory(k, args)[0]


def steady_rate(rates: list[float]) -> float:
    """The steady state: the first two epochs left out (compile, cache warm-up, staggered starts)."""
    return statistics.median(rates[2:] if len(rates) > 2 else rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="1,2,4,8")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--images", type=int, default=25_600, help="synthetic training images per trainer")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--compile", default="on", choices=("on", "off"))
    args = p.parse_args()

    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_packing: no CUDA device visible (torch.cuda.is_available() is False); "
                 "this benchmark measures trainers sharing one GPU and cannot run without one")
    counts = [int(c) for c in args.counts.split(",")]
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, ResNet-{args.depth}, "
          f"batch {args.batch_size}, {args.precision}, compile {args.compile}, {args.epochs} epochs of "
          f"{args.images} images per trainer")
    base = None
    for k in counts:
        t0 = time.perf_counter()
        per, memory = run_with_memory(k, args)
        total = sum(steady_rate(r) for r in per)
        base = base or total
        print(f"K={k:<2} total {total:9.0f} images/s  ({total / base:4.2f}x K=1)   per trainer "
              f"{statistics.median(steady_rate(r) for r in per):8.0f} images/s   GPU memory per trainer "
              f"{max(memory) / 2**30:5.2f} GiB, all {sum(memory) / 2**30:5.2f} GiB   "
              f"wall {time.perf_counter() - t0:5.0f} s", flush=True)


if __name__ == "__main__":
    main()
