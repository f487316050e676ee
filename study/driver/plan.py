"""The trials a study plans per experiment and arm, before it runs any: what
`resstudy check` prints, the manifest records and the progress view counts down."""

from __future__ import annotations

from typing import Any

from study.config import TrainConfig
from study.driver.design import count_new


def plan(spec: Any) -> dict[tuple[str, int], dict[str, int]]:
    """Trials per experiment (variant, depth) and arm of `spec` (a study.spec.StudySpec):
    `search` (trials_per_variant, at most the grid's size), then with repeat_best the
    best searched configuration at every seed (`repeat`) and its twin at every seed
    (`twin`, 0 where the variant has none); with a `design`, the first round of its
    other trials (`arms`: an estimate until the search has found its best
    configuration; extra seeds come on top as the study decides them)."""
    out = {}
    for variant, depth in spec.experiments():
        size = getattr(spec.make_sampler(variant), "size", spec.trials_per_variant)
        fixed = len(spec.seeds) if spec.repeat_best else 0
        out[(variant, depth)] = {"search": min(spec.trials_per_variant, size), "repeat": fixed,
                                 "twin": fixed if fixed and _has_twin(spec, variant, depth) else 0}
        if spec.design is not None:
            out[(variant, depth)]["arms"] = count_new(spec, variant, depth)
    return out


def _has_twin(spec: Any, variant: str, depth: int) -> bool:
    base = {k: v for k, v in spec.trial_base_config(variant, depth).items() if not k.startswith("_")}
    return TrainConfig.from_dict(base).twin() is not None
