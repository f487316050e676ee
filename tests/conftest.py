"""Shared fixtures and the test tiers.

`tiny_study_dir` runs one small REAL study (embedded Ray, Optuna, MLflow on
SQLite) once per test session, through the CLI, and hands its study directory
to every test that inspects a study's outputs.

Tiers: a test that starts Ray (or a study, or a cluster), a server, a browser,
a notebook kernel or torch.compile carries the marker of what it starts
(HEAVY). `pytest -q` with no paths runs the fast tier (no heavy marker);
`--tier heavy` the rest, `--tier all` everything; naming paths or node ids runs
what they name. The rule that keeps the fast tier fast: every test is watched
for what it starts (subprocesses, torch.compile); one that starts something
heavy without the matching marker is reported, and with `--strict-tiers`
(what .ci/run passes) it fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

HEAVY = {
    "ray": "starts Ray: embedded, a local cluster, or a study (resstudy run/resume/submit)",
    "server": "starts a server: the MLflow or optuna-dashboard server, resstudy ui",
    "browser": "starts a browser (Chromium)",
    "notebook": "starts a notebook kernel",
    "compile": "runs torch.compile",
}
# Fixtures that start something heavy: a test using one carries its marker (added at collection).
HEAVY_FIXTURES = {"tiny_study_run": "ray", "tiny_study_dir": "ray", "cluster": "ray"}
TIERS = ("fast", "heavy", "all")


def pytest_addoption(parser) -> None:
    parser.addoption("--tier", choices=TIERS, default=None,
                     help="fast: tests without a heavy marker (the default when no path is named); heavy: the "
                          "others; all: every test")
    parser.addoption("--strict-tiers", action="store_true",
                     help="fail a test that starts something heavy without carrying its marker (CI)")


def pytest_configure(config) -> None:
    for name, what in HEAVY.items():
        config.addinivalue_line("markers", f"{name}: {what} (not in the fast tier)")


def heavy_markers(item) -> set[str]:
    return {m.name for m in item.iter_markers() if m.name in HEAVY}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        for fixture, marker in HEAVY_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
        if heavy_markers(item):
            # one worker runs every heavy test, in order: they share one tiny study and do not
            # compete for the two cores with each other
            item.add_marker(pytest.mark.xdist_group("heavy"))
    tier = config.getoption("--tier")
    if tier is None:
        # no path named: the fast tier; a named file or test runs as named
        named = [a for a in config.args if a not in config.getini("testpaths") and Path(a).resolve() != ROOT]
        tier = "all" if named else "fast"
    if tier == "all":
        return
    keep, drop = [], []
    for item in items:
        (keep if bool(heavy_markers(item)) == (tier == "heavy") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def started_kind(argv) -> str | None:
    """Which heavy thing a subprocess command starts, if any."""
    parts = [str(a) for a in (argv if isinstance(argv, (list, tuple)) else str(argv).split())]
    text = " ".join(parts).lower()
    names = {Path(p).name for p in parts}
    if names & {"chromium", "chromium-browser", "chrome", "google-chrome", "chromedriver"}:
        return "browser"
    if "ipykernel_launcher" in text or "ipykernel" in names or "jupyter" in names:
        return "notebook"
    if names & {"gcs_server", "raylet", "local.sh"} or ("ray" in names and "start" in parts):
        return "ray"
    if "optuna-dashboard" in names or ("mlflow" in text and ("server" in parts or "ui" in parts)):
        return "server"
    if "study.cli" in parts or names & {"resstudy"}:
        rest = parts[parts.index("study.cli") + 1:] if "study.cli" in parts else parts[1:]
        sub = next((a for a in rest if not a.startswith("-")), "")
        return {"run": "ray", "resume": "ray", "submit": "ray", "ui": "server"}.get(sub)
    return None


UNMARKED: list[tuple[str, str]] = []


@pytest.fixture(autouse=True)
def _tier_rule(request, monkeypatch):
    """Watch what the test starts; a heavy start without its marker breaks the tier rule."""
    seen: set[str] = set()
    real_init = subprocess.Popen.__init__

    def init(self, args, *a, **kw):
        kind = started_kind(args)
        if kind:
            seen.add(kind)
        return real_init(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", init)
    torch = sys.modules.get("torch")
    if torch is not None:
        real_compile = torch.compile

        def compile_(*a, **kw):
            seen.add("compile")
            return real_compile(*a, **kw)

        monkeypatch.setattr(torch, "compile", compile_)
    yield
    missing = sorted(seen - heavy_markers(request.node))
    if missing:
        UNMARKED.append((request.node.nodeid, ", ".join(missing)))
        if request.config.getoption("--strict-tiers"):
            pytest.fail(f"{request.node.nodeid} starts {', '.join(HEAVY[m].split(':')[0] for m in missing)} "
                        f"without the marker(s) {missing}: mark it (@pytest.mark.{missing[0]}) so the fast tier "
                        "stays fast", pytrace=False)

# the fifth variant a plugin file registers (tests/plugins/toy_variant.py): the tiny study runs it
# beside the built-ins, so the plugin path is proved by the same study
TOY_PLUGIN = ROOT / "tests" / "plugins" / "toy_variant.py"

TINY_SPEC = {
    "name": "tiny",
    "plugins": [str(TOY_PLUGIN)],
    "dataset": "digits",
    "image_size": 8,
    "depth": 8,
    "epochs": 3,
    "trials_per_variant": 4,
    "seeds": [0, 1],
    "repeat_best": True,
    "variants": {
        "resnet": {},
        "quotient": {},
        "epsilon": {},
        "sgs": {"space": {"sgs_interval": {"low": 1, "high": 3}, "sgs_batches": {"low": 1, "high": 2}}},
        "toy": {},
    },
    "train": {"batch_size": 64, "val_size": 0.15},
    "search": {"algorithm": "tpe", "seed": 0, "n_startup_trials": 2},
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpu": 1, "gpu": 0},
    "max_concurrent": 2,
    # every claim's arms at both seeds and the sweeps at seed 0 (two seeds settle nothing: the
    # designed experiments run through the real backend, the verdicts are the hand-played tests')
    "design": {"max_seeds": 2, "sweeps": {"levels": 2, "seeds": 1}},
}


def importable(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with this checkout first on PYTHONPATH: a child process, and the Ray workers it
    starts, import tests.* (a faults object they unpickle) and this tree's packages from here."""
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 900,
            check: bool = True, faults: Path | None = None) -> subprocess.CompletedProcess:
    """`resstudy ARGS` in a process of its own; `faults`: a faults file plugged into its
    driver (tests/study/faultplug.py)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "study.cli", *args]
    if faults is not None:
        from tests.study.faultplug import command as faulty

        command = faulty(faults, *args)
        # the trials unpickle the faults object: they import tests.study.faultplug from here
        full_env = importable(full_env)
    proc = subprocess.run(command, cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"resstudy {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def ui_links(proc: subprocess.Popen, timeout: float = 240) -> tuple[dict[str, str], str]:
    """The two links `resstudy ui` prints ({"MLflow": url, "optuna-dashboard": url}) and
    its output up to them, read from the process's stdout (text mode)."""
    urls: dict[str, str] = {}
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(urls) < 2:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.match(r"(MLflow|optuna-dashboard):\s+(http://\S+)", line)
        if m:
            urls[m.group(1)] = m.group(2)
    assert len(urls) == 2, "".join(lines)
    return urls, "".join(lines)


