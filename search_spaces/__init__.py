"""What each variant searches, and over which ranges (docs/methods.md): the shared
lr / weight decay (`shared.py`, which also defines `Param`) plus each variant's
own params (`quotient.py`, `epsilon.py`, `sgs.py`; `resnet.py` adds none).

Only the ranges are declared here; a param's type, limits and choices are its
option's (study.options). study.spaces binds the two into Optuna spaces and
samplers. This package imports nothing of `study`, so the dependency runs one
way: study -> search_spaces.
"""

from __future__ import annotations
