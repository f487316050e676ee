"""The variant registry: everything a variant is, declared once in its own module.

A variant module declares one Variant (``study/models/quotient.py``: its
``VARIANT``, registered with the other built-ins in study.models' BUILTINS
order); a plugin file anywhere ends with one registration::

    register_variant(Variant(
        name="toy", build=toy, options=OPTIONS, hooks=ToyHooks,
        twin=toy_twin, metrics=("gamma_mean", ...), claims=(...)))

and nothing else in resstudy names it: TrainConfig fields, CLI flags, spec
validation (objectives included), search-space limits, result columns,
artifacts, analysis axes, the claims table, the lr schedules it brings and the
variant's own report sections and level rates are derived from the registry.
The registry imports no variant: the built-ins are loaded by the function the
package root hands it (set_builtins), at the first lookup. Registration checks
the declaration against the builder (DeclarationError): every option with
target="model" must be a keyword of the builder, and every keyword of the
builder an option with target="model". A *feature* (SGS) is a group of
training options and hooks that any variant can switch on.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from study.errors import UserError
from study.options import Option


class Hooks:
    """One trial's training hooks; the trainer makes one instance per trial, after
    the model, and calls every method at its point of the loop. The defaults do
    nothing, so a variant overrides only what it changes. Hot-path methods
    (`loss`, `after_backward`) must not synchronise with the host."""

    def __init__(self, model: Any, cfg: Any, ctx: Any) -> None:
        # ctx: study.train.TrialContext (data, device, amp, channels_last, evaluate)
        self.model, self.cfg, self.ctx = model, cfg, ctx

    def loss(self, out: Any, y: Any, ce: Callable[[Any, Any], Any]) -> tuple[Any, Any] | None:
        """(loss, logits) for a model output, or None to leave it to the next hook
        (the trainer's default is ce(out, y), out)."""
        return None

    def before_epoch(self, epoch: int) -> None:
        """Before epoch `epoch` (0-based) trains."""

    def after_backward(self) -> None:
        """After backward (and grad clipping), before the optimiser step."""

    def end_epoch(self, epoch: int, metrics: dict[str, Any], info: dict[str, Any], schedule: Any) -> None:
        """After epoch `epoch` trained, before validation: add metrics (numbers)
        and info (JSON-able data for artifacts); may restart the schedule."""

    def after_eval(self, epoch: int, metrics: dict[str, Any], info: dict[str, Any]) -> None:
        """After validation of epoch `epoch`."""

    def final(self, metrics: dict[str, Any], evaluate_test: Callable[[Any], tuple[float, float]]) -> None:
        """At the last epoch: extra test metrics; `evaluate_test(model)` gives (loss, acc)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


ArtifactFn = Callable[[dict, dict, Path], list]
# What every builder is passed first, by position; then the options that target the model, by keyword.
BUILD_ARGS = ("depth", "num_classes", "in_channels")


SMALLEST_EFFECT = 0.01  # design.smallest_effect's default: one accuracy point


@dataclass(frozen=True)
class Reported:
    """An effect a claim's paper reports: `value`, the claimed arm minus the other in the
    claim's metric units (accuracy 0.0026 is 0.26 points), measured on `dataset` at
    `depth` (None: the paper's network is no CIFAR ResNet of a depth), from `source`
    (paper and table or figure). `arms`: the two numbers it is the difference of."""

    value: float
    dataset: str
    depth: int | None
    source: str
    arms: str = ""
    metric: str = "test accuracy"


@dataclass(frozen=True)
class Exercise:
    """How a study checks that a claim was exercised at all: `metric` of the claimed
    arm's runs (arm A: the variant, or the better level) averages above `above`;
    `text` says what that means ("blocks discarded"). Where it does not, the design may
    move `knob` toward `toward` ("high" or "low") within its searched range, at most
    `steps` times, re-running the arms there; the record says what it did."""

    metric: str
    text: str
    above: float = 0.0
    knob: str | None = None
    toward: str = "high"
    steps: int = 2


@dataclass(frozen=True)
class Claim:
    """A claim of the variant's paper that a study can test.

    kind "twin": the variant beats its matched twin on `metric` (paired by seed).
    kind "level": over the search trials, `option` = `better` beats `option` = `worse`.
    kind "noninferior": the variant loses at most `margin` of `metric` against its
    twin while `gain_metric` (e.g. discarded_ratio) is above 0.
    `where(values)`: for a level claim, whether its two levels are different
    networks at a trial's option values (quotient's `paper` and `unshifted` are one
    function at alpha = 2); trials where it is False are left out, and the claims
    table says so in `where_text`'s words.
    `reported`: the effects its paper reports (one per dataset and depth it gives);
    a study judges the claim against the one nearest its own dataset and depth
    (study.driver.design.reported_for). Empty: the paper gives no figure, and the study's
    design.smallest_effect stands in. `exercised`: the check that the claim's arms
    differed in what it is about (Exercise), None where the arms' options do."""

    key: str
    text: str
    kind: str
    metric: str = "test_acc"
    option: str | None = None
    better: Any = None
    worse: Any = None
    margin: float | None = None
    gain_metric: str | None = None
    where: Callable[[dict[str, Any]], bool] | None = None
    where_text: str = ""
    # about the paper's method as a whole: a study also runs the variant's `published`
    # configuration against its own twin, beside the tuned comparison
    published: bool = False
    reported: tuple[Reported, ...] = ()
    exercised: Exercise | None = None

    def reported_at(self, dataset: str, depth: int) -> tuple[Reported | None, str]:
        """(the reported effect nearest a study's dataset and depth, how near it is in
        words); (None, "") where the paper reports none. Same dataset first (nearest
        depth), else the first dataset the claim lists."""
        if not self.reported:
            return None, ""
        same = [r for r in self.reported if r.dataset == dataset]
        pool = same or [r for r in self.reported if r.dataset == self.reported[0].dataset]
        r = min(pool, key=lambda x: abs((x.depth if x.depth is not None else depth) - depth))
        if same and r.depth in (None, depth):
            return r, "the study's dataset and depth"
        if same:
            return r, f"the study's dataset, the nearest depth the paper reports ({r.depth}; the study's is {depth})"
        at = f" at depth {r.depth}" if r.depth is not None else ""
        return r, f"another dataset ({r.dataset}{at}): the paper reports none for {dataset}"

    def judged_against(self, dataset: str, depth: int, smallest_effect: float = SMALLEST_EFFECT) -> dict[str, Any]:
        """The line "smaller than reported" is drawn at in a study of `dataset` at `depth`,
        as plain data: the reported effect nearest them (reported_at), or where the
        paper reports none `smallest_effect` (for a non-inferiority claim: the margin
        less that, capped at no loss).

            {"value": 0.0026, "kind": "reported" | "smallest effect", "source": ..., "dataset": ...,
             "depth": ..., "arms": "93.10 vs 92.84", "metric": ..., "match": how near it is, in words}"""
        r, match = self.reported_at(dataset, depth)
        null = -float(self.margin or 0.0) if self.kind == "noninferior" else 0.0
        if r is not None:
            if not r.value > null:
                raise DeclarationError(f"claim {self.key!r}: reported effect {r.value:g} ({r.source}) is not above "
                                       f"the claim's null {null:g}; allowed: a value above it")
            return {"value": float(r.value), "kind": "reported", "source": r.source, "dataset": r.dataset,
                    "depth": r.depth, "arms": r.arms, "metric": r.metric, "match": match}
        value = min(0.0, null + smallest_effect) if self.kind == "noninferior" else smallest_effect
        return {"value": float(value), "kind": "smallest effect", "dataset": None, "depth": None, "arms": "",
                "metric": self.metric, "match": "",
                "source": f"no published figure: design.smallest_effect {smallest_effect:g}"}


@dataclass(frozen=True)
class Sweep:
    """A one-factor sensitivity sweep of one of the variant's options around the
    best configuration (everything else held at the best). `levels` None: a
    categorical option's declared choices, or points spread over a numeric
    option's search range (log-spaced where its search is); the spec's
    `design.sweeps` says how many points and seeds."""

    option: str
    levels: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class Published:
    """The paper's own configuration, for the "as published" arms of claims flagged
    `published`: the `options` the paper sets, each at the variant's declared
    default (which is the paper's value; a depth-dependent default comes from the
    variant's `resolve`), then `values(base)` for what depends on the study's base
    configuration (a recipe per dataset). The rest of the configuration (dataset,
    epochs, schedule, augmentation, precision, width) is the study's own.
    `source`: where in the paper or its code the values come from."""

    options: tuple[str, ...]
    source: str
    values: Callable[[dict[str, Any]], dict[str, Any]] | None = None


@dataclass(frozen=True)
class LevelRate:
    """A rate the analysis adds to each level of a searched categorical option, over
    the variant's search trials: the share of the trials reporting `metric` whose
    final value exceeds `above`. `column` names it in the levels table, `label` in
    the report and the figures; `event` is what such a trial did, in words ("lost
    its signal"); `text` defines it for the report."""

    column: str
    metric: str
    above: float
    label: str
    event: str
    text: str


@dataclass(frozen=True)
class DeclaredTradeoff:
    """What a variant's method costs in accuracy for what it gains, as its declaration
    states it: the analysis draws it as one report section (analysis.tradeoffs).

    variant: whose experiments (the subject of an experiment's rows).
    knob: the searched option that turns the method up; gains: the metrics it
    gains, one curve each against the knob, in the figure's order (each a share
    in [0, 1] when `shares`); size: the gain on the Pareto front's x axis (an
    experiment whose results lack it has no trade-off).
    title: the report section's title; what: the gains in a word, to open the
    section ("Compression"); figure: the figures' title after the experiment
    ("epsilon trade-offs") and name: the figure and table file names' stem.
    nothing: what a trial with no gain did not do ("discarded a block");
    toward: which way to search the knob for a gain ("higher"); objectives: the
    search objectives that also maximise a gain (the variant's own)."""

    variant: str
    knob: str
    gains: tuple[str, ...]
    size: str
    title: str
    what: str
    figure: str
    name: str
    nothing: str
    toward: str = "higher"
    objectives: tuple[str, ...] = ()
    shares: bool = True

    def __post_init__(self) -> None:
        if self.size not in self.gains:
            raise ValueError(f"size: {self.size!r} is not one of the gains {list(self.gains)}")


@dataclass(frozen=True)
class StepSchedule:
    """A learning-rate schedule of steps that a variant declares under its own name, a
    value of the trainer's `schedule` option beside step and cosine. `steps`: (fraction
    of the schedule's length, lr factor), each from its fraction on (a fraction above 1
    applies once a restart extended training). A restart (hooks call
    `schedule.restart(epoch)`) runs the steps again from that epoch at `restart_length` x
    the length; with `extends`, training then runs on to the restart + the full length,
    at most max_epochs (null: `cap` x epochs). `help` says what it is, for the option."""

    name: str
    steps: tuple[tuple[float, float], ...]
    help: str = ""
    restart_length: float = 0.5
    extends: bool = False
    cap: int = 1


@dataclass(frozen=True)
class Variant:
    """One registered variant.

    build: ``build(depth, num_classes, in_channels, **model options) -> nn.Module``.
    options: the variant's own options (backbone ones included, with its defaults).
    resolve: fills options that depend on the depth (quotient's alpha).
    twin: the matched twin of a resolved config (flat dict) as a resolved config
      dict (another variant, or this one with the method switched off); None
      for the baseline itself.
    metrics: per-epoch metrics its hooks add; final_metrics: added at the end.
    search: search params (search_spaces.shared.Param) used when the
      top-level search_spaces/ has no module of this name (a plugin variant).
    artifacts: ``fn(info, result, out_dir) -> [paths]`` for MLflow.
    objectives: metrics a search may maximise beside val_acc (a spec's
      `objectives`); each one of its metrics.
    level_rates: rates the analysis adds per level of a categorical option (LevelRate).
    report_sections: ``fn(report)`` each, called by `resstudy analyze` for a study
      that ran the variant, to add the variant's own sections (analysis.report.Sections);
      they import what they draw with when called, so the trainer never does.
    tradeoffs: what the method costs for what it gains (DeclaredTradeoff), as data the
      report draws as a section of its own.
    schedules: lr schedules the variant brings (StepSchedule), by name a value of the
      trainer's `schedule` option for any variant.
    baseline: the variant the others are compared with (and a config naming none trains).
    """

    name: str
    build: Callable[..., Any]
    options: tuple[Option, ...]
    description: str = ""
    hooks: type[Hooks] = Hooks
    resolve: Callable[[dict[str, Any], int], dict[str, Any]] | None = None
    twin: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    metrics: tuple[str, ...] = ()
    final_metrics: tuple[str, ...] = ()
    search: tuple[Any, ...] = ()
    artifacts: ArtifactFn | None = None
    claims: tuple[Claim, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)  # feature/trainer option defaults for this variant
    objectives: tuple[str, ...] = ()
    level_rates: tuple[LevelRate, ...] = ()
    report_sections: tuple[Callable[[Any], None], ...] = ()
    sweeps: tuple[Sweep, ...] = ()  # the designed experiments' sensitivity sweeps
    published: Published | None = None  # the paper's configuration (None: no "as published" arms)
    schedules: tuple[StepSchedule, ...] = ()  # lr schedules it brings (any variant may then train with them)
    tradeoffs: tuple[DeclaredTradeoff, ...] = ()  # drawn by the analysis as report sections
    # the variant the others are compared with, and the one a config that names none trains
    baseline: bool = False

    @property
    def option_map(self) -> dict[str, Option]:
        return {o.name: o for o in self.options}

    def model_option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options if o.target == "model")


