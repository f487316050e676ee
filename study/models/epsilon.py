"""epsilon-ResNet (Yu et al. 2018; METHODS 2): a block whose residual is below
epsilon everywhere passes only its shortcut; blocks that stay that way are
counted as discarded and can be cut out of the network (``compress``)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .resnet import (
    CifarResNet,
    check_float,
    conv3x3,
    kaiming_init,
    make_shortcut,
    register_model,
    resolve_block_shortcut,
)

L = 1e6  # METHODS 2: the gate's slope; 1 if s > ~1e-6 else 0


def epsilon_gate(residual: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The block's 0-dim float32 gate S: 0 if every |F_i| < epsilon, else 1.

    METHODS' four-ReLU form: s = max(relu(F - eps) + relu(-F - eps)),
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

    Buffers (checkpointed with the model): ``gate_steps`` and ``gate_zero_steps``
    count this epoch's training forwards and those with gate 0, accumulated on
    device (no host sync per step); ``dead`` is set by ``end_epoch``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str, epsilon: float, preact: bool = True):
        super().__init__()
        self.preact, self.epsilon = preact, epsilon
        self.bn1 = nn.BatchNorm2d(in_planes if preact else planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(shortcut, in_planes, planes, stride)
        self.register_buffer("gate_zero_steps", torch.zeros(()))
        self.register_buffer("gate_steps", torch.zeros(()))
        self.register_buffer("dead", torch.zeros((), dtype=torch.bool))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            return self.conv2(self.relu(self.bn2(self.conv1(self.relu(self.bn1(x))))))
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.residual(x)
        gate = epsilon_gate(f, self.epsilon)
        if self.training:
            with torch.no_grad():
                self.gate_steps.add_(1.0)
                self.gate_zero_steps.add_(gate == 0)
        else:
            # A discarded block contributes nothing in eval, exactly as its
            # compressed stand-in (shortcut only). Without this, BN running
            # statistics could reopen the gate of a block that was shut on
            # every training step, and compress() would change eval outputs.
            gate = gate.masked_fill(self.dead, 0.0)
        out = self.shortcut(x) + gate * f
        return out if self.preact else self.relu(out)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon:g}"


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
        c = self.layer2[0].conv2.out_channels
        self.side: nn.Module | None = nn.Sequential(
            nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, self.fc.out_features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.layer1(self.stem(x))
        if not (self.training and self.side is not None):
            return self.head(self.layer3(self.layer2(x)))
        side = None
        for i, blk in enumerate(self.layer2):
            x = blk(x)
            if i == self.side_index:
                side = self.side(x)
        return self.head(self.layer3(x)), side


@register_model("epsilon")
def epsilon_resnet(
    depth: int = 20,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    block: str | None = "pre",
    shortcut: str | None = "A",
    width: int = 16,
    epsilon: float = 2.5,
    side_weight: float = 0.1,
) -> EpsilonResNet:
    block, shortcut = resolve_block_shortcut(block, shortcut, ("pre", "A"))
    epsilon = check_float("epsilon", epsilon, 0.0)
    side_weight = check_float("side_weight", side_weight, 0.0)
    preact = block == "pre"

    def make_block(i: int, o: int, s: int) -> nn.Module:
        return EpsilonBlock(i, o, s, shortcut, epsilon, preact)

    model = EpsilonResNet(
        make_block, depth, num_classes, in_channels, width, preact=preact, side_weight=side_weight, epsilon=epsilon
    )
    kaiming_init(model)
    model.options = {
        "block": block,
        "shortcut": shortcut,
        "width": width,
        "epsilon": epsilon,
        "side_weight": side_weight,
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
def end_epoch(model: nn.Module) -> int:
    """Close the epoch: a block whose gate was 0 on every training forward of the
    epoch is marked ``dead`` (one that reopened is live again; blocks that saw no
    training step keep their flag); reset the epoch counters. Returns the number
    of discarded blocks."""
    net = _epsilon_net(model, "end_epoch")
    blocks = _blocks(net)
    for b in blocks:
        shut = b.gate_zero_steps == b.gate_steps
        b.dead.copy_(torch.where(b.gate_steps > 0, shut, b.dead))
        b.gate_steps.zero_()
        b.gate_zero_steps.zero_()
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


__all__ = [
    "EpsilonBlock",
    "EpsilonResNet",
    "DiscardedBlock",
    "epsilon_gate",
    "epsilon_resnet",
    "end_epoch",
    "discard_stats",
    "compress",
]
