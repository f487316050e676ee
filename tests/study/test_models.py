"""The model zoo against docs/methods.md: backbone sizes, quotient rules, epsilon gate,
compression, matched twins, registry errors, and forward shapes under bf16 / channels_last."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from study.models import (
    QUOTIENT_RULES,
    UnknownOptionError,
    compress,
    create_model,
    discard_stats,
    end_epoch,
    list_models,
    quotient_stats,
)
from study.config import TrainConfig
from study.variants import Variant, register_variant
from study.models.epsilon import PRUNE_AT, DiscardedBlock, EpsilonBlock, EpsilonHooks, discarded_count, epsilon_gate
from study.models.quotient import QuotientActivation, _ShiftedSigmoid
from study.models.resnet import BasicBlock, PreActBlock, ShortcutA

torch.set_num_threads(min(2, torch.get_num_threads()))


def nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def logits(out):
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------- backbone


@pytest.mark.parametrize("depth,expected", [(20, 0.27e6), (56, 0.85e6), (110, 1.7e6)])
def test_resnet_parameter_counts_match_he_et_al(depth, expected):
    m = create_model("resnet", depth=depth)
    assert abs(nparams(m) - expected) / expected < 0.02
    assert len(m.layer1) == len(m.layer2) == len(m.layer3) == (depth - 2) // 6
    assert [m.layer1[0].conv1.out_channels, m.layer2[0].conv1.out_channels, m.layer3[0].conv1.out_channels] == [
        16,
        32,
        64,
    ]


def test_width_scales_channels_and_sgs_is_the_resnet():
    m = create_model("resnet", depth=8, width=32)
    assert m.layer3[0].conv2.out_channels == 128 and m.fc.in_features == 128
    r, s = create_model("resnet", depth=8), create_model("sgs", depth=8)
    assert type(r) is type(s)
    assert {k: v.shape for k, v in r.state_dict().items()} == {k: v.shape for k, v in s.state_dict().items()}
    assert isinstance(r.layer1[0], BasicBlock)
    assert isinstance(create_model("resnet", depth=8, block="pre").layer1[0], PreActBlock)
    assert isinstance(r.layer2[0].shortcut, ShortcutA) and nparams(r.layer2[0].shortcut) == 0


def test_option_a_shortcut_subsamples_and_zero_pads():
    sc = ShortcutA(4, 8, 2)
    x = torch.randn(2, 4, 5, 5)
    y = sc(x)
    assert y.shape == (2, 8, 3, 3)
    assert torch.equal(y[:, :4], x[:, :, ::2, ::2]) and not y[:, 4:].any()


def test_init_kaiming_for_resnet_pytorch_default_for_quotient():
    torch.manual_seed(0)
    conv_r = create_model("resnet", depth=8, width=64).layer3[0].conv2.weight
    conv_q = create_model("quotient", depth=8, width=64).layer3[0].conv2.weight
    fan_out = conv_r.shape[0] * 9
    fan_in = conv_q.shape[1] * 9
    assert conv_r.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    assert conv_q.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.05)  # kaiming_uniform(a=sqrt 5)


# ---------------------------------------------------------------- quotient


@pytest.mark.parametrize("shortcut", ["B", "conv3x3"])
@pytest.mark.parametrize("block", ["post", "pre"])
@pytest.mark.parametrize("depth", [8, 20, 56])
def test_quotient_has_exact_parameter_parity_with_resnet(depth, block, shortcut):
    ref = nparams(create_model("resnet", depth=depth, block=block, shortcut=shortcut))
    for rule in QUOTIENT_RULES:
        for stem, sc in [(True, True), (False, False)]:
            q = create_model(
                "quotient",
                depth=depth,
                block=block,
                shortcut=shortcut,
                quotient_rule=rule,
                alpha=1.7,
                quotient_stem=stem,
                quotient_shortcut=sc,
            )
            assert nparams(q) == ref, (rule, stem, sc)


def test_quotient_defaults_and_none_means_default():
    q = create_model("quotient", depth=8, block=None, shortcut=None, alpha=None)
    # alpha None: the paper's per-depth value (2 at <= 20, 1.8 at 44, 1.7 at 56, 1.5 at 110)
    assert q.options["block"] == "post" and q.options["shortcut"] == "conv3x3" and q.options["alpha"] == 2.0
    assert q.options["init"] == "default"
    # listed depths exactly; linear in depth between them (32: halfway from 2 at 20 to 1.8 at 44)
    assert [create_model("quotient", depth=d).options["alpha"] for d in (8, 14, 20, 32, 44, 50, 56, 110, 164)] == [
        2.0, 2.0, 2.0, pytest.approx(1.9), 1.8, pytest.approx(1.75), 1.7, 1.5, 1.5]
    assert [TrainConfig(variant="quotient", depth=d).alpha for d in (20, 56, 110)] == [2.0, 1.7, 1.5]
    assert isinstance(q.layer2[0].shortcut[0], nn.Conv2d) and q.layer2[0].shortcut[0].kernel_size == (3, 3)
    assert isinstance(q.layer2[0].shortcut[-1], QuotientActivation)  # f on the projection
    assert isinstance(q.act1, QuotientActivation)  # f in the stem
    plain = create_model("quotient", depth=8, quotient_stem=False, quotient_shortcut=False)
    assert isinstance(plain.act1, nn.ReLU) and isinstance(plain.layer2[0].shortcut[-1], nn.BatchNorm2d)


def test_quotient_refuses_option_a():
    with pytest.raises(ValueError, match=r"shortcut: 'A' is not allowed; allowed: one of B, conv3x3"):
        create_model("quotient", depth=8, shortcut="A")


def reference_f(rule: str, alpha: float, z: torch.Tensor) -> torch.Tensor:
    z = z.double()
    if rule in ("paper", "exact_one"):
        return alpha * torch.sigmoid(z - math.log(alpha - 1))
    if rule == "unshifted":
        return alpha * torch.sigmoid(z)
    return torch.clamp(z + 1, min=0).clamp(max=alpha)


@pytest.mark.parametrize("alpha", [1.2, 1.7, 2.0, 3.9])
@pytest.mark.parametrize("rule", QUOTIENT_RULES)
def test_quotient_activation_value_at_zero_and_range(rule, alpha):
    f = QuotientActivation(rule, alpha)
    f0 = f(torch.zeros(7))
    expected0 = alpha / 2 if rule == "unshifted" else 1.0
    if rule == "unshifted":
        torch.testing.assert_close(f0, torch.full((7,), expected0))
    else:  # the (0, 1) pass-through, exactly
        assert torch.equal(f0, torch.ones(7))
    z = torch.cat([torch.linspace(-300, 300, 6001), torch.tensor([-1e30, 1e30, -math.inf, math.inf])])
    q = f(z)
    assert not q.isnan().any()
    assert q.min() >= 0 and q.max() <= f.alpha  # alpha is the clamp, for every rule
    assert q.max() == pytest.approx(alpha, rel=1e-6) and q.min() == 0
    assert (q[1:6001] >= q[:6000]).all()  # monotone
    finite = z.abs() < 1e29
    torch.testing.assert_close(q[finite].double(), reference_f(rule, alpha, z[finite]), atol=2e-6, rtol=2e-6)


def test_shifted_sigmoid_gradient():
    alpha = 1.7
    f = QuotientActivation("paper", alpha).double()
    z = torch.randn(40, dtype=torch.double, requires_grad=True) * 4
    assert torch.autograd.gradcheck(lambda t: _ShiftedSigmoid.apply(t, f.alpha_t, f.shift_t, f.alpha), (z,))
    ref = torch.autograd.grad(reference_f("paper", f.alpha, z).sum(), z)[0]
    got = torch.autograd.grad(f(z).sum(), z)[0]
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("rule", QUOTIENT_RULES)
def test_alpha_must_exceed_one(rule):
    for bad in (1.0, 0.9, 0.5, -2.0, math.nan, math.inf, "2"):
        with pytest.raises(ValueError, match=r"alpha(=|: )") as err:
            create_model("quotient", depth=8, quotient_rule=rule, alpha=bad)
        assert repr(bad) in str(err.value)


def block_io(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    seen = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: seen.append((m, i[0].detach().clone(), o.detach().clone())))
        for stage in model.stages
        for b in stage
    ]
    logits(model(x))
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("block", ["post", "pre"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_exact_one_makes_every_identity_block_an_identity(block, mode):
    torch.manual_seed(0)
    m = create_model("quotient", depth=14, block=block, quotient_rule="exact_one", alpha=1.7)
    m.train(mode == "train")
    x = torch.randn(4, 3, 16, 16)
    io = block_io(m, x)
    identity = [(i, o) for b, i, o in io if isinstance(b.shortcut, nn.Identity)]
    assert len(identity) == 4  # 6 blocks, 2 of them downsample
    for i, o in identity:
        assert torch.equal(o, i)
    stats = quotient_stats(m, x)
    for s in (1, 2, 3):
        assert stats[f"q_min_stage{s}"] == 1.0 == stats[f"q_max_stage{s}"]
    # the same net with the paper rule is only around 1: the test can tell them apart
    torch.manual_seed(0)
    p = create_model("quotient", depth=14, block=block, quotient_rule="paper", alpha=1.7).train(mode == "train")
    assert not all(torch.equal(o, i) for b, i, o in block_io(p, x) if isinstance(b.shortcut, nn.Identity))


def test_paper_rule_quotient_is_around_one_at_init():
    torch.manual_seed(0)
    m = create_model("quotient", depth=8, alpha=1.5).train()
    qs = []
    h = m.layer1[0].act.register_forward_hook(lambda mod, i, o: qs.append(o))
    m(torch.randn(8, 3, 16, 16))
    h.remove()
    assert qs[0].median().item() == pytest.approx(1.0, abs=0.05)
    assert 0 < qs[0].min() and qs[0].max() < 1.5


def test_quotient_stats_counts_dead_signal_and_leaves_no_hooks():
    torch.manual_seed(0)
    m = create_model("quotient", depth=8, alpha=2.0).eval()
    with torch.no_grad():
        m.layer1[0].bn2.bias.fill_(-1e4)  # stage-1 quotient underflows to exactly 0
    x = torch.randn(2, 3, 16, 16)
    s = quotient_stats(m, x)
    keys = {f"q_{k}_stage{i}" for k in ("mean", "min", "max") for i in (1, 2, 3)} | {"q_dead_frac", "q_nonpos_frac"}
    assert set(s) == keys and all(isinstance(v, float) for v in s.values())
    n1, n2, n3 = 2 * 16 * 16 * 16, 2 * 32 * 8 * 8, 2 * 64 * 4 * 4
    assert s["q_min_stage1"] == s["q_max_stage1"] == s["q_mean_stage1"] == 0.0
    assert s["q_dead_frac"] == pytest.approx(n1 / (n1 + n2 + n3))
    assert s["q_nonpos_frac"] == pytest.approx(n1 / (n1 + n2 + n3))
    for i in (2, 3):
        assert 0 < s[f"q_min_stage{i}"] <= s[f"q_mean_stage{i}"] <= s[f"q_max_stage{i}"] <= 2.0
    assert not m.training  # mode untouched
    assert all(not b.act._forward_hooks for st in m.stages for b in st)
    with pytest.raises(ValueError, match="quotient"):
        quotient_stats(create_model("resnet", depth=8), x)


# ---------------------------------------------------------------- epsilon


def methods_gate(f: torch.Tensor, eps: float) -> torch.Tensor:
    """The paper literally: four ReLUs over the whole tensor."""
    s = (torch.relu(f - eps) + torch.relu(-f - eps)).max()
    return torch.relu(1 - 1e6 * torch.relu(1 - 1e6 * s))


def test_epsilon_gate_on_crafted_tensors():
    eps = 0.5
    below = torch.full((2, 3, 4, 4), 0.49)
    below[0, 1, 2, 3] = -0.49
    assert epsilon_gate(below, eps).item() == 0.0
    one_above = below.clone()
    one_above[1, 2, 0, 1] = 0.6
    assert epsilon_gate(one_above, eps).item() == 1.0
    one_neg_above = below.clone()
    one_neg_above[0, 0, 3, 3] = -0.6
    assert epsilon_gate(one_neg_above, eps).item() == 1.0
    assert epsilon_gate(torch.zeros(3, 3), 0.0).item() == 0.0
    assert epsilon_gate(torch.full((3,), 1e-3), 0.0).item() == 1.0
    torch.manual_seed(0)
    for eps in (0.0, 0.1, 1.0, 2.5):
        for scale in (0.01, 0.5, 1.0, 3.0):
            f = torch.randn(4, 8, 5, 5) * scale
            assert torch.equal(epsilon_gate(f, eps), methods_gate(f, eps).float())


@pytest.mark.parametrize("block", ["pre", "post"])
def test_epsilon_block_passes_shortcut_or_is_transparent(block):
    torch.manual_seed(0)
    preact = block == "pre"
    blk = EpsilonBlock(8, 8, 1, "A", epsilon=0.0, preact=preact).eval()
    x = torch.randn(2, 8, 6, 6).abs()
    f = blk.residual(x)
    assert f.abs().max() > 0
    expected = x + f if preact else torch.relu(x + f)
    assert torch.equal(blk(x), expected)  # gate 1: out = F + shortcut
    blk.epsilon = f.abs().max().item() * 1.01  # every |F_i| < eps
    assert torch.equal(blk(x), x)  # gate 0: the shortcut exactly
    blk.epsilon = f.abs().max().item() * 0.99  # one element above
    assert torch.equal(blk(x), expected)


def official_ema(flags: list[float]) -> float:
    """tensorpack's moving average of a per-step value: decay min(0.95, (1+t)/(10+t)), from 0."""
    ema = 0.0
    for t, x in enumerate(flags):
        d = min(0.95, (1 + t) / (10 + t))
        ema = d * ema + (1 - d) * x
    return ema


