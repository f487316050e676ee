"""Words for what the report shows: metrics, parameters and table columns.

Parameters are described by their option's own help (study.options), so a
new option gets a label without an entry here; metrics and the analysis
tables' columns are named here, once, for the report and the figures."""

from __future__ import annotations

import functools
import re

METRICS = {
    "val_acc": "validation accuracy", "test_acc": "test accuracy", "best_val_acc": "best validation accuracy",
    "train_acc": "training accuracy", "test_acc_last": "test accuracy (last epoch)",
    "compressed_test_acc": "test accuracy after compression", "discarded_ratio": "share of blocks discarded",
    "param_reduction": "parameter reduction", "q_dead_frac": "dead quotient share",
}

# Report table headers; a column missing here is shown under a spaced-out name.
COLUMNS = {
    "experiment": "experiment", "variant": "variant", "subject": "variant", "depth": "depth", "phase": "phase",
    "param": "parameter", "fidelity": "fidelity", "level": "level", "metric": "metric", "source": "runs from",
    "n": "n", "n_trials": "trials", "n_completed": "completed", "n_diverged": "diverged", "n_failed": "failed",
    "n_baseline": "seeds (baseline)", "baseline": "baseline", "mean": "mean", "baseline_mean": "baseline mean",
    "std": "sd", "diff": "difference", "estimate": "estimate", "ci": "95% CI", "p_value": "p",
    "p_adj": "p (Holm)", "verdict": "verdict", "settle": "what would settle it", "basis": "basis",
    "claim": "claim", "test": "test", "seeds": "seeds", "divergence_rate": "divergence rate",
    "completed": "completed", "pruned": "pruned", "diverged": "diverged",
    "failed": "failed", "best_val_acc": "best validation accuracy", "trial_id": "trial",
    "discarded_ratio": "share of blocks discarded", "param_reduction": "parameter reduction",
    "acc": "validation accuracy", "val_acc": "validation accuracy", "test_acc": "test accuracy",
    "pareto": "on the front", "pick": "picked", "result": "result", "trend_p": "trend p",
}

_LONGEST_HELP = 45  # longer help reads as a sentence, not a label: the option's name alone


def metric_label(name: str) -> str:
    return METRICS.get(str(name), str(name).replace("_", " "))


def column_label(name: str) -> str:
    name = str(name)
    return COLUMNS.get(name) or _rate_labels().get(name) or METRICS.get(name, name.replace("_", " "))


@functools.lru_cache(maxsize=None)
def _rate_labels() -> dict[str, str]:
    """The rates the variants declare (quotient's dead-signal rate), by column."""
    from .declared import level_rates

    return {r.column: r.label for r in level_rates()}


@functools.lru_cache(maxsize=None)
def _option_help(name: str) -> str:
    try:
        from study.config import owners, variant_options

        for v in owners(name):
            return variant_options(v)[name].help
    except Exception:  # a study of a plugin not installed here: the name alone
        return ""
    return ""


def param_label(name: str) -> str:
    """"initial SGD learning rate (lr)": the option's help up to its first
    colon or parenthesis, then the name a spec uses; the name alone when the
    help is long or missing."""
    short = re.split(r":| \(", _option_help(str(name)), maxsplit=1)[0].strip()
    return f"{short} ({name})" if short and len(short) <= _LONGEST_HELP else str(name)


def fidelity_label(fidelity: str) -> str:
    return "final (completed trials)" if fidelity == "final" else f"{fidelity} (ASHA rung)"


__all__ = ["METRICS", "COLUMNS", "metric_label", "column_label", "param_label", "fidelity_label"]
