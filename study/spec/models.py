"""The study spec's fields: what a study trains, what it searches, how it schedules trials and
where results go (StudySpec and its sections), each checked where it is declared; rules across
fields run once the fields themselves are valid. Search-space overrides are checked by building
the spaces, so a bad range fails at load time, not inside a trial on a remote node.

`train` holds TrainConfig fields fixed for every trial. A `train` field that a
variant searches (say `weight_decay`) is fixed for that variant too, unless
the variant overrides it under `variants.<name>.space`."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Mapping

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from study import spaces
from study.config import (CORE, DATASETS, DEPTH_RULE, FILE_DATASETS, all_option_names, depth_blocks,
                          owners, variant_options)
from study.errors import UserError
from study.spaces import ALGORITHMS, SpaceError
from study.variants import SMALLEST_EFFECT, list_variants, load_plugins
from study.spec.errors import Absolute, Problem, SpecError, _error_items, _fail, _fail_all, _join


# Set at the top level of the spec (or by the search), never under train/fixed.
TOP_LEVEL_FIELDS = ("variant", "seed", "depth", "dataset", "epochs", "data_root", "image_size")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# GridSampler materialises the whole product of its grid at construction.
MAX_GRID_POINTS, MAX_GRID_SIZE = 100, 100_000


# The allowed values, derived from their declarations: known at run time, where
# pydantic checks them; a plain str to the type checker.
if TYPE_CHECKING:
    Algorithm = str
    DatasetName = str
else:
    Algorithm = Literal[ALGORITHMS]
    DatasetName = Literal[DATASETS]

# A study's name is a directory under storage_path: one path component, never `..`.
StudyName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)]
STUDY_NAME_RULE = "a letter or digit, then letters, digits, '_', '.' or '-' (at most 100 characters)"


def check_study_name(value: Any, field: str = "name") -> str:
    """`value` if it is a study name by the rule of the spec's `name`, else a one-line SpecError."""
    from pydantic import TypeAdapter

    try:
        return TypeAdapter(StudyName).validate_python(value, strict=True)
    except ValidationError:
        raise SpecError(f"{field}: {value!r} is not a study name; allowed: {STUDY_NAME_RULE}") from None


def _check_fields(values: Mapping[str, Any], where: str, variants: list[str] | None = None,
                  prefix: str = "") -> list[Problem]:
    """Every problem of the options given under train / fixed against their
    declarations (each against every variant of the study that takes it, with
    that variant's rule); paths are `prefix.key`."""
    known = all_option_names()
    problems: list[Problem] = []
    for key, value in values.items():
        path = _join(prefix, str(key))
        if key not in known:
            problems.append((path, f"unknown option {key!r} in {where}; allowed: "
                                   f"{', '.join(k for k in known if k not in TOP_LEVEL_FIELDS)}"))
            continue
        if key in TOP_LEVEL_FIELDS:
            problems.append((path, f"{key!r} cannot be set in {where}: "
                             + ("the variant comes from `variants`" if key == "variant"
                                else "search trials use seeds[0]; set `seeds`" if key == "seed"
                                else f"set the top-level `{key}`")))
            continue
        takers = [v for v in (variants or list_variants()) if key in variant_options(v)]
        if variants is not None and not takers:
            problems.append((path, f"{key!r} is an option of {', '.join(owners(key))}, none of which this study "
                                   f"runs ({', '.join(variants)})"))
            continue
        for v in takers or owners(key)[:1]:
            try:
                variant_options(v)[key].check(value)
            except UserError as e:
                problems.append((path, str(e).removeprefix(f"{key}: ")
                                 + (f" (variant {v})" if key not in CORE else "")))
                break
    return problems


class _Model(BaseModel):
    # strict: YAML gives real types, and "4" for an int is a mistake worth reporting.
    # extra="forbid": every unknown key, at every level, is an error of its own
    # beside every bad value (_error_items names the keys allowed there).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class VariantSpec(_Model):
    """Per-variant search overrides ({param: {low, high, log, choices, value}})
    and fixed TrainConfig fields."""

    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _none_is_empty(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, Mapping):
            return {k: ({} if v is None and k in ("space", "fixed") else v) for k, v in data.items()}
        return data

    # val_acc first (ASHA stops on it), then metrics the variant declares as objectives
    objectives: list[str] = Field(default_factory=lambda: ["val_acc"])


