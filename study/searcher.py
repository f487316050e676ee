"""The search, driven from the ledger.

Optuna is driven through its ask/tell API: a trial's Optuna number, params and
config go into the ledger before the trial is launched, and its outcome is told
when it ends (COMPLETE only for a trial that trained every epoch; PRUNED at the
epoch ASHA stopped it; FAIL for errors and divergence). The sampler's random
streams are saved after every ask and restored on resume (`SamplerState`).
ASHA's rung records (`Rungs`; Tune's side is in study/driver/backend.py) are
keyed by resstudy's trial ids and rebuilt from the epoch logs on every start, so
a resumed study prunes as an unbroken one would.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

METRIC = "val_acc"


# ---------------------------------------------------------------- Optuna


def optuna_study(storage: Any, name: str, objectives: list[str], sampler: Any):
    import optuna

    directions: list[Literal["maximize"]] = ["maximize"] * len(objectives)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=directions,
                                load_if_exists=True)
    if study.metric_names != objectives:
        study.set_metric_names(list(objectives))
    return study


def ask(study: Any, space: Callable[[Any], dict[str, Any]],
        state: "SamplerState | None" = None) -> tuple[int, dict[str, Any]]:
    """A new Optuna trial: (number, the space's values for it); `state` then records
    where the sampler's random streams stand."""
    trial = study.ask()
    values = space(trial)
    if state is not None:
        state.save(study, asked=trial.number + 1)
    return trial.number, values


def _rngs(sampler: Any, prefix: str = "") -> dict[str, np.random.RandomState]:
    """Every random stream a sampler draws from, by attribute path: samplers nest
    (TPE keeps a RandomSampler for its startup trials, CMA-ES a TPESampler for
    categoricals, QMC a RandomSampler), and each has its own."""
    import optuna

    out: dict[str, np.random.RandomState] = {}
    for name, value in sorted(vars(sampler).items()):
        path = f"{prefix}{name}"
        if isinstance(value, np.random.RandomState):
            out[path] = value
        elif isinstance(getattr(value, "rng", None), np.random.RandomState):  # optuna's LazyRandomState
            out[path] = value.rng
        elif isinstance(value, optuna.samplers.BaseSampler):
            out.update(_rngs(value, f"{path}."))
    return out


class SamplerState:
    """The sampler's random streams, saved (atomically) after every ask and restored
    when the study resumes. A sampler rebuilt from its seed starts its streams
    over, so TPE and random would propose again the configurations already asked;
    restored, a resumed search proposes what the unbroken one would have.

    What the sampler knows beyond its streams (the trials, CMA-ES's optimizer, the
    QMC sequence's position) is in Optuna's storage already. Where the saved
    streams do not match the storage (a kill between Optuna's ask and the save, a
    study begun before this file existed, a damaged file), each stream is re-seeded
    from the search seed and the number of trials asked: never the start over again.
    """

    def __init__(self, path: Path, seed: int | None) -> None:
        self.path, self.seed = Path(path), seed

    def save(self, study: Any, asked: int) -> None:
        from study.ledger import write_json_atomic

        # numpy's stub types get_state() by its legacy=False overload; the default
        # (legacy=True) returns MT19937's tuple
        rngs = {p: _encode(r.get_state()) for p, r in _rngs(study.sampler).items()}  # type: ignore[arg-type]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"asked": asked, "rngs": rngs})

    def restore(self, study: Any) -> str | None:
        """Put the sampler's streams where they stood after the last ask; a one-line
        note when they could only be re-seeded, else None."""
        asked = len(study.get_trials(deepcopy=False))
        if asked == 0:
            return None  # nothing drawn yet: the fresh sampler is the unbroken one
        rngs = _rngs(study.sampler)
        try:
            state = json.loads(self.path.read_text())
            if state.get("asked") != asked:
                why = f"it was saved after trial {state.get('asked')}, Optuna holds {asked}"
            elif set(state.get("rngs", {})) != set(rngs):
                why = "it holds other random streams than this sampler has"
            else:
                for p, r in rngs.items():
                    r.set_state(_decode(state["rngs"][p]))
                return None
        except FileNotFoundError:
            why = "it is missing"
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            why = f"it cannot be read: {type(e).__name__}: {' '.join(str(e).split())[:100]}"
        if self.seed is None:
            return f"sampler state {self.path} not used ({why}); the search is unseeded, its sampler starts afresh"
        for i, (_, r) in enumerate(sorted(rngs.items())):
            r.seed(int(np.random.SeedSequence([self.seed, asked, i]).generate_state(1)[0]))
        return (f"sampler state {self.path} not used ({why}); the sampler is re-seeded from the search seed "
                f"and the {asked} trials asked")


def _encode(state: tuple) -> list:
    kind, keys, pos, has_gauss, cached = state
    return [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def _decode(state: list) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return (str(kind), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))


def frozen_trial(study: Any, number: int):
    """One trial from storage: `study.trials[number]` would load every trial (O(n) per call)."""
    storage = study._storage  # noqa: SLF001
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))  # noqa: SLF001