def test_epsilon_discard_moving_average_and_pruning_follow_the_official_rule():
    torch.manual_seed(0)
    m = create_model("epsilon", depth=14, epsilon=1e9).train()  # every gate shut
    blocks = [b for st in m.stages for b in st]
    x = torch.randn(4, 3, 8, 8)
    for _ in range(3):
        m(x)
    m.eval()(x)  # eval forwards are not counted
    ref = official_ema([1.0] * 3)
    for b in blocks:
        assert b.ema_steps.item() == 3 and b.discard_ema.item() == pytest.approx(ref, abs=1e-6)
    sd = m.state_dict()
    assert "layer1.0.discard_ema" in sd and "layer1.0.ema_steps" in sd and "layer1.0.dead" in sd
    # shut on every step so far, but the moving average is not yet 1.0: nothing is pruned
    # (a rule of "shut on every step of the epoch" would prune all six here)
    assert end_epoch(m) == 0 and not any(b.dead.item() for b in blocks)
    assert discarded_count(m) == pytest.approx(6 * ref, abs=1e-5)
    m.train()
    for _ in range(12):
        m(x)
    assert all(b.discard_ema.item() >= PRUNE_AT for b in blocks)
    assert end_epoch(m) == 6 and discarded_count(m) == pytest.approx(6.0, abs=1e-5)
    assert end_epoch(m) == 6  # an epoch without training steps changes nothing
    # one open step pulls a block's average below 1.0: it is live again
    m.layer2[1].epsilon = 0.0
    m(x)
    assert m.layer2[1].discard_ema.item() == pytest.approx(official_ema([1.0] * 15 + [0.0]), abs=1e-6)
    assert end_epoch(m) == 5 and not m.layer2[1].dead.item()
    stats = discard_stats(m)
    assert stats["discarded_blocks"] == 5 and stats["total_blocks"] == 6
    assert stats["discarded_ratio"] == pytest.approx(5 / 6)