class SearchSpec(_Model):
    algorithm: Algorithm = "tpe"
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = 0  # numpy's seed range, used by optuna
    n_startup_trials: Annotated[int, Field(ge=0)] | None = None
    grid_points: Annotated[int, Field(ge=2, le=MAX_GRID_POINTS)] = 3  # values per numeric param for `grid`


class SchedulerSpec(_Model):
    type: Literal["asha", "none"] = "asha"
    grace_period: Annotated[int, Field(ge=1)] = 1  # epochs before ASHA may stop a trial
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0


class ResourcesSpec(_Model):
    """Per trial. A fractional gpu packs several trials on one GPU."""

    cpu: Annotated[float, Field(gt=0)] = 1.0
    gpu: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("gpu")
    @classmethod
    def _gpu_share(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"gpu={v!r}; allowed: 0, a fraction in (0, 1], or a whole number of GPUs")
        return v


class CheckpointSpec(_Model):
    """How often a trial checkpoints beyond its ASHA rung epochs and its last epoch:
    a killed trial loses at most this much training."""

    every_minutes: Annotated[float, Field(gt=0)] = 5.0


class MlflowSpec(_Model):
    tracking_uri: str | None = None  # None: sqlite:///<storage_path>/<name>/mlflow.db
    experiment: Annotated[str, Field(min_length=1)] | None = None  # None: the spec name


MAX_SEEDS = 1000  # per claim: far past what a stopping rule needs, short of a typo's cost


class BudgetSpec(_Model):
    """What the extra seeds (beyond `seeds`) may cost the whole study; null: no limit."""

    trials: Annotated[int, Field(ge=0)] | None = None  # extra-seed trials, over every claim
    hours: Annotated[float, Field(gt=0)] | None = None  # wall-clock hours spent running extra seeds


class SweepsSpec(_Model):
    """The one-factor sensitivity sweeps each variant declares, around its best configuration."""

    enabled: bool = True
    levels: Annotated[int, Field(ge=2, le=MAX_GRID_POINTS)] = 3  # points over a numeric option's search range
    seeds: Annotated[int, Field(ge=1)] = 1  # the first seeds of `seeds`


class DesignSpec(_Model):
    """Claims answered by designed experiments, after each variant's search: every
    claim's arms at each of `seeds` (the minimum), then more seeds, one round at a
    time, while the claim is open, up to `max_seeds` and the budget."""

    max_seeds: Annotated[int, Field(ge=1, le=MAX_SEEDS)] | None = None  # per claim; null: len(seeds), no extra seeds
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    alpha: Annotated[float, Field(gt=0, le=0.5)] = 0.05  # chance of any wrong verdict, over all claims and looks
    # The line "smaller than reported" is drawn at for a claim whose paper reports no figure:
    # the smallest difference (metric units; 0.01 is one accuracy point) worth finding.
    smallest_effect: Annotated[float, Field(gt=0, le=1)] = SMALLEST_EFFECT
    published: bool = True  # the paper's own configuration against its twin, for claims about the method
    sweeps: SweepsSpec = Field(default_factory=SweepsSpec)

    @model_validator(mode="before")
    @classmethod
    def _none_is_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if not (v is None and k in ("budget", "sweeps"))}
        return data


