"""A study directory is self-contained: copied or moved, every command (resume,
status, export, analyze, ui) works where it lies and writes only there.

The studies are real drivers' work (ledger, study.json, Optuna, MLflow with
artifacts, checkpoints) with Tune played by hand (tests/study/handplayed.py), so
no Ray starts; the ui test starts the MLflow and optuna-dashboard servers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from study.cli import main
from tests.conftest import ROOT, server_pids, ui_links, url_port
from tests.study.handplayed import PLANNED, build

TEXT = (".json", ".jsonl", ".yaml", ".csv", ".md", ".html")


def snapshot(d: Path) -> dict[str, tuple]:
    """Every file and folder under d: (mtime, content hash); a new, changed or removed one shows."""
    out = {}
    for p in sorted(d.rglob("*")):
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        out[str(p.relative_to(d))] = (p.lstat().st_mtime_ns, digest)
    return out


def mlflow_runs(study: Path) -> list[tuple[str, str, str]]:
    """(level, status, artifact_uri) of every run in the study's own store."""
    con = sqlite3.connect(study / "mlflow.db")
    try:
        return con.execute("SELECT t.value, r.status, r.artifact_uri FROM runs r JOIN tags t ON "
                           "t.run_uuid = r.run_uuid AND t.key = 'resstudy.level'").fetchall()
    finally:
        con.close()


def assert_tracks_into_itself(study: Path) -> None:
    runs = mlflow_runs(study)
    assert sum(level == "trial" for level, _, _ in runs) == PLANNED
    assert [r for r in runs if r[1] != "FINISHED"] == [], "a run was left RUNNING (or failed)"
    home = (study / "mlartifacts").resolve().as_uri() + "/"
    assert all(uri.startswith(home) for _, _, uri in runs), [u for _, _, u in runs if not u.startswith(home)]
    con = sqlite3.connect(study / "mlflow.db")
    locations = [loc for (loc,) in con.execute("SELECT artifact_location FROM experiments WHERE name = 's'")]
    con.close()
    assert locations == [home.rstrip("/")]
    assert json.loads((study / "study.json").read_text())["tracking_uri"] == "sqlite:///mlflow.db"


def test_a_copied_study_resumes_and_is_read_in_the_copy_alone(tmp_path, monkeypatch, capsys):
    orig = build(tmp_path / "orig", monkeypatch, stop_after=3)  # 3 of 10 trials, then Ctrl-C
    before = snapshot(orig)
    copy = tmp_path / "elsewhere" / "s-copy"  # another folder, another name
    shutil.copytree(orig, copy)
    capsys.readouterr()

    for command in ("analyze", "status", "export", "resume", "status", "export", "analyze"):
        assert main([command, str(copy)]) == 0, command
    out, err = capsys.readouterr()
    assert "state: finished" in out
    assert "MLflow refused" not in err and "not logged to MLflow" not in err

    assert snapshot(orig) == before, "a command on the copy wrote into the original"
    assert not (copy.parent / "s").exists(), "something was written where the saved spec says the study lives"
    assert_tracks_into_itself(copy)
    # the resumed trials' artifacts and the reports went into the copy's own artifact store
    stats = list((copy / "mlartifacts").glob("*/artifacts/quotient_stats.json"))
    assert len(stats) == 4, stats  # quotient's searched and repeated trials (its twins are ResNets)
    assert len(list((copy / "mlartifacts").glob("*/artifacts/analysis/report.html"))) == 1  # the study run's
    # nothing in the copy's own files points back at the original
    for p in copy.rglob("*"):
        if p.suffix in TEXT:
            assert str(orig) not in p.read_text(errors="replace"), p


def test_a_moved_study_resumes_where_it_lies_and_never_writes_its_old_place(tmp_path, monkeypatch, capsys):
    old = build(tmp_path / "old", monkeypatch, stop_after=5)
    new = tmp_path / "new" / "place" / "s"
    new.parent.mkdir(parents=True)
    old.rename(new)
    old.parent.rmdir()
    old.parent.write_text("something else lives here now")  # a write to the old place would fail
    capsys.readouterr()

    assert main(["resume", str(new)]) == 0
    assert "MLflow refused" not in capsys.readouterr().err
    assert old.parent.read_text() == "something else lives here now"
    assert_tracks_into_itself(new)
    assert main(["status", str(new)]) == 0
    assert "state: finished" in capsys.readouterr().out


