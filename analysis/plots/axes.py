"""What every figure shares: colours, titles wrapped to the figure's width, log axes
labelled at 1-2-5 steps only."""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from matplotlib.ticker import FixedLocator, NullFormatter

from ..labels import metric_label, param_label
from ..sensitivity import Curve

if TYPE_CHECKING:
    pass


STATUS_COLORS = {"completed": "#1f77b4", "pruned": "#b0b0b0", "diverged": "#d62728", "failed": "#ff7f0e"}
BAND = "rgba(31,119,180,0.2)"
MAX_LOG_TICKS = 6
CHARS_PER_INCH = 13  # a 10 pt title: how many characters fit in an inch of figure width


def _label(c: Curve) -> str:
    what = f"{metric_label(c.metric)} vs {param_label(c.param)}"
    return f"{c.experiment}: {what}" if c.experiment else what


def _wrap(text: str, inches: float) -> str:
    return textwrap.fill(text, max(20, int(inches * CHARS_PER_INCH)))


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick positions for a log axis over [lo, hi]: 1-2-5 steps, thinned to at
    most MAX_LOG_TICKS, at least two (finer steps inside a narrow range)."""
    lo, hi = min(lo, hi), max(lo, hi)
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for subs in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), tuple(range(1, 10))):
        ticks = [float(f"{m * 10.0**e:.6g}") for e in decades for m in subs if lo <= m * 10.0**e <= hi]
        if len(ticks) >= 2:
            break
    if len(ticks) > MAX_LOG_TICKS:
        ticks = ticks[::math.ceil(len(ticks) / MAX_LOG_TICKS)]
    return ticks if len(ticks) >= 2 else [float(f"{lo:.2g}"), float(f"{hi:.2g}")]


def _log_axis(ax, lo: float, hi: float, axis: str = "x") -> None:
    """A log axis whose labels do not overlap: plain numbers at log_ticks, no minor labels."""
    a = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    ticks = log_ticks(lo, hi)
    a.set_major_locator(FixedLocator(ticks))
    a.set_ticklabels([f"{t:g}" for t in ticks])
    a.set_minor_formatter(NullFormatter())


def _plotly_log_axis(fig: go.Figure, lo: float, hi: float, **rc) -> None:
    ticks = log_ticks(lo, hi)
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks], **rc)
