"""The `train` flags, derived from the options the variants declare
(study.config.variant_options) with their types, allowed values, defaults and help, so
a new variant's options become flags without touching the command line."""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.core

from study.cache import cache_dir
from study.cli.base import _NULL


# ---------------------------------------------------------------- train (flags from the registry)
#
# The flags are derived from the options the variants declare. Importing the
# registry imports torch (the variants' modules hold their networks), which costs
# seconds, so the derived table is kept in a cache file keyed by the content of
# every source file of this package: `--help`, completion and a refused flag read
# it without torch; any edit to the package makes it stale, and it is derived again.

FLAG_TABLE_VERSION = 1
_TABLE: dict[str, Any] = {}
_KINDS = {"bool": bool, "int": int, "float": float, "str": str}


def flag_table_from_registry() -> dict[str, Any]:
    """Every train option of every registered variant (the first declaration of
    a name, with each variant's own default), as JSON-able data. TrainConfig
    checks a value again against the chosen variant's own declaration."""
    import dataclasses

    from study.config import VARIANT_HELP, variant_options
    from study.variants import features, list_variants

    variants = list_variants()
    merged: dict[str, Any] = {}
    defaults: dict[str, dict[str, Any]] = {}
    for v in variants:
        for name, opt in variant_options(v).items():
            merged.setdefault(name, opt)
            defaults.setdefault(name, {})[v] = opt.default
    feature_of = {o.name: f.name.upper() if len(f.name) <= 4 else f.name for f in features() for o in f.options}
    options = []
    for name, opt in merged.items():
        fields = {f.name: getattr(opt, f.name) for f in dataclasses.fields(opt)}
        fields.update(kind=opt.kind.__name__, choices=None if opt.choices is None else list(opt.choices))
        options.append({**fields, "defaults": defaults[name], "feature": feature_of.get(name)})
    return {"variants": variants, "variant_help": VARIANT_HELP, "options": options}


def _source_key() -> str:
    root = Path(__file__).resolve().parents[1]  # the study package, this command line included
    h = hashlib.sha256(f"{FLAG_TABLE_VERSION} {sys.version}".encode())
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def flag_cache_file() -> Path | None:
    """The cache of the train flag table ($XDG_CACHE_HOME, else ~/.cache), one per
    installed copy of the package; None without a home."""
    try:
        base = cache_dir()
    except RuntimeError:
        return None
    where = hashlib.sha256(str(Path(__file__).resolve().parent).encode()).hexdigest()[:12]
    return base / f"train-flags-{where}.json"


def flag_table() -> dict[str, Any]:
    """The train flag table: from the cache when it was derived from these very
    sources, else from the registry (and the cache is rewritten)."""
    if _TABLE:
        return _TABLE
    import json

    key, path = _source_key(), flag_cache_file()
    try:
        cached = json.loads(path.read_text()) if path is not None else {}
        if cached.get("key") == key and isinstance(cached["table"]["options"], list):
            _TABLE.update(cached["table"])
            return _TABLE
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # none, unreadable or damaged: derive it again
    table = flag_table_from_registry()
    if path is not None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"key": key, "table": table}))
            os.replace(tmp, path)
        except OSError:  # a read-only home: derived again next time
            tmp.unlink(missing_ok=True)
    _TABLE.update(table)
    return _TABLE


def _option(entry: dict[str, Any]):
    from study.options import Option

    fields = {k: v for k, v in entry.items() if k not in ("defaults", "feature")}
    fields["kind"] = _KINDS[fields["kind"]]
    fields["choices"] = None if fields["choices"] is None else tuple(fields["choices"])
    return Option(**fields)


def _parser(opt):
    """Parse and check a flag's text with the option's own rules, so the error
    text is the same as the spec's and TrainConfig's."""
    def parse(value: Any) -> Any:
        if value is _NULL or not isinstance(value, str):
            return value
        from study.errors import OptionError

        try:
            parsed = opt.parse(value)
        except OptionError as e:
            raise typer.BadParameter(str(e)) from None
        return _NULL if parsed is None else parsed

    return parse


def _metavar(opt) -> str:
    if opt.choices is not None:
        return "[" + "|".join(map(str, opt.choices)) + "]" + ("|null" if opt.nullable else "")
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(opt.kind, "VALUE") + ("|null" if opt.nullable else "")


def _completer(values: list[str]):
    def complete(incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete)]

    return complete


def _choice(name: str, allowed: list[str]):
    def parse(value: str) -> str:
        if value not in allowed:
            raise typer.BadParameter(f"{name}: {value!r} is not allowed; allowed: {', '.join(allowed)}")
        return value

    return parse


def _show(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _default_text(per_variant: dict[str, Any]) -> str:
    values = {_show(d) for d in per_variant.values()}
    if len(values) == 1:
        return values.pop()
    return ", ".join(f"{v}: {_show(d)}" for v, d in per_variant.items())


def _train_params(table: dict[str, Any]) -> list[inspect.Parameter]:
    variants = table["variants"]

    def param(name: str, annotation: Any) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)

    params = [param("variant", Annotated[Optional[str], typer.Option(
        "--variant", help=f"{table['variant_help']} (default: {variants[0]}; with --from: the variant whose best "
                          "trial is trained)", show_default=False, parser=_choice("variant", variants),
        metavar="[" + "|".join(variants) + "]", autocompletion=_completer(variants),
        rich_help_panel="What is trained")])]
    params.append(param("from_", Annotated[Optional[str], typer.Option(
        "--from", help="train a study's best configuration (STUDY: a name under $RESSTUDY_STORAGE or "
                       "./resstudy_runs, or a directory), or one trial's (STUDY:TRIAL); --variant and --depth pick "
                       "the experiment, every other flag changes the configuration", metavar="STUDY[:TRIAL]",
        show_default=False, rich_help_panel="What is trained")]))
    for entry in table["options"]:
        opt, per_variant, name = _option(entry), entry["defaults"], entry["name"]
        flag = "--" + name.replace("_", "-")
        owners = [v for v in variants if v in per_variant]
        if len(owners) < len(variants):
            panel = f"Options of {', '.join(owners)} only"
        elif entry["feature"]:
            panel = f"{entry['feature']} (any variant)"
        else:
            panel = "Model" if opt.target == "model" else "Training"
        # choices show in the metavar; bounds and null need words
        allowed = "" if opt.choices is not None or opt.kind is str \
            else f"; allowed: {opt.allowed().replace(' (or null)', '')}"
        help_text = f"{opt.help}{allowed} (default: {_default_text(per_variant)})"
        if opt.kind is bool:
            info = typer.Option(f"{flag}/--no-{name.replace('_', '-')}", help=help_text, show_default=False,
                                rich_help_panel=panel)
            params.append(param(name, Annotated[Optional[bool], info]))
        else:
            info = typer.Option(flag, help=help_text, show_default=False, parser=_parser(opt),
                                metavar=_metavar(opt), rich_help_panel=panel,
                                autocompletion=_completer([str(c) for c in opt.choices]) if opt.choices else None)
            params.append(param(name, Annotated[Optional[str], info]))
    params.append(param("checkpoint_dir", Annotated[Optional[Path], typer.Option(
        "--checkpoint-dir", help="write a full-state checkpoint here after every epoch", show_default=False,
        rich_help_panel="Checkpoints")]))
    params.append(param("resume", Annotated[Optional[Path], typer.Option(
        "--resume", help="continue from this checkpoint directory", show_default=False,
        rich_help_panel="Checkpoints")]))
    return params
