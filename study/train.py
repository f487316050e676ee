"""One trial: train a variant on one dataset with one TrainConfig.

Knows nothing of Ray or MLflow: progress leaves through a `report(metrics, info,
save)` callback once per epoch, where `save(dir)` writes a full-state checkpoint
that `train(..., resume=dir)` continues from bit-exactly (on CPU).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from study import data as data_lib
from study.compile import CompiledStep, compile_wanted
from study.config import CORE, TrainConfig
from study.data import resolve_device
from study.errors import UserError
from study.models import create_model
from study.optim import SGD
from study.timeline import mark
from study.variants import StepSchedule, declared_schedules, features, get_variant

CHECKPOINT_FILE = "state.pt"
ReportFn = Callable[[dict[str, Any], dict[str, Any], Callable[[str | Path], None]], None]


class CheckpointError(UserError):
    """A checkpoint that cannot be read; the message names the file."""


# ---------------------------------------------------------------- execution


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32 (`auto`: bf16 where the hardware computes it)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise CORE["precision"].error(precision)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


# ---------------------------------------------------------------- schedule


@dataclass
class Schedule:
    """Per-step learning rate: warm-up, then step (/10 at 50% and 75%), cosine, or the
    steps a variant declares (study.variants.StepSchedule, by its name in `kind`).

    A restart (a variant's hooks decide it) moves `origin` to the restart epoch and
    sets `length` to the declared fraction of the run's length (half for step and
    cosine): lr jumps back to its initial value on the shorter schedule. Every restart
    uses that same length (it does not shorten again). Where the declared schedule
    `extends`, a restart at epoch N also extends training to N + the full length
    (`end`), the steps past the length included; otherwise training stops at the length.
    """

    base_lr: float
    kind: str
    length: float
    warmup: float = 0.0
    origin: float = 0.0
    restarts: int = 0

    def __post_init__(self) -> None:
        self.full_length = self.length
        self.declared: StepSchedule | None = declared_schedules().get(self.kind)

    def lr(self, epoch_float: float) -> float:
        if self.restarts == 0 and epoch_float < self.warmup:
            return self.base_lr * (epoch_float + 1e-3) / self.warmup
        p = max((epoch_float - self.origin) / self.length, 0.0)
        if self.declared is not None:
            factor = 1.0
            for at, f in self.declared.steps:
                if p >= at:
                    factor = f
            return self.base_lr * factor
        p = min(p, 1.0)
        if self.kind == "cosine":
            return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * p))
        return self.base_lr * (0.1 ** ((p >= 0.5) + (p >= 0.75)))

    def restart(self, epoch: int) -> None:
        self.origin = float(epoch)
        fraction = self.declared.restart_length if self.declared is not None else 0.5
        self.length = max(self.full_length * fraction, 1.0)
        self.restarts += 1

    def end(self, cap: int) -> int:
        """The epochs training runs: the length, or where the declared schedule extends,
        after a restart at N, N + the length, at most `cap`."""
        base = int(round(self.full_length))
        if self.declared is None or not self.declared.extends or self.restarts == 0:
            return base
        return max(base, min(int(math.ceil(self.origin + self.full_length)), cap))

    def state_dict(self) -> dict[str, float]:
        return {"origin": self.origin, "length": self.length, "restarts": self.restarts}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.origin, self.length, self.restarts = state["origin"], state["length"], int(state["restarts"])


def planned_epochs(cfg: TrainConfig, schedule: Schedule) -> int:
    """Epochs to train now: `train_epochs` where set (a matched twin trains what its
    variant trained), else the schedule's end (restarts may extend it)."""
    if cfg.train_epochs is not None:
        return cfg.train_epochs
    return schedule.end(cfg.epoch_limit())


# ---------------------------------------------------------------- pieces


