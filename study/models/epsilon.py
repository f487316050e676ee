"""epsilon-ResNet (Yu et al. 2018; docs/methods.md): a block whose residual is below
epsilon everywhere passes only its shortcut; blocks that stay that way are
counted as discarded and can be cut out of the network (``compress``)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from study.errors import OptionError
from study.options import Option
from study.variants import Claim, DeclaredTradeoff, Exercise, Hooks, Published, StepSchedule, Sweep, Variant

from .resnet import (
    CifarResNet,
    backbone_options,
    check_bool,
    check_choice,
    check_float,
    conv3x3,
    kaiming_init,
    make_shortcut,
    resolve_block_shortcut,
)

L = 1e6  # the paper's gate's slope; 1 if s > ~1e-6 else 0
# The official code smooths each block's per-step "discarded" flag (gate 0) with
# tensorpack's moving average: decay 0.95, warmed up as min(0.95, (1+t)/(10+t)) at step t.
DISCARD_DECAY = 0.95
# A block is pruned when its moving average is 1.0 as the official log prints it (5
# significant digits, read by compressModel.py): at or above 1 - 5e-6.
PRUNE_AT = 1.0 - 5e-6
STEMS = ("conv_bn_relu", "conv")


def epsilon_gate(residual: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The block's 0-dim float32 gate S: 0 if every |F_i| < epsilon, else 1.

    The paper's four-ReLU form: s = max(relu(F - eps) + relu(-F - eps)),
    gate = relu(1 - L relu(1 - L s)). The first two ReLUs are reduced first:
    for eps >= 0 at most one is non-zero per element, and relu(. - eps) is
    monotone, so s = relu(max|F| - eps) gives bitwise the same s from one
    aminmax pass instead of four full-size temporaries. The gate stays a graph
    op (gradient flows through the max as in the original).
    """
    lo, hi = torch.aminmax(residual)
    s = torch.relu(torch.maximum(hi, -lo).float() - epsilon)
    return torch.relu(1.0 - L * torch.relu(1.0 - L * s))


class EpsilonBlock(nn.Module):
    """Pre order: F = conv2(relu(BN2(conv1(relu(BN1 x))))), out = shortcut(x) + S(F) F.
    Post order: F = BN2(conv2(relu(BN1(conv1 x)))), out = relu(shortcut(x) + S(F) F).
    `first` (pre order): the input is already BN-ReLU'd by the stem, so the block
    skips its own pre-activation (the official code's first block).

    Buffers (checkpointed with the model): ``discard_ema``, the moving average of
    the per-step flag "gate was 0", over ``ema_steps`` training forwards, updated on
    device (no host sync per step); ``dead`` is set by ``end_epoch``.
    """

    # registered buffers, declared for the type checker
    discard_ema: torch.Tensor
    ema_steps: torch.Tensor
    dead: torch.Tensor

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str, epsilon: float, preact: bool = True,
                 gate: bool = True, first: bool = False):
        super().__init__()
        self.preact, self.epsilon, self.gate, self.first = preact, epsilon, gate, first and preact
        self.bn1 = nn.Identity() if self.first else nn.BatchNorm2d(in_planes if preact else planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(shortcut, in_planes, planes, stride)
        self.register_buffer("discard_ema", torch.zeros(()))
        self.register_buffer("ema_steps", torch.zeros(()))
        self.register_buffer("dead", torch.zeros((), dtype=torch.bool))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            h = x if self.first else self.relu(self.bn1(x))
            return self.conv2(self.relu(self.bn2(self.conv1(h))))
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.residual(x)
        if not self.gate:  # the twin: the same block with the method switched off
            out = self.shortcut(x) + f
            return out if self.preact else self.relu(out)
        gate = epsilon_gate(f, self.epsilon)
        if self.training:
            with torch.no_grad():
                decay = torch.clamp((1.0 + self.ema_steps) / (10.0 + self.ema_steps), max=DISCARD_DECAY)
                self.discard_ema.mul_(decay).add_((gate == 0).float() * (1.0 - decay))
                self.ema_steps.add_(1.0)
        # Eval runs the same gate graph as training (the official code forces
        # nothing): a block dead on every training step may reopen on an eval
        # batch under running BN statistics; compressed vs uncompressed test
        # accuracy reports that difference instead of hiding it.
        out = self.shortcut(x) + gate * f
        return out if self.preact else self.relu(out)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon:g}" + ("" if self.gate else ", gate=off") + (", first" if self.first else "")


class DiscardedBlock(nn.Module):
    """What ``compress`` leaves of a dead block: its shortcut (identity, option A,
    or the B/conv3x3 projection), plus the block's closing ReLU in post order."""

    def __init__(self, shortcut: nn.Module, relu: bool):
        super().__init__()
        self.shortcut = shortcut
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.shortcut(x))


