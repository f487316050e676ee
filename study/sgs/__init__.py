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

One module per role: scaling (branch sets, S applied to the gradients), mi (the
mutual-information pass), feature (the training feature, its hooks and the `sgs`
variant). scaling and mi depend on torch and numpy only.
"""

from __future__ import annotations

from .feature import FEATURE, MODES, OPTIONS, SGSHooks, variant
from .mi import mi_scalings, scaling_schedule_due
from .scaling import (BRANCH_SETS, SpatialGradScaling, apply_scaling, branch_masks, branch_scaling, branch_scalings,
                      eligible_convs)

__all__ = [
    "BRANCH_SETS", "FEATURE", "MODES", "OPTIONS", "SGSHooks", "SpatialGradScaling", "apply_scaling", "branch_masks",
    "branch_scaling", "branch_scalings", "eligible_convs", "mi_scalings", "scaling_schedule_due", "variant",
]
