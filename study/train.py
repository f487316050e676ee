"""One trial: train a variant on one dataset with one TrainConfig.

Knows nothing of Ray or MLflow: progress leaves through a `report(metrics, info,
save)` callback once per epoch, where `save(dir)` writes a full-state checkpoint
that `train(..., resume=dir)` continues from bit-exactly (on CPU).
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from study import data as data_lib
from study import sgs as sgs_lib
from study.config import TrainConfig
from study.models import create_model
from study.models import epsilon as eps_lib
from study.models import quotient as quot_lib

CHECKPOINT_FILE = "state.pt"
ReportFn = Callable[[dict[str, Any], dict[str, Any], Callable[[str | Path], None]], None]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


# ---------------------------------------------------------------- execution


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # torch.device also parses meta, mps, xpu, ...: the trainer supports CPU and CUDA only.
    if not isinstance(name, str) or not re.fullmatch(r"cpu|cuda|cuda:\d+", name):
        raise ValueError(f"device: {name!r} is not allowed; use auto, cpu, cuda or cuda:N")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for but no CUDA device is visible; use auto or cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision: {precision!r} is not one of auto, fp32, bf16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


# ---------------------------------------------------------------- schedule


@dataclass
class Schedule:
    """Per-step learning rate: warm-up, then step (/10 at 50% and 75%) or cosine.

    epsilon-ResNet's adaptive restart moves `origin` to the restart epoch and halves
    `length` (METHODS 2): lr jumps back to its initial value on a compressed schedule.
    """

    base_lr: float
    kind: str
    length: float
    warmup: float = 0.0
    origin: float = 0.0
    restarts: int = 0

    def lr(self, epoch_float: float) -> float:
        if self.restarts == 0 and epoch_float < self.warmup:
            return self.base_lr * (epoch_float + 1e-3) / self.warmup
        p = min(max((epoch_float - self.origin) / self.length, 0.0), 1.0)
        if self.kind == "cosine":
            return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * p))
        return self.base_lr * (0.1 ** ((p >= 0.5) + (p >= 0.75)))

    def restart(self, epoch: int) -> None:
        self.origin = float(epoch)
        self.length = max(self.length / 2.0, 1.0)
        self.restarts += 1

    def state_dict(self) -> dict[str, float]:
        return {"origin": self.origin, "length": self.length, "restarts": self.restarts}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.origin, self.length, self.restarts = state["origin"], state["length"], int(state["restarts"])


# ---------------------------------------------------------------- pieces


def _validate(cfg: TrainConfig) -> None:
    # Before any data is loaded: a bad flag fails in milliseconds, not after a download.
    for name, value in cfg.to_dict().items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: {value!r} is not allowed; expected a finite number")
    checks = [
        ("epochs", cfg.epochs >= 1, "an integer >= 1"),
        ("batch_size", cfg.batch_size >= 1, "an integer >= 1"),
        ("lr", cfg.lr > 0, "a float > 0"),
        ("weight_decay", cfg.weight_decay >= 0, "a float >= 0"),
        ("momentum", 0 <= cfg.momentum < 1, "a float in [0, 1)"),
        ("schedule", cfg.schedule in ("step", "cosine"), "step or cosine"),
        ("warmup_epochs", 0 <= cfg.warmup_epochs < cfg.epochs, "an integer in [0, epochs)"),
        ("label_smoothing", 0 <= cfg.label_smoothing < 1, "a float in [0, 1)"),
        ("sgs_mode", cfg.sgs_mode in ("off", "branches", "mi"), "off, branches or mi"),
        ("sgs_interval", cfg.sgs_interval >= 1, "an integer >= 1"),
        ("sgs_batches", cfg.sgs_batches >= 1, "an integer >= 1"),
        ("sgs_k", cfg.sgs_k > 0, "a float > 0"),
        ("sgs_branches", cfg.sgs_mode != "branches" or cfg.sgs_branches in sgs_lib.BRANCH_SETS,
         f"one of {', '.join(sgs_lib.BRANCH_SETS)}"),
        ("sgs_warmup", cfg.sgs_warmup >= 0, "an integer >= 0"),
        ("grad_clip", cfg.grad_clip is None or cfg.grad_clip > 0, "None or a float > 0"),
        ("threads", cfg.threads is None or cfg.threads >= 1, "None or an integer >= 1"),
        ("limit_train_batches", cfg.limit_train_batches is None or cfg.limit_train_batches >= 1,
         "None or an integer >= 1"),
        ("seed", 0 <= cfg.seed < 2**32, "an integer in [0, 2**32)"),  # the spec's range for seeds
    ]
    for name, ok, allowed in checks:
        if not ok:
            raise ValueError(f"{name}: {getattr(cfg, name)!r} is not allowed; expected {allowed}")


def _sgs_for(cfg: TrainConfig, model: torch.nn.Module) -> sgs_lib.SpatialGradScaling | None:
    if cfg.sgs_mode == "off":
        return None
    # Branch-equivalent S is fixed for the whole run; MI scalings start as all ones
    # (plain SGD) until the first recompute at epoch `sgs_warmup`.
    scalings = sgs_lib.branch_scalings(model, cfg.sgs_branches) if cfg.sgs_mode == "branches" else None
    return sgs_lib.SpatialGradScaling(model, scalings)


def _loss(model_out: Any, y: torch.Tensor, side_weight: float, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(model_out, tuple):  # epsilon-ResNet in training: (logits, side logits)
        logits, side = model_out
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        loss = loss + side_weight * F.cross_entropy(side, y, label_smoothing=smoothing)
        return loss, logits
    return F.cross_entropy(model_out, y, label_smoothing=smoothing), model_out


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data: data_lib.DeviceData,
             amp: torch.dtype | None, channels_last: bool, batch_size: int = 512) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for xb, yb in data_lib.eval_batches(x, y, data, batch_size, channels_last=channels_last):
        with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(xb)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(len(y), 1)
    return loss_sum.item() / n, correct.item() / n


def _mi_batches(data: data_lib.DeviceData, cfg: TrainConfig, epoch: int, channels_last: bool) -> list[torch.Tensor]:
    # A generator of its own, seeded by (seed, epoch): the MI pass must not move the
    # training stream, so a resumed run draws exactly the batches an unbroken one draws.
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    batches = data_lib.train_batches(data, cfg.batch_size, gen, channels_last=channels_last, limit=cfg.sgs_batches)
    return [x for x, _ in batches]


# ---------------------------------------------------------------- checkpoint


def _save(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / CHECKPOINT_FILE)  # a crash mid-write leaves the old checkpoint


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint directory (or state.pt file); errors name the file."""
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file} does not exist (expected a {CHECKPOINT_FILE} written by study.train)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises a zoo of types for truncated/garbage files
        raise CheckpointError(f"checkpoint {file} is corrupt or not a study.train checkpoint: {e}") from e
    missing = {"model", "optimizer", "schedule", "epoch", "rng"} - set(state) if isinstance(state, dict) else {"*"}
    if missing:
        raise CheckpointError(f"checkpoint {file} lacks {sorted(missing)}; it was not written by study.train")
    return state


