"""Quotient networks (docs/methods.md): which quotient form and which
bound alpha train best, and do the paper's design rules (quotient activation
in the stem and on the projection shortcut, q passing through 1 at init)
matter at this depth?

`quotient_rule` picks the activation/init rule of docs/methods.md (`unshifted` is
the ablation that breaks the (0, 1) rule); `alpha` is the quotient's upper
bound, which the paper tunes per depth (1.5-1.8) and we search 1.2-4.
"""

from __future__ import annotations

from .shared import Param

PARAMS: tuple[Param, ...] = (
    Param("quotient_rule"),
    Param("alpha", 1.2, 4.0),  # the paper tunes 1.5-1.8 per depth; the range bound (0, 2) was best
    Param("quotient_stem"),
    Param("quotient_shortcut"),
)
