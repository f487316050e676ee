"""epsilon-ResNet (METHODS.md section 2): how sensitive are its accuracy and
its compression (blocks discarded) to the gate threshold epsilon, and do the
side supervision and the adaptive learning-rate restarts pay off?

epsilon is in absolute units of the conv output, so it is searched on a log
scale around the paper's "good" 1.5-3; `side_weight` 0 switches the side
loss off (the paper uses 0.1).
"""

from __future__ import annotations

from .shared import Param

PARAMS: tuple[Param, ...] = (
    Param("epsilon", "float", 0.1, 5.0, log=True, min_value=0.0, help="gate threshold"),
    Param("side_weight", "float", 0.0, 0.3, min_value=0.0, help="weight of the side-head loss"),
    Param("adaptive_lr", "categorical", choices=(True, False),
          help="restart the schedule when blocks are discarded"),
)
