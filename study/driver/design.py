"""The designed experiments of one experiment (variant, depth): which trials answer
each of the variant's claims and draw its sensitivity sweeps, planned from the
spec's `design` section and the best search trial's configuration. Pure: no Ray,
no MLflow, no files; the driver creates, runs and records the trials.

    claims = claims_plan(spec, "quotient", 20, best)    # {claim key: plan entry}
    trials = arm_trials(claims["quotient_rule"], [0, 1, 2])
    sweeps = sweeps_plan(spec, "quotient", 20, best)    # {option: sweep entry}
    more = extra_seeds(spec, used=[0, 1, 2])            # the next seed, or []

A trial is (claim, arm, config): the claim's key (or "sweep:<option>"), the arm's
label and the full resolved TrainConfig dict it runs, seed included. Two trials
with equal configs are one trial: an arm whose configuration is the best one is
the repeat at that seed, the best one's twin is the twin, and a sweep's level at
the best value is the repeat again (`reuse` names which).

Arms (each differs from its base configuration in exactly what it names):
- twin / noninferior claim: "variant" (the best configuration) and "twin" (its
  matched twin, TrainConfig.twin);
- level claim: "<option>=<better>" and "<option>=<worse>", the best configuration
  with only that option changed;
- a claim flagged `published` also gets "<key>@published": the same comparison on
  the variant's published configuration ("published" and "published twin").
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping

from study import spaces as search_space_lib
from study.config import TrainConfig, variant_options
from study.variants import SMALLEST_EFFECT, Claim, DeclarationError, Variant, get_variant

Trial = tuple[str, str, dict[str, Any]]
PUBLISHED = "@published"
SWEEP = "sweep:"
SEED_LIMIT = 2**32 - 1  # the seed option's bound


# ------------------------------------------------------------------ seeds and budget


def max_seeds(spec: Any) -> int:
    """The most seeds a claim gets: design.max_seeds, else the seeds of `seeds`."""
    d = spec.design
    return len(spec.seeds) if d is None or d.max_seeds is None else d.max_seeds


def seed_sequence(spec: Any) -> list[int]:
    """Every seed a claim may run, in order: `seeds` (the minimum), then the integers
    after the largest of them that `seeds` does not hold, up to max_seeds."""
    out = list(spec.seeds)
    nxt = max(out) + 1
    while len(out) < max_seeds(spec):
        if nxt > SEED_LIMIT:
            nxt = 0  # past the seed's range: the smallest unused ones
        if nxt not in out:
            out.append(nxt)
        nxt += 1
    return out


def extra_seeds(spec: Any, used: Iterable[int], n: int = 1) -> list[int]:
    """The next `n` seeds of seed_sequence that `used` lacks, in order; fewer (or none)
    once a claim has them all."""
    used = set(used)
    return [s for s in seed_sequence(spec) if s not in used][:n]


def sweep_seeds(spec: Any) -> list[int]:
    """The seeds every sweep runs at: the first design.sweeps.seeds of `seeds`."""
    return list(spec.seeds[:spec.design.sweeps.seeds])


def budget_stop(spec: Any, *, trials_used: int, hours_used: float, next_trials: int = 1) -> str | None:
    """None while the design's budget lets the extra seeds add `next_trials` more trials,
    having added `trials_used` trials in `hours_used` wall-clock hours; else why not."""
    b = spec.design.budget
    if b.trials is not None and trials_used + next_trials > b.trials:
        return (f"budget: {trials_used} of the {b.trials} extra-seed trials of design.budget.trials used; "
                f"{next_trials} more would pass it")
    if b.hours is not None and hours_used >= b.hours:
        return f"budget: {hours_used:.2f} of the {b.hours:g} hours of design.budget.hours used"
    return None


# ------------------------------------------------------------------ claims


def claims_plan(spec: Any, variant: str, depth: int, best_config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """One entry per claim of `variant`, then one per claim flagged `published` when the
    variant declares its published configuration and design.published is on
    ("<key>@published"). An entry:

        {"claim": key, "text": ..., "kind": "twin" | "level" | "noninferior",
         "metric": ..., "margin": ..., "gain_metric": ...,
         "base": "best" | "published",
         "compare": [A, B],                  # A: the arm claimed better
         "configs": {arm: {option: value}},  # what each arm sets over its base
         "full": {arm: config},              # the arm's full resolved config (the base's seed)
         "reuse": {arm: "repeat" | "twin"},  # arms that are the repeat's or the twin's trials
         "partner": {arm: arm},              # a twin arm and the arm it is the twin of
         "skip": None | why the claim cannot be tested here (then no arms),
         "source": None | where the paper states its configuration (published entries),
         "reported": the line "smaller than reported" is drawn at (reported_line),
         "exercise": None | how the study checks the claim was exercised (Claim.exercised)}
    """
    v = _checked(variant)
    best = _config(best_config)
    twin = best.twin()
    refs = {"repeat": best.to_dict(), "twin": None if twin is None else twin.to_dict()}
    out = {c.key: _claim_entry(v, c, best, "best", refs) for c in v.claims}
    pub = published_config(spec, variant, depth)
    if pub is not None and spec.design is not None and spec.design.published:
        for c in v.claims:
            if c.published:
                out[c.key + PUBLISHED] = _claim_entry(v, c, _config(pub), "published", refs)
    for c in v.claims:
        for key in (c.key, c.key + PUBLISHED):
            if key in out:
                out[key]["reported"] = reported_line(spec, c, depth)
                out[key]["exercise"] = _exercise(c, out[key])
    return out


def reported_line(spec: Any, claim: Claim, depth: int) -> dict[str, Any]:
    """The effect a claim is judged against in this study (Claim.judged_against)."""
    sesoi = spec.design.smallest_effect if spec.design is not None else SMALLEST_EFFECT
    return claim.judged_against(spec.dataset, depth, sesoi)


def _exercise(c: Claim, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    e = c.exercised
    if e is None or entry["skip"] is not None:
        return None
    return {"metric": e.metric, "text": e.text, "above": e.above, "knob": e.knob, "toward": e.toward,
            "steps": e.steps, "arm": entry["compare"][0]}


def exercise_levels(spec: Any, variant: str, knob: str, now: Any, toward: str, steps: int) -> list[Any]:
    """The values the design tries for `knob` when a claim was not exercised at `now`:
    `steps` points from `now` to the end of its searched range (the spec's, else the
    variant's default space; log-spaced where the search is, else even), the range's
    end last. [] where `now` is at that end already or the knob has no range."""
    p = _search_param(spec, variant, knob)
    opt = variant_options(variant)[knob]
    low, high, log = (p.low, p.high, p.log) if p is not None and p.kind != "categorical" else (opt.low, opt.high, False)
    end = high if toward == "high" else low
    if end is None or now is None or (end <= now if toward == "high" else end >= now):
        return []
    if log and now > 0 and end > 0:
        pts = [math.exp(math.log(now) + (math.log(end) - math.log(now)) * (i + 1) / steps) for i in range(steps)]
    else:
        pts = [now + (end - now) * (i + 1) / steps for i in range(steps)]
    out = [float(f"{x:.4g}") for x in pts[:-1]] + [end]
    return [round(x) if opt.kind is int else x for x in out]


def arm_trials(entry: Mapping[str, Any], seeds: Iterable[int]) -> list[Trial]:
    """The trials of a claim's arms at `seeds`, both arms at each seed (paired)."""
    return [(entry["claim"], arm, _seeded(entry["full"][arm], s)) for s in seeds for arm in entry["compare"]]


def _claim_entry(v: Variant, c: Claim, base: TrainConfig, which: str, refs: dict) -> dict[str, Any]:
    key = c.key + (PUBLISHED if which == "published" else "")
    entry: dict[str, Any] = {"claim": key, "text": c.text, "kind": c.kind, "metric": c.metric, "margin": c.margin,
                             "gain_metric": c.gain_metric, "base": which, "compare": [], "configs": {}, "full": {},
                             "reuse": {}, "partner": {}, "skip": None,
                             # (published arms are planned only where the variant declares them)
                             "source": v.published.source if which == "published" and v.published else None}
    prefix = "published " if which == "published" else ""
    if c.kind in ("twin", "noninferior"):
        twin = base.twin()
        if twin is None:
            return {**entry, "skip": f"variant {v.name!r} has no twin"}
        a = "published" if which == "published" else "variant"
        b = prefix + "twin"
        arms = {a: base, b: twin}
        entry["partner"] = {b: a}
        entry["configs"] = {a: _published_values(v, base) if which == "published" else {}, b: _diff(base, twin)}
    elif c.kind == "level":
        assert c.option is not None  # check_declarations: a level claim names an option the variant takes
        why = _inactive(v.name, c.option, base.to_dict())
        if why:
            return {**entry, "skip": why}
        a, b = prefix + _label(c.option, c.better), prefix + _label(c.option, c.worse)
        arms = {a: base.replace(**{c.option: c.better}), b: base.replace(**{c.option: c.worse})}
        if c.where is not None and not all(c.where(cfg.to_dict()) for cfg in arms.values()):
            return {**entry, "skip": f"at the {which} configuration {c.option} = {c.better!r} and {c.worse!r} "
                                     f"are one network; the claim holds only where {c.where_text}"}
        entry["configs"] = {a: {c.option: c.better}, b: {c.option: c.worse}}
    else:
        raise DeclarationError(f"variant {v.name!r}: claim {c.key!r} has kind {c.kind!r}; allowed: twin, level, "
                               "noninferior")
    entry["compare"] = [a, b]
    entry["full"] = {arm: cfg.to_dict() for arm, cfg in arms.items()}
    entry["reuse"] = {arm: name for arm, cfg in entry["full"].items() for name, ref in refs.items()
                      if ref is not None and _same_trial(cfg, ref)}
    return entry


# ------------------------------------------------------------------ the published configuration


def published_config(spec: Any, variant: str, depth: int) -> dict[str, Any] | None:
    """The paper's own configuration of `variant` at `depth` in this study (the search's
    seed), as a full resolved config: the study's base configuration of the experiment
    (dataset, epochs, `train`, the variant's `fixed`) with every option the variant's
    Published declaration names at its declared default, then its `values`. None
    where the variant declares no published configuration."""
    v = _checked(variant)
    if v.published is None:
        return None
    base = _clean(spec.trial_base_config(variant, depth))
    options = variant_options(variant)
    values = {**base, **{name: options[name].default for name in v.published.options}}
    if v.published.values is not None:
        values.update(v.published.values(dict(base)))
    return TrainConfig.from_dict(values).to_dict()


def _published_values(v: Variant, cfg: TrainConfig) -> dict[str, Any]:
    assert v.published is not None  # called for the published arms only
    names = [*v.published.options, *(v.published.values(cfg.to_dict()) if v.published.values else {})]
    return {name: cfg.get(name) for name in dict.fromkeys(names)}


# ------------------------------------------------------------------ sweeps


def sweeps_plan(spec: Any, variant: str, depth: int, best_config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """One entry per sweep `variant` declares ({} when design.sweeps is off):

        {"claim": "sweep:<option>", "option": ..., "levels": [value, ...],   # the best value among them
         "best_value": ..., "seeds": [...],
         "labels": {json value: arm label}, "full": {json value: config},
         "skip": None | why it cannot run here (then no levels)}

    A numeric option's levels: design.sweeps.levels points over its search range (the
    spec's, else the variant's default space; log-spaced where the search is), plus
    the best value; a categorical one's: its search choices (the same fallbacks).
    Explicit levels of the declaration win."""
    v = _checked(variant)
    if spec.design is None or not spec.design.sweeps.enabled:
        return {}
    best = _config(best_config)
    values = best.to_dict()
    out = {}
    for sweep in v.sweeps:
        option = sweep.option
        entry: dict[str, Any] = {"claim": SWEEP + option, "option": option, "levels": [],
                                 "best_value": values[option], "seeds": sweep_seeds(spec), "labels": {}, "full": {},
                                 "skip": _inactive(variant, option, values)}
        if entry["skip"] is None:
            levels = _levels(spec, variant, option, sweep.levels, values[option])
            entry["levels"] = levels
            entry["labels"] = {_key(x): _label(option, x) for x in levels}
            entry["full"] = {_key(x): best.replace(**{option: x}).to_dict() for x in levels}
        out[option] = entry
    return out


def sweep_trials(entry: Mapping[str, Any], seeds: Iterable[int] | None = None) -> list[Trial]:
    """The trials of a sweep: every level at each of its seeds (or `seeds`)."""
    seeds = entry["seeds"] if seeds is None else seeds
    return [(entry["claim"], entry["labels"][k], _seeded(cfg, s)) for s in seeds for k, cfg in entry["full"].items()]


def _levels(spec: Any, variant: str, option: str, declared: tuple | None, best_value: Any) -> list[Any]:
    opt = variant_options(variant)[option]
    if declared is not None:
        levels = [opt.check(x) for x in declared]
    else:
        p = _search_param(spec, variant, option)
        if p is not None and p.kind == "categorical":
            levels = list(p.choices)
        elif opt.choices is not None:
            levels = list(opt.choices)
        elif p is not None:
            levels = _spread(p.low, p.high, spec.design.sweeps.levels, p.log, p.kind == "int")
        elif opt.low is not None and opt.high is not None and not opt.low_open:
            levels = _spread(opt.low, opt.high, spec.design.sweeps.levels, False, opt.kind is int)
        else:
            raise DeclarationError(f"variant {variant!r}: sweep of {option!r} has no levels: {option!r} is not "
                                   "searched and its bounds are open; fix: Sweep(option, levels=(...))")
    if not any(_same(x, best_value) for x in levels):
        levels.append(best_value)
    if opt.choices is None:
        levels.sort()
    return levels


def _spread(low: float, high: float, n: int, log: bool, integer: bool) -> list[Any]:
    out: list[Any] = []
    for i in range(n):
        t = i / (n - 1)
        x = math.exp(math.log(low) + t * (math.log(high) - math.log(low))) if log else low + t * (high - low)
        x = min(max(float(f"{x:.4g}"), low), high)  # short decimals read better in tables
        x = round(x) if integer else x
        if x not in out:
            out.append(x)
    return out


def _search_param(spec: Any, variant: str, option: str):
    """The option's search Param: the study's (its overrides applied), else the variant's
    default space's (the option is fixed), else None (never searched)."""
    vs = spec.variants.get(variant)
    searched = search_space_lib.space_params(variant, spec.space_overrides(variant), vs.fixed if vs else None)
    for p in (*searched, *search_space_lib.variant_params(variant)):
        if p.name == option:
            return p
    return None


# ------------------------------------------------------------------ round one


def designed_trials(spec: Any, variant: str, depth: int, best_config: Mapping[str, Any]) -> list[Trial]:
    """Round one of the experiment's design: every claim's arms at each of `seeds` and
    every sweep at its seeds. A config may appear more than once (one trial), and may
    be the repeat's or the twin's."""
    out = [t for e in claims_plan(spec, variant, depth, best_config).values() if e["skip"] is None
           for t in arm_trials(e, spec.seeds)]
    return out + [t for e in sweeps_plan(spec, variant, depth, best_config).values() for t in sweep_trials(e)]


def count_new(spec: Any, variant: str, depth: int, best_config: Mapping[str, Any] | None = None) -> int:
    """The trials round one adds to the repeat and twin phases: distinct configs that
    are neither. Without `best_config` (before the search) an estimate, for a stand-in
    best: every searched number at the middle of its range (geometric for a log one),
    every categorical at its default."""
    if spec.design is None or not spec.repeat_best:
        return 0
    best = _config(best_config if best_config is not None else _stand_in(spec, variant, depth))
    fixed = set()
    for s in spec.seeds:
        cfg = best.replace(seed=s)
        fixed.add(_key(cfg.to_dict()))
        twin = cfg.twin()
        if twin is not None:
            fixed.add(_key(twin.to_dict()))
    keys = {_key(cfg) for _, _, cfg in designed_trials(spec, variant, depth, best.to_dict())}
    return len(keys - fixed)


def _stand_in(spec: Any, variant: str, depth: int) -> dict[str, Any]:
    values = _clean(spec.trial_base_config(variant, depth))
    vs = spec.variants[variant]
    for p in search_space_lib.space_params(variant, spec.space_overrides(variant), vs.fixed):
        if p.kind != "categorical":
            low, high = p.low, p.high
            assert low is not None and high is not None  # a numeric param declares its range
            mid = math.sqrt(low * high) if p.log else (low + high) / 2
            values[p.name] = round(mid) if p.kind == "int" else float(f"{mid:.4g}")
    return TrainConfig.from_dict(values).to_dict()


# ------------------------------------------------------------------ helpers


def check_declarations(variant: str) -> Variant:
    """The variant, once its design declarations name options it takes (DeclarationError)."""
    v = get_variant(variant)
    options = variant_options(variant)
    where = f"variant {variant!r}"
    for c in v.claims:
        if c.kind == "level" and c.option not in options:
            raise DeclarationError(f"{where}: claim {c.key!r} is about option {c.option!r}, which it does not take; "
                                   f"allowed: {', '.join(options)}")
        ex = c.exercised
        if ex is not None and ex.knob is not None and ex.knob not in options:
            raise DeclarationError(f"{where}: claim {c.key!r} is exercised by moving {ex.knob!r}, which it does not "
                                   f"take; allowed: {', '.join(options)}")
        if ex is not None and ex.toward not in ("high", "low"):
            raise DeclarationError(f"{where}: claim {c.key!r}: Exercise.toward is {ex.toward!r}; allowed: high, low")
        for r in c.reported:
            if not (isinstance(r.value, (int, float)) and math.isfinite(r.value) and r.source):
                raise DeclarationError(f"{where}: claim {c.key!r}: a reported effect needs a finite value and its "
                                       f"source; got {r.value!r} from {r.source!r}")
    for s in v.sweeps:
        if s.option not in options:
            raise DeclarationError(f"{where}: sweep of {s.option!r}, which it does not take; allowed: "
                                   f"{', '.join(options)}")
        for x in s.levels or ():
            options[s.option].check(x)
    for name in v.published.options if v.published else ():
        if name not in options:
            raise DeclarationError(f"{where}: published configuration sets {name!r}, which it does not take; "
                                   f"allowed: {', '.join(options)}")
    return v


_checked = check_declarations


def _inactive(variant: str, option: str, values: Mapping[str, Any]) -> str | None:
    """Why `option` does nothing at `values` (its search condition is off), or None."""
    for p in search_space_lib.variant_params(variant):
        cond = p.parent()
        if p.name == option and cond is not None and not p.is_active(values):  # active without a condition
            parent = cond[0]
            return (f"{option} is used only when {p.condition}; the configuration has "
                    f"{parent} = {values.get(parent)!r}")
    return None


def _config(values: Mapping[str, Any]) -> TrainConfig:
    return TrainConfig.from_dict(_clean(values))


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if not k.startswith("_")}


def _seeded(config: Mapping[str, Any], seed: int) -> dict[str, Any]:
    return TrainConfig.from_dict(dict(config)).replace(seed=seed).to_dict()


def _diff(base: TrainConfig, other: TrainConfig) -> dict[str, Any]:
    b = base.to_dict()
    return {k: x for k, x in other.to_dict().items() if k not in b or not _same(b[k], x)}


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _same_trial(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal configs apart from the seed: the same trial at every seed."""
    return _key({**a, "seed": 0}) == _key({**b, "seed": 0})


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _label(option: str, value: Any) -> str:
    text = json.dumps(value) if isinstance(value, bool) else f"{value:.6g}" if isinstance(value, float) else str(value)
    return f"{option}={text}"


__all__ = [
    "PUBLISHED", "SWEEP", "Trial", "arm_trials", "budget_stop", "check_declarations", "claims_plan", "count_new",
    "designed_trials", "exercise_levels", "extra_seeds", "max_seeds", "published_config", "reported_line",
    "seed_sequence", "sweep_seeds", "sweep_trials", "sweeps_plan",
]