def url_port(url: str) -> int:
    return int(re.match(r"http://[^/:]+:(\d+)", url).group(1))


def server_pids(ports: set[int]) -> list[int]:
    """The processes started with `--port N` for one of `ports` (the UIs' servers)."""
    pids = []
    for p in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdline = p.read_text()
        except OSError:
            continue
        if any(f"--port\0{port}\0" in cmdline for port in ports):
            pids.append(int(p.parent.name))
    return pids


@pytest.fixture(scope="session")
def tiny_study_run(tmp_path_factory):
    """(study dir, CompletedProcess) of the tiny study.

    RESSTUDY_TEST_STUDY_DIR=<dir of a finished tiny study> skips the run (for
    iterating on the tests themselves; stdout checks then see a replayed log).
    """
    reuse = os.environ.get("RESSTUDY_TEST_STUDY_DIR")
    if reuse:
        log = Path(reuse) / "run.log"
        return Path(reuse), subprocess.CompletedProcess([], 0, log.read_text() if log.exists() else "", "")
    root = tmp_path_factory.mktemp("tiny-study")
    spec = dict(TINY_SPEC, storage_path=str(root / "runs"))
    spec_path = root / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    proc = run_cli("run", str(spec_path))
    return root / "runs" / "tiny", proc


@pytest.fixture(scope="session")
def tiny_study_dir(tiny_study_run) -> Path:
    return tiny_study_run[0]


