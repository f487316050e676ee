"""epsilon-ResNet (docs/methods.md): how sensitive are its accuracy and
its compression (blocks discarded) to the gate threshold epsilon, and do the
side supervision and the adaptive learning-rate restarts pay off?

epsilon is in absolute units of the conv output, so it is searched on a log
scale around the paper's "good" 1.5-3; `side_weight` 0 switches the side
loss off (the paper uses 0.1).
"""

from __future__ import annotations

from .shared import Param

PARAMS: tuple[Param, ...] = (
    Param("epsilon", 0.1, 5.0, log=True),
    Param("side_weight", 0.0, 0.3),
    Param("adaptive_lr"),
)
