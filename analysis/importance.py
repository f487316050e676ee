"""Hyper-parameter importance per experiment: fANOVA and PED-ANOVA (optuna.importance).

Only COMPLETE trials enter: pruned trials report an early-epoch val_acc
(low fidelity) and would make "stopped early" look like "bad config".
Conditional parameters: both evaluators are given only the parameters
present, with the same distribution, in every complete trial (Optuna's
intersection search space), so a parameter searched in some trials only is
left out rather than imputed; the result's `dropped` lists what was left out.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator
from optuna.search_space import intersection_search_space
from optuna.trial import FrozenTrial, TrialState

from .load import searched_list, searched_params
from .sensitivity import subject_of, usable
from .spaces import param_info

MIN_TRIALS = 10  # fewer complete trials: no importance, a note instead
PED_ANOVA_QUANTILE = 0.25  # target quantile: "what gets a trial into the top quarter"
COLUMNS = ["param", "fanova", "ped_anova"]


@dataclass
class Importance:
    experiment: str
    variant: str
    n: int  # complete trials used
    table: pd.DataFrame  # param, fanova, ped_anova (each normalised to sum 1)
    source: str  # "optuna.db" | "results"
    note: str | None = None
    dropped: list[str] = field(default_factory=list)
    fidelity: str = "final"  # "final" (complete trials) or "epoch N" (every trial at that ASHA rung)

    def to_frame(self) -> pd.DataFrame:
        t = self.table.copy()
        t.insert(0, "experiment", self.experiment)
        t.insert(1, "variant", self.variant)
        t.insert(2, "fidelity", self.fidelity)
        t["n"] = self.n
        t["source"] = self.source
        return t


@contextlib.contextmanager
def _quiet():
    """Silence Optuna's per-study INFO lines and experimental warnings, then restore."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            yield
    finally:
        optuna.logging.set_verbosity(level)


def _py(v):
    return v.item() if isinstance(v, np.generic) else v


def _distribution(variant: str, name: str, values: pd.Series, spec: dict | None = None) -> BaseDistribution:
    """The declared search distribution, widened to cover the values seen."""
    info = param_info(variant, name, values, spec)
    v = values.dropna()
    if not info.numeric:
        seen = [_py(x) for x in v.unique()]
        choices = list(info.choices) if info.choices is not None else []
        choices += [c for c in sorted(seen, key=str) if c not in choices]
        return CategoricalDistribution(choices)
    lo = min(x for x in (info.low, float(v.min())) if x is not None)
    hi = max(x for x in (info.high, float(v.max())) if x is not None)
    if info.kind == "int":
        return IntDistribution(int(math.floor(lo)), int(math.ceil(hi)), log=info.log and lo >= 1)
    return FloatDistribution(lo, hi, log=info.log and lo > 0)


def study_from_frame(df: pd.DataFrame, *, metric: str = "val_acc", variant: str | None = None,
                     params: list[str] | None = None, spec: dict | None = None) -> tuple[optuna.Study, list[str]]:
    """In-memory Optuna study (direction maximize) from a results table.

    Uses completed search trials; params default to those searched (and, if
    conditional, active) in every one of them. Distributions come from search_spaces when it knows the
    variant, else are inferred. Returns (study, params left out).
    """
    ok = usable(df, metric)
    variant = variant or (subject_of(ok) if len(ok) else "")
    # a trial's params: what it searched, less conditional params whose condition failed
    infos = {p: param_info(variant, p, ok[p], spec) for p in searched_params(ok) if p in ok.columns}
    active = {p: i.active(ok) for p, i in infos.items()}
    lists = [{p for p in searched_list(v) if p in active and active[p].loc[i]} for i, v in ok["searched"].items()]
    union = sorted(set().union(*lists)) if lists else []
    common = sorted(set.intersection(*lists)) if lists else []
    if params is None:
        params = [p for p in common if p in ok.columns]
    missing = [p for p in params if p not in ok.columns]
    if missing:
        raise ValueError(f"params {missing} are not columns of the results table")
    dropped = [p for p in union if p not in params]
    dists = {p: _distribution(variant, p, ok[p], spec) for p in params}
    with _quiet():
        study = optuna.create_study(direction="maximize")
    study.add_trials([
        optuna.trial.create_trial(value=float(r[metric]), params={p: _py(r[p]) for p in params},
                                  distributions=dists, user_attrs={"seed": _py(r.get("seed"))})
        for _, r in ok.iterrows()])
    return study, dropped


