"""The model zoo: one CIFAR ResNet backbone, variants registered by name.

    model = create_model("quotient", depth=56, quotient_rule="exact_one", alpha=1.7)

Each variant lives in one module that declares its model, options, hooks, twin
and claims as one Variant (study.variants): ``resnet`` here, ``quotient`` and
``epsilon`` beside it, ``sgs`` (a training feature plus the ResNet) in
study/sgs/. They are registered here, in the order of BUILTINS: the order
of `list_variants()`, the CLI's choices and every table.
"""

from study import sgs as _sgs
from study.variants import register_feature, register_variant

from . import epsilon, quotient, resnet
from .epsilon import compress, discard_stats, end_epoch
from .quotient import QUOTIENT_RULES, quotient_stats
from .resnet import (
    BLOCKS,
    SHORTCUTS,
    CifarResNet,
    UnknownOptionError,
    create_model,
    list_models,
    model_options,
)

FEATURES = (_sgs.FEATURE,)
BUILTINS = (resnet.VARIANT, quotient.VARIANT, epsilon.VARIANT, _sgs.variant())
for _feature in FEATURES:
    register_feature(_feature)
for _variant in BUILTINS:
    register_variant(_variant)

__all__ = [
    "BLOCKS",
    "SHORTCUTS",
    "QUOTIENT_RULES",
    "CifarResNet",
    "UnknownOptionError",
    "create_model",
    "list_models",
    "model_options",
    "quotient_stats",
    "end_epoch",
    "discard_stats",
    "compress",
]
