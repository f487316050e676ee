"""The study spec: one YAML file that says what a study trains, what it searches,
how it schedules trials and where results go.

    spec = load_spec("my_study.yaml")            # or load_spec(preset="quick")
    for variant, depth in spec.experiments():
        base = spec.trial_base_config(variant, depth)   # fixed TrainConfig fields
        space = spec.build_space(variant)               # optuna define-by-run space
        sampler = spec.make_sampler(variant)

Its fields (models), how it is read (load) and how its problems read (errors):
every problem of a spec, at every level, comes in one SpecError, one line each
naming the field path (`scheduler.grace_period`), the bad value and what is allowed.
"""

from __future__ import annotations

from study.config import DATASETS
from study.presets import list_presets
from study.spec.errors import SpecError
from study.spec.load import load_spec, parse_overrides, validate_spec
from study.spec.models import (CheckpointSpec, DesignSpec, MlflowSpec, ResourcesSpec, SchedulerSpec, SearchSpec,
                               StudySpec, VariantSpec, check_study_name)

__all__ = [
    "DATASETS", "CheckpointSpec", "DesignSpec", "MlflowSpec", "ResourcesSpec", "SchedulerSpec", "SearchSpec",
    "SpecError", "StudySpec", "VariantSpec", "check_study_name", "list_presets", "load_spec", "parse_overrides",
    "validate_spec",
]
