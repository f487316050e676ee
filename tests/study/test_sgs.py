"""Spatial gradient scaling (docs/methods.md)."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study.sgs import (
    BRANCH_SETS,
    SpatialGradScaling,
    apply_scaling,
    branch_masks,
    branch_scaling,
    branch_scalings,
    eligible_convs,
    mi_scalings,
    scaling_schedule_due,
)

# ---------------------------------------------------------------------------
# branch scalings


def test_branch_scaling_methods_examples():
    s = branch_scaling("3x3+3x1+1x1", normalize=False)
    assert torch.equal(s, torch.tensor([[1.0, 2, 1], [1, 3, 1], [1, 2, 1]]))
    s = branch_scaling("3x3+1x1", normalize=False)
    expect = torch.ones(3, 3)
    expect[1, 1] = 2
    assert torch.equal(s, expect)
    assert torch.equal(branch_scaling("3x3"), torch.ones(3, 3))
    acb = branch_scaling("acb", normalize=False)
    assert torch.equal(acb, torch.tensor([[1.0, 2, 1], [2, 3, 2], [1, 2, 1]]))
    for name in BRANCH_SETS:
        for ks in (3, 5, (3, 5)):
            s = branch_scaling(name, ks)
            assert abs(float(s.mean()) - 1) < 1e-6
            assert s.dtype == torch.float32
    # normalised is the unnormalised divided by its mean
    raw = branch_scaling("3x3+1x3+3x1+1x1", normalize=False)
    assert torch.allclose(branch_scaling("3x3+1x3+3x1+1x1"), raw / raw.mean())


def test_branch_scaling_weights_and_masks():
    masks = branch_masks("3x3+3x1+1x1")
    s = branch_scaling(masks, weights=[1.0, 2.0, 0.5], normalize=False)
    expect = masks[0] + 4 * masks[1] + 0.25 * masks[2]
    assert torch.allclose(s, expect)
    assert s[1, 1] == pytest.approx(5.25)
    # a 5x5 kernel: "3x1" is the full centre column
    m5 = branch_masks("3x3+3x1+1x1", 5)
    assert m5[1][:, 2].sum() == 5 and m5[1].sum() == 5 and m5[2][2, 2] == 1 and m5[2].sum() == 1


def test_branch_scaling_errors():
    with pytest.raises(ValueError, match="known branch sets.*3x3\\+1x1"):
        branch_scaling("5x5+1x1")
    with pytest.raises(ValueError, match=r"shape \(2, 2\).*\(3, 3\)"):
        branch_scaling([torch.ones(3, 3), torch.ones(2, 2)])
    with pytest.raises(ValueError, match="weights has 1 entries"):
        branch_scaling("3x3+1x1", weights=[1.0])
    with pytest.raises(ValueError, match="odd kernel"):
        branch_masks("3x3+1x1", 4)


# ---------------------------------------------------------------------------
# the lemma: parallel linear branches == single kernel with grad *= S


class BranchConv(nn.Module):
    """A 3x3 conv made of parallel branches, each its own (masked) parameter."""

    def __init__(self, weight: torch.Tensor, masks, multipliers):
        super().__init__()
        self.register_buffer("masks", torch.stack(masks).to(weight.dtype))
        self.multipliers = list(multipliers)
        # full branch carries the kernel, the others start at 0: the sum equals the kernel
        self.branches = nn.ParameterList(
            [nn.Parameter(weight.clone() / self.multipliers[0])]
            + [nn.Parameter(torch.zeros_like(weight)) for _ in masks[1:]]
        )

    def kernel(self) -> torch.Tensor:
        return sum(a * m * v for a, m, v in zip(self.multipliers, self.masks, self.branches))

    def forward(self, x):
        return F.conv2d(x, self.kernel(), padding=1)


class TinyNet(nn.Module):
    def __init__(self, conv1=None, conv2=None):
        super().__init__()
        self.conv1 = conv1 or nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.conv2 = conv2 or nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


def _pair(masks, multipliers):
    torch.manual_seed(0)
    single = TinyNet().double()
    branched = TinyNet(
        BranchConv(single.conv1.weight.detach(), masks, multipliers),
        BranchConv(single.conv2.weight.detach(), masks, multipliers),
    ).double()
    branched.fc.load_state_dict(single.fc.state_dict())
    return single, branched


def _train_pair(single, branched, sgs, opt_s, opt_b, steps, seed=1):
    """Train both nets on the same batches; the largest kernel gap seen at any step."""
    g = torch.Generator().manual_seed(seed)
    gap = 0.0
    for _ in range(steps):
        x = torch.randn(8, 3, 6, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 5, (8,), generator=g)
        for net, opt in ((single, opt_s), (branched, opt_b)):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            if net is single and sgs is not None:
                sgs()
            opt.step()
        for name in ("conv1", "conv2"):
            diff = getattr(single, name).weight - getattr(branched, name).kernel()
            gap = max(gap, diff.abs().max().item())
        gap = max(gap, (single.fc.weight - branched.fc.weight).abs().max().item())
    return gap


@pytest.mark.parametrize(
    "branches,multipliers,nesterov,wd",
    [
        ("3x3+3x1+1x1", (1.0, 1.0, 1.0), False, 1e-3),
        ("3x3+3x1+1x1", (1.0, 1.0, 1.0), True, 1e-3),
        ("3x3+1x3+3x1+1x1", (1.0, 1.0, 1.0, 1.0), False, 0.0),
        ("3x3+3x1+1x1", (1.0, 0.7, 1.8), True, 1e-2),
    ],
)
def test_branched_net_equals_single_kernel_with_scaled_grad(branches, multipliers, nesterov, wd):
    # METHODS lemma, with coupled L2 decay on every branch and none on S:
    # sum_i a_i (a_i M_i G + wd V_i) = S * G + wd * W, so it holds exactly.
    masks = branch_masks(branches)
    s = branch_scaling(masks, weights=multipliers, normalize=False, dtype=torch.float64)
    opt_kw = dict(lr=0.1, momentum=0.9, weight_decay=wd, nesterov=nesterov)

    single, branched = _pair(masks, multipliers)
    sgs = SpatialGradScaling(single, s)
    opts = [torch.optim.SGD(n.parameters(), **opt_kw) for n in (single, branched)]
    assert _train_pair(single, branched, sgs.apply, *opts, steps=10) < 1e-12

    # without S the trajectories part, so the comparison has teeth
    single, branched = _pair(masks, multipliers)
    opts = [torch.optim.SGD(n.parameters(), **opt_kw) for n in (single, branched)]
    assert _train_pair(single, branched, None, *opts, steps=3) > 1e-4


def test_normalised_scaling_equals_branched_net_with_rescaled_lr_and_wd():
    # S / mean(S) is the branched net whose branch params use lr / m and wd * m
    # (lr * wd unchanged); every other parameter keeps lr and wd.
    masks = branch_masks("3x3+3x1+1x1")
    single, branched = _pair(masks, (1.0, 1.0, 1.0))
    raw = branch_scaling(masks, normalize=False, dtype=torch.float64)
    m = float(raw.mean())
    lr, wd = 0.05, 5e-3
    opt_s = torch.optim.SGD(single.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    branch_params = [p for n, p in branched.named_parameters() if "branches" in n]
    other = [p for n, p in branched.named_parameters() if "branches" not in n]
    opt_b = torch.optim.SGD(
        [dict(params=branch_params, lr=lr / m, weight_decay=wd * m), dict(params=other)],
        lr=lr, momentum=0.9, weight_decay=wd,
    )
    s_norm = branch_scaling(masks, dtype=torch.float64)
    assert _train_pair(single, branched, lambda: apply_scaling(single, s_norm), opt_s, opt_b, steps=8) < 1e-12

# ---------------------------------------------------------------------------
# applying S


class MixedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 5, padding=2, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise
        self.pw = nn.Conv2d(8, 8, 1)
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.dil = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.row = nn.Conv2d(8, 8, (1, 3), padding=(0, 1))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.pw(torch.relu(self.dw(x)))
        x = self.dil(torch.relu(self.strided(x)))
        x = self.row(x)
        out = self.fc(x.mean((2, 3)))
        return (out, x) if self.training else out  # tuple in train mode


def test_eligible_convs():
    names = [n for n, _ in eligible_convs(MixedNet())]
    assert names == ["stem", "dw", "strided", "dil"]


def _grads(net):
    torch.manual_seed(0)
    net.train()
    out, _ = net(torch.randn(4, 3, 8, 8))
    net.zero_grad()
    out.square().sum().backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("use_class", [False, True])
def test_apply_scaling_touches_exactly_the_eligible_grads(use_class):
    torch.manual_seed(0)
    net = MixedNet()
    before = _grads(net)
    s3 = torch.arange(9.0).view(3, 3) / 4
    s5 = torch.rand(5, 5) + 0.5
    scalings = {"stem": s5, "dw": s3, "strided": 2 * s3, "dil": s3 + 1}
    if use_class:
        SpatialGradScaling(net, scalings).apply()
    else:
        apply_scaling(net, scalings)
    for n, p in net.named_parameters():
        conv = n.split(".")[0]
        if n.endswith("weight") and conv in scalings:
            assert torch.allclose(p.grad, before[n] * scalings[conv]), n
            assert not torch.allclose(p.grad, before[n])
        else:  # biases, 1x1, 1x3, BN, linear
            assert torch.equal(p.grad, before[n]), n


def test_single_tensor_applies_to_matching_kernel_size_only():
    net = MixedNet()
    before = _grads(net)
    s = branch_scaling("3x3+3x1+1x1")
    helper = SpatialGradScaling(net, s)
    helper.apply()
    for conv in ("dw", "strided", "dil"):
        assert torch.allclose(getattr(net, conv).weight.grad, before[f"{conv}.weight"] * s)
    assert torch.equal(net.stem.weight.grad, before["stem.weight"])  # 5x5: no 5x5 S given
    with pytest.raises(ValueError, match=r"matches no eligible conv.*\(3, 3\)"):
        apply_scaling(net, torch.ones(7, 7))
    with pytest.raises(ValueError, match="unknown conv.*'pw'"):
        apply_scaling(net, {"pw": torch.ones(1, 1)})
    with pytest.raises(ValueError, match="'stem' has shape \\(3, 3\\)"):
        apply_scaling(net, {"stem": torch.ones(3, 3)})


def test_branch_scalings_per_kernel_size_and_state_dict_round_trip():
    net = MixedNet()
    per_conv = branch_scalings(net, "3x3+1x1")
    assert set(per_conv) == {"stem", "dw", "strided", "dil"}
    assert per_conv["stem"].shape == (5, 5) and per_conv["stem"][2, 2] == per_conv["stem"].max()
    helper = SpatialGradScaling(net, per_conv)
    helper.update({"dw": torch.full((3, 3), 2.0)})  # others kept
    state = helper.state_dict()
    assert set(state["scalings"]) == {"stem", "dw", "strided", "dil"}

    other = SpatialGradScaling(net)
    before = _grads(net)
    other.apply()  # all ones: a no-op
    assert all(torch.equal(p.grad, before[n]) for n, p in net.named_parameters())
    other.load_state_dict(state)
    other.apply()
    assert torch.allclose(net.dw.weight.grad, 2 * before["dw.weight"])
    assert torch.allclose(net.stem.weight.grad, before["stem.weight"] * per_conv["stem"])
    # state is a copy: mutating it does not change the helper
    state["scalings"]["dw"].fill_(7)
    assert torch.equal(other.scalings["dw"], torch.full((3, 3), 2.0))
    with pytest.raises(ValueError, match="unknown conv"):
        other.load_state_dict({"scalings": {"nope": torch.ones(3, 3)}})
    other.reset()
    before = _grads(net)
    other.apply()
    assert torch.equal(net.dw.weight.grad, before["dw.weight"])


# ---------------------------------------------------------------------------
# MI scalings


def _reference_nmik(xp, kernel, dilation, k, diag_rem):
    """Straightforward per-channel loop with numpy histograms."""
    xp = xp.double().numpy()
    _, c, h, w = xp.shape
    kh, kw = kernel
    rh, rw = kh // 2, kw // 2
    out = np.full((c, kh, kw), np.nan)
    out[:, rh, rw] = 1
    for ch in range(c):
        for dy in range(-rh, rh + 1):
            for dx in range(-rw, rw + 1):
                if (dy, dx) == (0, 0):
                    continue
                sy, sx = dy * dilation[0], dx * dilation[1]
                a = xp[:, ch, max(0, -sy): h - max(0, sy), max(0, -sx): w - max(0, sx)].ravel()
                b = xp[:, ch, max(0, sy): h - max(0, -sy), max(0, sx): w - max(0, -sx)].ravel()
                if diag_rem:
                    keep = (a != 0) & (b != 0)
                    a, b = a[keep], b[keep]
                    if len(a) == 0:
                        out[ch, rh + dy, rw + dx] = 0
                        continue
                bins = int(1 + math.ceil(math.log2(len(a))))
                rng = [[a.min(), a.max()], [b.min(), b.max()]]
                if rng[0][0] == rng[0][1]:
                    rng[0][1] += 1
                if rng[1][0] == rng[1][1]:
                    rng[1][1] += 1
                joint, _, _ = np.histogram2d(a, b, bins=bins, range=rng)
                if diag_rem:
                    joint *= 1 - np.eye(bins)

                def ent(cnt):
                    p = cnt[cnt > 0] / cnt.sum()
                    return -(p * np.log2(p)).sum()

                with np.errstate(invalid="ignore", divide="ignore"):
                    hxy = ent(joint.ravel())
                    nmi = (ent(joint.sum(0)) + ent(joint.sum(1)) - hxy) / hxy
                    v = k * nmi / ((k - 1) * nmi + 1)
                out[ch, rh + dy, rw + dx] = 0 if (diag_rem and np.isnan(v)) else v
    a = np.nanmean(out, axis=0)
    return torch.from_numpy(a / a.mean())


def _smooth_images(n=6, c=3, size=12, seed=0, horizontal_only=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, size, size, generator=g)
    kernel = torch.ones(1, 1, 1, 5) if horizontal_only else torch.ones(1, 1, 3, 3)
    kernel = kernel.expand(c, 1, -1, -1) / kernel.numel()
    pad = (2, 2, 0, 0) if horizontal_only else (1, 1, 1, 1)
    return F.conv2d(F.pad(x, pad, mode="replicate"), kernel, groups=c)


class ConvInput(nn.Module):
    """One conv on the raw input: lets tests know exactly what the conv sees."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("diag_rem", [False, True])
