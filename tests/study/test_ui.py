"""`resstudy ui`: both servers come up on 127.0.0.1, their pages render the
study in headless Chromium (the MLflow runs table with the study's runs, the
dashboard's list of Optuna studies), and Ctrl-C stops every process they started.

The study is written straight through the Optuna and MLflow APIs (seconds,
not a study run). Chromium is driven over the DevTools protocol. Without
Chromium the browser test skips, except where RESSTUDY_REQUIRE_CHROMIUM=1
(CI, set by .ci/run): there a missing browser fails the suite.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import server_pids, ui_links, url_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.server  # resstudy ui: the MLflow and optuna-dashboard servers
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
REQUIRED = os.environ.get("RESSTUDY_REQUIRE_CHROMIUM") == "1"
RUNS = ("resnet-trial0", "resnet-trial1", "quotient-trial0")
STUDIES = ("ui-resnet-d8", "ui-quotient-d8")

MAKE_STUDY = """
import sys, optuna, mlflow, yaml
from pathlib import Path
d = Path(sys.argv[1])
optuna.logging.set_verbosity(optuna.logging.WARNING)
for name in %(studies)r:
    s = optuna.create_study(study_name=name, storage=f"sqlite:///{d}/optuna.db", direction="maximize")
    for i in range(3):
        t = s.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)})
        t.report(0.3, 1)
        if i < 2:
            s.tell(t, 0.5 + i / 10)
        else:
            s.tell(t, state=optuna.trial.TrialState.PRUNED)
c = mlflow.MlflowClient(f"sqlite:///{d}/mlflow.db")
c.create_experiment("Default-like")  # another experiment: the link must name the study's
e = c.create_experiment("ui", artifact_location=(d / "mlartifacts").resolve().as_uri(),
                        tags={"mlflow.experimentKind": "custom_model_development"})
study = c.create_run(e, run_name="ui", tags={"resstudy.level": "study"})  # trials nest under it, as in a study
for i, name in enumerate(%(runs)r):
    r = c.create_run(e, run_name=name, tags={"resstudy.level": "trial", "mlflow.parentRunId": study.info.run_id})
    c.log_metric(r.info.run_id, "val_acc", 0.5 + i / 10, step=1)
    c.set_terminated(r.info.run_id, "FINISHED")
c.set_terminated(study.info.run_id, "FINISHED")
(d / "spec.yaml").write_text(yaml.safe_dump({"name": "ui", "mlflow": {"tracking_uri": None, "experiment": None}}))
"""


@pytest.fixture(scope="session")
def small_study(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("studies") / "ui"
    d.mkdir()
    code = MAKE_STUDY % {"studies": STUDIES, "runs": RUNS}
    subprocess.run([sys.executable, "-c", code, str(d)], check=True, capture_output=True, timeout=300)
    return d


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _group_members(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.fixture(scope="session")
def ui_server(small_study):
    """`resstudy ui` running on the small study: (process, {name: url}, server pids)."""
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "ui", str(small_study)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    urls, out = ui_links(proc)
    pids = server_pids({url_port(u) for u in urls.values()})
    yield proc, urls, pids, out
    if proc.poll() is None:  # Ctrl-C first: it stops the servers and removes their log folder
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    # the servers run in process groups of their own: a run without the Ctrl-C test must stop them too
    for pgid in {os.getpgid(p) for p in pids if _alive(p)}:
        os.killpg(pgid, signal.SIGKILL)


def test_ui_prints_loopback_urls_and_the_runs_table_link(ui_server):
    proc, urls, pids, out = ui_server
    assert urls["MLflow"].startswith("http://127.0.0.1:")
    # the study's experiment (id 2: "Default" is 0 and another one is 1), on its runs table, in the
    # model-training side bar and the trials view (study.tracking), which `ui` adds to this older study
    assert urls["MLflow"].endswith("/#/experiments/2/runs?workflowType=machine_learning&viewStateShareKey="
                                   "resstudy-trials"), urls
    assert urls["optuna-dashboard"].startswith("http://127.0.0.1:")
    assert len(pids) >= 2, out


def test_every_server_socket_listens_on_loopback_only(ui_server):
    """Read from the sockets, not from the printed URLs: every socket that any process `resstudy
    ui` started (its children, and the servers' process groups) listens on is a loopback one."""
    import psutil

    proc, urls, pids, out = ui_server
    started = {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
    started |= {m for p in pids if _alive(p) for m in _group_members(os.getpgid(p))}
    listening = []
    for pid in started:
        try:
            p = psutil.Process(pid)
            listening += [(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    ports = {url_port(u) for u in urls.values()}
    assert ports <= {port for _, _, port in listening}, (ports, listening)  # both servers' sockets were read
    exposed = [entry for entry in listening if entry[1] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not exposed, f"listening beyond loopback: {exposed}"


async def _page_text(port: int, url: str, expect: tuple[str, ...], timeout: float = 90.0) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json(content_type=None)
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        async with http.ws_connect(ws_url, max_msg_size=0) as ws:
            ids = iter(range(1, 10**6))

            async def call(method: str, **params):
                i = next(ids)
                await ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
                async for msg in ws:
                    m = json.loads(msg.data)
                    if m.get("id") == i:
                        return m

            await call("Page.enable")
            await call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout
            text = ""
            while time.monotonic() < deadline:
                r = await asyncio.wait_for(call("Runtime.evaluate", expression="document.body ? "
                                                "document.body.innerText : ''", returnByValue=True), timeout)
                text = r["result"]["result"].get("value") or ""
                if all(e in text for e in expect):
                    break
                await asyncio.sleep(0.5)
            return text


def _browser(profile: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-allow-origins=*",
         "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.is_file() and port_file.read_text().strip():
            return proc, int(port_file.read_text().split()[0])
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{BROWSER} did not open a DevTools port within 60 s")


@pytest.mark.browser
def test_both_pages_render_the_study_in_chromium(ui_server, tmp_path):
    if BROWSER is None:
        if REQUIRED:
            pytest.fail("RESSTUDY_REQUIRE_CHROMIUM=1 but no chromium binary is on PATH (.ci/run installs it)")
        pytest.skip("no chromium binary on PATH")
    _, urls, _, _ = ui_server
    browser, port = _browser(tmp_path / "profile")
    try:
        runs_page = asyncio.run(_page_text(port, urls["MLflow"], RUNS + ("val_acc",)))
        dashboard = asyncio.run(_page_text(port, urls["optuna-dashboard"], STUDIES))
    finally:
        browser.terminate()
        browser.wait(10)
    # the MLflow link opens the runs table of the study's experiment: every trial is listed (not collapsed
    # under the study's run), val_acc is a column, the side bar is model training's (its "Runs", not GenAI's
    # "Evaluation runs")
    assert all(r in runs_page for r in RUNS), runs_page[:2000]
    assert "val_acc" in runs_page and "Evaluation runs" not in runs_page, runs_page[:2000]
    # the dashboard lists the study's Optuna studies
    assert all(s in dashboard for s in STUDIES), dashboard[:2000]


def test_ctrl_c_stops_both_servers_and_their_workers(ui_server):
    proc, urls, pids, _ = ui_server
    groups = {os.getpgid(p) for p in pids if _alive(p)}
    members = [m for g in groups for m in _group_members(g)]
    assert members, "no server processes found"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130  # interrupted, as the README's exit codes say
    time.sleep(0.5)
    left = [m for m in members if _alive(m)]
    assert left == [], left
    for g in groups:
        assert _group_members(g) == []
