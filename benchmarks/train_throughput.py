"""Training throughput of resstudy's trainer against a plain PyTorch loop.

Both train ResNet-20 on the same synthetic CIFAR-shaped data in the same run:
  reference: torchvision DataLoader over PIL images with per-sample transforms
             (RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize), fp32
  resstudy:  study.train (uint8 data on the device, whole-batch augmentation,
             bf16 autocast where the hardware has it, channels_last on CUDA)
and then the variants' steps against the ResNet step (target: within 1.10x).

Section `limit`: the trainer against the bare step on the same device, the
limit of what any trainer can do: forward + loss + backward + SGD on one
pre-made batch already on the device, eager and torch.compile'd, fp32 and
bf16. The trainer runs with compile off and on (option `compile`), at least 4
epochs, each followed by a bare epoch of as many steps; target: >= 0.95x the
best bare step of the same precision.

    python benchmarks/train_throughput.py [--device cpu|cuda] [--images 2560] [--epochs 3]
                                          [--sections limit,reference,variants] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from study.config import TrainConfig
from study.data import resolve_device
from study.models import create_model
from study.train import resolve_precision, train


class BareStep:
    """fwd + loss + bwd + SGD step on one pre-made batch already on the device: the limit."""

    def __init__(self, device: str, precision: str, compiled: bool, batch: int = 128, depth: int = 20,
                 image_size: int = 32) -> None:
        dev = self.device = torch.device(device)
        amp = torch.bfloat16 if precision == "bf16" else None
        torch.manual_seed(0)
        model = create_model("resnet", depth=depth, num_classes=10).to(dev)
        channels_last = dev.type == "cuda"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        self.x = torch.randn(batch, 3, image_size, image_size, device=dev)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (batch,), device=dev)

        def fwd(x, y):
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                return F.cross_entropy(model(x), y)

        from study.compile import compile_mode

        self.fn = torch.compile(fwd, mode=compile_mode(dev)) if compiled else fwd
        self.epoch(3)  # warm-up (the first step compiles)

    def epoch(self, steps: int) -> float:
        """images/s over `steps` steps, timed like the trainer's epoch (wall time over the whole run)."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.opt.zero_grad(set_to_none=True)
            self.fn(self.x, self.y).backward()
            self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return steps * len(self.y) / (time.perf_counter() - t0)