# ---------------------------------------------------------------- the loop


def train(cfg: TrainConfig, report: ReportFn | None = None,
          resume: str | Path | dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one trial; returns the last epoch's metrics (with `status`).

    `resume` is a checkpoint directory or a state already read by load_checkpoint.

    status is `completed` after the last epoch or `diverged` when a loss goes
    NaN/inf, which ends the trial without raising.
    """
    _validate(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    amp = resolve_precision(cfg.precision, device)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    state = resume if isinstance(resume, dict) or resume is None else load_checkpoint(resume)

    torch.manual_seed(cfg.seed)
    data = data_lib.load_data(cfg.dataset, cfg.data_root, download=cfg.download, val_size=cfg.val_size,
                              image_size=cfg.image_size, device=device)
    model = create_model(cfg.variant, depth=cfg.depth, num_classes=data.num_classes,
                         in_channels=data.in_channels, **cfg.model_options()).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    schedule = Schedule(cfg.lr, cfg.schedule, float(cfg.epochs), float(cfg.warmup_epochs))
    scaling = _sgs_for(cfg, model)
    gen = torch.Generator().manual_seed(cfg.seed)
    is_epsilon, is_quotient = cfg.variant == "epsilon", cfg.variant == "quotient"
    side_weight = float(getattr(model, "side_weight", 0.0))

    start_epoch, best_val, best_epoch, discarded_before = 0, -1.0, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if scaling is not None and state.get("sgs") is not None:
            scaling.load_state_dict(state["sgs"])
        gen.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        start_epoch = int(state["epoch"])
        best_val, best_epoch = float(state["best_val_acc"]), int(state["best_epoch"])
        discarded_before = int(state.get("discarded_before", 0))

    n_train = len(data.train_y)
    steps = n_train // cfg.batch_size if n_train >= cfg.batch_size else 1
    if cfg.limit_train_batches:
        steps = min(steps, cfg.limit_train_batches)
    metrics: dict[str, Any] = {"status": "completed", "epoch": start_epoch}

    for epoch in range(start_epoch, cfg.epochs):
        info: dict[str, Any] = {}
        if scaling is not None and cfg.sgs_mode == "mi" and sgs_lib.scaling_schedule_due(epoch, cfg.sgs_warmup, cfg.sgs_interval):
            scaling.update(sgs_lib.mi_scalings(model, _mi_batches(data, cfg, epoch, channels_last),
                                               k=cfg.sgs_k, diagonal_removal=cfg.sgs_diagonal_removal))

        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(data_lib.train_batches(data, cfg.batch_size, gen, channels_last=channels_last,
                                                             drop_last=n_train >= cfg.batch_size, limit=steps)):
            lr = schedule.lr(epoch + step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss, logits = _loss(model(x), y, side_weight, cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaling is not None:
                scaling.apply()
            optimizer.step()
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - t0
        train_loss = loss_sum.item() / max(seen, 1)

        metrics = {
            "epoch": epoch + 1,
            "status": "running",
            "train_loss": train_loss,
            "train_acc": correct.item() / max(seen, 1),
            "lr": schedule.lr(epoch + 1 - 1e-9),
            "epoch_seconds": train_seconds,
            "images_per_s": seen / max(train_seconds, 1e-9),
        }
        if not math.isfinite(train_loss):
            metrics.update(status="diverged", val_loss=float("nan"), val_acc=0.0, best_val_acc=max(best_val, 0.0),
                           best_epoch=best_epoch)
            if report is not None:
                report(metrics, info, lambda path: None)
            return metrics

        if is_epsilon:
            discarded = eps_lib.end_epoch(model)
            if cfg.adaptive_lr and discarded >= discarded_before + 1 and epoch + 1 < cfg.epochs:
                schedule.restart(epoch + 1)
            discarded_before = discarded
            metrics.update(eps_lib.discard_stats(model))
            metrics["param_reduction"] = 1.0 - metrics["params_compressed"] / max(metrics["params"], 1)
            info["epsilon_dead_blocks"] = _dead_map(model)

        val_loss, val_acc = evaluate(model, data.val_x, data.val_y, data, amp, channels_last)
        metrics.update(val_loss=val_loss, val_acc=val_acc, epoch_seconds=time.perf_counter() - t0)
        if val_acc > best_val:
            best_val, best_epoch = val_acc, epoch + 1
        metrics.update(best_val_acc=best_val, best_epoch=best_epoch)
        if is_quotient:
            model.eval()
            metrics.update(quot_lib.quotient_stats(model, _first_val_batch(data, channels_last)))
            model.train()
        if scaling is not None:
            info["sgs_scalings"] = {name: s.tolist() for name, s in scaling.scalings.items()}
            metrics["sgs_center"] = _mean_center(info["sgs_scalings"])

        if epoch + 1 == cfg.epochs:
            metrics["status"] = "completed"
            metrics["test_loss"], metrics["test_acc"] = evaluate(model, data.test_x, data.test_y, data, amp, channels_last)
            if is_epsilon:
                small = eps_lib.compress(model)
                metrics["compressed_test_acc"] = evaluate(small, data.test_x, data.test_y, data, amp, channels_last)[1]

        def save(path: str | Path, _epoch: int = epoch + 1, _best=(best_val, best_epoch), _disc=discarded_before) -> None:
            _save(path, {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "sgs": scaling.state_dict() if scaling is not None else None,
                "rng": {"data": gen.get_state(), "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "epoch": _epoch,
                "best_val_acc": _best[0],
                "best_epoch": _best[1],
                "discarded_before": _disc,
                "config": cfg.to_dict(),
            })

        if report is not None:
            report(metrics, info, save)
    return metrics


def _dead_map(model: torch.nn.Module) -> dict[str, bool]:
    return {name: bool(m.dead.item()) for name, m in model.named_modules() if hasattr(m, "dead") and isinstance(m.dead, torch.Tensor)}


def _mean_center(matrices: dict[str, list[list[float]]]) -> float:
    centers = [m[len(m) // 2][len(m) // 2] for m in matrices.values() if m]
    return float(sum(centers) / len(centers)) if centers else 1.0


def _first_val_batch(data: data_lib.DeviceData, channels_last: bool, size: int = 256) -> torch.Tensor:
    return next(iter(data_lib.eval_batches(data.val_x[:size], data.val_y[:size], data, size, channels_last=channels_last)))[0]
