"""Quotient networks (METHODS.md section 1): which quotient form and which
bound alpha train best, and do the paper's design rules (quotient activation
in the stem and on the projection shortcut, q passing through 1 at init)
matter at this depth?

`quotient_rule` picks the activation/init rule of METHODS 1a (`unshifted` is
the ablation that breaks the (0, 1) rule); `alpha` is the quotient's upper
bound, which the paper tunes per depth (1.5-1.8) and we search 1.2-4.
"""

from __future__ import annotations

from .shared import Param

RULES = ("paper", "exact_one", "unshifted", "linear_clip")

PARAMS: tuple[Param, ...] = (
    Param("quotient_rule", "categorical", choices=RULES, help="quotient activation / init rule"),
    # alpha > 1: the shifted sigmoid uses ln(alpha - 1)
    Param("alpha", "float", 1.2, 4.0, min_value=1.0, min_open=True,
          help="upper bound of the quotient"),
    Param("quotient_stem", "categorical", choices=(True, False), help="quotient activation in the stem"),
    Param("quotient_shortcut", "categorical", choices=(True, False),
          help="quotient activation on projection shortcuts"),
)
