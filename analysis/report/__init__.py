"""The report of one study: `analyze` (build) writes its figures, tables and one
self-contained HTML page (page), opening on the conclusion (conclusion) and the
claims (claims_html), with each studied variant's declared trade-offs (tradeoffs),
then logs it to MLflow (mlflow_log)."""

from __future__ import annotations

from .build import analyze
from .claims_html import _claims_html, _side_by_side, verdict_class
from .conclusion import conclusion, conclusion_items, settle_cost
from .mlflow_log import log_artifacts, log_claims
from .page import CONCLUSION_NAME, REPORT_NAME, Sections, trial_counts

__all__ = ["analyze", "conclusion", "conclusion_items", "settle_cost", "log_artifacts", "log_claims", "trial_counts",
           "verdict_class", "Sections", "REPORT_NAME", "CONCLUSION_NAME", "_claims_html", "_side_by_side"]
