"""Cost of the SGS mutual-information pass (every pair, streamed).

Times `study.sgs.mi_scalings` on ResNet-20 over B batches of 128 CIFAR-shaped
images (the official CIFAR-10 setting: 20 batches), against the model's own
eval forward over the same batches (the pass runs two of them), and reports
the process's peak memory growth. A pinned cap (`--max-pairs`) shows what
subsampling gives (opt-in: the masked path is several times slower per pair).

    python benchmarks/mi_pass.py [--batches 20] [--batch-size 128] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from study.models.resnet import resnet
from study.sgs import mi_scalings


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-pairs", type=int, default=0, help="also time a cap of this many anchors (0: skip)")
    args = p.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = resnet(20, 10).to(dev)
    # a few SGD-free steps of BN statistics would not change the cost; random
    # inputs fill the histograms exactly as real images do
    batches = [torch.randn(args.batch_size, 3, 32, 32, device=dev) for _ in range(args.batches)]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mi_scalings(model, batches[:1])  # warm-up (allocator, kernels)

    def forward():
        with torch.no_grad():
            model.eval()
            for x in batches:
                model(x)

    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"ResNet-20, {args.batches} x {args.batch_size} images, median of {args.repeats}", flush=True)
    fwd = _timed(forward, args.repeats)
    print(f"{'eval forward over the batches':<44} {fwd:8.2f} s", flush=True)
    full = _timed(lambda: mi_scalings(model, batches), args.repeats)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{'MI pass, all pairs (streamed, 2 forwards)':<44} {full:8.2f} s  ({full / fwd:.1f}x a forward)")
    print(f"{'peak RSS growth (warm-up and all-pairs pass)':<44} {(rss1 - rss0) / 1024:8.0f} MiB", flush=True)
    if args.max_pairs:
        capped = _timed(lambda: mi_scalings(model, batches, max_pairs=args.max_pairs), args.repeats)
        print(f"{'MI pass, capped at %d anchors' % args.max_pairs:<44} {capped:8.2f} s  "
              f"({capped / full:.2f}x all pairs)")


if __name__ == "__main__":
    main()
