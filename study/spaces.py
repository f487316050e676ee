"""Optuna search spaces, one per variant (docs/methods.md), built from the search
ranges in the `search_spaces` package and the options the variants declare.

A space is a define-by-run function `space(trial) -> dict`: it calls
`trial.suggest_*` with TrainConfig field names and returns the whole trial
config it chose (suggested values plus constants), so it plugs straight into
`ray.tune.search.optuna.OptunaSearch(space=...)`, which merges the returned
dict into the config, or into a plain `optuna` objective.

    space = build_space("quotient", {"alpha": {"low": 1.2, "high": 3.0}})
    sampler = make_sampler("tpe", seed=0, variant="quotient")

Every variant searches the shared lr / weight decay (search_spaces/shared.py)
plus its own params (search_spaces/quotient.py, epsilon.py, sgs.py; resnet.py
adds none; a plugin variant its `search` declaration).
Overrides narrow or change a param's range, restrict its choices, or fix it
(`{"value": ...}`: no longer searched, returned as a constant). All overrides
are checked when the space is built, never inside a trial.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import optuna

from search_spaces import shared
from search_spaces.shared import Param
from study.config import variant_options
from study.errors import UserError
from study.options import same_value
from study.variants import get_variant, list_variants

ALGORITHMS = ("tpe", "random", "grid", "cmaes", "qmc")


def variant_params(variant: str) -> list[Param]:
    """The default space of `variant`: the shared params plus those of the module
    `search_spaces.<variant>` (found by name), or of the variant's own `search`
    declaration when there is no such module (a plugin variant); each bound to
    the option it searches."""
    v = get_variant(variant)
    module = f"search_spaces.{variant}"
    try:
        own = importlib.import_module(module).PARAMS
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        own = v.search
    options = variant_options(variant)
    out = []
    for p in (*shared.PARAMS, *own):
        if p.name not in options:
            raise TypeError(f"search space of {variant!r} searches {p.name!r}, which is not one of its options")
        out.append(p.bind(options[p.name]))
    return out


# Derived from the registry on each access by __getattr__, so a variant registered
# later (a plugin) is included; declared here (no value) for the linters.
VARIANTS: tuple[str, ...]
PARAMS: dict[str, list[Param]]


def __getattr__(name: str) -> Any:
    if name == "VARIANTS":
        return tuple(list_variants())
    if name == "PARAMS":
        return {v: variant_params(v) for v in list_variants()}
    raise AttributeError(name)

_NUMERIC_KEYS = ("low", "high", "log", "value")
_CATEGORICAL_KEYS = ("choices", "value")


class SpaceError(UserError, ValueError):
    """A bad variant, override or fixed value. `param` is the offending
    parameter name (None for the variant itself); `section` says whether it
    came from the overrides ("space") or the constants ("fixed")."""

    def __init__(self, message: str, *, variant: str, param: str | None = None,
                 section: str = "space") -> None:
        super().__init__(message)
        self.variant = variant
        self.param = param
        self.section = section


@dataclass
class _Resolved:
    variant: str
    order: list[Param]  # every param of the variant, parents before children
    searched: dict[str, Param] = field(default_factory=dict)  # effective ranges
    fixed: dict[str, Any] = field(default_factory=dict)  # space params fixed by `value`
    constants: dict[str, Any] = field(default_factory=dict)  # extra TrainConfig fields

    def reachable(self, p: Param) -> bool:
        """Whether some choice of the searched/fixed values switches `p` on."""
        cond = p.parent()
        if cond is None:
            return True
        name, required = cond
        if name in self.fixed:
            return same_value(self.fixed[name], required)
        parent = self.searched.get(name)
        return parent is not None and any(same_value(c, required) for c in parent.choices or ())


def space_params(variant: str, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                 fixed: Mapping[str, Any] | None = None) -> list[Param]:
    """The params `variant` searches, with `overrides` applied (fixed ones left
    out). Without overrides this is `PARAMS[variant]`."""
    r = _resolve(variant, overrides, fixed)
    return [r.searched[p.name] for p in r.order if p.name in r.searched]


class SearchSpace:
    """A define-by-run space: `space(trial)` suggests the searched params and
    returns the trial's whole config (suggestions, fixed values, constants and
    `variant`). A module-level class rather than a closure so it pickles:
    Ray Tune pickles its searcher, space included, when it checkpoints."""

    def __init__(self, resolved: _Resolved) -> None:
        self._r = resolved
        self.variant = resolved.variant
        self.params = [resolved.searched[p.name] for p in resolved.order if p.name in resolved.searched]

    def __call__(self, trial: Any) -> dict[str, Any]:
        r = self._r
        values: dict[str, Any] = {}
        for p in r.order:  # parents first, so conditions see their values
            if not p.is_active(values):
                continue
            if p.name in r.fixed:
                values[p.name] = r.fixed[p.name]
            elif p.name in r.searched:
                values[p.name] = _suggest(trial, r.searched[p.name])
        return {"variant": self.variant, **values, **r.constants}

    def __repr__(self) -> str:
        return f"SearchSpace({self.variant!r}, searched={[p.name for p in self.params]})"


def build_space(variant: str, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                fixed: Mapping[str, Any] | None = None) -> SearchSpace:
    """The define-by-run space of `variant`. Raises SpaceError (a ValueError)
    on an unknown variant/param or an invalid override, naming both."""
    return SearchSpace(_resolve(variant, overrides, fixed))


def grid_space(variant: str, overrides: Mapping[str, Mapping[str, Any]] | None = None,
               points: int = 3, fixed: Mapping[str, Any] | None = None) -> dict[str, list]:
    """A grid for optuna's GridSampler: `points` values per numeric param
    (log-spaced where log, ints rounded and deduplicated), every choice of a
    categorical. Conditional params are included whenever they can be switched
    on: GridSampler refuses a suggest call for a name missing from its grid.
    `make_sampler("grid", ...)` also drops the grid points that differ only in
    a switched-off param; a plain GridSampler re-runs those."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"grid points: got {points!r}; allowed: an integer >= 2")
    r = _resolve(variant, overrides, fixed)
    grid: dict[str, list] = {}
    for p in r.order:
        q = r.searched.get(p.name)
        if q is None or not r.reachable(q):
            continue
        grid[q.name] = list(_choices(q)) if q.kind == "categorical" else _grid_values(q, points)
    return grid


