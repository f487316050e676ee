"""One error root: every error class the project defines for something a user can
fix is a study.errors.UserError, and the CLI turns every one of them into one
`resstudy CMD: error: ...` line and exit code 2, without knowing their names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Errors that are deliberately not the user's to fix (exit 1, with the traceback), and why.
NOT_USER_ERRORS = {"study.driver.backend.BackendError": "trials Tune could not finish: a bug or a broken cluster"}

# Runs in a process of its own: importing every module (the driver's included) sets
# Ray's environment switches, which must not leak into the test process.
SURVEY = r"""
import contextlib, importlib, inspect, io, json, pkgutil, sys

from study.errors import UserError

modules = []
for pkg in ("study", "search_spaces", "analysis"):
    root = importlib.import_module(pkg)
    modules.append(root)
    for info in pkgutil.walk_packages(root.__path__, pkg + "."):
        modules.append(importlib.import_module(info.name))

defined = []
for m in modules:
    for name, obj in vars(m).items():
        if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == m.__name__ \
                and not issubclass(obj, Warning):
            defined.append({"name": f"{m.__name__}.{obj.__qualname__}", "user": issubclass(obj, UserError)})

def every(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from every(sub)

import study.cli as cli
import study.cli.read as read_commands

caught = []
for cls in dict.fromkeys(every(UserError)):
    message = f"field: {cls.__name__} says what is wrong and what is allowed"
    error = cls.__new__(cls, message)
    Exception.__init__(error, message)

    def refuse(*args, **kwargs):
        raise error

    read_commands.study_dir = refuse  # where `status` finds the study
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["status", "somewhere"])
    caught.append({"name": f"{cls.__module__}.{cls.__qualname__}", "code": code, "stdout": out.getvalue(),
                   "stderr": err.getvalue(), "message": message})
print(json.dumps({"defined": defined, "caught": caught}))
"""


def _survey() -> dict:
    p = subprocess.run([sys.executable, "-c", SURVEY], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_every_error_class_is_a_user_error_and_the_cli_prints_each_as_one_line_exit_2():
    survey = _survey()
    # a public error class outside the root would reach the user as a traceback; control
    # flow inside the package (a private class, KeyboardInterrupt's kin) is not an error
    outside = [d["name"] for d in survey["defined"] if not d["user"] and d["name"] not in NOT_USER_ERRORS
               and not d["name"].rsplit(".", 1)[-1].startswith("_")]
    assert outside == [], f"error classes outside study.errors.UserError: {outside}"
    names = {c["name"] for c in survey["caught"]}
    # the ones that sat outside the root, found through no list of names
    assert {"study.jobs.JobError", "study.data.DatasetError", "analysis.load.InsufficientDataError",
            "study.spaces.SpaceError", "study.variants.DeclarationError"} <= names
    for c in survey["caught"]:
        assert c["code"] == 2, c
        assert c["stderr"] == f"resstudy status: error: {c['message']}\n", c
        assert c["stdout"] == "", c