def _get(url: str, body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.read()


@pytest.mark.server
def test_ui_serves_a_copy_from_the_copy_and_ctrl_c_exits_130_leaving_no_log_folder(tmp_path, monkeypatch):
    orig = build(tmp_path / "orig", monkeypatch)
    copy = tmp_path / "copy" / "s"
    shutil.copytree(orig, copy)
    gone = tmp_path / "gone"
    orig.rename(gone)  # served artifacts can only come from the copy now
    before = snapshot(gone)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "ui", str(copy)], cwd=ROOT, text=True,
                            env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    pids: list[int] = []
    ports: set[int] = set()
    try:
        links, out = ui_links(proc)
        assert all(u.startswith("http://127.0.0.1:") for u in links.values()), out
        urls = {name: (u, url_port(u)) for name, u in links.items()}
        ports = {port for _, port in urls.values()}
        pids = server_pids(ports)
        assert len(pids) >= 2, pids
        assert list(tmp.glob("resstudy-ui-*")), "no log folder while the servers run: the check below is void"
        base = f"http://127.0.0.1:{urls['MLflow'][1]}"
        experiment = urls["MLflow"][0].split("/experiments/")[1].split("/")[0]
        runs = json.loads(_get(f"{base}/ajax-api/2.0/mlflow/runs/search",
                               {"experiment_ids": [experiment], "max_results": 1000}))["runs"]
        quotient = [r["info"]["run_id"] for r in runs
                    if {"key": "variant", "value": "quotient"} in r["data"].get("tags", [])
                    and {"key": "resstudy.level", "value": "trial"} in r["data"].get("tags", [])]
        assert len(quotient) == 4
        listed = json.loads(_get(f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_uuid={quotient[0]}"))
        assert [f["path"] for f in listed.get("files", [])] == ["quotient_stats.json"], listed
        stats = json.loads(_get(f"{base}/get-artifact?run_uuid={quotient[0]}&path=quotient_stats.json"))
        assert stats["q_mean_stage1"] == 0.9
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 130
        time.sleep(0.5)
        assert [p for p in pids if Path(f"/proc/{p}").exists()
                and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"] == []
        assert list(tmp.glob("resstudy-ui-*")) == [], "the servers' temporary log folder was left behind"
    finally:  # a failed check: stop what was started, by pid (the servers are in sessions of their own)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for pid in set(pids) & set(server_pids(ports)):  # still those servers
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert snapshot(gone) == before


def test_the_trial_rows_read_live_equal_the_compacted_ones(tmp_path, monkeypatch):
    """status, export and analyze read the ledger and epoch logs; for a finished study
    that is exactly what results.parquet and history.parquet hold."""
    import pandas as pd

    from analysis.load import load_history, load_results
    from study import report
    from study.results import read_table

    d = build(tmp_path, monkeypatch)
    parquet = pd.read_parquet(d / "results.parquet")
    pd.testing.assert_frame_equal(load_results(d), parquet)
    pd.testing.assert_frame_equal(load_history(d), pd.read_parquet(d / "history.parquet"))
    pd.testing.assert_frame_equal(report.load(d), pd.DataFrame(read_table(d / "results.parquet")))
    assert len(parquet) == PLANNED



def test_study_json_keeps_a_store_inside_the_study_relative_and_any_other_as_given(tmp_path):
    from study.ledger import stored_tracking_uri, tracking_uri

    d = tmp_path / "s"
    for given, kept in ((f"sqlite:///{d}/mlflow.db", "sqlite:///mlflow.db"),
                        (f"sqlite:///{d}/db/team.db", "sqlite:///db/team.db"),
                        (f"sqlite:///{tmp_path}/shared.db", f"sqlite:///{tmp_path}/shared.db"),
                        ("http://127.0.0.1:5000", "http://127.0.0.1:5000")):
        assert stored_tracking_uri(d, given) == kept
        moved = tmp_path / "moved"  # read back from where the study lies now
        expected = given.replace(str(d), str(moved)) if kept != given else given
        assert tracking_uri(moved, {"tracking_uri": kept, "spec": {"mlflow": {"tracking_uri": given}}}) == expected