class EpsilonResNet(CifarResNet):
    """CIFAR ResNet of EpsilonBlocks with a side head (BN-ReLU-GAP-linear) after
    block n//2 of stage 2. Train mode returns ``(logits, side_logits)`` (the
    trainer adds ``side_weight`` * side CE); eval mode returns logits."""

    def __init__(self, *args, side_weight: float = 0.1, epsilon: float = 2.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.side_weight, self.epsilon = side_weight, epsilon
        self.side_index = self.blocks_per_stage // 2
        first = self.layer2[0]
        assert isinstance(first, EpsilonBlock)  # make_block builds every block
        c = first.conv2.out_channels
        self.side: nn.Module | None = nn.Sequential(
            nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, self.fc.out_features)
        )

    # Widens CifarResNet.forward on purpose: in training the side logits travel with the
    # logits to EpsilonHooks.loss, the one reader of the pair.
    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        x = self.layer1(self.stem(x))
        if not (self.training and self.side is not None):
            return self.head(self.layer3(self.layer2(x)))
        side = None
        for i, blk in enumerate(self.layer2):
            x = blk(x)
            if i == self.side_index:
                side = self.side(x)
        assert side is not None  # side_index = n // 2 < n blocks
        return self.head(self.layer3(x)), side


def epsilon_resnet(
    depth: int = 20,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    block: str = "pre",
    shortcut: str = "avgpool",
    width: int = 16,
    init: str = "kaiming",
    stem: str = "conv_bn_relu",
    epsilon: float = 2.5,
    side_weight: float = 0.1,
    epsilon_gate: bool = True,
) -> EpsilonResNet:
    """The official CIFAR epsilon-ResNet by default: pre-activation blocks, a
    conv-BN-ReLU stem whose first block skips its pre-activation, 2x2 average-pool
    shortcuts. `stem="conv"` with `shortcut="A"` is the shared pre-activation backbone."""
    block, shortcut = resolve_block_shortcut(block, shortcut, ("pre", "avgpool"))
    stem = check_choice("stem", stem, STEMS)
    if block == "post" and stem != "conv_bn_relu":
        raise OptionError(f"stem: {stem!r} is not allowed with block 'post'; allowed: conv_bn_relu (a "
                          "post-activation stem is always conv-BN-ReLU)", field="stem")
    epsilon = check_float("epsilon", epsilon, 0.0)
    side_weight = check_float("side_weight", side_weight, 0.0)
    epsilon_gate = check_bool("epsilon_gate", epsilon_gate)
    preact = block == "pre"
    official_stem = preact and stem == "conv_bn_relu"
    built: list[EpsilonBlock] = []

    def make_block(i: int, o: int, s: int) -> nn.Module:
        built.append(EpsilonBlock(i, o, s, shortcut, epsilon, preact, epsilon_gate, first=official_stem and not built))
        return built[-1]

    model = EpsilonResNet(
        make_block, depth, num_classes, in_channels, width, preact=preact, side_weight=side_weight, epsilon=epsilon,
        stem_bn=True if official_stem else None,
    )
    if check_choice("init", init, ("kaiming", "default")) == "kaiming":
        kaiming_init(model)
    model.options = {
        "block": block,
        "shortcut": shortcut,
        "width": width,
        "init": init,
        "stem": stem,
        "epsilon": epsilon,
        "side_weight": side_weight,
        "epsilon_gate": epsilon_gate,
    }
    return model


# ---------------------------------------------------------------- counting and compression


def _epsilon_net(model: nn.Module, what: str) -> EpsilonResNet:
    net = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    net = getattr(net, "module", net)  # DistributedDataParallel
    if not isinstance(net, EpsilonResNet):
        raise TypeError(f"{what}() needs an epsilon-ResNet (variant 'epsilon'); got {type(net).__name__}")
    return net


def _blocks(net: EpsilonResNet) -> list[EpsilonBlock]:
    return [m for m in net.modules() if isinstance(m, EpsilonBlock)]


@torch.no_grad()
def discarded_count(model: nn.Module) -> float:
    """The official "discarded_cnt": the sum over blocks of their moving-average
    discard flags (blocks already cut out count 1 each). The adaptive restart
    watches it rise by 1."""
    net = _epsilon_net(model, "discarded_count")
    blocks = _blocks(net)
    removed = sum(isinstance(m, DiscardedBlock) for m in net.modules())
    return removed + (float(torch.stack([b.discard_ema for b in blocks]).sum()) if blocks else 0.0)


