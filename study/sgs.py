"""Spatial gradient scaling, SGS (Detkov et al., ICLR 2023; docs/methods.md).

A training-time transform for any nn.Module: after ``loss.backward()`` (and
optional grad clipping), each conv weight gradient with a kernel larger than
1x1 is multiplied by a k x k matrix ``S`` shared by all input and output
channels; then ``optimizer.step()`` runs as usual (its coupled weight decay
stays unscaled). ``S`` comes either from a named branch set (``S = sum_i
a_i^2 M_i``, the multi-branch reparameterisation the lemma says it equals) or
from the normalised mutual information between neighbouring pixels of each
conv's input (``mi_scalings``).

Typical use in a trainer::

    sgs = SpatialGradScaling(model, branch_scalings(model, "3x3+3x1+1x1"))
    ...
    loss.backward(); clip(...); sgs.apply(); optimizer.step()
    # mi mode: at the start of every epoch
    if scaling_schedule_due(epoch, warmup, interval):
        sgs.replace(mi_scalings(model, batches, k=5.0))

Depends on torch and numpy only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Branch sets in the usual 3x3 notation, "HxW" = height x width. A 3 means the
# full extent of that kernel dimension, so the same names work for any odd
# kernel (on a 7x7 stem "3x1" is the 7x1 column through the centre).
BRANCH_SETS: dict[str, tuple[tuple[int, int], ...]] = {
    "3x3": ((3, 3),),  # plain: S = all ones
    "3x3+1x1": ((3, 3), (1, 1)),  # RepVGG without BN
    "3x3+3x1+1x1": ((3, 3), (3, 1), (1, 1)),
    "acb": ((3, 3), (1, 3), (3, 1)),  # ACNet: 3x3 + 1x3 + 3x1
    "3x3+1x3+3x1": ((3, 3), (1, 3), (3, 1)),
    "3x3+1x3+3x1+1x1": ((3, 3), (1, 3), (3, 1), (1, 1)),
}


def _kernel_hw(kernel_size: int | Sequence[int], what: str = "kernel_size") -> tuple[int, int]:
    ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
    if len(ks) != 2 or not all(isinstance(v, int) and v >= 1 for v in ks):
        raise ValueError(f"{what} must be a positive int or a pair of them, got {kernel_size!r}")
    return ks


def _check_branch_name(name: str) -> None:
    if name not in BRANCH_SETS:
        raise ValueError(f"unknown SGS branch set {name!r}; known branch sets: {sorted(BRANCH_SETS)}")


def branch_masks(name: str, kernel_size: int | Sequence[int] = 3) -> list[Tensor]:
    """The 0/1 masks (float32, kh x kw) of the branches in the named set."""
    _check_branch_name(name)
    kh, kw = _kernel_hw(kernel_size)
    masks = []
    for bh, bw in BRANCH_SETS[name]:
        m = torch.zeros(kh, kw)
        rows = slice(0, kh) if bh == 3 else _centre(kh, name)
        cols = slice(0, kw) if bw == 3 else _centre(kw, name)
        m[rows, cols] = 1.0
        masks.append(m)
    return masks


def _centre(size: int, name: str) -> slice:
    if size % 2 == 0:
        raise ValueError(f"branch set {name!r} has a 1-wide branch, which needs an odd kernel size, got {size}")
    return slice(size // 2, size // 2 + 1)


def branch_scaling(
    branches: str | Sequence[Tensor],
    kernel_size: int | Sequence[int] = 3,
    weights: Sequence[float] | None = None,
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """S = sum_i a_i^2 M_i for the branches (a named set or explicit masks).

    ``weights`` are the branches' scalar multipliers a_i (default 1); computed
    in float64, returned as ``dtype``. With
    ``normalize`` S is divided by its mean (the official code); this equals the
    branched net whose branch parameters use lr / mean(S) and weight decay
    * mean(S), i.e. the same trajectory up to that per-layer lr factor.
    """
    kh, kw = _kernel_hw(kernel_size)
    if isinstance(branches, str):
        masks = branch_masks(branches, (kh, kw))
    else:
        masks = [torch.as_tensor(m, dtype=torch.float32) for m in branches]
        if not masks:
            raise ValueError("branches must name a branch set or give at least one mask")
        for i, m in enumerate(masks):
            if tuple(m.shape) != (kh, kw):
                raise ValueError(
                    f"branch mask {i} has shape {tuple(m.shape)}, expected the kernel shape {(kh, kw)}"
                )
    if weights is None:
        weights = [1.0] * len(masks)
    elif len(weights) != len(masks):
        raise ValueError(f"weights has {len(weights)} entries but there are {len(masks)} branches")
    s = sum(float(a) ** 2 * m.double() for a, m in zip(weights, masks))
    assert isinstance(s, Tensor)  # masks is not empty
    if normalize:
        mean = s.mean()
        if not torch.isfinite(mean) or mean <= 0:
            raise ValueError(f"cannot normalise a branch scaling with mean {float(mean)}")
        s = s / mean
    return s.to(dtype)


def _is_eligible(m: nn.Module) -> bool:
    # Both kernel dims > 1, as the official code: a 1x3 conv is itself a branch.
    return isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1 and m.kernel_size[1] > 1


def eligible_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """(name, conv) for every Conv2d whose kernel is larger than 1x1, in module order."""
    return [(n, m) for n, m in model.named_modules() if _is_eligible(m)]


def branch_scalings(
    model: nn.Module,
    branches: str,
    weights: Sequence[float] | None = None,
    normalize: bool = True,
) -> dict[str, Tensor]:
    """Branch-set S for every eligible conv of ``model``, each at its own kernel size."""
    out = {}
    for name, conv in eligible_convs(model):
        out[name] = branch_scaling(branches, conv.kernel_size, weights, normalize).to(conv.weight.device)
    return out


# ---------------------------------------------------------------------------
# Mutual-information scalings
#
# Every pair, streamed: the histogram range must be known before a value can
# be binned, so the pass runs the batches twice. Pass 1 keeps per channel and
# displacement only the [min, max] of both sides of the pairs (and the pair
# count); pass 2 bins each batch's pairs and adds them to per-layer joint
# histograms. Nothing the size of an activation outlives its forward, so
# memory stays flat in the number of batches (the old one-pass version held
# every captured input: ~2 GB for 20 x 128 images on ResNet-20).


def _input_of(batch) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"batches must yield input tensors or (input, target) tuples, got {type(batch).__name__}")


def _pad_like_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    # The padding the conv itself applies (handles padding="same" and padding_mode).
    pad = list(conv._reversed_padding_repeated_twice)
    if not any(pad):
        return x
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, pad, mode=mode)


def _entropy(counts: Tensor, dims: tuple[int, ...]) -> Tensor:
    # p log p with p = c / total, so a single occupied bin gives exactly 0.
    total = counts.sum(dims, keepdim=True)
    p = counts / total
    plogp = torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p))
    return -plogp.sum(dims)


def _shifts(conv: nn.Conv2d) -> list[tuple[int, int, int, int]]:
    """(dy, dx, sy, sx) per displacement; NMI is symmetric, so one of each +-d pair."""
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    return [(dy, dx, dy * dh, dx * dw) for dy in range(-(kh // 2), kh // 2 + 1)
            for dx in range(-(kw // 2), kw // 2 + 1) if (dy, dx) > (0, 0)]


def _pairs(t: Tensor, sy: int, sx: int) -> tuple[Tensor, Tensor]:
    """Views (anchor, neighbour at +(sy, sx)) over every anchor whose neighbour is in the map."""
    h, w = t.shape[-2:]
    a = t[..., max(0, -sy): h - max(0, sy), max(0, -sx): w - max(0, sx)]
    b = t[..., max(0, sy): h - max(0, -sy), max(0, sx): w - max(0, -sx)]
    return a, b


class _LayerMI:
    """The streamed state of one conv: range statistics (pass 1), joint counts (pass 2).

    Default (every pair, no mask): pass 1 keeps only the elementwise min and max
    over images of the padded input (C x Hp x Wp), from which each
    displacement's ranges are read off; pass 2 bins each pixel once per
    distinct binning (usually one per layer) and each displacement is then one
    add of two shifted slices and one bincount over all channels. With a mask
    (diagonal removal, a cap) ranges and bins are taken per displacement.
    """

    def __init__(self, conv: nn.Conv2d, diagonal_removal: bool, keep: Tensor | None):
        self.conv, self.diag, self.keep = conv, diagonal_removal, keep
        self.masked = diagonal_removal or keep is not None
        self.shifts = _shifts(conv)
        self.lo: Tensor | None = None  # unmasked: elementwise min / max over images (C x Hp x Wp)
        self.hi: Tensor | None = None
        self.images = 0
        # masked, per displacement: lo_a, hi_a, lo_b, hi_b, n (each (C,))
        self.stats: list[list[Tensor] | None] = [None] * len(self.shifts)
        # per displacement, after prepare(): (anchor spec, neighbour spec, bins, channel offsets)
        self.plan: list[tuple[int, int, int, Tensor] | None] = [None] * len(self.shifts)
        self.counts: list[Tensor | None] = [None] * len(self.shifts)

    def _views(self, xp: Tensor, offset: int, sy: int, sx: int):
        a, b = _pairs(xp, sy, sx)
        mask = None
        if self.diag:
            # Pairs where either value is zero (ReLU's dead half, padding) would
            # pile into the first bins; keep only pairs with both values non-zero.
            mask = (a != 0) & (b != 0)
        if self.keep is not None:  # the capped subset of anchor pixels, shared by all displacements
            kept = _pairs(self.keep[offset: offset + len(xp)], sy, sx)[0].unsqueeze(1)
            mask = kept if mask is None else mask & kept
        return a, b, mask

    def observe(self, xp: Tensor, offset: int) -> None:
        """Pass 1: what the histogram ranges and bin counts need."""
        if not self.masked:
            lo, hi = xp.amin(0), xp.amax(0)
            self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
            self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
            self.images += len(xp)
            return
        dims = (0, 2, 3)
        for i, (_, _, sy, sx) in enumerate(self.shifts):
            a, b, mask = self._views(xp, offset, sy, sx)
            if a.numel() == 0:
                continue  # window larger than the map: no pairs
            new = [a.masked_fill(~mask, math.inf).amin(dims), a.masked_fill(~mask, -math.inf).amax(dims),
                   b.masked_fill(~mask, math.inf).amin(dims), b.masked_fill(~mask, -math.inf).amax(dims),
                   mask.expand_as(a).sum(dims)]
            old = self.stats[i]
            self.stats[i] = new if old is None else [
                torch.minimum(old[0], new[0]), torch.maximum(old[1], new[1]),
                torch.minimum(old[2], new[2]), torch.maximum(old[3], new[3]), old[4] + new[4]]

    def prepare(self) -> None:
        """Between the passes: Sturges bins per channel and each side's binning map."""
        if not self.masked and self.lo is not None and self.hi is not None:  # set together
            for i, (_, _, sy, sx) in enumerate(self.shifts):
                lo_a, lo_b = _pairs(self.lo, sy, sx)
                hi_a, hi_b = _pairs(self.hi, sy, sx)
                if lo_a.numel() == 0:
                    continue
                n = torch.full((lo_a.shape[0],), self.images * lo_a[0].numel(), device=lo_a.device)
                self.stats[i] = [lo_a.amin((1, 2)), hi_a.amax((1, 2)), lo_b.amin((1, 2)), hi_b.amax((1, 2)), n]
        self.lo = self.hi = None
        specs: list[tuple[Tensor, Tensor, Tensor]] = []  # distinct (lo, scale, top): one binning of the map each

        def spec_id(lo: Tensor, scale: Tensor, top: Tensor) -> int:
            for j, (l2, s2, t2) in enumerate(specs):
                if torch.equal(lo, l2) and torch.equal(scale, s2) and torch.equal(top, t2):
                    return j
            specs.append((lo, scale, top))
            return len(specs) - 1

        for i, st in enumerate(self.stats):
            if st is None:
                continue
            lo_a, hi_a, lo_b, hi_b, n = st
            bins = 1 + torch.ceil(torch.log2(n.clamp_min(1).double()))
            b = int(bins.max())  # one host sync per layer and displacement, not per batch
            bins = bins.float()
            top = (bins - 1).view(1, -1, 1, 1)
            sides = []
            for lo, hi in ((lo_a, hi_a), (lo_b, hi_b)):
                has = torch.isfinite(lo)  # masked: a channel with no kept pair has range (inf, -inf)
                lo, hi = lo.where(has, 0.0), hi.where(has, 0.0)
                width = hi - lo
                scale = (bins / width.where(width > 0, 1.0)).where(width > 0, 0.0)
                sides.append(spec_id(lo.view(1, -1, 1, 1), scale.view(1, -1, 1, 1), top))
            c = len(bins)
            offs = (torch.arange(c, device=bins.device, dtype=torch.int32) * (b * b)).view(1, -1, 1, 1)
            self.plan[i] = (sides[0], sides[1], b, offs)
            self.counts[i] = torch.zeros(c * b * b + 1, dtype=torch.long, device=bins.device)
        self.specs = specs
        self.stats = [None] * len(self.shifts)

    def _binned(self, t: Tensor, spec: int) -> Tensor:
        # Uniform bins over [min, max], max in the last bin; values >= min, so only
        # the top needs clamping (masked-out or out-of-slice values are never counted).
        lo, scale, top = self.specs[spec]
        return torch.minimum((t - lo).mul_(scale).floor_(), top).to(torch.int32)

    def accumulate(self, xp: Tensor, offset: int) -> None:
        """Pass 2: bin the batch's pairs into the joint histograms, all channels in one bincount."""
        binned: dict[tuple, Tensor] = {}  # unmasked: each pixel binned once per distinct spec
        for i, (_, _, sy, sx) in enumerate(self.shifts):
            plan, counts = self.plan[i], self.counts[i]
            if plan is None:
                continue
            assert counts is not None  # prepare() sets both
            sa, sb, b, offs = plan
            spare = len(counts) - 1
            if not self.masked:
                # anchor side pre-shifted to its joint row (channel * b * b + i * b), once per spec
                if ("a", sa, b) not in binned:
                    binned["a", sa, b] = self._binned(xp, sa).mul_(b).add_(offs)
                if ("b", sb) not in binned:
                    binned["b", sb] = self._binned(xp, sb)
                flat = _pairs(binned["a", sa, b], sy, sx)[0] + _pairs(binned["b", sb], sy, sx)[1]
            else:
                a, b_, mask = self._views(xp, offset, sy, sx)
                flat = (self._binned(a, sa) * b).add_(self._binned(b_, sb)).add_(offs)
                # masked-out pairs go to the spare last bin: no boolean select, no host sync
                flat = flat.masked_fill_(~mask, spare) if mask.shape == flat.shape else flat.where(mask, spare)
            counts += torch.bincount(flat.reshape(-1), minlength=spare + 1)  # in place: self.counts[i]

    def scaling(self, k: float) -> Tensor:
        """Per-channel sharpened NMI over the window, centre 1, channel NaN-mean (kh x kw)."""
        kh, kw = self.conv.kernel_size
        rh, rw = kh // 2, kw // 2
        c = self.conv.in_channels
        dev = self.counts[0].device if self.counts and self.counts[0] is not None else "cpu"
        a = torch.full((c, kh, kw), math.nan, dtype=torch.float64, device=dev)
        a[:, rh, rw] = 1.0
        for i, (dy, dx, _, _) in enumerate(self.shifts):
            plan, counts = self.plan[i], self.counts[i]
            if counts is None:
                continue  # no pairs at this displacement: NaN
            assert plan is not None  # prepare() sets both
            b = plan[2]
            joint = counts[:-1].view(-1, b, b).double()
            if self.diag:
                joint.diagonal(dim1=1, dim2=2).zero_()
            h_xy = _entropy(joint, (1, 2))
            nmi = (_entropy(joint.sum(2), (1,)) + _entropy(joint.sum(1), (1,)) - h_xy) / h_xy  # 0/0: NaN
            nmik = k * nmi / ((k - 1) * nmi + 1)
            if self.diag:
                nmik = torch.nan_to_num(nmik, nan=0.0)  # official: no usable pairs counts as 0
            a[:, rh + dy, rw + dx] = nmik
            a[:, rh - dy, rw - dx] = nmik
        return torch.nanmean(a, dim=0)


