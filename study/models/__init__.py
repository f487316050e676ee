"""The model zoo: one CIFAR ResNet backbone, variants registered by name.

    model = create_model("quotient", depth=56, quotient_rule="exact_one", alpha=1.7)

Each variant lives in one module that declares its model, options, hooks, twin
and claims and registers them (study.variants): ``resnet`` here, ``quotient``
and ``epsilon`` beside it, ``sgs`` (a training feature plus the ResNet) in
study/sgs.py.
"""

from study import sgs as _sgs

# importing registers the variants, in this order: resnet, quotient, epsilon, then sgs
from . import resnet  # noqa: F401  isort: skip
from . import quotient  # noqa: F401  isort: skip
from . import epsilon  # noqa: F401  isort: skip
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

_sgs._register_variant()

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