class _Sched:
    def __init__(self):
        self.restarts, self.at = 0, []

    def restart(self, epoch):
        self.restarts += 1
        self.at.append(epoch)


def test_epsilon_restart_fires_when_the_moving_average_count_rises_by_one():
    # The official LearningRateSetter watches the sum of the blocks' moving averages (not a
    # count of blocks dead all epoch): a rise of >= 1 from one epoch to the next, from the
    # second epoch on, restarts the schedule at the next epoch.
    cfg = TrainConfig(variant="epsilon", depth=14, epochs=20)
    m = create_model("epsilon", depth=14, **cfg.model_options())
    hooks = EpsilonHooks(m, cfg, None)
    blocks = [b for st in m.stages for b in st]
    sched = _Sched()

    def epoch(e, emas):
        for b, v in zip(blocks, emas):
            b.discard_ema.fill_(v)
            b.ema_steps.fill_(10)
        metrics = {}
        hooks.end_epoch(e, metrics, {}, sched)
        return metrics

    epoch(0, [0.0] * 6)
    epoch(1, [0.25, 0.25, 0.375, 0, 0, 0])  # +0.875: no restart
    assert sched.at == []
    got = epoch(2, [0.75, 0.75, 0.375, 0, 0, 0])  # +1.0 with no block pruned: restart at epoch 3
    assert sched.at == [3] and got["discarded_blocks"] == 0 and got["discarded_count"] == pytest.approx(1.875)
    epoch(3, [0.75, 0.75, 0.875, 0, 0, 0])  # +0.5
    assert sched.at == [3]
    # the first epoch has no previous value to compare with
    fresh = EpsilonHooks(m, cfg, None)
    for b in blocks:
        b.discard_ema.fill_(1.0)
    fresh.end_epoch(0, {}, {}, sched)
    assert sched.at == [3]
    # off with adaptive_lr false or the gate off
    for off in (cfg.replace(adaptive_lr=False), cfg.replace(epsilon_gate=False)):
        h = EpsilonHooks(m, off, None)
        s2 = _Sched()
        for e, v in enumerate((0.0, 1.0)):
            for b in blocks:
                b.discard_ema.fill_(v)
            h.end_epoch(e, {}, {}, s2)
        assert s2.at == []


