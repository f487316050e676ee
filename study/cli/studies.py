"""The study commands: `run`, `resume` and `check` (a spec planned and timed, nothing started)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.core

from study.cli.app import app
from study.cli.base import (STATE, CliError, Preset, Sets, SpecFile, StoragePath, TrackingUri, output_width,
                            study_dir)
from study.timeline import mark


def _load_spec(spec: Optional[Path], preset: Optional[str], storage_path: str | None, tracking_uri: str | None,
               sets: list[str] | None = None):
    from study.spec import load_spec, parse_overrides

    if (spec is None) == (preset is None):
        raise CliError("give a spec file or --preset NAME (one of them)")
    overrides: dict[str, Any] = parse_overrides(sets or [])
    if storage_path:
        overrides["storage_path"] = storage_path
    if tracking_uri:
        overrides["mlflow.tracking_uri"] = tracking_uri
    return load_spec(spec, preset=preset, overrides=overrides or None)


def _preflight(spec) -> None:
    from study import preflight

    if os.environ.get("RAY_ADDRESS"):
        preflight.check_spec(spec)  # the cluster's resources are checked once Ray is up
    else:
        preflight.check_local(spec)  # the embedded Ray gets exactly this machine


def _driver_deps() -> dict[str, Any]:
    from study.driver import RuntimeOptions

    options = RuntimeOptions.from_environment(**{"verbose": STATE["verbose"], **STATE["options"]})
    return {"options": options, "events": STATE["events"]}


@app.command()
def run(
    spec: SpecFile = None,
    preset: Preset = None,
    sets: Sets = None,
    storage_path: StoragePath = None,
    tracking_uri: TrackingUri = None,
    new_name: Annotated[Optional[str], typer.Option(
        "--new-name", help="run the spec as a new study of this name "
                           "(when a study of the spec's name exists with another spec)")] = None,
) -> None:
    """Run a study on the embedded local Ray, or on the cluster of RAY_ADDRESS."""
    if new_name is not None:
        from study.spec import check_study_name

        check_study_name(new_name, "--new-name")  # it becomes a directory name under storage_path
    s = _load_spec(spec, preset, storage_path, tracking_uri, sets)
    _preflight(s)
    from study.progress import quiet_libraries

    quiet_libraries(STATE["verbose"])
    from study.driver import run_study

    out = run_study(s, new_name=new_name, **_driver_deps()) if new_name else run_study(s, **_driver_deps())
    _where(Path(out) if out else None)


@app.command()
def check(
    spec: SpecFile = None,
    preset: Preset = None,
    sets: Sets = None,
    storage_path: StoragePath = None,
    tracking_uri: TrackingUri = None,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="time a few training steps of each "
                                            "experiment on this machine for the time estimate")] = True,
) -> None:
    """Check a spec as `run` would and plan it (trials per experiment and arm, time); starts nothing."""
    s = _load_spec(spec, preset, storage_path, tracking_uri, sets)
    _preflight(s)
    from study.driver.plan import plan as trials_plan

    plan = trials_plan(s)
    times = estimate_times(s, plan) if calibrate else None
    typer.echo("\n".join(plan_lines(s, plan, times)))


def _slots(spec) -> tuple[int, str]:
    """(trials that run at once, why): max_concurrent, bounded by this machine for the embedded Ray."""
    if os.environ.get("RAY_ADDRESS"):
        return spec.max_concurrent, f"max_concurrent {spec.max_concurrent}; the cluster's size is not known here"
    from study.preflight import local_resources

    have = local_resources()
    fit = int(have["CPU"] // spec.resources.cpu) or 1
    why = f"max_concurrent {spec.max_concurrent}, {have['CPU']:g} CPUs / resources.cpu {spec.resources.cpu:g}"
    if spec.resources.gpu > 0:
        fit = min(fit, int(have["GPU"] // spec.resources.gpu) or 1)
        why += f", {have['GPU']:g} GPUs / resources.gpu {spec.resources.gpu:g}"
    return max(1, min(spec.max_concurrent, fit)), why


class _Calibrated(Exception):
    """Raised from the step callback: enough steps were timed."""


def calibrate(config: dict[str, Any], *, seconds: float = 2.0, max_steps: int = 30) -> dict[str, float]:
    """Time the first epoch of one configuration on this machine: a few training
    steps (after the first, which may compile), extrapolated to the epoch and its
    validation pass. {epoch_s, setup_s (data and model, once per trial), steps}."""
    from study.config import TrainConfig
    from study.train import train

    cfg = TrainConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_")})
    marks: list[float] = []
    total = {"steps": 0}
    t0 = time.perf_counter()

    def on_step(epoch: int, step: int, steps: int) -> None:
        marks.append(time.perf_counter())
        total["steps"] = steps
        if step >= steps or (len(marks) >= 4 and (marks[-1] - marks[1] >= seconds or len(marks) > max_steps)):
            raise _Calibrated

    try:
        train(cfg, on_step=on_step)
    except _Calibrated:
        pass
    timed = marks[1:] if len(marks) > 1 else marks
    per_step = (timed[-1] - timed[0]) / max(len(timed) - 1, 1) if len(timed) > 1 else marks[0] - t0
    steps = total["steps"]
    # validation: a forward pass (about a third of a training step) over the held-out images
    train_images = steps * cfg.batch_size
    val_images = cfg.val_size if cfg.val_size >= 1 else train_images * cfg.val_size / (1 - cfg.val_size)
    val_s = val_images / cfg.eval_batch_size * per_step * (cfg.eval_batch_size / cfg.batch_size) / 3
    return {"epoch_s": steps * per_step + val_s, "setup_s": max(marks[0] - t0 - per_step, 0.0), "steps": steps}


def estimate_times(spec, plan: dict[tuple[str, int], dict[str, int]]) -> dict[str, Any]:
    """Seconds per epoch, per trial and per experiment, from calibrate() on each
    experiment's base configuration (the search's choices at their defaults)."""
    slots, why = _slots(spec)
    out: dict[str, Any] = {"slots": slots, "why": why, "experiments": {}}
    for (variant, depth), arms in plan.items():
        config = dict(spec.trial_base_config(variant, depth))
        if spec.resources.gpu == 0 and config.get("threads") is None:
            config["threads"] = max(1, int(spec.resources.cpu))  # what a trial's share of the CPUs gives it
        c = calibrate(config)
        trial_s = c["setup_s"] + spec.epochs * c["epoch_s"]
        later = sum(n for name, n in arms.items() if name != "search")  # repeat, twin, designed arms
        waves = math.ceil(arms["search"] / slots) + math.ceil(later / slots)
        out["experiments"][(variant, depth)] = {"epoch_s": c["epoch_s"], "trial_s": trial_s,
                                                "total_s": waves * trial_s}
    out["total_s"] = sum(e["total_s"] for e in out["experiments"].values())
    return out


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def plan_lines(spec, plan: dict[tuple[str, int], dict[str, int]], times: dict[str, Any] | None) -> list[str]:
    where = "the cluster of RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else "this machine"
    phases = list(dict.fromkeys(name for arms in plan.values() for name in arms))  # as the spec plans them
    lines = [f"spec {spec.name}: valid, and runs on {where} as far as can be checked before Ray starts",
             f"{'experiment':<24}" + "".join(f"{name:>7}" for name in phases) + f"{'trials':>7}"
             + (f"{'s/epoch':>9}{'trial':>9}{'time':>9}" if times else "")]
    for (variant, depth), arms in plan.items():
        line = (f"{spec.name + '-' + variant + '-d' + str(depth):<24}"
                + "".join(f"{arms.get(name, 0):>7}" for name in phases) + f"{sum(arms.values()):>7}")
        if times:
            t = times["experiments"][(variant, depth)]
            line += f"{t['epoch_s']:>9.2f}{_duration(t['trial_s']):>9}{_duration(t['total_s']):>9}"
        lines.append(line)
    import textwrap

    trials = sum(sum(a.values()) for a in plan.values())
    prose = [f"total: {trials} trials of {spec.epochs} epochs"
             + ("; repeat: the best searched configuration at each seed, twin: its matched twin at each seed"
                if spec.repeat_best else "")
             + ("; arms: the claims' designed arms and the sweeps that are not the repeat or the twin (round "
                "one, estimated before the search; open claims may add seeds up to design.max_seeds)"
                if spec.design is not None and spec.repeat_best else "")]
    if times:
        prose.append(f"estimated training time: about {_duration(times['total_s'])}, {times['slots']} trial(s) at "
                     f"once ({times['why']}); from a few training steps of each experiment timed here and "
                     "extrapolated to whole epochs; less where ASHA stops search trials early; Ray's start-up and "
                     "each trial's own overhead (checkpoints, MLflow) come on top")
    prose.append("nothing was started: `resstudy run` with the same arguments runs it")
    width = min(output_width() or 100, 100)
    return lines + [part for text in prose for part in textwrap.wrap(text, width, subsequent_indent="  ")]


def _where(d: Path | None) -> None:
    if d is None or not d.is_dir():
        return
    _claims_at_end(d)
    mark("cli: claims written")
    typer.echo(f"study directory: {d}")
    for name, what in (("results.parquet", "one row per trial"), ("history.parquet", "one row per trial-epoch"),
                       ("optuna.db", "Optuna studies"), ("mlflow.db", "MLflow runs")):
        if (d / name).exists():
            typer.echo(f"  {name:<16} {what}")
    typer.echo(f"next: resstudy status {d.name} | resstudy analyze {d.name} | resstudy ui {d.name}")


def _claims_at_end(d: Path) -> None:
    """The claims as the driver left them: analysis/claims.{parquet,csv,md}, each claim in one
    line, and the verdicts as tags of the study's MLflow run. A failure here is a warning:
    the study's own record is complete without it."""
    try:
        from analysis.claims import verdict_sentence, write_claims
        from study import api

        table = api.Study(d).claims()
        if table.empty:
            return
        write_claims(table, d / "analysis")
        typer.echo("claims (analysis/claims.csv; `resstudy analyze` for the report):")
        for _, r in table.iterrows():
            setting = f", {r['setting']}" if isinstance(r.get("setting"), str) and r["setting"] else ""
            typer.echo(f"  {r['subject']} d{r['depth']}{setting}: {r['claim']}: {verdict_sentence(r)}")
        from analysis.report import log_claims

        log_claims(d, table)
    except Exception as e:  # the claims are re-made by `resstudy analyze`; the study is done
        typer.echo(f"WARNING: claims table not written ({type(e).__name__}: {e}); `resstudy analyze` makes it",
                   err=True)


@app.command()
def resume(
    name: Annotated[str, typer.Argument(help="study name (under --storage-path) or study directory")],
    storage_path: StoragePath = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Finish an interrupted study without re-running finished trials."""
    d = study_dir(name, storage_path)
    from study.progress import quiet_libraries
    from study.driver import resume_study

    quiet_libraries(STATE["verbose"])
    out = resume_study(d, tracking_uri=tracking_uri, **_driver_deps())
    _where(Path(out) if out else d)
