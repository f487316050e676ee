"""Analysis of a study directory: the claims table (each variant's declared
claims with an estimate, a range-respecting 95% interval, a Holm-adjusted
verdict and what would settle it), sensitivity curves and importances at every
ASHA rung and at the end, epsilon's Pareto front, plots and one offline HTML
report that opens on the claims.

Entry point: ``analysis.report.analyze(study_dir, out_dir=None, log_to_mlflow=True,
tracking_uri=None)`` (also ``analysis.analyze``). Modules: load (read or find
a study dir), spaces (the study's own search space), claims (statistics from
study.stats, which the driver shares),
sensitivity, importance, compare, plots, report.
"""

from __future__ import annotations


def __getattr__(name: str):
    # Lazy: `import analysis` stays cheap; plotting/optuna load on first use.
    if name == "analyze":
        from .report import analyze

        return analyze
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


__all__ = ["analyze"]