def test_epsilon_side_head_and_outputs():
    torch.manual_seed(0)
    m = create_model("epsilon", depth=20, side_weight=0.3, num_classes=7).train()
    assert m.side_weight == 0.3 and m.side_index == 1
    x = torch.randn(2, 3, 16, 16)
    out, side = m(x)
    assert out.shape == side.shape == (2, 7)
    nn.functional.cross_entropy(side, torch.tensor([0, 1])).backward()
    # the side loss reaches block n//2 of stage 2 and nothing after it
    assert m.layer2[1].conv2.weight.grad.abs().sum() > 0
    assert m.layer2[2].conv2.weight.grad is None and m.fc.weight.grad is None
    assert isinstance(m.eval()(x), torch.Tensor)
    assert create_model("epsilon", depth=8).side_index == 0


def kill(block: EpsilonBlock) -> None:
    with torch.no_grad():
        block.conv2.weight.zero_() if block.preact else block.bn2.weight.zero_()
        if not block.preact:
            block.bn2.bias.zero_()


@pytest.mark.parametrize("block,shortcut", [("pre", "A"), ("pre", "B"), ("post", "A"), ("post", "conv3x3")])
def test_compress_removes_dead_blocks_and_keeps_eval_outputs(block, shortcut):
    torch.manual_seed(0)
    m = create_model("epsilon", depth=14, block=block, shortcut=shortcut, epsilon=1e-3)
    targets = [m.layer1[1], m.layer2[0], m.layer3[1]]  # layer2[0] downsamples
    for b in targets:
        kill(b)
    x = torch.randn(4, 3, 16, 16)
    m.train()
    for _ in range(12):  # pruned once the moving average of "gate 0" reaches 1.0
        m(x)
    assert end_epoch(m) == 3
    assert [b.dead.item() for st in m.stages for b in st] == [False, True, True, False, False, True]
    stats = discard_stats(m)
    c = compress(m)
    assert isinstance(c.layer2[0], DiscardedBlock) and isinstance(c.layer1[0], EpsilonBlock)
    assert c.side is None and m.side is not None  # a copy; the original is intact
    side_params = nparams(m.side)
    assert stats["params"] == nparams(m) - side_params
    assert stats["params_compressed"] == nparams(c) < stats["params"]
    if shortcut != "A":
        assert nparams(c.layer2[0]) == nparams(m.layer2[0].shortcut) > 0  # the projection stays
    m.eval(), c.eval()
    with torch.no_grad():
        x2 = torch.randn(5, 3, 16, 16)
        # exact for what it removes: the dead blocks' gates are 0 on this batch
        assert torch.equal(c(x2), m(x2))
        # eval runs the training gate graph (nothing is forced): a dead block whose
        # response grows past epsilon reopens in the uncompressed net, and the two
        # accuracies then differ -- a finding the trainer reports side by side
        m.layer1[1].conv2.weight.add_(1.0)
        m.layer1[1].bn2.bias.add_(1.0)
        assert not torch.equal(c(x2), m(x2))
    c.train()
    assert isinstance(c(x2), torch.Tensor)