@dataclass(frozen=True)
class Feature:
    """Training options and hooks any variant can switch on (SGS). `active(values)`
    says whether a resolved config uses it."""

    name: str
    options: tuple[Option, ...]
    hooks: type[Hooks]
    active: Callable[[dict[str, Any]], bool]
    metrics: tuple[str, ...] = ()
    artifacts: ArtifactFn | None = None


_VARIANTS: dict[str, Variant] = {}
_FEATURES: dict[str, Feature] = {}


class UnknownVariantError(UserError, ValueError):
    pass


class DeclarationError(UserError, ValueError):
    """A variant or feature declaration that cannot work (a plugin's, most often); the
    message names the variant, the option and the fix."""


def register_variant(variant: Variant) -> Variant:
    """Add `variant` to the registry, after the built-ins (study.models.BUILTINS),
    once its declaration is checked against its builder (DeclarationError)."""
    _ensure_builtins()
    old = _VARIANTS.get(variant.name)
    if old is not None and old.build is not variant.build:
        raise DeclarationError(f"variant {variant.name!r} is already registered; allowed: another name")
    _check_builder(variant)
    _check_metrics(variant)
    _check_schedules(variant)
    _VARIANTS[variant.name] = variant
    return variant


def register_feature(feature: Feature) -> Feature:
    for o in feature.options:
        if o.target == "model":
            raise DeclarationError(f"feature {feature.name!r}: option {o.name!r} is declared with target=\"model\", "
                                   "but a feature's options never reach a builder; allowed: target=\"train\"")
    _FEATURES[feature.name] = feature
    return feature