@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(3, 3, 3, padding=1, groups=3, stride=2),
        nn.Conv2d(3, 2, 3, padding=2, dilation=2),
        nn.Conv2d(3, 2, (3, 5), padding=(1, 2)),
        nn.Conv2d(3, 2, 3, padding=0),
    ],
    ids=["plain", "depthwise-stride2", "dilated", "3x5", "unpadded"],
)
def test_mi_scalings_match_reference_loop(conv, diag_rem):
    x = torch.relu(_smooth_images())  # ReLU'd: zeros for diagonal removal to drop
    net = ConvInput(conv)
    got = mi_scalings(net, [x[:3], (x[3:], None)], k=5.0, diagonal_removal=diag_rem)
    xp = F.pad(x, list(conv._reversed_padding_repeated_twice))
    ref = _reference_nmik(xp, conv.kernel_size, conv.dilation, 5.0, diag_rem)
    assert set(got) == {"conv"}
    s = got["conv"]
    assert s.dtype == torch.float32 and s.shape == conv.kernel_size
    assert torch.allclose(s.double(), ref, rtol=0, atol=1e-6), (s, ref)


def _resnetish():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 1),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def test_mi_scalings_properties_on_a_small_net():
    torch.manual_seed(0)
    net = _resnetish()
    x = _smooth_images(n=8, size=16)
    loader = [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(4))]
    s5 = mi_scalings(net, loader, k=5.0)
    assert set(s5) == {"0", "4", "6"}  # every eligible conv, no 1x1
    for s in s5.values():
        assert abs(float(s.mean()) - 1) < 1e-5
        assert s[1, 1] == s.max()  # centre NMI is 1, the largest possible
        assert not torch.allclose(s, torch.ones(3, 3), atol=1e-2)
    big = mi_scalings(net, loader, k=1e7)
    small = mi_scalings(net, loader, k=0.05)
    for name in s5:
        assert torch.allclose(big[name], torch.ones(3, 3), atol=1e-3)
        assert small[name][1, 1] > s5[name][1, 1] > big[name][1, 1]
        assert small[name][1, 1] > 6  # k -> 0: nearly all mass on the centre (max 9)
    # deterministic, and the model's state is left as it was
    net.train()
    again = mi_scalings(net, loader, k=5.0)
    assert all(torch.equal(again[n], s5[n]) for n in s5)
    assert net.training and all(not m._forward_hooks for m in net.modules())