@pytest.mark.parametrize("preact", [True, False])
def test_epsilon_eval_gate_matches_training_gate_and_depends_on_batch(preact):
    # Eval computes the gate training computes: one scalar from the max |F| over the
    # whole batch, so a block can be open for a batch and shut for part of it. BN is
    # the one other thing that differs between the modes (batch vs running statistics);
    # without it a block must give bit-identical outputs in train and eval mode.
    torch.manual_seed(0)
    blk = EpsilonBlock(4, 4, 1, "A", epsilon=0.0, preact=preact)
    blk.bn1, blk.bn2 = nn.Identity(), nn.Identity()
    x = torch.randn(6, 4, 5, 5)
    with torch.no_grad():
        per_image = blk.residual(x).abs().amax(dim=(1, 2, 3))
    mid = float((per_image.min() + per_image.max()) / 2)
    quiet = x[per_image < mid]
    assert 0 < len(quiet) < len(x)

    def shortcut_only(batch):  # what a shut block gives: its input (post order: after the closing ReLU)
        return batch if preact else torch.relu(batch)

    cases = {"every image under epsilon": (x, float(per_image.max()) * 1.01, "shut"),
             "epsilon 0": (x, 0.0, "open"),
             "a batch with quiet and loud images": (x, mid, "open"),
             "the quiet images alone": (quiet, mid, "shut")}
    with torch.no_grad():
        for name, (batch, eps, gate) in cases.items():
            blk.epsilon = eps
            trained, evaluated = blk.train()(batch), blk.eval()(batch)
            assert torch.equal(trained, evaluated), f"{name}: eval differs from training"
            assert torch.equal(evaluated, shortcut_only(batch)) == (gate == "shut"), name
        # the gate is the batch's: the quiet images pass their residual inside the loud batch
        blk.epsilon = mid
        assert not torch.equal(blk(x)[per_image < mid], shortcut_only(quiet))