def limit_section(device: str, images: int, epochs: int, precisions: list[str]) -> dict[str, float]:
    """Each trainer epoch is followed by an epoch of the bare step with as many steps, so
    both see the same machine (a shared 2-core box drifts by +-15% over minutes); the
    first epoch of each (cache warm-up) is left out, the rest give medians."""
    rows: dict[str, float] = {}
    print("\ntrainer against the bare step (the limit), same device, epochs interleaved:")
    steps = max(images // 128, 1)
    for prec in precisions:
        bare: dict[bool, float] = {}
        ours: dict[bool, float] = {}
        for c in (False, True):
            step = BareStep(device, prec, c)
            pairs: list[tuple[float, float]] = []
            trainer_images_per_s(device, images, max(epochs, 4), precision=prec, compile="on" if c else "off",
                                 between=lambda m: pairs.append((m["images_per_s"], step.epoch(steps))))
            pairs = pairs[1:]
            ours[c], bare[c] = (float(np.median([p[i] for p in pairs])) for i in (0, 1))
            rows[f"bare {prec} {'compiled' if c else 'eager'}"] = bare[c]
            rows[f"trainer {prec} compile {'on' if c else 'off'}"] = ours[c]
        best = max(bare.values())
        for c in (False, True):
            print(f"  {prec} {'compiled' if c else 'eager   '}  bare {bare[c]:7.0f}  trainer {ours[c]:7.0f} images/s   "
                  f"trainer/bare {ours[c] / bare[c]:5.2f}x   trainer/best bare {ours[c] / best:5.2f}x")
        print(f"  {prec} compiled bare / eager bare {bare[True] / bare[False]:5.2f}x")
    return rows


def trainer_images_per_s(device: str, images: int, epochs: int, between=None, *, depth: int = 20,
                         image_size: int = 32, batch_size: int = 128, **options) -> float:
    """Median images/s over the epochs after the first (the first warms caches);
    `between(metrics)` runs after each epoch."""
    cfg = TrainConfig(dataset="synthetic", depth=depth, epochs=epochs, batch_size=batch_size, device=device,
                      val_size=min(256, max(images // 4, 32)), image_size=image_size, **options)
    rates: list[float] = []
    import study.data as data_lib

    original = data_lib.load_data

    def load(*a, **k):
        k["synthetic_size"] = images + int(cfg.val_size)
        return original(*a, **k)

    data_lib.load_data = load
    try:
        def report(m, info, save):
            rates.append(m["images_per_s"])
            if between is not None:
                between(m)

        train(cfg, report)
    finally:
        data_lib.load_data = original
    return float(np.median(rates[1:] if len(rates) > 1 else rates))


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, transform) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def reference_images_per_s(device: str, images: int, epochs: int, workers: int) -> float:
    import torchvision.transforms as T

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=images)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
    loader = torch.utils.data.DataLoader(_PilDataset(x, y, tf), batch_size=128, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         pin_memory=device.startswith("cuda"))
    dev = torch.device(device)
    torch.manual_seed(0)
    model = create_model("resnet", depth=20, num_classes=10).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    rates = []
    for _ in range(epochs):
        model.train()
        seen, t0 = 0, time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(yb)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - t0))
    return float(np.median(rates[1:] if len(rates) > 1 else rates))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=2560)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    p.add_argument("--json", default=None, help="also write the numbers here")
    p.add_argument("--sections", default="limit,reference,variants")
    p.add_argument("--precisions", default="fp32,bf16", help="for the limit section")
    args = p.parse_args()
    sections = set(args.sections.split(","))
    device = str(resolve_device(args.device))
    amp = resolve_precision("auto", torch.device(device))
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"autocast {amp or 'off (fp32)'}, {args.images} images x {args.epochs} epochs")
    rows: dict[str, float] = {}
    if "limit" in sections:
        rows.update(limit_section(device, args.images, args.epochs, args.precisions.split(",")))
    if "reference" not in sections and "variants" not in sections:
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": device, **rows}, f, indent=2)
        return

    ref = reference_images_per_s(device, args.images, args.epochs, args.workers)
    ours = trainer_images_per_s(device, args.images, args.epochs)
    print(f"{'reference (DataLoader, per-sample transforms, fp32)':<55} {ref:9.0f} images/s")
    print(f"{'resstudy trainer':<55} {ours:9.0f} images/s")
    print(f"{'speed-up (resstudy / reference)':<55} {ours / ref:9.2f}x")

    rows.update({"reference": ref, "resnet": ours})
    variants = {} if "variants" not in sections else {
        "quotient": dict(variant="quotient", shortcut="B"),
        "resnet, shortcut B (quotient's parameter twin)": dict(variant="resnet", shortcut="B"),
        "epsilon": dict(variant="epsilon"),
        "sgs (branches)": dict(variant="sgs", sgs_mode="branches"),
        "sgs (mi, recomputed every epoch)": dict(variant="sgs", sgs_mode="mi", sgs_interval=1, sgs_batches=2),
    }
    for name, options in variants.items():
        rows[name] = trainer_images_per_s(device, args.images, args.epochs, **options)
    base_b = rows.get("resnet, shortcut B (quotient's parameter twin)")
    if variants:
        print("\nstep cost against the ResNet step (lower is better; target <= 1.10x):")
    for name in variants:
        ref_rate = base_b if name == "quotient" else ours
        print(f"  {name:<53} {ref_rate / rows[name]:6.2f}x  ({rows[name]:.0f} images/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, **rows}, f, indent=2)


if __name__ == "__main__":
    main()