def complete_only(study: optuna.Study) -> tuple[optuna.Study, list[str]]:
    """In-memory copy of `study` holding its COMPLETE trials restricted to the
    params all of them share. Returns (copy, params left out)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    space = intersection_search_space(done) if done else {}
    union = sorted({p for t in done for p in t.params})
    with _quiet():
        copy = optuna.create_study(directions=study.directions)
    copy.add_trials([
        optuna.trial.create_trial(values=t.values, params={p: t.params[p] for p in space},
                                  distributions=dict(space), user_attrs=t.user_attrs)
        for t in done])
    return copy, [p for p in union if p not in space]


def param_importances(study: optuna.Study, *, seed: int = 0,
                      min_trials: int = MIN_TRIALS) -> tuple[pd.DataFrame, str | None]:
    """(table, note): fANOVA and PED-ANOVA importances of a study's complete
    trials; an empty table and a note when there are too few trials/params."""
    done: list[FrozenTrial] = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n = len(done)
    if n < min_trials:
        return pd.DataFrame(columns=COLUMNS), f"{n} complete trial(s); importance needs >= {min_trials}"
    space = intersection_search_space(done)
    varying = [p for p, d in space.items() if not d.single()]
    if not varying:
        return pd.DataFrame(columns=COLUMNS), "no parameter varied across the complete trials"
    # PED-ANOVA compares the top quantile's parameter density with all trials'.
    # With tens of trials Optuna's 10% default leaves 4-5 trials on top: on
    # planted 40-trial studies an irrelevant param then scored > 0.2 in 13% of
    # draws, vs 3% with the top quarter. Optuna advises >= 5 on top, hence 5/n.
    q = min(0.5, max(PED_ANOVA_QUANTILE, 5.0 / n))
    # a multi-objective study (epsilon: val_acc and param_reduction) lists
    # val_acc first; importance is of that objective. PED-ANOVA with a custom
    # target looks for what makes the target LOW, so it gets -val_acc.
    multi = len(study.directions) > 1
    with _quiet():
        fan = optuna.importance.get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=seed), params=varying,
            target=(lambda t: t.values[0]) if multi else None)
        ped = optuna.importance.get_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator(target_quantile=q), params=varying,
            target=((lambda t: -t.values[0]) if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
                    else (lambda t: t.values[0])) if multi else None)
    table = pd.DataFrame({"param": varying, "fanova": [fan.get(p, 0.0) for p in varying],
                          "ped_anova": [ped.get(p, 0.0) for p in varying]})
    return table.sort_values("fanova", ascending=False, ignore_index=True), None


def _result(exp: str, variant: str, study: optuna.Study, dropped: list[str], source: str,
            seed: int, fidelity: str = "final") -> Importance:
    table, note = param_importances(study, seed=seed)
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if note and fidelity != "final":
        note = note.replace("complete trial(s)", f"trial(s) reached {fidelity}")
    if dropped and note is None:
        note = f"left out (not searched in every complete trial): {', '.join(dropped)}"
    return Importance(exp, variant, n, table, source, note, dropped, fidelity)


def importances_from_results(df: pd.DataFrame, *, metric: str = "val_acc", seed: int = 0,
                             spec: dict | None = None, fidelity: str = "final") -> list[Importance]:
    """Per experiment, from the results table (completed search trials)."""
    out = []
    for exp, g in df.groupby("experiment", sort=True):
        variant = subject_of(g)
        study, dropped = study_from_frame(g, metric=metric, variant=variant, spec=spec)
        out.append(_result(str(exp), variant, study, dropped, "results", seed, fidelity))
    return out


def importances_by_rung(df: pd.DataFrame, history: pd.DataFrame, spec: dict | None, *, metric: str = "val_acc",
                        seed: int = 0) -> list[Importance]:
    """Per experiment and ASHA rung: importances over every search trial that
    reached the rung, scored by its val_acc at that epoch (history.parquet).
    Pruned trials count here: at their rung they trained as long as the rest."""
    from .sensitivity import at_epoch, rung_epochs

    out = []
    for e in rung_epochs(spec):
        at = at_epoch(df, history, e, metric)
        if len(at):
            out += importances_from_results(at, metric=metric, seed=seed, spec=spec, fidelity=f"epoch {e}")
    return out


def importances_from_studies(studies: dict[str, optuna.Study], variants: dict[str, str] | None = None,
                             *, seed: int = 0) -> list[Importance]:
    """Per Optuna study (one per experiment), from the study's own trials."""
    out = []
    for name in sorted(studies):
        copy, dropped = complete_only(studies[name])
        trials = studies[name].get_trials(deepcopy=False)
        variant = (variants or {}).get(name) or (str(trials[0].user_attrs.get("variant", "")) if trials else "")
        out.append(_result(name, variant, copy, dropped, "optuna.db", seed))
    return out


def study_importances(study_dir, results: pd.DataFrame | None = None, *, seed: int = 0,
                      spec: dict | None = None) -> tuple[list[Importance], str | None]:
    """(importances, note): from the study's optuna.db when it can be read,
    else from results.parquet (the note says why)."""
    from .load import load_optuna_studies, load_results

    df = load_results(study_dir) if results is None else results
    try:
        studies = load_optuna_studies(study_dir)
    except (FileNotFoundError, ValueError) as e:
        return (importances_from_results(df, seed=seed, spec=spec),
                f"importance from results.parquet, not the Optuna DB: {e}")
    variants = {str(e): subject_of(g) for e, g in df.groupby("experiment")}
    return importances_from_studies(studies, variants, seed=seed), None


def importance_frame(results: list[Importance]) -> pd.DataFrame:
    frames = [r.to_frame() for r in results if len(r.table)]
    if not frames:
        return pd.DataFrame(columns=["experiment", "variant", "fidelity", *COLUMNS, "n", "source"])
    return pd.concat(frames, ignore_index=True)


__all__ = ["Importance", "study_from_frame", "complete_only", "param_importances", "importances_from_results",
           "importances_by_rung", "importances_from_studies", "study_importances", "importance_frame", "MIN_TRIALS"]
