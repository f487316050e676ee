"""`resstudy` command line. Each subcommand imports only what it needs, so
`resstudy train` runs where only torch is installed."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from study.config import TrainConfig


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2, no traceback."""


# ---------------------------------------------------------------- train


def _parse_value(field: dataclasses.Field, text: str) -> Any:
    """Cast a flag's text to the TrainConfig field's annotated type (a string here)."""
    kind, flag = str(field.type), "--" + field.name.replace("_", "-")
    if text.lower() in ("none", "null") and "None" in kind:
        return None
    if kind.startswith("bool"):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{flag}: {text!r} is not a boolean; use true or false")
    for tag, caster in (("int", int), ("float", float)):
        if tag in kind:
            try:
                return caster(text)
            except ValueError:
                pass
    if kind.startswith("str"):
        return text
    raise UsageError(f"{flag}: {text!r} is not a valid value; expected {kind}")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(TrainConfig):
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, metavar=f.name.upper(), default=None,
                       help=f"(default: {f.default!r})")


def _train_config(args: argparse.Namespace) -> TrainConfig:
    values = {}
    for f in dataclasses.fields(TrainConfig):
        text = getattr(args, f.name)
        if text is not None:
            values[f.name] = _parse_value(f, text)
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _train_config(args)
    from study.train import train  # torch import only now

    columns = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_s"]
    extra = {"epsilon": ["discarded_blocks", "discarded_ratio", "params_compressed"],
             "quotient": ["q_mean_stage1", "q_mean_stage3", "q_dead_frac"]}.get(cfg.variant, [])
    if cfg.sgs_mode != "off":
        extra = extra + ["sgs_center"]
    header = columns + extra
    print(f"resstudy train: {cfg.variant} depth {cfg.depth} on {cfg.dataset}, {cfg.epochs} epochs, seed {cfg.seed}", flush=True)
    print("  ".join(f"{h:>13}" for h in header), flush=True)

    def report(metrics: dict, info: dict, save) -> None:
        cells = []
        for h in header:
            v = metrics.get(h, float("nan"))
            cells.append(f"{v:>13d}" if isinstance(v, int) and not isinstance(v, bool) else f"{float(v):>13.4g}")
        print("  ".join(cells), flush=True)
        if args.checkpoint_dir:
            save(args.checkpoint_dir)

    final = train(cfg, report, resume=args.resume)
    summary = {k: final[k] for k in ("status", "val_acc", "best_val_acc", "test_acc", "compressed_test_acc") if k in final}
    print("final: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    return 0 if final["status"] == "completed" else 1


# ---------------------------------------------------------------- study


def _spec_from(args: argparse.Namespace):
    from study.spec import SpecError, load_spec

    if bool(args.spec) == bool(args.preset):
        raise UsageError("give a spec file or --preset NAME (one of them)")
    overrides = {}
    if getattr(args, "storage_path", None):
        overrides["storage_path"] = args.storage_path
    if getattr(args, "tracking_uri", None):
        overrides["mlflow"] = {"tracking_uri": args.tracking_uri}
    try:
        return load_spec(args.spec, preset=args.preset, overrides=overrides or None)
    except SpecError as e:
        raise UsageError(str(e)) from None


def _study_dir(name: str, storage_path: str | None) -> Path:
    """A study name under the storage path, or a study directory given directly."""
    direct = Path(name)
    if (direct / "study.json").exists() or (direct / "spec.yaml").exists():
        return direct.resolve()
    root = Path(storage_path or os.environ.get("RESSTUDY_STORAGE", "resstudy_runs"))
    candidate = root / name
    if not candidate.exists():
        known = sorted(p.name for p in root.iterdir() if (p / "spec.yaml").exists()) if root.is_dir() else []
        raise UsageError(f"study {name!r}: no study directory {candidate}; studies under {root}: {known or 'none'}")
    return candidate.resolve()


def cmd_run(args: argparse.Namespace) -> int:
    spec = _spec_from(args)
    from study.runner import run_study

    run_study(spec)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    study_dir = _study_dir(args.name, args.storage_path)
    from study.runner import StudyRunner
    from study.spec import SpecError, load_spec

    overrides = {"mlflow": {"tracking_uri": args.tracking_uri}} if args.tracking_uri else None
    try:
        spec = load_spec(study_dir / "spec.yaml", overrides=overrides)
    except SpecError as e:
        raise UsageError(str(e)) from None
    StudyRunner(spec, study_dir).run()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.address or args.name.startswith("raysubmit_"):
        from study import jobs

        print(jobs.status(args.name, args.address))
        return 0
    from study.report import status_text

    print(status_text(_study_dir(args.name, args.storage_path)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from study.report import export

    for path in export(_study_dir(args.name, args.storage_path), args.out):
        print(path)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from analysis.report import analyze

    report = analyze(_study_dir(args.name, args.storage_path), out_dir=args.out, log_to_mlflow=not args.no_mlflow)
    print(f"report: {report}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from study import jobs

    job_id = jobs.submit(args.spec, args.address, shared_storage=args.shared_storage, tracking_uri=args.tracking_uri,
                         working_dir=args.working_dir)
    print(f"submitted job {job_id} to {args.address or jobs.default_address()}")
    print(f"follow it with: resstudy logs {job_id} --follow" + (f" --address {args.address}" if args.address else ""))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from study import jobs

    jobs.logs(args.job_id, args.address, follow=args.follow)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from study import jobs

    print(jobs.stop(args.job_id, args.address))
    return 0


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resstudy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run one trial without Ray and print a per-epoch table")
    _add_train_args(p)
    p.add_argument("--checkpoint-dir", default=None, help="write a full-state checkpoint here after every epoch")
    p.add_argument("--resume", default=None, help="continue from a checkpoint directory")
    p.set_defaults(func=cmd_train)

    address_help = ("Ray dashboard address (default: RAY_API_SERVER_ADDRESS, an http RAY_ADDRESS, "
                    "else http://127.0.0.1:8265); the token comes from RAY_AUTH_TOKEN(_PATH) or ~/.ray/auth_token")
    p = sub.add_parser("run", help="run a study on the embedded local Ray (or the cluster of RAY_ADDRESS)")
    p.add_argument("spec", nargs="?", help="study spec YAML")
    p.add_argument("--preset", help="a shipped spec: quick, cifar10, cifar100, svhn")
    p.add_argument("--storage-path", help="override the spec's storage_path")
    p.add_argument("--tracking-uri", help="override the spec's mlflow.tracking_uri")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="finish an interrupted study without re-running finished trials")
    p.add_argument("name", help="study name (under --storage-path) or study directory")
    p.add_argument("--storage-path", default=None)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow URI, when the study's had a password (spec.yaml keeps it redacted)")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="a study's trial counts and best results, or a submitted job's state")
    p.add_argument("name", help="study name, study directory, or Ray job id")
    p.add_argument("--storage-path", default=None)
    p.add_argument("--address", default=None, help="Ray dashboard address for a job id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", help="write a study's results as CSV and a Markdown summary")
    p.add_argument("name")
    p.add_argument("--storage-path", default=None)
    p.add_argument("--out", default=None, help="folder (default: <study dir>/export)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("analyze", help="sensitivity fits, importances, variant comparison and an HTML report")
    p.add_argument("name")
    p.add_argument("--storage-path", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to the study's MLflow run")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("submit", help="submit a study to a Ray cluster through Ray Jobs")
    p.add_argument("spec")
    p.add_argument("--address", default=None, help=address_help)
    p.add_argument("--shared-storage", action="store_true", help="storage_path is a mount every node can reach")
    p.add_argument("--tracking-uri", default=None, help="MLflow server the trials log to (default: the spec's)")
    p.add_argument("--working-dir", default=".", help="folder shipped to the cluster; must contain the spec")
    p.set_defaults(func=cmd_submit)

    for name, helptext, func in (("logs", "print a submitted study's logs", cmd_logs),
                                 ("stop", "stop a submitted study", cmd_stop)):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("job_id")
        p.add_argument("--address", default=None, help=address_help)
        if name == "logs":
            p.add_argument("--follow", action="store_true")
        p.set_defaults(func=func)

    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that name a bad file or setting (a corrupt results file or
    checkpoint, unreachable MLflow). Looked up only in modules already imported,
    so `resstudy train` never imports pyarrow or mlflow to catch them."""
    names = (("study.results", "ResultsError"), ("study.train", "CheckpointError"),
             ("study.tracking", "TrackingError"), ("study.spec", "SpecError"))
    return tuple(getattr(sys.modules[m], n) for m, n in names if m in sys.modules)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"resstudy {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        # Configuration and data-path errors carry their own field/value/allowed text.
        print(f"resstudy {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"resstudy {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"resstudy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
