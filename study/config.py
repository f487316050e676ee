"""One trial's configuration: flat, typed, resolved.

The trainer's own options are declared here (CORE_OPTIONS); each variant
declares its options beside its model and each feature (SGS) beside its code
(study.variants). A TrainConfig holds exactly the options its variant uses,
each checked against its declaration and with every default filled in (the
variant's own defaults, depth-dependent ones included), so what a trial
records is what it ran.

    cfg = TrainConfig(variant="quotient", depth=56, epochs=3)
    cfg.alpha              # 1.7: the paper's value at depth 56
    cfg.to_dict()          # flat: the keys of search spaces, spec, MLflow, results
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from study.errors import OptionError
from study.options import Option


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset as the trainer, the spec and the preflight know it: its classes,
    native image side, training images (an upper bound: before the validation
    split), default augmentation, and the files it is read from under data_root
    (torchvision's layout); a dataset without files is built in and takes no data_root."""

    classes: int
    side: int
    train_images: int
    augment: str
    files: tuple[str, ...] = ()


_CIFAR10_FILES = tuple(f"cifar-10-batches-py/{f}" for f in (
    "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"))
# Digits are not mirror-symmetric, so SVHN and digits get crops only.
DATASET_INFO: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(10, 8, 1_797, "crop"),
    "cifar10": DatasetInfo(10, 32, 50_000, "crop_flip", _CIFAR10_FILES),
    "cifar100": DatasetInfo(100, 32, 50_000, "crop_flip", ("cifar-100-python/train", "cifar-100-python/test",
                                                           "cifar-100-python/meta")),
    "svhn": DatasetInfo(10, 32, 73_257, "crop", ("train_32x32.mat", "test_32x32.mat")),
    "synthetic": DatasetInfo(10, 32, 2_048, "crop_flip"),
}
DATASETS = tuple(DATASET_INFO)
FILE_DATASETS = tuple(name for name, info in DATASET_INFO.items() if info.files)  # read from data_root
DEPTH_RULE = "6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)"
SCHEDULES = ("step", "cosine")  # the trainer's own; variants declare more (study.variants.StepSchedule)
DECAY_SCOPES = ("all", "conv_fc")
PRECISIONS = ("fp32", "bf16", "auto")
COMPILE_MODES = ("off", "on", "auto")

