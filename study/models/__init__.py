"""The model zoo: one CIFAR ResNet backbone, variants registered by name.

    model = create_model("quotient", depth=56, quotient_rule="exact_one", alpha=1.7)

Variants: ``resnet``, ``sgs`` (the ResNet; the trainer scales its gradients),
``quotient`` and ``epsilon``. Option names follow METHODS.md.
"""

from . import epsilon, quotient  # noqa: F401  (importing registers the variants)
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
    register_model,
)

__all__ = [
    "BLOCKS",
    "SHORTCUTS",
    "QUOTIENT_RULES",
    "CifarResNet",
    "UnknownOptionError",
    "create_model",
    "list_models",
    "model_options",
    "register_model",
    "quotient_stats",
    "end_epoch",
    "discard_stats",
    "compress",
]
