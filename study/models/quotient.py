"""Quotient networks (Hui et al. 2024; docs/methods.md): a block learns the ratio
``y = x * q(x)`` with a bounded positive quotient ``q`` instead of ``y = x + F(x)``."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from study.options import Option
from study.variants import Claim, Hooks, LevelRate, Published, Reported, Sweep, Variant

from .resnet import VARIANT as RESNET
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

QUOTIENT_RULES = ("paper", "exact_one", "unshifted", "linear_clip")
SIGMOID_RULES = ("paper", "exact_one", "unshifted")


class _ShiftedSigmoid(torch.autograd.Function):
    """alpha * sigmoid(z - ln(alpha - 1)), written as alpha / (1 + (alpha-1) / e^z).

    The two are equal; this form gives f(0) == 1 *exactly* in float32 (e^0 = 1,
    (alpha-1)/1 + 1 == alpha, alpha/alpha == 1), which the `exact_one` rule
    needs, while alpha * sigmoid(-ln(alpha-1)) is only 1 to within rounding.
    It saturates cleanly (e^z = inf -> alpha, e^z = 0 -> 0), so q stays in
    [0, alpha] without a clamp. Backward uses only q: f' = q (1 - q/alpha),
    which saves memory and kernels against autograd through exp and two divs.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha_t: torch.Tensor, shift_t: torch.Tensor, alpha: float):
        den = torch.div(shift_t, torch.exp(z)).add_(1.0)
        q = torch.div(alpha_t, den)
        ctx.save_for_backward(q)
        ctx.alpha = alpha
        return q

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (q,) = ctx.saved_tensors
        return grad * torch.addcmul(q, q, q, value=-1.0 / ctx.alpha), None, None, None


