"""SGS's learned scalings: S from the normalised mutual information between neighbouring pixels
of each conv's input, over a few training batches (`mi_scalings`), and when to recompute them."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .scaling import eligible_convs


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