def test_mi_scalings_orientation_follows_the_correlation():
    # pixels correlated along rows only: the horizontal neighbours get the larger S
    x = _smooth_images(n=8, size=16, horizontal_only=True)
    s = mi_scalings(ConvInput(nn.Conv2d(3, 2, 3, padding=1)), [x])["conv"]
    assert s[1, 0] > s[0, 1] + 0.1 and s[1, 2] > s[2, 1] + 0.1
    assert s[1, 0] == pytest.approx(float(s[1, 2]), abs=1e-6)  # symmetric


def test_mi_scalings_tuple_output_in_train_mode_and_eval_forward():
    net = MixedNet()
    net.train()
    net.bn.eval()  # a frozen BN must stay frozen
    s = mi_scalings(net, [torch.randn(4, 3, 10, 10)])
    assert set(s) == {"stem", "dw", "strided", "dil"}
    assert s["stem"].shape == (5, 5)
    assert net.training and net.dw.training and not net.bn.training
    assert net.bn.num_batches_tracked.item() == 0  # eval mode: BN running stats untouched


def test_mi_scalings_ignore_constant_channels():
    x = _smooth_images(n=4, c=3)
    x_dead = x.clone()
    x_dead[:, 0] = 0  # a dead channel: NMI is 0/0
    dead = mi_scalings(ConvInput(nn.Conv2d(3, 2, 3, padding=1)), [x_dead])["conv"]
    live = mi_scalings(ConvInput(nn.Conv2d(2, 2, 3, padding=1)), [x[:, 1:]])["conv"]
    assert torch.isfinite(dead).all()
    assert torch.allclose(dead, live, atol=1e-6)
    # every channel dead: no usable S, so all ones (plain SGD)
    with pytest.warns(UserWarning, match="no finite mutual information.*'conv'"):
        out = mi_scalings(ConvInput(nn.Conv2d(3, 2, 3, padding=1)), [torch.zeros(2, 3, 6, 6)])
    assert set(out) == {"conv"} and torch.equal(out["conv"], torch.ones(3, 3))


