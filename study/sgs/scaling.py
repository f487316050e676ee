"""SGS's scalings S and their application: a named branch set's equivalent S (`S = sum_i
a_i^2 M_i`, the multi-branch reparameterisation the lemma says it equals), the convs it
applies to, and the transform that multiplies each conv weight gradient by its S after
`loss.backward()` (its coupled weight decay stays unscaled). Depends on torch only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
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