def test_compress_and_counting_refuse_other_variants():
    for fn in (compress, end_epoch, discard_stats):
        with pytest.raises(TypeError, match="epsilon"):
            fn(create_model("resnet", depth=8))


# ---------------------------------------------------------------- registry and options


def test_registry_lists_variants_and_rejects_unknown():
    assert set(list_models()) >= {"resnet", "sgs", "quotient", "epsilon"}
    with pytest.raises(ValueError, match=r"'resnext'.*resnet, quotient, epsilon, sgs"):
        create_model("resnext")
    with pytest.raises(ValueError, match="already registered"):
        register_variant(Variant("resnet", build=lambda depth, num_classes, in_channels: nn.Identity(), options=()))


# ---------------------------------------------------------------- matched twins


@pytest.mark.parametrize("depth", [8, 20, 56])
@pytest.mark.parametrize("block", ["post", "pre"])
def test_quotient_twin_is_the_authors_resnet_with_equal_parameters(depth, block):
    q = TrainConfig(variant="quotient", depth=depth, block=block, quotient_rule="exact_one", lr=0.05, seed=3)
    t = q.twin()
    assert t.variant == "resnet" and t.shortcut == "conv3x3" and t.init == "default" and t.block == block
    assert (t.lr, t.seed, t.depth, t.width) == (0.05, 3, depth, 16)  # same recipe and seed
    assert not hasattr(t, "alpha")
    qm = create_model("quotient", depth=depth, **q.model_options())
    tm = create_model("resnet", depth=depth, **t.model_options())
    assert nparams(qm) == nparams(tm)
    # same init: PyTorch's default (kaiming_uniform a=sqrt 5), not He-normal
    fan_in = tm.layer3[0].conv2.weight.shape[1] * 9
    assert tm.layer3[0].conv2.weight.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.1)