class DeadSecondConv(nn.Module):
    """conv `a` sees the images; conv `b` sees a constant (zeroed) map."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.b(self.a(x) * 0)


def test_recompute_replaces_every_scaling_and_a_nan_conv_goes_back_to_ones():
    from types import SimpleNamespace

    from study.sgs import SGSHooks

    torch.manual_seed(0)
    net = DeadSecondConv()
    x = _smooth_images(n=4, size=10)
    cfg = SimpleNamespace(sgs_mode="mi", sgs_branches="3x3", sgs_k=5.0, sgs_warmup=0, sgs_interval=5,
                          sgs_batches=7, sgs_diagonal_removal=False)
    asked = []  # the MI pass asks the trainer for sgs_batches batches of its own stream
    hooks = SGSHooks(net, cfg, SimpleNamespace(probe_batches=lambda epoch, limit: asked.append((epoch, limit)) or [x]))
    before = torch.tensor([[0.5, 1.0, 0.5], [1.0, 3.0, 1.0], [0.5, 1.0, 0.5]])  # an S from an earlier recompute
    hooks.scaling.update({"a": before, "b": before})
    with pytest.warns(UserWarning, match=r"no finite mutual information for conv\(s\) \['b'\]") as record:
        hooks.before_epoch(5)
    assert len(record) == 1 and asked == [(5, 7)]
    with pytest.warns(UserWarning):
        fresh = mi_scalings(net, [x], k=5.0)["a"]
    assert torch.equal(hooks.scaling.scalings["a"], fresh) and not torch.allclose(fresh, before)
    assert torch.equal(hooks.scaling.scalings["b"], torch.ones(3, 3))
    # and the ones are what the step applies: b's gradient passes unscaled
    net(x).sum().backward()
    grad_b = net.b.weight.grad.clone()
    hooks.after_backward()
    assert torch.equal(net.b.weight.grad, grad_b)


def test_replace_resets_convs_it_does_not_name():
    net = _resnetish()
    helper = SpatialGradScaling(net, branch_scalings(net, "3x3+1x1"))
    s = branch_scaling("acb")
    helper.replace({"4": s})
    assert set(helper.scalings) == {"4"} and torch.equal(helper.scalings["4"], s)
    with pytest.raises(ValueError, match="unknown conv"):
        helper.replace({"nope": s})
    assert set(helper.scalings) == {"4"}  # a bad call leaves the scalings as they were


def test_mi_scalings_subsampling():
    x = _smooth_images(n=8, size=16)
    net = ConvInput(nn.Conv2d(3, 2, 3, padding=1))
    full = mi_scalings(net, [x])["conv"]
    exact = mi_scalings(net, [x], max_pairs=8 * 18 * 18)["conv"]  # cap == all pixels: exact
    assert torch.equal(full, exact)
    a = mi_scalings(net, [x], max_pairs=1000, seed=1)["conv"]
    b = mi_scalings(net, [x], max_pairs=1000, seed=1)["conv"]
    c = mi_scalings(net, [x], max_pairs=1000, seed=2)["conv"]
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, full)
    assert abs(float(a.mean()) - 1) < 1e-5
    # a subsample estimates the same thing (histogram MI is biased by sample size, hence loose)
    assert (a - full).abs().max() < 0.5 and a[1, 1] == a.max()


def _live_tensor_bytes() -> int:
    # Every tensor Python can see (gc tracks them), each storage counted once.
    seen, total = set(), 0
    for o in gc.get_objects():
        if isinstance(o, torch.Tensor) and not isinstance(o, nn.Parameter):
            try:
                st = o.untyped_storage()
                ptr = st.data_ptr()
            except (RuntimeError, NotImplementedError):  # fake/functional tensors an earlier compile left in gc
                continue
            if ptr not in seen:
                seen.add(ptr)
                total += st.nbytes()
    return total


def test_mi_scalings_stream_memory_is_flat_in_the_number_of_batches():
    # What the pass holds at the end of each forward must not grow with the
    # batches read (holding every captured input, as before, gave 6x here).
    torch.manual_seed(0)
    net = _resnetish()
    x = _smooth_images(n=8, size=16)
    growth, results = {}, {}
    for n_batches in (2, 12):
        gc.collect()
        base, peak = _live_tensor_bytes(), [0]
        h = net[-1].register_forward_hook(lambda *_: peak.__setitem__(0, max(peak[0], _live_tensor_bytes())))
        results[n_batches] = mi_scalings(net, [x] * n_batches)  # one storage: the inputs count once
        h.remove()
        growth[n_batches] = peak[0] - base
    # (the joint histograms do grow a little: Sturges bins = 1 + ceil(log2 pairs))
    assert 0 < growth[12] < 2 * growth[2], growth
    assert set(results[12]) == set(results[2]) == {"0", "4", "6"}


def test_mi_scalings_errors():
    net = ConvInput(nn.Conv2d(3, 2, 3, padding=1))
    with pytest.raises(ValueError, match="k \\(sgs_k\\) must be"):
        mi_scalings(net, [torch.randn(1, 3, 4, 4)], k=0)
    with pytest.raises(ValueError, match="odd kernel sizes.*'conv'"):
        mi_scalings(ConvInput(nn.Conv2d(3, 2, 2)), [torch.randn(1, 3, 4, 4)])
    with pytest.raises(TypeError, match="input tensors"):
        mi_scalings(net, [{"x": torch.randn(1, 3, 4, 4)}])


def test_mi_scalings_feed_the_helper():
    net = _resnetish()
    x = _smooth_images(n=4, size=8)
    helper = SpatialGradScaling(net)
    helper.update(mi_scalings(net, [x]))
    out = net(x)
    out.sum().backward()
    before = {n: p.grad.clone() for n, p in net.named_parameters()}
    helper.apply()
    assert torch.allclose(net[0].weight.grad, before["0.weight"] * helper.scalings["0"])
    assert torch.equal(net[3].weight.grad, before["3.weight"])  # 1x1


def test_scaling_schedule_due():
    # the official condition: at warmup, then at each later multiple of the interval
    due = [e for e in range(40) if scaling_schedule_due(e, warmup=5, interval=10)]
    assert due == [5, 10, 20, 30]
    assert [e for e in range(17) if scaling_schedule_due(e, warmup=3, interval=5)] == [3, 5, 10, 15]
    assert [e for e in range(31) if scaling_schedule_due(e, warmup=0, interval=30)] == [0, 30]
    assert [e for e in range(12) if scaling_schedule_due(e, warmup=10, interval=5)] == [10]
    assert [e for e in range(6) if scaling_schedule_due(e, 0, 1)] == list(range(6))
    assert [e for e in range(30) if scaling_schedule_due(e, 3, 0)] == [3]
    with pytest.raises(ValueError, match="sgs_interval"):
        scaling_schedule_due(0, 0, -1)
    with pytest.raises(ValueError, match="sgs_warmup"):
        scaling_schedule_due(0, -2, 5)


def test_the_sgs_variant_defaults_to_the_papers_mi_scaling():
    from study.config import TrainConfig

    cfg = TrainConfig(variant="sgs")
    assert (cfg.sgs_mode, cfg.sgs_k, cfg.sgs_warmup) == ("mi", 5.0, 0)
    assert TrainConfig(variant="resnet").sgs_mode == "off"  # elsewhere the feature stays off
    assert cfg.twin().sgs_mode == "off"
