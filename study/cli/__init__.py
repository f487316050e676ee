"""`resstudy`: train one network, run and follow studies, open their UIs.

The command line, one module per command group on one typer app (app: the app,
its root group and `main`): train (one network, flags derived from the variants'
options, flags), studies (run, resume, check), read (status, list, export,
analyze, ui), cluster (submit, logs, stop); base holds what they share. A new
command goes in the module of its group, or a new module imported here.

Each command imports only what it needs: `resstudy train` runs where only torch,
numpy and scikit-learn are installed (no Ray, MLflow, Optuna or pyarrow is
imported by `import study.cli`), and `--help`, completion and a refused flag
answer from the cached flag table without importing torch.
"""

from __future__ import annotations

# in this order: the order of `resstudy --help`
from study.cli import studies, read, cluster  # noqa: F401  (each registers its commands on the app)
from study.cli.app import app, main
from study.cli.base import STATE, CliError, study_dir
from study.cli.flags import _source_key, flag_cache_file, flag_table, flag_table_from_registry
from study.cli.train import TrainView, train_command

__all__ = ["STATE", "CliError", "TrainView", "_source_key", "app", "flag_cache_file", "flag_table",
           "flag_table_from_registry", "main", "study_dir", "train_command"]