@pytest.fixture(scope="module")
def tiny_plugins():
    """The tiny study's plugin variants registered in this process for one test module, and
    unregistered after it, so that no other test sees a fifth variant."""
    from study import variants

    variants.list_variants()  # the built-ins first
    saved, modules = dict(variants._VARIANTS), set(sys.modules)
    variants.load_plugins(TINY_SPEC["plugins"])
    yield
    variants._VARIANTS.clear()
    variants._VARIANTS.update(saved)
    for name in set(sys.modules) - modules:
        if name.startswith("resstudy_plugin_"):
            del sys.modules[name]


# read before any test runs: Inductor sets the variable itself at its first compile
USER_INDUCTOR_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")


@pytest.fixture(scope="session")
def inductor_cache(request, tmp_path_factory):
    """Inductor's on-disk cache, one for every test that compiles (marker `compile`) and
    kept from run to run in pytest's cache folder (.pytest_cache, which CI may keep too):
    only the first run pays the full compile. A TORCHINDUCTOR_CACHE_DIR set outside the
    tests wins."""
    if USER_INDUCTOR_CACHE:
        yield Path(os.path.abspath(USER_INDUCTOR_CACHE))  # as Inductor reads it
        return
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    path = cache.mkdir("inductor") if cache is not None else tmp_path_factory.mktemp("inductor")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(path))
        yield path


@pytest.fixture(autouse=True)
def _compile_cache(request) -> None:
    if request.node.get_closest_marker("compile"):
        request.getfixturevalue("inductor_cache")


# ---------------------------------------------------------------- the fault table

FAULTS: list[tuple[str, str, str]] = []


def record_fault(fault: str, expected: str, observed: str) -> None:
    """A fault-injection test that passed records what it tried and saw."""
    FAULTS.append((fault, expected, observed))


MARK_BEGIN, MARK_END = "<!-- observed faults: begin -->", "<!-- observed faults: end -->"


def pytest_terminal_summary(terminalreporter) -> None:
    if UNMARKED:
        terminalreporter.section("tier rule: tests that start something heavy without its marker")
        for nodeid, kinds in UNMARKED:
            terminalreporter.write_line(f"{nodeid}: {kinds}")
    if not FAULTS:
        return
    lines = ["| fault | required outcome | observed |", "|---|---|---|",
             *("| " + " | ".join(row) + " |" for row in FAULTS)]
    terminalreporter.section("fault injection: faults tried and their outcomes")
    for line in lines:
        terminalreporter.write_line(line)
    # RESSTUDY_FAULT_TABLE=docs/reliability.md: write the observed table between its markers
    target = os.environ.get("RESSTUDY_FAULT_TABLE")
    if target and Path(target).exists():
        text = Path(target).read_text()
        if MARK_BEGIN in text and MARK_END in text:
            head, rest = text.split(MARK_BEGIN, 1)
            tail = rest.split(MARK_END, 1)[1]
            Path(target).write_text(head + MARK_BEGIN + "\n" + "\n".join(lines) + "\n" + MARK_END + tail)
