"""Reading a spec: a YAML file, a preset or a mapping, with `--set` overrides merged in first,
validated into a StudySpec; every problem at once, in one SpecError."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from study.presets import list_presets, presets_dir
from study.spec.errors import SpecError, _describe
from study.spec.models import StudySpec


# ------------------------------------------------------------------ loading


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a float (YAML 1.1 wants 1.0e-4) and
    refuses duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict, set)):  # unhashable: `? [a]` or `{[1]: 2}`
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found a {type(key).__name__} as a key; allowed: a plain name", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
            seen[key] = True
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _parse_yaml(text: str, origin: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{origin}, line {mark.line + 1}, column {mark.column + 1}" if mark else origin
        raise SpecError(f"invalid YAML in {where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"invalid YAML in {origin}: {e}") from None
    except Exception as e:  # PyYAML's constructors raise plain errors: bad !!timestamp or 0x_, deep nesting
        raise SpecError(f"invalid YAML in {origin}: {type(e).__name__}: {e}") from None




def _merge(base: dict, overrides: Mapping[str, Any]) -> dict:
    """Deep-merge `overrides` into `base`; a dotted key ("scheduler.grace_period")
    addresses a nested field. Mappings merge; anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = _merge(node[leaf], value)
        else:
            node[leaf] = copy.deepcopy(value)
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["epochs=2", "scheduler.grace_period=1", "depth=[8, 14]"] -> overrides
    for load_spec; values are read as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set: {item!r} is not KEY=VALUE (e.g. scheduler.grace_period=2)")
        out[key.strip()] = _parse_yaml(raw, f"--set {item!r}")
    return out


def load_spec(source: str | Path | Mapping[str, Any] | None = None, *, preset: str | None = None,
              overrides: Mapping[str, Any] | None = None) -> StudySpec:
    """Load and validate a spec from a YAML file, a mapping, or a named preset,
    with optional `overrides` merged in first. Raises SpecError."""
    if (source is None) == (preset is None):
        raise SpecError("give exactly one of a spec file (source) or a preset name "
                        f"(presets: {', '.join(list_presets())})")
    if preset is not None:
        if preset not in list_presets():
            raise SpecError(f"unknown preset {preset!r}; allowed: {', '.join(list_presets())}")
        origin = f"preset {preset!r}"
        data = _parse_yaml(presets_dir().joinpath(f"{preset}.yaml").read_text(), origin)
    elif isinstance(source, Mapping):
        origin, data = "<mapping>", copy.deepcopy(dict(source))
    else:
        assert source is not None  # exactly one of source and preset
        path = Path(source).expanduser()
        origin = str(path)
        if not path.is_file():
            raise SpecError(f"spec file not found: {path}"
                            + (" (a directory)" if path.is_dir() else "")
                            + f"; presets: {', '.join(list_presets())}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(f"spec file {path} cannot be read as UTF-8 text: {e}") from None
        data = _parse_yaml(text, origin)
    if not isinstance(data, dict):
        raise SpecError(f"{origin}: the top level of a spec must be a mapping of fields "
                        f"({', '.join(StudySpec.model_fields)}), got {type(data).__name__}")
    if overrides:
        data = _merge(data, overrides)
    return validate_spec(data, origin)


def validate_spec(data: Mapping[str, Any], origin: str = "<mapping>") -> StudySpec:
    """StudySpec from a mapping, with pydantic's errors turned into one SpecError
    listing every problem, one per line."""
    try:
        return StudySpec.model_validate(data)
    except ValidationError as e:
        lines = [line for err in e.errors() for line in _describe(err, StudySpec)]
        raise SpecError(f"invalid study spec {origin}:\n  " + "\n  ".join(lines)) from None
