"""The variant registry: everything a variant is, declared once in its own module.

A variant module (``study/models/quotient.py``, or a plugin file anywhere)
ends with one registration::

    register_variant(Variant(
        name="quotient", build=quotient, options=OPTIONS, hooks=QuotientHooks,
        twin=quotient_twin, metrics=("q_dead_frac", ...), claims=(...)))

and nothing else in resstudy names it: TrainConfig fields, CLI flags, spec
validation, search-space limits, result columns, artifacts, analysis axes and
the claims table are derived from the registry. A *feature* (SGS) is a group
of training options and hooks that any variant can switch on.
"""

from __future__ import annotations

import importlib
import importlib.util
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
    table says so in `where_text`'s words."""

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


def register_variant(variant: Variant) -> Variant:
    old = _VARIANTS.get(variant.name)
    if old is not None and old.build is not variant.build:
        raise ValueError(f"variant {variant.name!r} is already registered")
    _VARIANTS[variant.name] = variant
    return variant


def register_feature(feature: Feature) -> Feature:
    _FEATURES[feature.name] = feature
    return feature


def _ensure_builtins() -> None:
    import study.models  # noqa: F401  (importing registers the built-in variants)


def get_variant(name: Any) -> Variant:
    _ensure_builtins()
    if not isinstance(name, str) or name not in _VARIANTS:
        raise UnknownVariantError(f"variant: {name!r} is not allowed; allowed: {', '.join(list_variants())}")
    return _VARIANTS[name]


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
    "Claim", "Feature", "Hooks", "UnknownVariantError", "Variant", "features", "get_variant", "list_variants",
    "load_plugins", "register_feature", "register_variant",
]