def _check_builder(v: Variant) -> None:
    """The builder takes BUILD_ARGS, then exactly the options that target the model:
    an option it cannot take would fail every trial, and a keyword no model option
    supplies would be searched (or set) without ever reaching the network."""
    try:
        params = inspect.signature(v.build).parameters
    except (TypeError, ValueError):  # no signature to read (a C function): nothing to compare
        return
    P = inspect.Parameter
    positional = [n for n, p in params.items() if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    first = positional[:len(BUILD_ARGS)]
    keywords = [n for n, p in params.items() if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY) and n not in first]
    build = getattr(v.build, "__qualname__", repr(v.build))
    model = v.model_option_names()
    where = f"variant {v.name!r}"
    if len(first) < len(BUILD_ARGS) and not any(p.kind is P.VAR_POSITIONAL for p in params.values()):
        raise DeclarationError(f"{where}: its builder {build} cannot take ({', '.join(BUILD_ARGS)}) first; "
                               f"allowed: a builder build({', '.join(BUILD_ARGS)}, *, <model options>)")
    if not any(p.kind is P.VAR_KEYWORD for p in params.values()):
        for name in model:
            if name not in keywords:
                raise DeclarationError(
                    f"{where}: option {name!r} targets the model, but its builder {build} takes no keyword {name!r}; "
                    f"fix: add the keyword to {build}, or declare option {name!r} with target=\"train\" (the "
                    "default: the trainer or the variant's hooks use it)")
    for name in keywords:
        if name in model:
            continue
        how = "is declared with target=\"train\" (the default), so the builder never receives it" \
            if name in v.option_map else "is none of its options"
        raise DeclarationError(f"{where}: its builder {build} takes keyword {name!r}, which {how}; fix: declare "
                               f"option {name!r} with target=\"model\"")


