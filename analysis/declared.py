"""What the variants declare for their analysis (study.variants.Variant): the
rates added to each level of a categorical option (`level_rates`) and their own
report sections (`report_sections`). The analysis names no variant: it asks
here. A variant this code does not know (a plugin not installed here)
declares nothing, and its study is analysed without those parts."""

from __future__ import annotations

from typing import Any, Iterable


def _variant(name: str) -> Any | None:
    from study.variants import UnknownVariantError, get_variant

    try:
        return get_variant(name)
    except UnknownVariantError:
        return None


def baseline() -> str:
    """The variant the others are compared with (the one the registry's declarations name)."""
    from study.variants import baseline_variant

    return baseline_variant()


def _registered() -> list[str]:
    from study.variants import list_variants

    return list_variants()


def rate_owners(variants: Iterable[str] | None = None) -> list[tuple[str, Any]]:
    """(variant, LevelRate) for the rates `variants` declare (default: every registered
    variant, so a levels table has the same columns whichever variants a study ran),
    each column once, in registry order."""
    out: dict[str, tuple[str, Any]] = {}
    for name in _registered() if variants is None else variants:
        v = _variant(str(name))
        for rate in v.level_rates if v is not None else ():
            out.setdefault(rate.column, (str(name), rate))
    return list(out.values())


def level_rates(variants: Iterable[str] | None = None) -> list[Any]:
    """The LevelRates of rate_owners(variants)."""
    return [rate for _, rate in rate_owners(variants)]


def report_sections(variants: Iterable[str]) -> list[tuple[str, Any]]:
    """(variant, section) for every report section the studied `variants` declare, in
    registry order: each declared trade-off (a DeclaredTradeoff, which the report draws),
    then each of its own section functions (`fn(report)`)."""
    studied = {str(v) for v in variants}
    out: list[tuple[str, Any]] = []
    for name in _registered():
        v = _variant(name) if name in studied else None
        if v is not None:
            out += [(name, t) for t in v.tradeoffs]
            out += [(name, fn) for fn in v.report_sections]
    return out


__all__ = ["level_rates", "rate_owners", "report_sections"]