CORE_OPTIONS: tuple[Option, ...] = (
    # what is trained
    Option("depth", int, 20, "network depth, 6n+2 (8, 14, 20, 32, 44, 56, 110, ...)", low=8),
    Option("dataset", str, "digits", f"dataset; {'/'.join(FILE_DATASETS)} are read from data_root", choices=DATASETS),
    Option("data_root", str, None, "folder with the torchvision files of cifar10/cifar100/svhn", nullable=True),
    Option("download", bool, False, "let torchvision download the dataset into data_root"),
    Option("val_size", float, 0.1, "validation split held out of train: a fraction < 1, or an image count >= 1",
           low=0.0, low_open=True),
    Option("image_size", int, None, "digits/synthetic image side (null: the dataset's own)", low=4, nullable=True),
    Option("augment", str, None, "training augmentation: crop_flip (pad-and-crop + horizontal flip), crop, none "
           "(null: the dataset's default)", choices=("crop_flip", "crop", "none"), nullable=True),
    Option("cutout", int, 0, "side in pixels of the square hole cut from each training image (0: off)", low=0),
    Option("normalization", str, "dataset", "input normalisation: dataset (per-channel mean/std of the train "
           "split) or imagenet (ImageNet's mean/std)", choices=("dataset", "imagenet")),
    # optimisation
    Option("epochs", int, 10, "training epochs", low=1),
    Option("batch_size", int, 128, "training batch size", low=1),
    Option("eval_batch_size", int, 128,
           "evaluation batch size (epsilon-ResNet's gate takes its max over the batch; 128 is the paper's)", low=1),
    Option("lr", float, 0.1, "initial SGD learning rate", low=0.0, low_open=True),
    Option("momentum", float, 0.9, "SGD momentum", low=0.0, high=0.999),
    Option("nesterov", bool, False, "Nesterov momentum"),
    Option("weight_decay", float, 1e-4, "coupled L2 weight decay", low=0.0),
    Option("weight_decay_scope", str, "all", "what weight decay applies to: all (every parameter) or conv_fc "
           "(conv and linear weights only: not BN, not biases)", choices=DECAY_SCOPES),
    # its choices and help grow by the schedules the variants declare (schedule_option)
    Option("schedule", str, "step", "lr schedule: step (/10 at 50% and 75%), cosine", choices=SCHEDULES),
    Option("max_epochs", int, None, "cap on the epochs a restart extends training to, under a schedule whose "
           "restarts extend it (null: the schedule's cap x epochs)", low=1, nullable=True),
    Option("train_epochs", int, None, "train exactly this many epochs, the lr schedule still spanning `epochs` "
           "(null: as the schedule decides; a matched twin gets the epochs its variant trained)", low=1,
           nullable=True),
    Option("warmup_epochs", int, 0, "linear lr warm-up epochs (< epochs)", low=0),
    Option("label_smoothing", float, 0.0, "cross-entropy label smoothing", low=0.0, high=0.99),
    Option("grad_clip", float, None, "clip the gradient norm to this (null: no clipping)", low=0.0, low_open=True,
           nullable=True),
    # execution
    Option("seed", int, 0, "seed of init, data order and augmentation", low=0, high=2**32 - 1),
    Option("device", str, "auto", "auto, cpu, cuda or cuda:N", pattern=r"auto|cpu|cuda|cuda:\d+"),
    Option("precision", str, "fp32", "fp32, bf16 autocast, or auto (bf16 where the hardware computes it natively); "
           "results record what ran", choices=PRECISIONS),
    Option("compile", str, "off", "torch.compile the training step: on, off, or auto (on where it pays: CUDA)",
           choices=COMPILE_MODES),
    Option("channels_last", bool, None, "channels-last memory format (null: on for CUDA)", nullable=True),
    Option("threads", int, None, "torch intra-op threads (null: torch's default)", low=1, nullable=True),
    Option("limit_train_batches", int, None, "cap training batches per epoch (benchmarks, tests)", low=1,
           nullable=True),
)
CORE = {o.name: o for o in CORE_OPTIONS}
# Not an Option: its allowed values are whatever is registered.
VARIANT_HELP = "the variant to train"


def schedule_option() -> Option:
    """The `schedule` option with the schedules the registered variants declare."""
    from study.variants import declared_schedules

    core = CORE["schedule"]
    declared = declared_schedules()
    if not declared:
        return core
    return core.replace(choices=(*SCHEDULES, *declared),
                        help=core.help + "".join(f", or {s.name} ({s.help})" for s in declared.values()))


def variant_options(variant: str) -> dict[str, Option]:
    """Every option a config of `variant` takes: the trainer's, the variant's own
    (with its defaults), and the features' (with the variant's defaults for them)."""
    from study.variants import features, get_variant

    v = get_variant(variant)
    out = {o.name: o for o in v.options}
    for o in CORE_OPTIONS:
        out.setdefault(o.name, schedule_option() if o.name == "schedule" else o)
    for f in features():
        for o in f.options:
            out.setdefault(o.name, o)
    for name, default in v.defaults.items():
        out[name] = out[name].replace(default=default)
    return out


def all_option_names() -> list[str]:
    """Every option name of any registered variant (the spec's `train` keys)."""
    from study.variants import features, get_variant, list_variants

    names = dict.fromkeys(["variant", *CORE])
    for f in features():
        names.update(dict.fromkeys(o.name for o in f.options))
    for v in list_variants():
        names.update(dict.fromkeys(o.name for o in get_variant(v).options))
    return list(names)


def owners(name: str) -> list[str]:
    """The variants whose configs take option `name`."""
    from study.variants import list_variants

    return [v for v in list_variants() if name in variant_options(v)]