def _bounds(p: Param) -> tuple[float | int, float | int]:
    assert p.low is not None and p.high is not None, p.name  # a numeric param declares its range
    return p.low, p.high


def _choices(p: Param) -> tuple[Any, ...]:
    assert p.choices is not None, p.name  # bind() gives every categorical param its choices
    return p.choices


def _grid_values(p: Param, points: int) -> list:
    low, high = _bounds(p)
    lo, hi = float(low), float(high)
    raw = np.geomspace(lo, hi, points) if p.log else np.linspace(lo, hi, points)
    out: list = []
    for v in raw:
        # short decimals read better in result tables; clamp so rounding never
        # leaves the distribution (GridSampler warns on out-of-range values)
        v = min(max(float(f"{v:.4g}"), lo), hi)
        v = int(round(v)) if p.kind == "int" else v
        if v not in out:
            out.append(v)
    return out


class ConditionalGridSampler(optuna.samplers.GridSampler):
    """GridSampler over a space with conditional params, visiting each distinct
    effective configuration once.

    A plain GridSampler enumerates the full product, so for SGS every
    `branches`-mode point is repeated once per (sgs_k, interval, batches)
    combination it never uses. This keeps the first grid point of each class
    of points that agree on every switched-on param. It edits GridSampler's
    private grid list; if that ever changes shape, it degrades to the plain
    sampler (tests/search_spaces check it still deduplicates).
    """

    def __init__(self, search_space: Mapping[str, list], params: list[Param],
                 fixed: Mapping[str, Any] | None = None, seed: int | None = None) -> None:
        super().__init__(search_space, seed=seed)
        names = getattr(self, "_param_names", None)
        grids = getattr(self, "_all_grids", None)
        if names is None or grids is None or not hasattr(self, "_n_min_trials"):
            return
        by_name = {p.name: p for p in params}
        seen: set = set()
        kept = []
        for point in grids:
            values = {**dict(fixed or {}), **dict(zip(names, point))}
            key = tuple(
                (n, v) for n, v in zip(names, point)
                if n not in by_name or by_name[n].is_active(values)
            )
            if key not in seen:
                seen.add(key)
                kept.append(point)
        self._all_grids = kept
        self._n_min_trials = len(kept)

    @property
    def size(self) -> int:
        """Grid points the study visits before it is exhausted."""
        return self._n_min_trials