@torch.no_grad()
def mi_scalings(
    model: nn.Module,
    batches: Iterable,
    k: float = 5.0,
    diagonal_removal: bool = False,
    max_pairs: int | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """SGS matrices from the mutual information of neighbouring input pixels.

    ``batches`` yields model inputs (or (input, target) tuples), already
    normalised as in training; they are moved to the model's device. For every
    eligible conv: NMI of each pixel of its (padded) input with the pixel at
    each kernel displacement, pooled over images and positions, per channel,
    with Sturges bins over [min, max] (per side of the pairs); sharpened by
    ``k``; centre 1; NaN channels (constant input) ignored in the channel
    mean; normalised to mean 1. Every pair is used, as the official code does;
    ``max_pairs`` caps the anchor pixels per conv to a seeded random subset,
    only when asked. Two forward passes over ``batches`` (iterated twice when
    it is a list or tuple, else read once into a list of inputs).
    A conv whose S is still NaN somewhere (e.g. every input channel
    constant) gets all ones (plain SGD for it), with one warning naming every
    such conv: the official code leaves it out of a dict that replaces the old
    one, then indexes that dict by position and would fail, so neither its
    previous S nor any official value exists to keep.
    Returns {conv name: float32 kh x kw tensor on the conv weight's device}.
    """
    if not (isinstance(k, (int, float)) and math.isfinite(k) and k > 0):
        raise ValueError(f"k (sgs_k) must be a finite number > 0, got {k!r}")
    if max_pairs is not None and not (isinstance(max_pairs, int) and max_pairs >= 1):
        raise ValueError(f"max_pairs must be None (all pairs) or a positive int, got {max_pairs!r}")
    convs = eligible_convs(model)
    for name, conv in convs:
        if conv.kernel_size[0] % 2 == 0 or conv.kernel_size[1] % 2 == 0:
            raise ValueError(f"MI scaling needs odd kernel sizes; conv {name!r} has {conv.kernel_size}")
    if not convs:
        return {}
    inputs = [_input_of(b) for b in (batches if isinstance(batches, (list, tuple)) else list(batches))]
    total = sum(len(x) for x in inputs)
    device = convs[0][1].weight.device
    layers: dict[str, _LayerMI] = {}
    where = {"offset": 0, "pass": 1}

    def hook_for(index: int, name: str, conv: nn.Conv2d):
        def hook(module: nn.Module, args: tuple, _output) -> None:
            xp = _pad_like_conv(conv, args[0].detach().float())
            if name not in layers:
                keep = None
                if max_pairs is not None and total * xp.shape[-2] * xp.shape[-1] > max_pairs:
                    # a seeded subset of anchor pixels over the whole pass, drawn once per conv
                    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
                    n_pix = total * xp.shape[-2] * xp.shape[-1]
                    keep = torch.zeros(n_pix, dtype=torch.bool)
                    keep[torch.randperm(n_pix, generator=gen)[:max_pairs]] = True
                    keep = keep.view(total, *xp.shape[-2:]).to(xp.device)
                layers[name] = _LayerMI(conv, diagonal_removal, keep)
            if where["pass"] == 1:
                layers[name].observe(xp, where["offset"])
            elif name in layers:
                layers[name].accumulate(xp, where["offset"])

        return hook

    handles = [conv.register_forward_hook(hook_for(i, name, conv)) for i, (name, conv) in enumerate(convs)]
    modes = {m: m.training for m in model.modules()}  # restored per module (frozen BN stays eval)
    model.eval()
    try:
        for pass_ in (1, 2):
            where["pass"], where["offset"] = pass_, 0
            for x in inputs:
                model(x.to(device, non_blocking=True))
                where["offset"] += len(x)
            if pass_ == 1:
                for layer in layers.values():
                    layer.prepare()
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode

    out: dict[str, Tensor] = {}
    undefined = []
    for name, conv in convs:
        if name not in layers:
            continue  # conv unused by this forward
        a = layers.pop(name).scaling(float(k))
        if torch.isnan(a).any():
            undefined.append(name)
            a = torch.ones_like(a)
        out[name] = (a / a.mean()).to(device=conv.weight.device, dtype=torch.float32)
    if undefined:
        warnings.warn(f"SGS: no finite mutual information for conv(s) {undefined} (constant input); "
                      f"their scaling is all ones (plain SGD) until the next recompute")
    return out


def scaling_schedule_due(epoch: int, warmup: int, interval: int) -> bool:
    """Whether MI scalings are (re)computed at the start of ``epoch``.

    Epochs count from 0 and the computation happens before the epoch's first
    step: at epoch ``warmup``, then at every later multiple of ``interval``
    (the official condition: with warmup 3 and interval 5, epochs 3, 5, 10,
    15, ...; ``interval`` = 0: only once, at ``warmup``). Before ``warmup`` S
    is all ones (plain SGD).
    """
    for label, v, lo in (("epoch", epoch, 0), ("sgs_warmup", warmup, 0), ("sgs_interval", interval, 0)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{label} must be an int >= {lo}, got {v!r}")
    if epoch == warmup:
        return True
    return interval > 0 and epoch > warmup and epoch % interval == 0


# ---------------------------------------------------------------------------
# Applying S to the gradients


def _conv_table(model_or_convs) -> dict[str, nn.Conv2d]:
    if isinstance(model_or_convs, nn.Module):
        return dict(eligible_convs(model_or_convs))
    items = model_or_convs.items() if isinstance(model_or_convs, Mapping) else model_or_convs
    table = {}
    for name, conv in items:
        if not _is_eligible(conv):
            raise ValueError(f"{name!r} is not a Conv2d with a kernel larger than 1x1: {conv}")
        table[name] = conv
    return table


def _resolve(convs: dict[str, nn.Conv2d], scalings: Mapping[str, Tensor] | Tensor) -> dict[str, Tensor]:
    """Validate scalings against the convs: {name: floating kh x kw}."""
    if isinstance(scalings, Tensor):
        shape = tuple(scalings.shape)
        chosen = {n: scalings for n, c in convs.items() if tuple(c.kernel_size) == shape}
        if not chosen:
            sizes = sorted({tuple(c.kernel_size) for c in convs.values()})
            raise ValueError(f"scaling of shape {shape} matches no eligible conv; their kernel sizes: {sizes}")
    else:
        unknown = sorted(set(scalings) - set(convs))
        if unknown:
            raise ValueError(f"scalings for unknown conv(s) {unknown}; eligible convs: {sorted(convs)}")
        chosen = dict(scalings)
    out = {}
    for name, s in chosen.items():
        s = torch.as_tensor(s)
        if tuple(s.shape) != tuple(convs[name].kernel_size):
            raise ValueError(
                f"scaling for conv {name!r} has shape {tuple(s.shape)}, its kernel is {tuple(convs[name].kernel_size)}"
            )
        if not torch.isfinite(s).all():
            raise ValueError(f"scaling for conv {name!r} is not finite: {s.tolist()}")
        # keep float64 if given: an exact S matters for exact-equivalence checks
        out[name] = s.detach() if s.is_floating_point() else s.to(torch.float32)
    return out


def _weight_param(name: str, conv: nn.Conv2d) -> nn.Parameter:
    w = conv.weight
    if not isinstance(w, nn.Parameter):
        raise TypeError(f"conv {name!r}: weight is not a Parameter (parametrised?), SGS cannot scale its grad")
    return w


def apply_scaling(model_or_convs, scalings: Mapping[str, Tensor] | Tensor) -> None:
    """Functional form: ``weight.grad *= S`` for the named (or kernel-matching) convs.

    Call after backward (and grad clipping), before ``optimizer.step()``.
    ``model_or_convs``: a model, or (name, conv) pairs / a {name: conv} dict.
    Convs without a grad are skipped. For repeated use prefer
    ``SpatialGradScaling``, which prepares everything once.
    """
    convs = _conv_table(model_or_convs)
    for name, s in _resolve(convs, scalings).items():
        g = _weight_param(name, convs[name]).grad
        if g is not None:
            g.mul_(s.to(device=g.device, dtype=g.dtype))


class SpatialGradScaling:
    """Holds one S per eligible conv of ``model`` and applies it to the grads.

    S starts as all ones (a no-op, skipped). ``update`` replaces the S of the
    convs it names (a single tensor: every conv of that kernel size) and keeps
    the others; ``replace`` sets every conv's S, all ones where not named.
    ``apply`` is one fused multiply over the scaled grads.
    """

    def __init__(self, model: nn.Module, scalings: Mapping[str, Tensor] | Tensor | None = None):
        self.convs = dict(eligible_convs(model))
        self.params = {name: _weight_param(name, conv) for name, conv in self.convs.items()}
        self.scalings: dict[str, Tensor] = {}  # name -> kh x kw (CPU copy, for state_dict)
        self._full: dict[str, Tensor] = {}  # name -> S expanded to the weight's shape, dtype and layout
        if scalings is not None:
            self.update(scalings)

    def update(self, scalings: Mapping[str, Tensor] | Tensor) -> None:
        for name, s in _resolve(self.convs, scalings).items():
            self.scalings[name] = s.to("cpu", copy=True)
            w = self.params[name]
            if bool((s == 1).all()):
                self._full.pop(name, None)  # all ones: nothing to do each step
                continue
            # Pre-expanded to the weight's exact shape so one _foreach_mul_ covers all convs.
            full = torch.empty_like(w, memory_format=torch.preserve_format)
            full.copy_(s.to(device=w.device, dtype=w.dtype).expand_as(w))
            self._full[name] = full

    def reset(self) -> None:
        """Back to all ones (plain SGD)."""
        self.scalings.clear()
        self._full.clear()

    def replace(self, scalings: Mapping[str, Tensor] | Tensor) -> None:
        """Every conv's S from ``scalings``; convs it does not name go back to all
        ones. An MI recompute replaces the whole set, as the official code does."""
        resolved = _resolve(self.convs, scalings)  # checked before anything is dropped
        self.reset()
        self.update(resolved)

    @torch.no_grad()
    def apply(self) -> None:
        grads, factors = [], []
        for name, full in self._full.items():
            g = self.params[name].grad
            if g is not None:
                grads.append(g)
                factors.append(full)
        if grads:
            torch._foreach_mul_(grads, factors)

    def state_dict(self) -> dict:
        return {"scalings": {n: s.clone() for n, s in self.scalings.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        if "scalings" not in state:
            raise ValueError(f"SGS state_dict needs a 'scalings' entry, got keys {sorted(state)}")
        self.reset()
        self.update(state["scalings"])


__all__ = [
    "BRANCH_SETS",
    "branch_masks",
    "branch_scaling",
    "branch_scalings",
    "eligible_convs",
    "mi_scalings",
    "scaling_schedule_due",
    "apply_scaling",
    "SpatialGradScaling",
]


# ---------------------------------------------------------------- the feature and the variant
# SGS changes no structure: it is a training feature any variant can switch on
# (sgs_mode != "off"), and the `sgs` variant is the ResNet with it on.

from study.options import Option  # noqa: E402
from study.variants import Claim, Exercise, Feature, Hooks, Published, Reported, Sweep, Variant  # noqa: E402

MODES = ("off", "branches", "mi")  # "off" first: every mode after it switches scaling on

OPTIONS: tuple[Option, ...] = (
    Option("sgs_mode", str, "off", "spatial gradient scaling: off, branches (S of a branch set), mi (learned)",
           choices=MODES),
    Option("sgs_branches", str, "3x3+3x1+1x1", "branch set whose equivalent S is used (mode branches)",
           choices=tuple(BRANCH_SETS)),
    Option("sgs_k", float, 5.0, "MI sharpening k (1: unchanged; large: plain SGD; small: centre only)",
           low=0.0, low_open=True, high=1e6),
    Option("sgs_warmup", int, 0, "epoch of the first MI computation", low=0),
    Option("sgs_interval", int, 30, "MI recomputed at each epoch after sgs_warmup that is a multiple of this",
           low=1),
    Option("sgs_batches", int, 20, "training batches the MI pass reads", low=1, high=10_000),
    Option("sgs_diagonal_removal", bool, False, "MI: drop zero pairs and the joint histogram's diagonal"),
)


class SGSHooks(Hooks):
    def __init__(self, model, cfg, ctx) -> None:
        super().__init__(model, cfg, ctx)
        # Branch-equivalent S is fixed for the run; MI starts as all ones (plain
        # SGD) until the first recompute at epoch `sgs_warmup`.
        fixed = branch_scalings(model, cfg.sgs_branches) if cfg.sgs_mode == "branches" else None
        self.scaling = SpatialGradScaling(model, fixed)

    def before_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        if cfg.sgs_mode == "mi" and scaling_schedule_due(epoch, cfg.sgs_warmup, cfg.sgs_interval):
            batches = self.ctx.probe_batches(epoch, cfg.sgs_batches)
            self.scaling.replace(mi_scalings(self.model, batches, k=cfg.sgs_k,
                                             diagonal_removal=cfg.sgs_diagonal_removal))

    def after_backward(self) -> None:
        self.scaling.apply()

    def after_eval(self, epoch: int, metrics: dict, info: dict) -> None:
        info["sgs_scalings"] = {name: s.tolist() for name, s in self.scaling.scalings.items()}
        centers = [m[len(m) // 2][len(m[0]) // 2] for m in info["sgs_scalings"].values() if m]
        metrics["sgs_center"] = float(sum(centers) / len(centers)) if centers else 1.0
        # how far the scalings are from all ones, the twin's (0: this run trained as its twin)
        metrics["sgs_deviation"] = max((float((s - 1).abs().max()) for s in self.scaling.scalings.values()),
                                       default=0.0)

    def state_dict(self) -> dict:
        return self.scaling.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scaling.load_state_dict(state)


def _artifacts(info: dict, result: dict, out):
    from study.artifacts import scaling_maps

    return [] if "sgs_scalings" not in info else scaling_maps(info["sgs_scalings"], out)


FEATURE = Feature(
    name="sgs", options=OPTIONS, hooks=SGSHooks, active=lambda values: values.get("sgs_mode", "off") != "off",
    metrics=("sgs_center", "sgs_deviation"), artifacts=_artifacts,
)


def _twin(values: dict) -> dict:
    # The same ResNet, recipe and seed with scaling off.
    from study.models.resnet import VARIANT as RESNET

    return {**values, "variant": RESNET.name, "sgs_mode": "off"}


# Detkov et al. 2023, CIFAR-100 (test accuracy, SGS / baseline): ResNet-18 is the paper's
# network nearest the CIFAR ResNets; its VGGs gain more (VGG-16 74.9 -> 76.2).
REPORTED_VS_TWIN = (Reported(0.010, "cifar100", 18, "Detkov et al. 2023, Table 2", "78.8 vs 77.8"),)
# A run whose scalings never left all ones trained as its twin (MI not yet computed, or k so
# large that it gives ones): the design moves the first MI pass earlier.
SCALED = Exercise("sgs_deviation", "a scaling away from all ones", knob="sgs_warmup", toward="low")


# The official CIFAR-100 config where it differs from the CIFAR-10 one, which the defaults are.
OFFICIAL_CIFAR100 = {"sgs_interval": 5, "sgs_batches": 2, "weight_decay": 5e-4}


def _official(base: dict) -> dict:
    # no official SVHN or digits config: the CIFAR-10 one (the defaults) stands in
    return dict(OFFICIAL_CIFAR100) if base.get("dataset") == "cifar100" else {}


def variant() -> Variant:
    """The `sgs` variant: the ResNet with scaling on. Made when study.models registers
    the built-ins (it needs the ResNet, which needs nothing of this module)."""
    from study.models.resnet import backbone_options, resnet

    return Variant(
        name="sgs",
        build=resnet,
        # the variant never trains with scaling off: that is its twin; mi is the paper's method
        options=(*backbone_options(), OPTIONS[0].replace(default="mi", choices=MODES[1:])),
        description="spatial gradient scaling (Detkov et al. 2023) on the CIFAR ResNet",
        twin=_twin,
        claims=(
            Claim("sgs_vs_twin", "SGS beats its twin (the same ResNet, scaling off)", "twin", published=True,
                  reported=REPORTED_VS_TWIN, exercised=SCALED),
            Claim("sgs_mi", "MI-learned scaling beats branch-equivalent", "level", metric="val_acc",
                  option="sgs_mode", better="mi", worse="branches", exercised=SCALED),
        ),
        sweeps=(Sweep("sgs_k"), Sweep("sgs_mode")),
        # the defaults are the official CIFAR-10 config (lr 0.1 the trainer's); CIFAR-100 its own
        published=Published(
            options=("sgs_mode", "sgs_k", "sgs_interval", "sgs_batches", "sgs_warmup", "sgs_diagonal_removal", "lr",
                     "weight_decay", "weight_decay_scope"),
            values=_official,
            source="Detkov et al. 2023, the official CIFAR configs: MI-learned scaling with k 5, recomputed every 30 "
                   "epochs on 20 batches (CIFAR-100: every 5 on 2), lr 0.1, weight decay 1e-4 (CIFAR-100: 5e-4) "
                   "on every parameter"),
    )