def replay(study: Any, number: int, space: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The space's values of an existing trial (its stored params are returned, not resampled)."""
    import optuna

    frozen = frozen_trial(study, number)
    return space(optuna.trial.Trial(study, frozen._trial_id))  # noqa: SLF001


def tell(study: Any, number: int, outcome: str, result: dict[str, Any], objectives: list[str],
         attrs: dict[str, Any]) -> None:
    """Record a trial's end in Optuna; a trial Optuna already holds as finished is left as it is."""
    import optuna

    frozen = frozen_trial(study, number)
    if frozen.state.is_finished():
        return
    trial = optuna.trial.Trial(study, frozen._trial_id)  # noqa: SLF001
    for k, v in attrs.items():
        trial.set_user_attr(k, v)
    if outcome == "completed":
        values = [result.get(k) for k in objectives]
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            study.tell(number, values if len(values) > 1 else values[0])
            return
        outcome = "failed"
    if outcome == "pruned":
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(number, state=optuna.trial.TrialState.FAIL)


def report_intermediate(study: Any, number: int, values: dict[int, Any]) -> list[int]:
    """The trial's per-epoch values (epoch -> value) that Optuna does not hold yet, so a
    PRUNED trial sits at the epoch it reached; an epoch it holds is never written again.
    Returns the epochs written."""
    if len(study.directions) > 1:
        return []  # Optuna keeps intermediate values for single-objective studies only
    frozen = frozen_trial(study, number)
    if frozen.state.is_finished():
        return []
    written = []
    for epoch, value in sorted(values.items()):
        if (int(epoch) in frozen.intermediate_values or not isinstance(value, (int, float))
                or not math.isfinite(value)):
            continue
        study._storage.set_trial_intermediate_value(frozen._trial_id, int(epoch), float(value))  # noqa: SLF001
        written.append(int(epoch))
    return written


def park(storage: Any, names: list[str]) -> list[tuple[str, int]]:
    """The RUNNING trials of the named studies (those that exist) set WAITING: the study was
    interrupted, nothing runs, and each goes on at resume. Returns (study, number) of each."""
    import optuna

    parked = []
    for name in names:
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            continue
        for t in storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.WAITING):  # noqa: SLF001
                parked.append((name, t.number))
    return parked


def unpark(study: Any) -> list[int]:
    """The WAITING trials `park` left set RUNNING again, before anything asks: Optuna's
    ask would hand out a WAITING trial as a new one."""
    import optuna

    resumed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        if study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.RUNNING):  # noqa: SLF001
            resumed.append(t.number)
    return resumed


# ---------------------------------------------------------------- ASHA


class Rungs:
    """Asynchronous successive halving over resstudy trial ids (one bracket, as
    Ray's ASHAScheduler by default): at each rung epoch a trial below the
    (1 - 1/rf) quantile of the values recorded there so far stops."""

    def __init__(self, max_t: int, grace_period: int, reduction_factor: float) -> None:
        self.max_t, self.rf = max_t, reduction_factor
        n = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
        self.milestones = [int(grace_period * reduction_factor ** k) for k in reversed(range(n))]
        self.recorded: dict[int, dict[str, float]] = {m: {} for m in self.milestones}

    def seed(self, rid: str, values_by_epoch: dict[int, float]) -> None:
        """Rebuild the records of one trial from its epoch log."""
        for m in self.milestones:
            if m in values_by_epoch and values_by_epoch[m] is not None:
                self.recorded[m][rid] = float(values_by_epoch[m])

    def decide(self, rid: str, epoch: int, value: float | None) -> str:
        if epoch >= self.max_t:
            return "continue"  # the trial ends by itself
        for m in self.milestones:  # descending
            if epoch < m or rid in self.recorded[m]:
                continue
            rec = self.recorded[m]
            action = "continue"
            if rec and value is not None:
                cutoff = np.nanpercentile(list(rec.values()), (1 - 1 / self.rf) * 100)
                if value < cutoff:
                    action = "stop"
            if value is not None:
                rec[rid] = float(value)
            return action
        return "continue"