def param_groups(model: torch.nn.Module, weight_decay: float, scope: str) -> list[dict[str, Any]]:
    """SGD parameter groups: `all` decays every parameter (the usual coupled L2);
    `conv_fc` only conv and linear weights, as epsilon-ResNet's official code does
    (no decay on BN scales and shifts or on biases)."""
    if scope == "all":
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    if scope != "conv_fc":
        raise ValueError(f"weight_decay_scope: {scope!r} is not one of all, conv_fc")
    decayed = {id(m.weight) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.weight is not None}
    params = list(model.parameters())
    return [{"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
            {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]



@dataclass
class TrialContext:
    """What a variant's hooks may use beyond the model and config."""

    cfg: TrainConfig
    data: data_lib.DeviceData
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool

    def evaluate(self, model: torch.nn.Module, split: str = "val") -> tuple[float, float]:
        x, y = (self.data.val_x, self.data.val_y) if split == "val" else (self.data.test_x, self.data.test_y)
        return evaluate(model, x, y, self.data, self.amp, self.channels_last, self.cfg.eval_batch_size)

    def first_val_batch(self, size: int = 256) -> torch.Tensor:
        data = self.data
        return next(iter(data_lib.eval_batches(data.val_x[:size], data.val_y[:size], data, size,
                                               channels_last=self.channels_last)))[0]

    def probe_batches(self, epoch: int, limit: int) -> list[torch.Tensor]:
        """Up to `limit` training batches (inputs) for a hook to probe the model with at
        `epoch` (SGS's MI pass). A generator of their own, seeded by (seed, epoch): the
        probe must not move the training stream, so a resumed run draws exactly the
        batches an unbroken one draws."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        batches = data_lib.train_batches(self.data, cfg.batch_size, gen, channels_last=self.channels_last,
                                         limit=limit)
        return [x for x, _ in batches]


def make_hooks(cfg: TrainConfig, model: torch.nn.Module, ctx: TrialContext) -> list:
    """The variant's hooks, then every feature the config switches on."""
    values = cfg.to_dict()
    hooks = [get_variant(cfg.variant).hooks(model, cfg, ctx)]
    hooks += [f.hooks(model, cfg, ctx) for f in features() if f.active(values)]
    return hooks


def _ce(smoothing: float):
    def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=smoothing)

    return ce


def _loss(hooks: list, out: Any, y: torch.Tensor, ce) -> tuple[torch.Tensor, torch.Tensor]:
    for h in hooks:
        got = h.loss(out, y, ce)
        if got is not None:
            return got
    return ce(out, y), out


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data: data_lib.DeviceData,
             amp: torch.dtype | None, channels_last: bool, batch_size: int = 128) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode, over batches of `batch_size` (epsilon's
    gate takes its max over the batch, so the size is part of the protocol)."""
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
          resume: str | Path | dict[str, Any] | None = None,
          on_step: Callable[[int, int, int], None] | None = None) -> dict[str, Any]:
    """Train one trial; returns the last epoch's metrics (with `status`).

    `resume` is a checkpoint directory or a state already read by load_checkpoint.
    `on_step(epoch, step, steps)` is called after every optimiser step (a progress
    bar); it must not synchronise with the device.

    status is `completed` after the last epoch or `diverged` when a loss goes
    NaN/inf, which ends the trial without raising. test_acc is measured with the
    weights of the best-validation epoch (test_acc_last with the last epoch's).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    amp = resolve_precision(cfg.precision, device)
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    state = resume if isinstance(resume, dict) or resume is None else load_checkpoint(resume)

    torch.manual_seed(cfg.seed)
    data = data_lib.load_data(cfg.dataset, cfg.data_root, download=cfg.download,
                              val_size=int(cfg.val_size) if cfg.val_size >= 1 else cfg.val_size,
                              image_size=cfg.image_size, device=device, augment=cfg.augment,
                              cutout=cfg.cutout, normalization=cfg.normalization)
    mark("train: data loaded")
    model = create_model(cfg.variant, depth=cfg.depth, num_classes=data.num_classes,
                         in_channels=data.in_channels, **cfg.model_options()).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = SGD(param_groups(model, cfg.weight_decay, cfg.weight_decay_scope), lr=cfg.lr,
                    momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    schedule = Schedule(cfg.lr, cfg.schedule, float(cfg.epochs), float(cfg.warmup_epochs))
    mark("train: model built")
    ctx = TrialContext(cfg, data, device, amp, channels_last)
    hooks = make_hooks(cfg, model, ctx)
    ce = _ce(cfg.label_smoothing)
    gen = torch.Generator().manual_seed(cfg.seed)
    # what ran, where the config says auto or null (the results record these, not the config's)
    resolved = {"precision": "bf16" if amp == torch.bfloat16 else "fp32", "device": str(device),
                "augment": data.augment}

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # from the uint8 batch to (loss, correct count) in one function: compiled, the
        # normalisation and the accuracy fuse into the step instead of costing kernels of their own
        x = data_lib.normalize(x, data.mean, data.std)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, logits = _loss(hooks, model(x), y, ce)
        return loss, (logits.detach().argmax(1) == y).sum()

    # Forward + loss compiled (AOTAutograd compiles the backward with it); eval stays eager.
    step_fn = CompiledStep(forward_loss, compile_wanted(cfg.compile, device), device)

    start_epoch, best_val, best_epoch = 0, -1.0, 0
    best_state: dict[str, torch.Tensor] | None = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        for h, hs in zip(hooks, state.get("hooks") or [{}] * len(hooks)):
            h.load_state_dict(hs)
        gen.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        start_epoch = int(state["epoch"])
        best_val, best_epoch = float(state["best_val_acc"]), int(state["best_epoch"])
        best_state = state.get("best_model")

    n_train = len(data.train_y)
    steps = n_train // cfg.batch_size if n_train >= cfg.batch_size else 1
    if cfg.limit_train_batches:
        steps = min(steps, cfg.limit_train_batches)
    metrics: dict[str, Any] = {"status": "completed", "epoch": start_epoch}

    end = planned_epochs(cfg, schedule)
    epoch = start_epoch
    while epoch < end:
        info: dict[str, Any] = {}
        for h in hooks:
            h.before_epoch(epoch)

        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, timed_from, first_step = 0, 0, step_fn.compiled is None
        t0 = t_steady = time.perf_counter()
        for step, (x, y) in enumerate(data_lib.train_batches(data, cfg.batch_size, gen, channels_last=channels_last,
                                                             drop_last=n_train >= cfg.batch_size, limit=steps,
                                                             normalized=False)):
            lr = schedule.lr(epoch + step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss, hits = step_fn(x, y)
            step_fn.backward(loss, on_retry=lambda: optimizer.zero_grad(set_to_none=True))
            if step_fn.retry:  # the backward would not compile: this step again, eager
                loss, hits = step_fn(x, y)
                loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            for h in hooks:
                h.after_backward()
            optimizer.step()
            loss_sum += loss.detach().float() * len(y)
            correct += hits
            seen += len(y)
            if on_step is not None:
                on_step(epoch, step + 1, steps)
            if first_step:  # the compiling step is timed apart: images_per_s is the steady state
                first_step = False
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t_steady, timed_from = time.perf_counter(), seen
                mark("train: first step" + (" (compiled)" if step_fn.compiled else ""))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_end = time.perf_counter()
        train_seconds = t_end - t0
        steady = (seen - timed_from, t_end - t_steady) if seen > timed_from else (seen, train_seconds)
        train_loss = loss_sum.item() / max(seen, 1)

        metrics = {
            "epoch": epoch + 1,
            "status": "running",
            "train_loss": train_loss,
            "train_acc": correct.item() / max(seen, 1),
            "lr": schedule.lr(epoch + 1 - 1e-9),
            "epoch_seconds": train_seconds,
            "images_per_s": steady[0] / max(steady[1], 1e-9),
            **resolved,
        }
        if epoch == start_epoch and step_fn.enabled:
            metrics["compile_seconds"] = step_fn.compile_seconds if step_fn.compiled else 0.0
        if not math.isfinite(train_loss):
            metrics.update(status="diverged", val_loss=float("nan"), val_acc=0.0, best_val_acc=max(best_val, 0.0),
                           best_epoch=best_epoch)
            if report is not None:
                report(metrics, info, lambda path: None)
            return metrics

        for h in hooks:
            h.end_epoch(epoch, metrics, info, schedule)
        end = planned_epochs(cfg, schedule)  # a restart may have extended training
        metrics["epochs_planned"] = end
        val_loss, val_acc = ctx.evaluate(model, "val")
        metrics.update(val_loss=val_loss, val_acc=val_acc, epoch_seconds=time.perf_counter() - t0)
        if val_acc > best_val:
            best_val, best_epoch = val_acc, epoch + 1
            # a copy on the device, so the test set is read once, at the end
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        metrics.update(best_val_acc=best_val, best_epoch=best_epoch)
        for h in hooks:
            h.after_eval(epoch, metrics, info)

        if epoch + 1 >= end:
            metrics["status"] = "completed"
            metrics["test_loss_last"], metrics["test_acc_last"] = ctx.evaluate(model, "test")
            for h in hooks:
                h.final(metrics, lambda m: ctx.evaluate(m, "test"))
            if best_state is not None and best_epoch != epoch + 1:
                last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.load_state_dict(best_state)
                metrics["test_loss"], metrics["test_acc"] = ctx.evaluate(model, "test")
                model.load_state_dict(last_state)
            else:
                metrics["test_loss"], metrics["test_acc"] = metrics["test_loss_last"], metrics["test_acc_last"]

        def save(path: str | Path, _epoch: int = epoch + 1, _best=(best_val, best_epoch),
                 _best_state=best_state) -> None:
            _save(path, {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "hooks": [h.state_dict() for h in hooks],
                "rng": {"data": gen.get_state(), "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "epoch": _epoch,
                "best_val_acc": _best[0],
                "best_epoch": _best[1],
                "best_model": _best_state,
                "config": cfg.to_dict(),
            })

        if report is not None:
            report(metrics, info, save)
        epoch += 1
    return metrics