class StudySpec(_Model):
    plugins: list[str] = Field(default_factory=list)  # .py files or modules that register more variants
    name: StudyName
    dataset: DatasetName
    data_root: str | None = None
    image_size: Annotated[int, Field(ge=4)] | None = None
    depth: list[int] = Field(default_factory=lambda: [20])  # a single int is accepted and stored as [int]
    epochs: Annotated[int, Field(ge=1)] = 10
    trials_per_variant: Annotated[int, Field(ge=1)] = 8
    seeds: Annotated[list[Annotated[int, Field(ge=0, le=2**32 - 1)]], Field(min_length=1)] = Field(
        default_factory=lambda: [0])
    repeat_best: bool = False
    variants: dict[str, VariantSpec] = Field(
        default_factory=lambda: {v: VariantSpec() for v in list_variants()})
    train: dict[str, Any] = Field(default_factory=dict, validate_default=True)  # checked with the spaces
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_concurrent: Annotated[int, Field(ge=1)] = 1
    max_failures: Annotated[int, Field(ge=0)] = 2  # retries of a failing trial, each from its last checkpoint
    storage_path: Annotated[str, Field(min_length=1, validate_default=True)] = "./resstudy_runs"
    shared_storage: bool = False  # the user asserts storage_path is reachable from every node
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    design: DesignSpec | None = None  # null: the best configuration and its twin at `seeds` only

    # ------------------------------------------------------------ validation

    @field_validator("depth", mode="before")
    @classmethod
    def _depths(cls, v: Any) -> Any:
        items = v if isinstance(v, list) else [v]
        if not items:
            _fail("", f"depth list is empty; allowed: one depth or a list of depths {DEPTH_RULE}")
        problems = [(f"[{i}]" if isinstance(v, list) else "",
                     f"{d!r} is not a CIFAR ResNet depth; allowed: {DEPTH_RULE}")
                    for i, d in enumerate(items) if depth_blocks(d) is None]
        if problems:
            _fail_all(problems)
        if len(set(items)) != len(items):
            _fail("", f"{v!r} repeats a depth")
        return items

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds {v} repeat a value; allowed: distinct integers >= 0")
        return v

    @field_validator("plugins", mode="after")
    @classmethod
    def _load_plugins(cls, v: list[str]) -> list[str]:
        # Resolved against the directory the spec is loaded in (trials import them by path).
        out = [str(Path(p).expanduser().resolve()) if p.endswith(".py") else p for p in v]
        try:
            load_plugins(out)
        except UserError as e:  # a spec error under this field, like every other
            raise ValueError(str(e).removeprefix("plugins: ")) from None
        return out

    @field_validator("variants", mode="wrap")
    @classmethod
    def _variants(cls, v: Any, handler: Any) -> dict[str, VariantSpec]:
        # Each variant's `fixed` options are checked against that variant's own rules,
        # beside its other errors (an unknown key next to a bad fixed value: both).
        v = _variant_names(v)
        problems: list[Problem] = []
        try:
            out = handler(v)
        except ValidationError as e:
            out = None
            problems += [(Absolute(path), msg) for err in e.errors()
                         for path, msg in _error_items({**err, "loc": ("variants", *err["loc"])}, StudySpec)]
        seen = {path for path, _ in problems}
        for name, raw in v.items() if isinstance(v, Mapping) else ():
            fixed = raw.get("fixed") if isinstance(raw, Mapping) else None
            if isinstance(fixed, Mapping):
                problems += [(Absolute(_join("variants", path)), msg) for path, msg in
                             _check_fields(fixed, f"variants.{name}.fixed", [name], prefix=f"{name}.fixed")
                             if _join("variants", path) not in seen]
            if out is not None:
                problems += _objective_problems(name, out[name].objectives)
        if problems:
            _fail_all(problems)
        return out

    @field_validator("train", mode="after")
    @classmethod
    def _train_fields(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # beside the other fields' errors, not after them: `variants` comes first in
        # the model, so its names are known here when it is valid
        variants = info.data.get("variants")
        problems = _check_fields(v, "train", list(variants) if variants is not None else None)
        if problems:
            _fail_all(problems)
        for name, vs in (variants or {}).items():  # each variant's search space with these values, every bad range
            try:
                spaces.build_space(name, _space_overrides(v, vs, name), vs.fixed)
            except SpaceError as e:
                problems.append((Absolute(_space_error_path(e, v, vs, name)), str(e)))
        if problems:
            _fail_all(problems)
        return v

    @field_validator("storage_path", "data_root")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        # Ray runs trials in their own working directories, so a relative path
        # is resolved once, here, against the directory the spec is loaded in.
        if v is None or (_URI.match(v) and not v.startswith("file://")):
            return v
        try:
            return str(Path(v.removeprefix("file://")).expanduser().resolve())
        except (RuntimeError, OSError, ValueError) as e:  # "~nobody/x", a NUL byte
            raise ValueError(f"{v!r} is not a usable path ({e}); allowed: a local path or a URI") from None

    @model_validator(mode="after")
    def _consistent(self) -> "StudySpec":
        # rules across fields: they run once every field is valid, and report every
        # problem they find together
        problems: list[Problem] = []
        if self.dataset in FILE_DATASETS and not self.data_root:
            problems.append(("data_root", f"required for dataset {self.dataset!r} (the folder holding it on every "
                                          "node; nothing is downloaded); allowed: a path"))
        if self.dataset not in FILE_DATASETS and self.data_root is not None:
            problems.append(("data_root", f"{self.data_root!r} is given but dataset {self.dataset!r} is built in; "
                                          f"allowed: null (data_root is for {', '.join(FILE_DATASETS)})"))
        if self.image_size is not None and self.dataset in FILE_DATASETS:
            problems.append(("image_size", f"{self.image_size!r} is given but {self.dataset!r} images are 32x32; "
                                           "allowed: null (image_size is for digits, synthetic)"))
        if self.scheduler.type == "asha" and self.scheduler.grace_period > self.epochs:
            problems.append(("scheduler.grace_period", f"{self.scheduler.grace_period} exceeds epochs={self.epochs}; "
                                                       f"allowed: 1..{self.epochs}"))
        if self.is_remote_storage and self.mlflow.tracking_uri is None:
            problems.append(("mlflow.tracking_uri", f"required when storage_path is a URI ({self.storage_path!r}): "
                                                    "the default sqlite file needs a local path; allowed: an MLflow "
                                                    "URI"))
        problems += self._design_problems()
        for name in self.variants:
            try:
                if self.search.algorithm == "grid":
                    grid = spaces.grid_space(name, self.space_overrides(name), self.search.grid_points,
                                                    self.variants[name].fixed)
                    size = math.prod(len(v) for v in grid.values())
                    if size > MAX_GRID_SIZE:
                        problems.append(("search.grid_points",
                                         f"{self.search.grid_points} points per parameter give variant {name!r} a "
                                         f"grid of {size} points; allowed: a grid of at most {MAX_GRID_SIZE} (fewer "
                                         "grid_points, or fix parameters)"))
                        continue
                self.make_sampler(name)
            except SpaceError as e:
                problems.append((_space_error_path(e, self.train, self.variants[name], name), str(e)))
            except ImportError as e:
                problems.append(("search.algorithm", str(e)))
        if problems:
            _fail_all(problems)
        return self

    def _design_problems(self) -> list[Problem]:
        d, n = self.design, len(self.seeds)
        if d is None:
            return []
        problems: list[Problem] = []
        if not self.repeat_best:
            problems.append(("design", "given while repeat_best is false; allowed: repeat_best: true (a claim's "
                                       "arms pair with the best configuration's repeat at each seed), or no design"))
        if d.max_seeds is not None and d.max_seeds < n:
            problems.append(("design.max_seeds", f"{d.max_seeds} is fewer than the {n} seeds of `seeds` (every "
                                                 f"claim's minimum); allowed: an integer from {n} to {MAX_SEEDS}, "
                                                 "or null (the seeds of `seeds` only)"))
        if d.sweeps.seeds > n:
            problems.append(("design.sweeps.seeds", f"{d.sweeps.seeds} exceeds the {n} seeds of `seeds`; allowed: "
                                                    f"1..{n} (a sweep runs at the first seeds of `seeds`, where its "
                                                    "best configuration's level is the repeat)"))
        return problems

    # -------------------------------------------------------------- queries

    @property
    def is_remote_storage(self) -> bool:
        return bool(_URI.match(self.storage_path))

    def experiments(self) -> list[tuple[str, int]]:
        """(variant, depth) pairs, depth-major: each is one search."""
        return [(v, d) for d in self.depth for v in self.variants]

    def _check_experiment(self, variant: str, depth: int | None = None) -> None:
        if variant not in self.variants:
            raise ValueError(f"variant {variant!r} is not in this study; allowed: {', '.join(self.variants)}")
        if depth is not None and depth not in self.depth:
            raise ValueError(f"depth {depth!r} is not in this study; allowed: {self.depth}")

    def trial_base_config(self, variant: str, depth: int) -> dict[str, Any]:
        """TrainConfig fields fixed for every trial of (variant, depth); the
        search's suggestions are merged over these."""
        self._check_experiment(variant, depth)
        base: dict[str, Any] = {
            "dataset": self.dataset,
            "data_root": self.data_root,
            "depth": depth,
            "epochs": self.epochs,
            "variant": variant,
            "seed": self.seeds[0],
        }
        if self.image_size is not None:
            base["image_size"] = self.image_size
        takes = variant_options(variant)
        train = {k: v for k, v in self.train.items() if k in takes}  # `train` holds every variant's options
        return {**base, **train, **self.variants[variant].fixed}

    def space_overrides(self, variant: str) -> dict[str, dict[str, Any]]:
        """The variant's `space` overrides plus `train` values of searched params."""
        self._check_experiment(variant)
        return _space_overrides(self.train, self.variants[variant], variant)

    def build_space(self, variant: str):
        """study.spaces.build_space for this variant, with the spec's overrides."""
        return spaces.build_space(variant, self.space_overrides(variant), self.variants[variant].fixed)

    def make_sampler(self, variant: str, seed: int | None | Literal["spec"] = "spec"):
        """The spec's optuna sampler for `variant` (seed: search.seed unless given)."""
        return spaces.make_sampler(
            self.search.algorithm, self.search.seed if seed == "spec" else seed, variant,
            self.space_overrides(variant), fixed=self.variants[variant].fixed,
            n_startup_trials=self.search.n_startup_trials, grid_points=self.search.grid_points,
        )

    def study_dir(self) -> Path | str:
        """storage_path/name: an absolute Path, or a URI string for remote storage."""
        if self.is_remote_storage:
            return f"{self.storage_path.rstrip('/')}/{self.name}"
        return Path(self.storage_path) / self.name

    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.study_dir()}/mlflow.db"

    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _variant_names(v: Any) -> Any:
    """`variants` as {name: spec}: a list of names is accepted, None is {}."""
    allowed = list_variants()
    if isinstance(v, list):
        problems = [(f"[{i}]", f"unknown variant {name!r}; allowed: {', '.join(allowed)}")
                    for i, name in enumerate(v) if name not in allowed]
        if problems:
            _fail_all(problems)
        if len(set(v)) != len(v):
            _fail("", f"{v} repeats a variant")
        v = {name: {} for name in v}
    if isinstance(v, Mapping):
        if not v:
            _fail("", f"no variants; allowed: some of {', '.join(allowed)}")
        problems = [(str(name), f"unknown variant {name!r}; allowed: {', '.join(allowed)}")
                    for name in v if name not in allowed]
        if problems:
            _fail_all(problems)
        v = {k: ({} if x is None else x) for k, x in v.items()}
    return v