def test_epsilon_twin_is_the_same_net_with_the_gate_off():
    e = TrainConfig(variant="epsilon", depth=14, epsilon=1e9, lr=0.07)
    t = e.twin()
    assert t.variant == "epsilon" and t.epsilon_gate is False and t.lr == 0.07 and t.block == "pre"
    torch.manual_seed(0)
    em = create_model("epsilon", depth=14, **e.model_options())
    torch.manual_seed(0)
    tm = create_model("epsilon", depth=14, **t.model_options())
    assert nparams(em) == nparams(tm)
    x = torch.randn(3, 3, 8, 8)
    em.eval(), tm.eval()
    # gate off: every block adds its residual; epsilon 1e9 on: every block passes its shortcut
    assert not torch.equal(em(x), tm(x))
    for b in tm.modules():
        if isinstance(b, EpsilonBlock):
            b.gate = True
            b.epsilon = 0.0  # open gate: the same function as gate off
    tm2 = create_model("epsilon", depth=14, **t.model_options())
    tm2.load_state_dict(tm.state_dict())
    tm2.eval()
    assert torch.equal(tm(x), tm2(x))


def test_sgs_twin_is_the_resnet_with_scaling_off_and_resnet_has_none():
    s = TrainConfig(variant="sgs", depth=8, sgs_mode="mi", sgs_k=2.0)
    t = s.twin()
    assert t.variant == "resnet" and t.sgs_mode == "off"
    assert {k: v for k, v in s.model_options().items()} == t.model_options()
    assert TrainConfig(variant="resnet").twin() is None


def test_unknown_option_lists_allowed_options():
    with pytest.raises(UnknownOptionError, match=r"\['alpha'\].*'resnet'.*\['block', 'shortcut', 'width', 'init'\]"):
        create_model("resnet", depth=8, alpha=2.0)
    with pytest.raises(TypeError, match="epsilon.*side_weight"):
        create_model("epsilon", depth=8, quotient_rule="paper")
    with pytest.raises(ValueError, match="quotient_rule"):
        create_model("quotient", depth=8, epsilon=1.0)


@pytest.mark.parametrize(
    "variant,option,value",
    [
        ("resnet", "block", "middle"),
        ("resnet", "shortcut", "C"),
        ("sgs", "shortcut", "a"),
        ("resnet", "width", 0),
        ("resnet", "width", 16.5),
        ("quotient", "quotient_rule", "exact"),
        ("quotient", "alpha", 1.0),
        ("quotient", "quotient_stem", "false"),
        ("quotient", "quotient_shortcut", 1),
        ("epsilon", "epsilon", -0.1),
        ("epsilon", "epsilon", math.nan),
        ("epsilon", "side_weight", -1.0),
        ("epsilon", "block", 3),
    ],
)
def test_invalid_option_values_name_option_and_value(variant, option, value):
    with pytest.raises(ValueError) as err:
        create_model(variant, depth=8, **{option: value})
    msg = str(err.value)
    assert f"{option}: {value!r} is not allowed; allowed: " in msg


@pytest.mark.parametrize("depth", [7, 9, 21, 0, -4, 20.0, "20", True])
def test_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError, match=rf"depth: {depth!r} is not allowed.*6n\+2"):
        create_model("resnet", depth=depth)


def test_bad_classes_and_channels_and_numpy_values():
    with pytest.raises(ValueError, match="num_classes: 0 is not allowed"):
        create_model("resnet", depth=8, num_classes=0)
    with pytest.raises(ValueError, match="in_channels: -1 is not allowed"):
        create_model("epsilon", depth=8, in_channels=-1)
    m = create_model(
        "quotient", depth=np.int64(8), alpha=np.float32(1.5), quotient_stem=np.bool_(False), width=np.int64(8)
    )
    assert m(torch.randn(1, 3, 8, 8)).shape == (1, 10)