class TrainConfig:
    """A resolved trial configuration. Attributes are the option names
    (``cfg.lr``, ``cfg.alpha``); ``to_dict()`` gives them flat, ``variant`` first."""

    __slots__ = ("_values",)

    def __init__(self, variant: str | None = None, **values: Any) -> None:
        from study.variants import baseline_variant, get_variant

        variant = baseline_variant() if variant is None else variant  # no variant named: the baseline
        v = get_variant(variant)
        allowed = variant_options(variant)
        unknown = [k for k in values if k not in allowed]
        if unknown:
            k = unknown[0]
            others = owners(k) if k in all_option_names() else []
            where = f"it belongs to variant(s) {', '.join(others)}" if others else "no variant takes it"
            raise OptionError(f"{k}: not an option of variant {variant!r} ({where}); "
                              f"{variant!r} takes: {', '.join(allowed)}", field=k)
        resolved: dict[str, Any] = {"variant": variant}
        for name, opt in allowed.items():
            resolved[name] = opt.check(values[name]) if name in values else opt.default
        if v.resolve is not None:
            resolved = v.resolve(resolved, resolved["depth"])
        _check_core(resolved)
        object.__setattr__(self, "_values", resolved)

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(f"TrainConfig of variant {self.variant!r} has no option {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("TrainConfig is immutable; use cfg.replace(...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainConfig) and self._values == other._values

    def __repr__(self) -> str:
        return "TrainConfig(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"

    def __getstate__(self) -> dict[str, Any]:
        return dict(self._values)

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(state))

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def replace(self, **changes: Any) -> "TrainConfig":
        values = {**self._values, **changes}
        return TrainConfig(**values)

    def epoch_limit(self) -> int:
        """The most epochs this config can train: `train_epochs` where set; under a
        declared schedule whose restarts extend training `max_epochs`, null meaning
        its cap x epochs; else `epochs`."""
        from study.variants import declared_schedules

        v = self._values
        if v["train_epochs"] is not None:
            return v["train_epochs"]
        declared = declared_schedules().get(v["schedule"])
        if declared is not None and declared.extends:
            return v["max_epochs"] or declared.cap * v["epochs"]
        return v["epochs"]

    def model_options(self) -> dict[str, Any]:
        """The keyword options of the variant's model builder."""
        from study.variants import get_variant

        return {n: self._values[n] for n in get_variant(self.variant).model_option_names()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        values = dict(values)
        return cls(values.pop("variant", None), **values)

    def twin(self) -> "TrainConfig | None":
        """The matched twin: the same network, recipe and seed with the method off."""
        from study.variants import get_variant

        fn = get_variant(self.variant).twin
        if fn is None:
            return None
        out = fn(self.to_dict())
        return None if out is None else TrainConfig.from_dict(out)


def depth_blocks(depth: Any) -> int | None:
    """n, the blocks per stage of a CIFAR ResNet of `depth` = 6n + 2 (DEPTH_RULE); None
    for any other value."""
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 8 or (int(depth) - 2) % 6:
        return None
    return (int(depth) - 2) // 6


def _check_core(v: dict[str, Any]) -> None:
    depth = v["depth"]
    if depth_blocks(depth) is None:
        raise OptionError(f"depth: {depth!r} is not allowed; allowed: {DEPTH_RULE}", field="depth")
    if v["warmup_epochs"] >= v["epochs"]:
        raise OptionError(f"warmup_epochs: {v['warmup_epochs']!r} is not allowed; allowed: an integer in "
                          f"[0, epochs={v['epochs']})", field="warmup_epochs")
    if v["max_epochs"] is not None and v["max_epochs"] < v["epochs"]:
        raise OptionError(f"max_epochs: {v['max_epochs']!r} is not allowed; allowed: an integer >= epochs "
                          f"({v['epochs']}), or null", field="max_epochs")
    vs = v["val_size"]
    if vs >= 1 and vs != int(vs):
        raise OptionError(f"val_size: {vs!r} is not allowed; allowed: a fraction in (0, 1) or an image count >= 1",
                          field="val_size")


def config_field_names() -> list[str]:
    """Every option name any config can hold (kept for callers of the old API)."""
    return all_option_names()


__all__ = ["CORE_OPTIONS", "DATASETS", "DATASET_INFO", "DEPTH_RULE", "FILE_DATASETS", "DatasetInfo", "TrainConfig",
           "all_option_names", "config_field_names", "depth_blocks", "owners", "variant_options"]
