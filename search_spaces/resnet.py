"""The baseline: what does the plain CIFAR ResNet reach when its learning rate
and weight decay are tuned with the same budget as every variant?

It searches the shared space only; any gain a variant shows is measured
against this tuned baseline, not against a fixed recipe.
"""

from __future__ import annotations

from .shared import Param

PARAMS: tuple[Param, ...] = ()