# ---------------------------------------------------------------- shapes, bf16, channels_last

COMBOS = [
    (v, b, s)
    for v in ("resnet", "sgs", "quotient", "epsilon")
    for b in ("post", "pre")
    for s in ("A", "B", "conv3x3")
    if not (v == "quotient" and s == "A")
]


@pytest.mark.parametrize("variant,block,shortcut", COMBOS)
def test_forward_shapes_any_size_and_channels(variant, block, shortcut):
    torch.manual_seed(0)
    m = create_model(variant, depth=8, num_classes=5, in_channels=1, block=block, shortcut=shortcut)
    for size in (8, 16, 32, 15):
        x = torch.randn(2, 1, size, size)
        m.train()
        out = m(x)
        assert isinstance(out, tuple) == (variant == "epsilon")
        assert logits(out).shape == (2, 5)
        m.eval()
        assert m(x).shape == (2, 5) and torch.isfinite(m(x)).all()


@pytest.mark.parametrize("variant,block,shortcut", COMBOS)
def test_bf16_autocast_and_channels_last(variant, block, shortcut):
    torch.manual_seed(0)
    m = create_model(variant, depth=8, block=block, shortcut=shortcut).to(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 16, 16).to(memory_format=torch.channels_last)
    ref = m.eval()(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x)
        m.train()
        out = m(x)
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(nn.functional.cross_entropy(o.float(), torch.tensor([0, 1, 2])) for o in outs)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    # measured worst gap over these combos: 0.0092 (quotient; logits up to 1.3): a 2x margin
    torch.testing.assert_close(low.float(), ref, atol=0.02, rtol=0.0)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert m.conv1.weight.grad is not None


# ---------------------------------------------------------------- epsilon's official backbone


def test_epsilon_default_is_the_official_cifar_backbone():
    torch.manual_seed(0)
    m = create_model("epsilon", depth=14).eval()
    assert m.options["shortcut"] == "avgpool" and m.options["stem"] == "conv_bn_relu" and m.options["block"] == "pre"
    # stem conv-BN-ReLU
    assert isinstance(m.bn1, nn.BatchNorm2d) and isinstance(m.act1, nn.ReLU)
    first, second = m.layer1[0], m.layer1[1]
    # the first block skips its pre-activation (its input is the stem's BN-ReLU output)
    assert first.first and isinstance(first.bn1, nn.Identity) and not second.first
    x = torch.randn(2, 16, 8, 8)
    expected = first.conv2(first.relu(first.bn2(first.conv1(x))))
    assert torch.equal(first.residual(x), expected)
    # downsampling shortcut: 2x2 average pool, then zero-padded channels; no parameters
    down = m.layer2[0].shortcut
    y = torch.randn(2, 16, 8, 8)
    out = down(y)
    assert out.shape == (2, 32, 4, 4) and nparams(down) == 0
    assert torch.allclose(out[:, :16], nn.functional.avg_pool2d(y, 2))
    assert torch.equal(out[:, 16:], torch.zeros(2, 16, 4, 4))
    # the shared pre-activation backbone stays available: conv stem, option-A shortcut
    shared = create_model("epsilon", depth=14, stem="conv", shortcut="A")
    assert isinstance(shared.bn1, nn.Identity) and not shared.layer1[0].first
    assert isinstance(shared.layer1[0].bn1, nn.BatchNorm2d)
    # the official stem adds the stem BN and drops the first block's BN: same count
    assert nparams(shared) == nparams(m)
    with pytest.raises(ValueError, match=r"stem: 'conv' is not allowed with block 'post'"):
        create_model("epsilon", depth=8, block="post", stem="conv")
    # the twin is the same network with the gate off
    t = TrainConfig(variant="epsilon", depth=14).twin()
    tm = create_model("epsilon", depth=14, **t.model_options())
    assert tm.options["shortcut"] == "avgpool" and tm.options["stem"] == "conv_bn_relu" and tm.layer1[0].first
