"""Spatial gradient scaling, SGS (Detkov et al., ICLR 2023; METHODS.md section 3).

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
        sgs.update(mi_scalings(model, batches, k=5.0))

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
    return ks  # type: ignore[return-value]


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


def _bin_index(v: Tensor, bins: Tensor, mask: Tensor | None) -> Tensor:
    """Per-channel uniform bins over [min, max], max in the last bin.

    v is (m, C); bins (C,) float. Returns float bin numbers (exact integers)."""
    if mask is None:
        lo, hi = v.aminmax(dim=0)
    else:
        has = mask.any(0)
        lo = v.masked_fill(~mask, math.inf).amin(0).where(has, 0.0)
        hi = v.masked_fill(~mask, -math.inf).amax(0).where(has, 0.0)
    width = hi - lo
    scale = (bins / width.where(width > 0, 1.0)).where(width > 0, 0.0)
    # v >= lo, so only the top needs clamping (max itself, and rounding);
    # masked-out entries land anywhere and are dropped by the caller
    idx = (v - lo).mul_(scale).floor_()
    return idx.clamp_max_(int(bins[0]) - 1) if mask is None else torch.minimum(idx, bins - 1, out=idx)


def _nmi(x: Tensor, y: Tensor, diagonal_removal: bool) -> Tensor:
    """Normalised MI per channel of paired samples x, y (both m x C)."""
    m, c = x.shape
    if diagonal_removal:
        # Pairs where either value is zero (ReLU's dead half, padding) would
        # pile into the first bins; keep only pairs with both values non-zero.
        mask = (x != 0) & (y != 0)
        n = mask.sum(0).clamp_min(1)
    else:
        mask = None
        n = torch.full((c,), m, device=x.device)
    bins = 1 + torch.ceil(torch.log2(n.double()))  # Sturges
    b = int(bins.max())
    bins = bins.to(x.dtype)
    # joint bin number c*b*b + i*b + j, exact in float32 (far below 2**24)
    flat = _bin_index(x, bins, mask).mul_(b).add_(_bin_index(y, bins, mask))
    flat = flat.add_(torch.arange(c, device=x.device, dtype=x.dtype) * (b * b))
    flat = flat[mask] if mask is not None else flat.reshape(-1)
    joint = torch.bincount(flat.long(), minlength=c * b * b).view(c, b, b).double()
    if diagonal_removal:
        joint.diagonal(dim1=1, dim2=2).zero_()
    h_xy = _entropy(joint, (1, 2))
    h_x = _entropy(joint.sum(2), (1,))
    h_y = _entropy(joint.sum(1), (1,))
    return (h_x + h_y - h_xy) / h_xy  # 0/0 = NaN for a constant channel


def _layer_dependence(
    xp: Tensor,
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    k: float,
    diagonal_removal: bool,
    max_pairs: int,
    gen: torch.Generator,
) -> Tensor:
    """Per-channel sharpened NMI matrices (C x kh x kw) of one padded conv input."""
    n, c, hp, wp = xp.shape
    kh, kw = kernel_size
    rh, rw = kh // 2, kw // 2
    dev = xp.device
    # pixels as rows (N*Hp*Wp, C): gathering a pixel's neighbour is a row lookup
    rows = xp.permute(0, 2, 3, 1).reshape(-1, c)
    total = rows.shape[0]
    if total <= max_pairs:
        anchor = torch.arange(total, device=dev)
    else:  # cap the cost: a seeded random subset of anchor pixels, shared by all displacements
        anchor = torch.randperm(total, generator=gen)[:max_pairs].to(dev)
    ay, ax = (anchor // wp) % hp, anchor % wp

    a = torch.full((c, kh, kw), math.nan, dtype=torch.float64, device=dev)
    a[:, rh, rw] = 1.0
    for dy in range(-rh, rh + 1):
        for dx in range(-rw, rw + 1):
            if (dy, dx) <= (0, 0):  # NMI is symmetric: compute one of each +-d pair
                continue
            sy, sx = dy * dilation[0], dx * dilation[1]
            valid = (ay + sy >= 0) & (ay + sy < hp) & (ax + sx >= 0) & (ax + sx < wp)
            idx = anchor[valid]
            if idx.numel() == 0:
                continue  # window larger than the map: no pairs, NaN
            x = rows.index_select(0, idx)
            y = rows.index_select(0, idx + (sy * wp + sx))
            nmi = _nmi(x, y, diagonal_removal)
            nmik = k * nmi / ((k - 1) * nmi + 1)
            if diagonal_removal:
                nmik = torch.nan_to_num(nmik, nan=0.0)  # official: no usable pairs counts as 0
            a[:, rh + dy, rw + dx] = nmik
            a[:, rh - dy, rw - dx] = nmik
    return a


@torch.no_grad()
def mi_scalings(
    model: nn.Module,
    batches: Iterable,
    k: float = 5.0,
    diagonal_removal: bool = False,
    max_pairs: int = 200_000,
    seed: int = 0,
) -> dict[str, Tensor]:
    """SGS matrices from the mutual information of neighbouring input pixels.

    ``batches`` yields model inputs (or (input, target) tuples), already
    normalised as in training; they are moved to the model's device. For every
    eligible conv: NMI of each pixel of its (padded) input with the pixel at
    each kernel displacement, pooled over images and positions, per channel,
    with Sturges bins over [min, max]; sharpened by ``k``; centre 1; NaN
    channels (constant input) ignored in the channel mean; normalised to mean 1.
    At most ``max_pairs`` anchor pixels per channel are used (seeded random
    subset). A conv whose S is still NaN somewhere (e.g. every input channel
    constant) is left out with a warning, so ``SpatialGradScaling.update``
    keeps its previous S, as the official code does.
    Returns {conv name: float32 kh x kw tensor on the conv weight's device}.
    """
    if not (isinstance(k, (int, float)) and math.isfinite(k) and k > 0):
        raise ValueError(f"k (sgs_k) must be a finite number > 0, got {k!r}")
    if not (isinstance(max_pairs, int) and max_pairs >= 1):
        raise ValueError(f"max_pairs must be a positive int, got {max_pairs!r}")
    convs = eligible_convs(model)
    for name, conv in convs:
        if conv.kernel_size[0] % 2 == 0 or conv.kernel_size[1] % 2 == 0:
            raise ValueError(f"MI scaling needs odd kernel sizes; conv {name!r} has {conv.kernel_size}")
    if not convs:
        return {}

    captured: dict[str, list[Tensor]] = {name: [] for name, _ in convs}

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, _output) -> None:
            captured[name].append(inputs[0].detach())

        return hook

    handles = [conv.register_forward_hook(hook_for(name)) for name, conv in convs]
    modes = {m: m.training for m in model.modules()}  # restored per module (frozen BN stays eval)
    device = convs[0][1].weight.device
    model.eval()
    try:
        for batch in batches:
            model(_input_of(batch).to(device, non_blocking=True))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode

    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for name, conv in convs:
        inputs = captured.pop(name)
        if not inputs:
            continue  # conv unused by this forward
        xp = _pad_like_conv(conv, torch.cat(inputs).float())
        del inputs
        a = _layer_dependence(xp, conv.kernel_size, conv.dilation, float(k), diagonal_removal, max_pairs, gen)
        del xp
        a = torch.nanmean(a, dim=0)
        if torch.isnan(a).any():
            warnings.warn(f"SGS: no finite mutual information for conv {name!r}; its scaling is left unchanged")
            continue
        out[name] = (a / a.mean()).to(device=conv.weight.device, dtype=torch.float32)
    return out


def scaling_schedule_due(epoch: int, warmup: int, interval: int) -> bool:
    """Whether MI scalings are (re)computed at the start of ``epoch``.

    Epochs count from 0 and the computation happens before the epoch's first
    step: at epoch ``warmup``, then ``warmup + interval``, ``warmup +
    2 * interval``, ... (``interval`` = 0: only once, at ``warmup``). Before
    ``warmup`` S is all ones (plain SGD).
    """
    for label, v, lo in (("epoch", epoch, 0), ("sgs_warmup", warmup, 0), ("sgs_interval", interval, 0)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{label} must be an int >= {lo}, got {v!r}")
    if epoch < warmup:
        return False
    if interval == 0:
        return epoch == warmup
    return (epoch - warmup) % interval == 0


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
    the others. ``apply`` is one fused multiply over the scaled grads.
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
from study.variants import Claim, Feature, Hooks, Variant, register_feature, register_variant  # noqa: E402

MODES = ("off", "branches", "mi")

OPTIONS: tuple[Option, ...] = (
    Option("sgs_mode", str, "off", "spatial gradient scaling: off, branches (S of a branch set), mi (learned)",
           choices=MODES),
    Option("sgs_branches", str, "3x3+3x1+1x1", "branch set whose equivalent S is used (mode branches)",
           choices=tuple(BRANCH_SETS)),
    Option("sgs_k", float, 5.0, "MI sharpening k (1: unchanged; large: plain SGD; small: centre only)",
           low=0.0, low_open=True, high=1e6),
    Option("sgs_warmup", int, 0, "epoch of the first MI computation", low=0),
    Option("sgs_interval", int, 30, "epochs between MI recomputations", low=1),
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
            self.scaling.update(mi_scalings(self.model, self.ctx.mi_batches(epoch), k=cfg.sgs_k,
                                            diagonal_removal=cfg.sgs_diagonal_removal))

    def after_backward(self) -> None:
        self.scaling.apply()

    def after_eval(self, epoch: int, metrics: dict, info: dict) -> None:
        info["sgs_scalings"] = {name: s.tolist() for name, s in self.scaling.scalings.items()}
        centers = [m[len(m) // 2][len(m[0]) // 2] for m in info["sgs_scalings"].values() if m]
        metrics["sgs_center"] = float(sum(centers) / len(centers)) if centers else 1.0

    def state_dict(self) -> dict:
        return self.scaling.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scaling.load_state_dict(state)


def _artifacts(info: dict, result: dict, out):
    from study.artifacts import scaling_maps

    return [] if "sgs_scalings" not in info else scaling_maps(info["sgs_scalings"], out)


register_feature(Feature(
    name="sgs", options=OPTIONS, hooks=SGSHooks, active=lambda values: values.get("sgs_mode", "off") != "off",
    metrics=("sgs_center",), artifacts=_artifacts,
))


def _twin(values: dict) -> dict:
    # The same ResNet, recipe and seed with scaling off.
    return {**values, "variant": "resnet", "sgs_mode": "off"}


def _build(*args, **kwargs):
    from study.models.resnet import resnet

    return resnet(*args, **kwargs)


def _register_variant() -> None:
    from study.models.resnet import backbone_options

    register_variant(Variant(
        name="sgs",
        build=_build,
        options=backbone_options(),
        description="spatial gradient scaling (Detkov et al. 2023) on the CIFAR ResNet",
        twin=_twin,
        defaults={"sgs_mode": "branches"},
        claims=(
            Claim("sgs_vs_twin", "SGS beats its twin (the same ResNet, scaling off)", "twin"),
            Claim("sgs_mi", "MI-learned scaling beats branch-equivalent", "level", metric="val_acc",
                  option="sgs_mode", better="mi", worse="branches"),
        ),
    ))