class QuotientActivation(nn.Module):
    """The quotient activation f of docs/methods.md; every rule's output lies in [0, alpha].

    paper / exact_one: alpha * sigmoid(z - ln(alpha-1)), f(0) = 1
    unshifted:         alpha * sigmoid(z),               f(0) = alpha/2
    linear_clip:       min(max(0, z + 1), alpha),        f(0) = 1
    (exact_one differs from paper only in the BN2 init, set by the network.)
    """

    def __init__(self, rule: str = "paper", alpha: float = 2.0):
        super().__init__()
        self.rule = check_choice("quotient_rule", rule, QUOTIENT_RULES)
        alpha = check_alpha(rule, alpha)
        # float32-representable alpha, so alpha - 1 and 1 + (alpha - 1) are exact
        self.alpha = float(torch.tensor(alpha, dtype=torch.float32))
        if rule in ("paper", "exact_one"):
            # non-persistent: constants, not state; 0-dim so they follow .to(device)
            # and never promote a bf16 activation to float32
            self.register_buffer("alpha_t", torch.tensor(self.alpha), persistent=False)
            self.register_buffer("shift_t", torch.tensor(self.alpha - 1.0), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.rule == "unshifted":
            return torch.sigmoid(z) * self.alpha
        if self.rule == "linear_clip":
            return torch.clamp(z + 1.0, 0.0, self.alpha)
        return _ShiftedSigmoid.apply(z, self.alpha_t, self.shift_t, self.alpha)

    def extra_repr(self) -> str:
        return f"rule={self.rule}, alpha={self.alpha:g}"


def check_alpha(rule: str, alpha: float) -> float:
    # sigmoid rules: ln(alpha - 1) needs alpha > 1. linear_clip: f(0) = min(1, alpha)
    # must be 1 (the "passes through (0, 1)" design rule), so alpha >= 1 would do;
    # one bound for every rule keeps a searched alpha valid whichever rule is drawn.
    return check_float("alpha", alpha, 1.0, strict=True)


class QuotientBlock(nn.Module):
    """Post order: q = f(BN2(conv2(relu(BN1(conv1 x))))).
    Pre order:  q = f(conv2(relu(BN2(conv1(relu(BN1 x)))))).
    Identity block: y = x * q; downsampling: y = f(BN_s(conv_s x)) * q (f optional).
    No ReLU after the product: q > 0 keeps features positive."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int,
        shortcut: str,
        rule: str,
        alpha: float,
        preact: bool = False,
        quotient_shortcut: bool = True,
    ):
        super().__init__()
        self.preact = preact
        self.bn1 = nn.BatchNorm2d(in_planes if preact else planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.act = QuotientActivation(rule, alpha)  # q; quotient_stats hooks this module
        self.shortcut = make_shortcut(shortcut, in_planes, planes, stride)
        if quotient_shortcut and isinstance(self.shortcut, nn.Sequential):
            self.shortcut.append(QuotientActivation(rule, alpha))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            z = self.conv2(self.relu(self.bn2(self.conv1(self.relu(self.bn1(x))))))
        else:
            z = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.shortcut(x) * self.act(z)


# The paper's alpha per depth: 1.8/1.7/1.5 at 44/56/110 (its results table setting) and
# 2 for 20-layer nets (the appendix's best range, (0, 2)). Between listed depths
# alpha is interpolated linearly in depth; outside them the nearest end holds.
PAPER_ALPHA = {20: 2.0, 44: 1.8, 56: 1.7, 110: 1.5}


def paper_alpha(depth: int) -> float:
    depths = sorted(PAPER_ALPHA)
    if depth <= depths[0]:
        return PAPER_ALPHA[depths[0]]
    for lo, hi in zip(depths, depths[1:]):
        if depth <= hi:
            t = (depth - lo) / (hi - lo)
            return round(PAPER_ALPHA[lo] + t * (PAPER_ALPHA[hi] - PAPER_ALPHA[lo]), 6)
    return PAPER_ALPHA[depths[-1]]


# unshifted(z) = paper(z + ln(alpha - 1)): below a shift of 0.1 in z the two rules are
# the same network for any practical purpose, so a rule comparison there says nothing.
MIN_RULE_SHIFT = 0.1
RULES_DIFFER_TEXT = "|ln(alpha - 1)| >= 0.1 (alpha outside 1.905-2.105: near alpha 2 unshifted is the paper rule)"


def rules_differ(alpha: Any) -> bool:
    """Whether `unshifted` and `paper` are different networks at this alpha."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        return False
    return a > 1.0 and abs(math.log(a - 1.0)) >= MIN_RULE_SHIFT


def quotient(
    depth: int = 20,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    block: str = "post",
    shortcut: str = "conv3x3",
    width: int = 16,
    init: str = "default",
    quotient_rule: str = "paper",
    alpha: float | None = None,
    quotient_stem: bool = True,
    quotient_shortcut: bool = True,
) -> CifarResNet:
    """Quotient network; same parameter count as ``resnet`` with the same block/shortcut/init.
    PyTorch default init (the authors' code); `exact_one` zeroes BN2 so every q starts at 1.
    alpha None: the paper's value for this depth."""
    alpha = paper_alpha(depth) if alpha is None else alpha
    block, shortcut = resolve_block_shortcut(block, shortcut, ("post", "conv3x3"))
    if shortcut == "A":
        raise ValueError(
            "shortcut='A' is not allowed for quotient networks: its zero-padded channels "
            "stay zero through every later product; allowed values: ['B', 'conv3x3'] (the paper's)"
        )
    rule = check_choice("quotient_rule", quotient_rule, QUOTIENT_RULES)
    alpha = check_alpha(rule, alpha)
    quotient_stem = check_bool("quotient_stem", quotient_stem)
    quotient_shortcut = check_bool("quotient_shortcut", quotient_shortcut)
    preact = block == "pre"

    def make_block(i: int, o: int, s: int) -> nn.Module:
        return QuotientBlock(i, o, s, shortcut, rule, alpha, preact, quotient_shortcut)

    # The stem's f makes every feature strictly positive from the first layer on.
    # Pre order has no stem BN (as in the pre-activation ResNet, for parameter parity).
    stem_act = QuotientActivation(rule, alpha) if quotient_stem else nn.ReLU(inplace=True)
    model = CifarResNet(make_block, depth, num_classes, in_channels, width, preact=preact, stem_act=stem_act)
    if check_choice("init", init, ("kaiming", "default")) == "kaiming":
        kaiming_init(model)
    if rule == "exact_one":
        for m in model.modules():
            if isinstance(m, QuotientBlock):
                nn.init.zeros_(m.bn2.weight)
                nn.init.zeros_(m.bn2.bias)
    model.options = {
        "block": block,
        "shortcut": shortcut,
        "width": width,
        "init": init,
        "quotient_rule": rule,
        "alpha": alpha,
        "quotient_stem": quotient_stem,
        "quotient_shortcut": quotient_shortcut,
    }
    return model


@torch.no_grad()
def quotient_stats(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """One forward of ``x`` (in the model's current mode) recording every block's q.

    Returns q_mean/q_min/q_max per stage (``_stage1..3``), ``q_dead_frac``
    (fraction of q elements < 1e-3, all blocks) and ``q_nonpos_frac`` (<= 0).
    Hooks live only for this call, so the training forward pays nothing.
    """
    model_ = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    model_ = getattr(model_, "module", model_)  # DistributedDataParallel
    stages = getattr(model_, "stages", None)
    blocks = [[b for b in stage if isinstance(b, QuotientBlock)] for stage in (stages or [])]
    if not any(blocks):
        raise ValueError(f"quotient_stats needs a quotient network; got {type(model_).__name__}")
    records: list[list[torch.Tensor]] = [[] for _ in blocks]
    counts = [0 for _ in blocks]

    def hook_for(stage: int):
        def hook(module: nn.Module, inputs, q: torch.Tensor) -> None:
            q = q.float()
            stats = [q.sum(), q.amin(), q.amax(), (q < 1e-3).sum(), (q <= 0).sum()]
            records[stage].append(torch.stack([t.double() for t in stats]))
            counts[stage] += q.numel()

        return hook

    handles = [b.act.register_forward_hook(hook_for(i)) for i, stage in enumerate(blocks) for b in stage]
    try:
        model_(x)  # eager: hooks on a compiled module may not fire
    finally:
        for h in handles:
            h.remove()
    out: dict[str, float] = {}
    dead = nonpos = total = 0.0
    per_stage = [torch.stack(r).cpu() for r in records]  # few host syncs, once per call
    for i, (r, n) in enumerate(zip(per_stage, counts), start=1):
        out[f"q_mean_stage{i}"] = float(r[:, 0].sum() / n)
        out[f"q_min_stage{i}"] = float(r[:, 1].min())
        out[f"q_max_stage{i}"] = float(r[:, 2].max())
        dead += float(r[:, 3].sum())
        nonpos += float(r[:, 4].sum())
        total += n
    out["q_dead_frac"] = dead / total
    out["q_nonpos_frac"] = nonpos / total
    return out


# ---------------------------------------------------------------- the variant

OPTIONS: tuple[Option, ...] = (
    *backbone_options(shortcut="conv3x3", init="default", shortcuts=("B", "conv3x3")),
    Option("quotient_rule", str, "paper", "quotient activation/init rule: paper, exact_one (q = 1 at init), "
           "unshifted (the ablation breaking f(0) = 1), linear_clip", choices=QUOTIENT_RULES, target="model"),
    # > 1 for every rule: the shifted sigmoid takes ln(alpha - 1)
    Option("alpha", float, None, "upper bound of the quotient (null: the paper's per-depth value, "
           "2 at depth <= 20, 1.8/1.7/1.5 at 44/56/110, linear in depth between)", low=1.0, low_open=True,
           high=100.0, nullable=True, target="model"),
    Option("quotient_stem", bool, True, "quotient activation in the stem (else ReLU)", target="model"),
    Option("quotient_shortcut", bool, True, "quotient activation on projection shortcuts", target="model"),
)
METRICS = (*(f"q_{s}_stage{i}" for s in ("mean", "min", "max") for i in (1, 2, 3)), "q_dead_frac", "q_nonpos_frac")


def _resolve(values: dict, depth: int) -> dict:
    if values["alpha"] is None:
        values = {**values, "alpha": paper_alpha(depth)}
    check_alpha(values["quotient_rule"], values["alpha"])  # alpha > 1 for the sigmoid rules
    return values


def _twin(values: dict) -> dict:
    # The authors' baseline: the same ResNet (block order, projection shortcut,
    # width, init) with additive blocks and ReLUs; equal parameter count.
    drop = {o.name for o in OPTIONS} - {"block", "shortcut", "width", "init"}
    return {**{k: v for k, v in values.items() if k not in drop}, "variant": RESNET.name}


class QuotientHooks(Hooks):
    def after_eval(self, epoch: int, metrics: dict, info: dict) -> None:
        was = self.model.training
        self.model.eval()
        metrics.update(quotient_stats(self.model, self.ctx.first_val_batch()))
        self.model.train(was)


def _artifacts(info: dict, result: dict, out):
    import json

    quotient = {k: result[k] for k in METRICS if k in result}
    if not quotient:
        return []
    path = out / "quotient_stats.json"
    path.write_text(json.dumps(quotient, indent=2))
    return [path]


# Hui et al. 2024, the CIFAR/SVHN results table, as the official README gives it (test
# accuracy, quotient / ResNet, mean of runs; docs/methods.md):
# the quotient net's gain over its twin per dataset and depth.
_TABLE1 = {("cifar10", 44): (92.78, 92.61), ("cifar10", 56): (93.10, 92.84), ("cifar10", 110): (93.44, 93.02),
           ("cifar100", 44): (73.25, 72.66), ("cifar100", 56): (73.53, 73.07), ("cifar100", 110): (73.00, 72.34),
           ("svhn", 44): (96.17, 95.98), ("svhn", 56): (96.20, 95.96), ("svhn", 110): (96.12, 96.03)}
_SOURCE = "Hui et al. 2024, results table (official README)"
REPORTED_VS_TWIN = tuple(Reported(round((q - r) / 100, 6), dataset, depth, _SOURCE, f"{q:.2f} vs {r:.2f}")
                         for (dataset, depth), (q, r) in _TABLE1.items())

VARIANT = Variant(
    name="quotient",
    build=quotient,
    options=OPTIONS,
    description="quotient network (Hui et al. 2024): y = x * q(x), q bounded and positive",
    hooks=QuotientHooks,
    resolve=_resolve,
    twin=_twin,
    metrics=METRICS,
    artifacts=_artifacts,
    # the block's output signal is essentially gone where most of q is below 1e-3
    level_rates=(LevelRate("dead_rate", "q_dead_frac", 0.5, "dead-signal rate", "lost its signal",
                           "share of trials whose final share of quotient elements < 1e-3 exceeds 0.5"),),
    claims=(
        Claim("quotient_vs_twin", "the quotient net beats its ResNet twin at equal parameters", "twin",
              published=True, reported=REPORTED_VS_TWIN),
        Claim("quotient_rule", "the quotient rules matter: paper beats unshifted", "level",
              metric="val_acc", option="quotient_rule", better="paper", worse="unshifted",
              where=lambda v: rules_differ(v.get("alpha")), where_text=RULES_DIFFER_TEXT),
    ),
    sweeps=(Sweep("alpha"), Sweep("quotient_rule")),
    # the variant's defaults are the paper's (alpha per depth through _resolve), and so is the
    # trainer's lr 0.1
    published=Published(
        options=("block", "shortcut", "init", "quotient_rule", "alpha", "quotient_stem", "quotient_shortcut", "lr",
                 "weight_decay"),
        source="Hui et al. 2024: the alpha per depth of its results table (2 at depth <= 20 from the appendix), "
               "the paper rule "
               "with f in the stem and the projection shortcuts, lr 0.1 and weight decay 1e-4; the authors' code's "
               "post-order blocks, conv3x3 shortcuts and PyTorch's default init"),
)

__all__ = ["QUOTIENT_RULES", "QuotientActivation", "QuotientBlock", "quotient", "quotient_stats"]
