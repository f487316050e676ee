"""resstudy: distributed hyper-parameter studies of CIFAR residual-network variants.

The package root wires the variant registry (study.variants, the bottom layer)
to the built-in variants (study.models, above it): the registry is handed the
function that loads them and calls it at its first lookup. It is the one place
the built-ins are loaded from; the registry never imports the models.
"""

from study.timeline import mark as _mark

_mark("python: up, study package imported")

from study import variants as _variants  # noqa: E402  (after the mark: the timeline starts here)


def _load_builtins() -> None:
    import study.models  # noqa: F401  (registers the built-ins, in its BUILTINS order)


_variants.set_builtins(_load_builtins)