def _check_metrics(v: Variant) -> None:
    reported = {*v.metrics, *v.final_metrics}
    for what, names in (("objective", v.objectives), ("level rate's metric", [r.metric for r in v.level_rates])):
        for name in names:
            if name not in reported:
                raise DeclarationError(f"variant {v.name!r}: {what} {name!r} is not one of its metrics; allowed: "
                                       f"{', '.join(sorted(reported)) or 'none (it declares no metrics)'}")


# The registry never imports the variants it holds: the built-ins are loaded by the function
# the package root passes in (study/__init__.py: it imports study.models, which registers them
# in its BUILTINS order), once, at the first lookup, so `import study.config` stays free of torch.
_builtins: Callable[[], None] | None = None
_loaded = False


def set_builtins(loader: Callable[[], None]) -> None:
    """The function that registers the built-in variants, called once before the first
    lookup or registration."""
    global _builtins
    _builtins = loader


def _check_schedules(v: Variant) -> None:
    taken = {s.name: o.name for o in _VARIANTS.values() if o.name != v.name for s in o.schedules}
    for sched in v.schedules:
        if sched.name in taken:
            raise DeclarationError(f"variant {v.name!r}: schedule {sched.name!r} is already declared by variant "
                                   f"{taken[sched.name]!r}; allowed: another name")


