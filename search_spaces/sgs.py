"""Spatial gradient scaling (docs/methods.md): does scaling the 3x3
kernels' gradients help a CIFAR ResNet, and is the MI-learned scaling better
than the fixed scaling equivalent to a named branch set?

`sgs_mode` chooses between the two; the branch set is searched only in
`branches` mode, and the MI sharpening k (log scale: k -> 0 keeps the centre
only, k -> infinity is plain SGD), the recompute interval and the number of
batches the MI pass uses only in `mi` mode. The variant never trains with
SGS off: that is the baseline's job.
"""

from __future__ import annotations

from .shared import Param

PARAMS: tuple[Param, ...] = (
    Param("sgs_mode"),  # the variant's modes: branches and mi (it never trains with scaling off)
    # every branch set but the plain 3x3, whose S is all ones: plain SGD, the twin's job
    Param("sgs_branches", choices=("3x3+1x1", "3x3+3x1+1x1", "acb"), condition="sgs_mode == 'branches'"),
    Param("sgs_k", 0.25, 64.0, log=True, condition="sgs_mode == 'mi'"),
    # log scale: the official configs use 5 and 30 epochs, 2 and 20 batches
    Param("sgs_interval", 1, 30, log=True, condition="sgs_mode == 'mi'"),
    Param("sgs_batches", 1, 20, log=True, condition="sgs_mode == 'mi'"),
)
