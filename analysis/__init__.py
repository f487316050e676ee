"""Analysis of a finished study directory: sensitivity curves, parameter
importance, variant-vs-baseline comparison, plots and one offline HTML report.

Entry point: ``analysis.report.analyze(study_dir)`` (also ``analysis.analyze``).
Modules: load (read a study dir), spaces (how params were searched), stats,
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