def make_sampler(algorithm: str, seed: int | None, variant: str,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None, *,
                 fixed: Mapping[str, Any] | None = None, n_startup_trials: int | None = None,
                 grid_points: int = 3) -> optuna.samplers.BaseSampler:
    """A seeded optuna sampler for `build_space(variant, overrides, fixed)`.

    tpe: multivariate, grouped TPE (handles the conditional SGS params) with a
    constant liar for parallel trials; random; grid: ConditionalGridSampler
    over grid_space(..., grid_points); cmaes: CMA-ES on the numeric params,
    categoricals by a seeded TPE; qmc: scrambled Sobol, categoricals random.
    `n_startup_trials` applies to tpe and cmaes (None: optuna's default).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"search algorithm: got {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"sampler seed: got {seed!r}; allowed: an integer or None")
    if n_startup_trials is not None and (
        isinstance(n_startup_trials, bool) or not isinstance(n_startup_trials, int) or n_startup_trials < 0
    ):
        raise ValueError(f"n_startup_trials: got {n_startup_trials!r}; allowed: an integer >= 0 or None")
    r = _resolve(variant, overrides, fixed)  # validates even where the sampler ignores the space
    startup: dict[str, Any] = {} if n_startup_trials is None else {"n_startup_trials": n_startup_trials}

    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm == "grid":
        grid = grid_space(variant, overrides, grid_points, fixed)
        return ConditionalGridSampler(grid, r.order, r.fixed, seed=seed)
    if algorithm == "tpe":
        with warnings.catch_warnings():  # multivariate/group are flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=True, constant_liar=True, **startup
            )
    if algorithm == "cmaes":
        if importlib.util.find_spec("cmaes") is None:
            raise ImportError(
                "search algorithm 'cmaes' needs the 'cmaes' package (pip install cmaes); "
                f"the others ({', '.join(a for a in ALGORITHMS if a != 'cmaes')}) need nothing extra"
            )
        return optuna.samplers.CmaEsSampler(
            seed=seed,
            independent_sampler=optuna.samplers.TPESampler(seed=seed),
            warn_independent_sampling=False,
            **startup,
        )
    with warnings.catch_warnings():  # QMCSampler is flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(
            qmc_type="sobol",
            scramble=True,
            seed=seed,
            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
            warn_independent_sampling=False,
            warn_asynchronous_seeding=False,
        )


def _suggest(trial: Any, p: Param) -> Any:
    if p.kind == "float":
        low, high = _bounds(p)
        return trial.suggest_float(p.name, float(low), float(high), log=p.log)
    if p.kind == "int":
        low, high = _bounds(p)
        return trial.suggest_int(p.name, int(low), int(high), log=p.log)
    return trial.suggest_categorical(p.name, list(_choices(p)))


# ---------------------------------------------------------------- validation


def _resolve(variant: str, overrides: Mapping[str, Any] | None,
             fixed: Mapping[str, Any] | None) -> _Resolved:
    if variant not in list_variants():
        raise SpaceError(f"unknown variant {variant!r}; allowed: {', '.join(list_variants())}", variant=variant)
    order = variant_params(variant)
    by_name = {p.name: p for p in order}
    overrides = {} if overrides is None else overrides
    fixed = {} if fixed is None else fixed
    if not isinstance(overrides, Mapping):
        raise SpaceError(f"variant {variant!r}: overrides must be a mapping param -> "
                         f"{{low, high, log, choices, value}}, got {overrides!r}", variant=variant)
    if not isinstance(fixed, Mapping):
        raise SpaceError(f"variant {variant!r}: fixed must be a mapping field -> value, got {fixed!r}",
                         variant=variant, section="fixed")
    ov = dict(overrides)
    for name in ov:
        if name not in by_name:
            raise SpaceError(
                f"variant {variant!r}: unknown search parameter {name!r}; "
                f"{variant!r} searches: {', '.join(by_name)}",
                variant=variant, param=name,
            )

    r = _Resolved(variant, list(order))
    fields = set(variant_options(variant))
    for key, value in fixed.items():
        if key == "variant" or key not in fields:
            allowed = "any option except 'variant'" if key == "variant" else \
                f"options of {variant!r}: {', '.join(sorted(fields - {'variant'}))}"
            raise SpaceError(f"variant {variant!r}: fixed field {key!r} is not allowed; allowed: {allowed}",
                             variant=variant, param=key, section="fixed")
        if key in by_name:
            # fixing a searched param through `fixed` is the same as {"value": v}
            if key in ov:
                raise SpaceError(
                    f"variant {variant!r}: {key!r} is given both as a fixed value ({value!r}) and as a "
                    f"search override ({ov[key]!r}); give one", variant=variant, param=key, section="fixed")
            try:
                r.fixed[key] = _check_value(variant, by_name[key], value)
            except SpaceError as e:
                e.section = "fixed"
                raise
        else:
            try:
                r.constants[key] = variant_options(variant)[key].check(value)
            except UserError as e:
                raise SpaceError(f"variant {variant!r}: fixed {e}", variant=variant, param=key,
                                 section="fixed") from None

    for p in order:
        if p.name in r.fixed:
            continue
        if p.name not in ov:
            r.searched[p.name] = p
            continue
        result = _apply(variant, p, ov[p.name])
        if isinstance(result, Param):
            r.searched[p.name] = result
        else:
            r.fixed[p.name] = result[0]

    for name in list(ov) + [k for k in fixed if k in by_name]:
        p = by_name[name]
        cond = p.parent()
        if cond is not None and not r.reachable(p):  # reachable() is True without a condition
            pname, required = cond
            raise SpaceError(
                f"variant {variant!r}: parameter {name!r} is used only when {p.condition}, "
                f"but the overrides never choose {pname} = {required!r}",
                variant=variant, param=name, section="space" if name in ov else "fixed")
    return r


def _apply(variant: str, p: Param, ov: Any) -> Param | tuple[Any]:
    """An override applied to `p`: a narrowed Param, or (value,) when fixed."""
    where = f"variant {variant!r}, parameter {p.name!r}"
    allowed_keys = _CATEGORICAL_KEYS if p.kind == "categorical" else _NUMERIC_KEYS
    if not isinstance(ov, Mapping):
        raise SpaceError(f"{where}: override must be a mapping with keys {list(allowed_keys)}, got {ov!r}",
                         variant=variant, param=p.name)
    unknown = [k for k in ov if k not in allowed_keys]
    if unknown:
        raise SpaceError(f"{where}: unknown override key(s) {unknown}; allowed for a {p.kind} "
                         f"parameter: {list(allowed_keys)}", variant=variant, param=p.name)
    if "value" in ov:
        if len(ov) > 1:
            raise SpaceError(f"{where}: 'value' fixes the parameter and cannot be combined with "
                             f"{sorted(k for k in ov if k != 'value')}", variant=variant, param=p.name)
        return (_check_value(variant, p, ov["value"]),)

    if p.kind == "categorical":
        choices = ov.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices:
            raise SpaceError(f"{where}: choices={choices!r}; allowed: a non-empty list drawn from "
                             f"{list(_choices(p))}", variant=variant, param=p.name)
        chosen = [_choice(variant, p, c, "choice") for c in choices]
        if len(set(map(repr, chosen))) != len(chosen):
            raise SpaceError(f"{where}: choices={list(choices)} repeat a value", variant=variant, param=p.name)
        return dataclasses.replace(p, choices=tuple(chosen))

    low, high, log = ov.get("low", p.low), ov.get("high", p.high), ov.get("log", p.log)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log={log!r}; allowed: true or false", variant=variant, param=p.name)
    for key, v in (("low", low), ("high", high)):
        if not _is_number(v, p.kind) or not p.within_limits(v):
            raise SpaceError(f"{where}: {key}={v!r}; allowed: {p.limits_text()}",
                             variant=variant, param=p.name)
    if low >= high:
        raise SpaceError(f"{where}: low={low!r} must be below high={high!r} "
                         "(to fix the parameter use {value: ...})", variant=variant, param=p.name)
    if log and (low < 1 if p.kind == "int" else low <= 0):
        raise SpaceError(f"{where}: log scale needs low > 0{' (>= 1 for an integer)' if p.kind == 'int' else ''}, "
                         f"got low={low!r}", variant=variant, param=p.name)
    cast = int if p.kind == "int" else float
    return dataclasses.replace(p, low=cast(low), high=cast(high), log=log)


def _is_number(v: Any, kind: str | None) -> bool:
    if isinstance(v, bool):
        return False
    if kind == "int":
        return isinstance(v, int)
    return isinstance(v, (int, float)) and math.isfinite(v)


def _choice(variant: str, p: Param, value: Any, what: str) -> Any:
    """The declared choice `value` is (options.same_value), so a trial gets the option's
    own value (16, not a 16.0 read from YAML); else SpaceError."""
    allowed = p.allowed or _choices(p)
    for c in allowed:
        if same_value(value, c):
            return c
    sep = "" if what.endswith("=") else " "
    raise SpaceError(f"variant {variant!r}, parameter {p.name!r}: {what}{sep}{value!r} is not allowed; allowed: "
                     f"{list(allowed)}", variant=variant, param=p.name)


def _check_value(variant: str, p: Param, value: Any) -> Any:
    where = f"variant {variant!r}, parameter {p.name!r}"
    if p.kind == "categorical":
        return _choice(variant, p, value, "value=")
    if not _is_number(value, p.kind) or not p.within_limits(value):
        raise SpaceError(f"{where}: value={value!r}; allowed: {p.limits_text()}",
                         variant=variant, param=p.name)
    return float(value) if p.kind == "float" else value


__all__ = [
    "ALGORITHMS", "PARAMS", "VARIANTS", "ConditionalGridSampler", "Param", "SearchSpace", "SpaceError",
    "build_space", "grid_space", "make_sampler", "space_params", "variant_params",
]
