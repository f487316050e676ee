"""The shipped study specs (`resstudy run --preset NAME`): one YAML file each.
Light on purpose: the command line lists them without importing the spec machinery."""

from __future__ import annotations

import importlib.resources


def presets_dir():
    return importlib.resources.files("study").joinpath("presets")


def list_presets() -> list[str]:
    """Names of the presets shipped in study/presets."""
    return sorted(p.name[: -len(".yaml")] for p in presets_dir().iterdir() if p.name.endswith(".yaml"))