def declared_schedules() -> dict[str, StepSchedule]:
    """The lr schedules the registered variants declare, by name."""
    _ensure_builtins()
    return {s.name: s for v in _VARIANTS.values() for s in v.schedules}


def _ensure_builtins() -> None:
    global _loaded
    if _loaded or _builtins is None:
        return
    _loaded = True  # first: the loader's own registrations come back here
    try:
        _builtins()
    except BaseException:
        _loaded = False
        raise


def get_variant(name: Any) -> Variant:
    _ensure_builtins()
    if not isinstance(name, str) or name not in _VARIANTS:
        raise UnknownVariantError(f"variant: {name!r} is not allowed; allowed: {', '.join(list_variants())}")
    return _VARIANTS[name]


def baseline_variant() -> str:
    """The name of the variant declared the baseline (the first so declared), else the first registered."""
    _ensure_builtins()
    return next((v.name for v in _VARIANTS.values() if v.baseline), next(iter(_VARIANTS), ""))


def list_variants() -> list[str]:
    """Registered variant names, built-ins first in registration order."""
    _ensure_builtins()
    return list(_VARIANTS)


def features() -> list[Feature]:
    _ensure_builtins()
    return list(_FEATURES.values())


def load_plugins(paths: Iterable[str | Path]) -> None:
    """Import plugin files (or dotted module names) that register more variants.
    Idempotent: a file already imported is not run again."""
    for p in paths:
        p = str(p)
        if p.endswith(".py"):
            path = Path(p).resolve()
            mod_name = "resstudy_plugin_" + path.stem + "_" + format(abs(hash(str(path))), "x")[:8]
            if mod_name in sys.modules:
                continue
            if not path.is_file():
                raise UserError(f"plugins: {p!r} is not a file; allowed: a Python file or module that "
                                "calls study.variants.register_variant")
            spec = importlib.util.spec_from_file_location(mod_name, path)
            assert spec is not None and spec.loader is not None  # a .py file has a source loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules[mod_name]
                raise
        else:
            try:
                importlib.import_module(p)
            except ImportError as e:
                raise UserError(f"plugins: module {p!r} cannot be imported ({e})") from None


__all__ = [
    "BUILD_ARGS", "Claim", "DeclarationError", "DeclaredTradeoff", "Exercise", "Feature", "Hooks", "LevelRate",
    "Published", "Reported", "SMALLEST_EFFECT", "StepSchedule", "Sweep", "UnknownVariantError", "Variant",
    "baseline_variant", "declared_schedules", "features", "get_variant", "list_variants", "load_plugins",
    "register_feature", "register_variant", "set_builtins",
]
