"""Figures: each plot as a matplotlib Figure (PNG) and a plotly Figure (HTML).

Matplotlib figures are built with the object API (matplotlib.figure.Figure),
which renders through the Agg canvas without touching pyplot's global
backend or figure registry: safe in servers, tests and notebooks alike.

What every figure keeps to (axes): axes and legends in words (labels.py), log
axes labelled at 1-2-5 steps only (default minor labels overlap), titles wrapped
to the figure's width, categories in reading order (numbers numerically), and a
panel drawn only when it holds information (a rate that is zero everywhere is
said in the title instead). One module per subject: sensitivity, tradeoffs,
trials (importances, learning curves), claims (differences, budget, comparison).
"""

from __future__ import annotations

from .axes import MAX_LOG_TICKS, STATUS_COLORS, log_ticks
from .claims import (budget_plotly, budget_png, comparison_plotly, comparison_png, differences_plotly,
                     differences_png)
from .sensitivity import (curve_plotly, curve_png, curves_plotly, curves_png, levels_drawable, levels_plotly,
                          levels_png, sweep_plotly, sweep_png)
from .tradeoffs import tradeoff_plotly, tradeoff_png
from .trials import importance_plotly, importance_png, learning_plotly, learning_png

__all__ = [
    "MAX_LOG_TICKS", "STATUS_COLORS", "budget_plotly", "budget_png", "comparison_plotly", "comparison_png",
    "curve_plotly", "curve_png", "curves_plotly", "curves_png", "differences_plotly", "differences_png",
    "importance_plotly", "importance_png", "learning_plotly", "learning_png", "levels_drawable", "levels_plotly",
    "levels_png", "log_ticks", "sweep_plotly", "sweep_png", "tradeoff_plotly", "tradeoff_png",
]
