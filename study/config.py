"""One trial's configuration: plain typed data, flat, with the option names of
../shared/METHODS.md so the same keys flow through search spaces, the study
spec, MLflow params and result columns unchanged."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

VARIANTS = ("resnet", "quotient", "epsilon", "sgs")

# Which TrainConfig fields are model-constructor options, per variant. The
# rest belong to the trainer. SGS changes no structure: its model is the ResNet.
MODEL_OPTIONS = {
    "resnet": ("block", "shortcut", "width"),
    "sgs": ("block", "shortcut", "width"),
    "quotient": ("block", "shortcut", "width", "quotient_rule", "alpha", "quotient_stem", "quotient_shortcut"),
    "epsilon": ("block", "shortcut", "width", "epsilon", "side_weight"),
}


@dataclass
class TrainConfig:
    # what is trained
    variant: str = "resnet"
    depth: int = 20
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    val_size: int | float = 0.1  # int: images held out of train; float: fraction
    image_size: int | None = None  # digits/synthetic only; None = the dataset's default

    # shared model options (None = the variant's default: post/A for resnet and
    # sgs, post/conv3x3 for quotient, pre/A for epsilon)
    block: str | None = None
    shortcut: str | None = None
    width: int = 16

    # quotient (METHODS 1)
    quotient_rule: str = "paper"
    alpha: float = 2.0
    quotient_stem: bool = True
    quotient_shortcut: bool = True

    # epsilon-ResNet (METHODS 2)
    epsilon: float = 2.5
    side_weight: float = 0.1
    adaptive_lr: bool = True

    # spatial gradient scaling (METHODS 3); composes with any variant
    sgs_mode: str = "off"  # off | branches | mi
    sgs_branches: str = "3x3+3x1+1x1"
    sgs_k: float = 5.0
    sgs_warmup: int = 0
    sgs_interval: int = 30
    sgs_batches: int = 20
    sgs_diagonal_removal: bool = False

    # optimisation
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "step"  # step (/10 at 50% and 75%) | cosine
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    grad_clip: float | None = None

    # execution
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 where native) | fp32 | bf16
    channels_last: bool | None = None  # None = on for CUDA
    threads: int | None = None  # torch intra-op threads; None = torch's default
    limit_train_batches: int | None = None  # benchmarks/tests: cap batches per epoch

    def __post_init__(self) -> None:
        if self.variant == "sgs" and self.sgs_mode == "off":
            self.sgs_mode = "branches"

    def model_options(self) -> dict[str, Any]:
        """Constructor options for study.models.create_model, without None."""
        names = MODEL_OPTIONS.get(self.variant, ())
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict, refusing unknown keys with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown training option(s) {unknown}; known options: {sorted(known)}"
            )
        return cls(**values)


def config_field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


__all__ = ["TrainConfig", "VARIANTS", "MODEL_OPTIONS", "config_field_names"]