def _space_overrides(train: Mapping[str, Any], vs: VariantSpec, variant: str) -> dict[str, dict[str, Any]]:
    searched = {p.name for p in spaces.variant_params(variant)}
    from_train = {k: {"value": v} for k, v in train.items()
                  if k in searched and k not in vs.space and k not in vs.fixed}
    return {**from_train, **copy.deepcopy(vs.space)}


def _space_error_path(e: SpaceError, train: Mapping[str, Any], vs: VariantSpec, variant: str) -> str:
    if e.param is not None and e.param in train and e.param not in vs.space and e.param not in vs.fixed:
        return _join("train", e.param)  # the fixed value came from train
    return _join("variants", variant, e.section, e.param or "")


def _objective_problems(variant: str, objectives: list[str]) -> list[Problem]:
    """What is wrong with a variant's `objectives`: val_acc first, then only metrics the
    variant declares as objectives, each once."""
    from study.variants import get_variant

    extra = get_variant(variant).objectives
    if objectives[:1] == ["val_acc"] and set(objectives[1:]) <= set(extra) and len(set(objectives)) == len(objectives):
        return []
    allowed = (f"val_acc first (ASHA stops on it), then any of {', '.join(extra)}, each once" if extra
               else f"[val_acc] (variant {variant!r} declares no other objective)")
    return [(f"{variant}.objectives", f"{objectives!r} is not allowed; allowed: {allowed}")]