@torch.no_grad()
def end_epoch(model: nn.Module) -> int:
    """Close the epoch: a block whose moving-average discard flag is 1.0 (the
    official pruning rule) is marked ``dead``; one whose average fell below is live
    again; blocks that saw no training step keep their flag. Returns the number of
    discarded blocks."""
    net = _epsilon_net(model, "end_epoch")
    blocks = _blocks(net)
    for b in blocks:
        b.dead.copy_(torch.where(b.ema_steps > 0, b.discard_ema >= PRUNE_AT, b.dead))
    removed = sum(isinstance(m, DiscardedBlock) for m in net.modules())
    if not blocks:
        return removed
    return removed + int(torch.stack([b.dead for b in blocks]).sum())


def _numel(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def discard_stats(model: nn.Module) -> dict[str, float | int]:
    """Discarded-block count and ratio, and parameter counts before/after
    compression. Both counts exclude the side head: it is used in training only
    and is never part of the deployed (or compressed) network."""
    net = _epsilon_net(model, "discard_stats")
    blocks = _blocks(net)
    dead = [b for b, d in zip(blocks, torch.stack([b.dead for b in blocks]).tolist() if blocks else []) if d]
    removed = sum(isinstance(m, DiscardedBlock) for m in net.modules())
    total = len(blocks) + removed
    params = _numel(net) - (_numel(net.side) if net.side is not None else 0)
    saved = sum(_numel(b) - _numel(b.shortcut) for b in dead)
    return {
        "discarded_blocks": len(dead) + removed,
        "total_blocks": total,
        "discarded_ratio": (len(dead) + removed) / total if total else 0.0,
        "params": params,
        "params_compressed": params - saved,
    }


def compress(model: nn.Module) -> EpsilonResNet:
    """A deep copy with every ``dead`` block replaced by its shortcut alone and
    the side head dropped; it returns plain logits in train and eval mode, and
    its eval outputs equal the original's (dead blocks contribute exactly 0)."""
    net = copy.deepcopy(_epsilon_net(model, "compress"))
    for stage in net.stages:
        for i, blk in enumerate(stage):
            if isinstance(blk, EpsilonBlock) and bool(blk.dead):
                stage[i] = DiscardedBlock(blk.shortcut, relu=not blk.preact)
    net.side = None
    return net


# ---------------------------------------------------------------- the variant

OPTIONS: tuple[Option, ...] = (
    *backbone_options(block="pre", shortcut="avgpool"),
    Option("stem", str, "conv_bn_relu", "pre order: conv_bn_relu (the official stem; the first block skips its "
           "pre-activation) or conv (the shared pre-activation backbone's)", choices=STEMS, target="model"),
    Option("epsilon", float, 2.5, "gate threshold: a block whose |F| < epsilon everywhere passes its shortcut only",
           low=0.0, target="model"),
    Option("side_weight", float, 0.1, "weight of the side-head loss (0: off)", low=0.0, high=10.0, target="model"),
    Option("epsilon_gate", bool, True, "the sparsity gate on (off: the twin, a plain pre-activation ResNet "
           "with the same side head)", target="model"),
    Option("adaptive_lr", bool, True, "restart the lr schedule (half length) when a block is discarded"),
)
METRICS = ("discarded_blocks", "discarded_ratio", "discarded_count", "params", "params_compressed",
           "param_reduction", "lr_restarts")
# The official CIFAR steps, [(0, 0.1), (82, 0.01), (123, 0.001), (300, 0.0002)], as (fraction
# of the schedule's length, lr factor) with 82 = half the 164-epoch recipe. The official run
# is open-ended (MAX_EPOCH 1000, about 6x the recipe): a restart runs the steps at half length
# and training extends until they end, by default up to 6 x epochs.
SCHEDULE = StepSchedule(
    "epsilon", ((0.5, 0.1), (0.75, 0.01), (300 / 164, 0.002)), restart_length=0.5, extends=True, cap=6,
    help="epsilon-ResNet's official steps: /10 at 50% and 75%, /500 at 183%; a restart runs them at half length "
         "and training extends until the restarted schedule ends, up to max_epochs (null: 6 x epochs, the official "
         "open-ended run's MAX_EPOCH of 1000 against 164)")
# The official CIFAR recipe's trainer defaults (docs/methods.md): weight decay 2e-4 on conv
# and linear weights only, the official step schedule with restarts extending training.
TRAIN_DEFAULTS = {"weight_decay": 2e-4, "weight_decay_scope": "conv_fc", "schedule": SCHEDULE.name}


class EpsilonHooks(Hooks):
    """Side loss, discard counting with the adaptive restart, and the compressed net's accuracy."""

    def __init__(self, model, cfg, ctx) -> None:
        super().__init__(model, cfg, ctx)
        self.count_before: float | None = None

    def loss(self, out, y, ce):
        if isinstance(out, tuple):  # training: (logits, side logits)
            logits, side = out
            return ce(logits, y) + self.cfg.side_weight * ce(side, y), logits
        return None

    def end_epoch(self, epoch: int, metrics: dict, info: dict, schedule) -> None:
        end_epoch(self.model)
        count = discarded_count(self.model)
        # The official LearningRateSetter: once per epoch, from the second on, a rise of the
        # moving-average count by >= 1 since the last epoch restarts the schedule next epoch.
        if (self.cfg.adaptive_lr and self.cfg.epsilon_gate and self.count_before is not None
                and count >= self.count_before + 1 and epoch + 1 < self.cfg.epoch_limit()):
            schedule.restart(epoch + 1)
        self.count_before = count
        metrics.update(discard_stats(self.model))
        metrics["discarded_count"] = count
        metrics["lr_restarts"] = schedule.restarts
        metrics["param_reduction"] = 1.0 - metrics["params_compressed"] / max(metrics["params"], 1)
        info["epsilon_dead_blocks"] = {name: bool(m.dead.item()) for name, m in self.model.named_modules()
                                       if isinstance(m, EpsilonBlock)}

    def final(self, metrics: dict, evaluate_test) -> None:
        metrics["compressed_test_acc"] = evaluate_test(compress(self.model))[1]

    def state_dict(self) -> dict:
        return {"count_before": self.count_before}

    def load_state_dict(self, state: dict) -> None:
        c = state.get("count_before")
        self.count_before = None if c is None else float(c)


def _twin(values: dict) -> dict:
    # The same network, side head and recipe with the gate switched off.
    return {**values, "epsilon_gate": False}


OBJECTIVES = ("param_reduction",)  # a search may maximise the compression beside val_acc
# epsilon's trade-off, drawn by the analysis: the discarded share and the parameter
# reduction against epsilon, and accuracy against parameter reduction
TRADEOFF = DeclaredTradeoff(
    variant="epsilon", knob="epsilon", gains=("discarded_ratio", "param_reduction"), size="param_reduction",
    title="epsilon-ResNet trade-offs", what="Compression", figure="epsilon trade-offs", name="epsilon",
    nothing="discarded a block", toward="higher", objectives=OBJECTIVES)


def tradeoff() -> DeclaredTradeoff:
    """epsilon's declared trade-off (the report's section draws it)."""
    return TRADEOFF


def _artifacts(info: dict, result: dict, out):
    from study.artifacts import block_map

    dead = info.get("epsilon_dead_blocks")
    return [] if dead is None else block_map(dead, result, out)


# epsilon is in absolute units of the conv output: where a network's outputs are larger than
# the paper's, nothing is discarded at its values, and the design raises epsilon to find out.
DISCARDS = Exercise("discarded_ratio", "a discarded block", knob="epsilon", toward="high")

VARIANT = Variant(
    name="epsilon",
    build=epsilon_resnet,
    options=OPTIONS,
    description="epsilon-ResNet (Yu et al. 2018): a gate zeroes blocks whose response stays under epsilon",
    hooks=EpsilonHooks,
    twin=_twin,
    metrics=METRICS,
    final_metrics=("compressed_test_acc",),
    objectives=OBJECTIVES,
    tradeoffs=(TRADEOFF,),
    artifacts=_artifacts,
    defaults=TRAIN_DEFAULTS,
    schedules=(SCHEDULE,),
    claims=(
        # judged as the official code does: the compressed network's test accuracy and the
        # discarded ratio, both at the last epoch (the twin's compressed net is the net itself)
        Claim("epsilon_discards", "epsilon-ResNet discards a share of blocks at little accuracy cost (<= 1 point)",
              "noninferior", metric="compressed_test_acc", margin=0.01, gain_metric="discarded_ratio",
              published=True, exercised=DISCARDS),
        Claim("epsilon_restart", "the adaptive restart matters: adaptive_lr on beats off", "level",
              metric="val_acc", option="adaptive_lr", better=True, worse=False,
              exercised=Exercise("lr_restarts", "a learning-rate restart", knob="epsilon", toward="high")),
    ),
    sweeps=(Sweep("epsilon"),),
    # the variant's defaults are the official CIFAR code's (TRAIN_DEFAULTS for its recipe), and
    # so is the trainer's lr 0.1
    published=Published(
        options=("block", "shortcut", "stem", "epsilon", "side_weight", "adaptive_lr", "lr", "weight_decay",
                 "weight_decay_scope"),
        source="Yu et al. 2018 and the official CIFAR code: epsilon 2.5, side loss 0.1, the adaptive restart, "
               "lr 0.1, weight decay 2e-4 on conv and linear weights; pre-activation blocks, the conv-BN-ReLU stem "
               "and average-pool shortcuts"),
)

__all__ = [
    "OPTIONS",
    "EpsilonHooks",
    "EpsilonBlock",
    "EpsilonResNet",
    "DiscardedBlock",
    "epsilon_gate",
    "epsilon_resnet",
    "end_epoch",
    "discarded_count",
    "discard_stats",
    "compress",
]
