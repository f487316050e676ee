"""Submit a study to a Ray cluster through Ray Jobs, and follow it.

    job_id = submit("study/presets/quick.yaml", "http://HEAD:8265")
    print(status(job_id));  logs(job_id, follow=True);  stop(job_id)

The job runs `python -m study.cli run SPEC` on the cluster, in a copy of the
local working directory shipped by Ray (runtime_env working_dir). Before that,
the spec is validated here and its storage_path is checked against the cluster:
trials on several nodes must all reach the study directory.

Token authentication (on for Ray 2.60 clusters): the dashboard wants
`Authorization: Bearer <token>`. The token is `token=` if given, else what Ray
itself would use: RAY_AUTH_TOKEN, else the file named by RAY_AUTH_TOKEN_PATH,
else ~/.ray/auth_token. Ray's client only adds it when this process also has
RAY_AUTH_MODE=token, so we always pass it explicitly.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TextIO

import requests

from study.errors import UserError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never shipped to the cluster: environments, VCS, local results and data caches.
EXCLUDES = [".venv", ".git", "resstudy_runs", "ray_results", "mlruns", "mlartifacts", "/data/",
            "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis", ".ipynb_checkpoints",
            "*.db", "*.parquet"]
_EXCLUDED_DIRS = {e for e in EXCLUDES if "*" not in e and "/" not in e}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_HTTP_TIMEOUT_S = 15


class JobError(UserError, ValueError):
    """A submission or job request that cannot go ahead; the message says why and
    what is allowed."""


# ------------------------------------------------------------------ connection


def default_address() -> str:
    """The dashboard address: RAY_API_SERVER_ADDRESS (what Ray 2.60's job CLI reads
    first), else an http(s) RAY_ADDRESS, else http://127.0.0.1:8265. A bare
    RAY_ADDRESS (host:port of the GCS, set inside jobs) is not a dashboard."""
    api = os.environ.get("RAY_API_SERVER_ADDRESS")
    if api:
        return api
    addr = os.environ.get("RAY_ADDRESS", "")
    return addr if addr.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def _normalize_address(address: str | None) -> str:
    address = (address or default_address()).strip().rstrip("/")
    if address.startswith("ray://") or address == "auto":
        raise JobError(f"address: {address!r} is not a Ray dashboard address; allowed: the dashboard's "
                       f"http(s)://HOST:PORT (port 8265 unless changed), e.g. {DEFAULT_ADDRESS}")
    if "://" not in address:
        address = "http://" + address
    if not address.startswith(("http://", "https://")):
        raise JobError(f"address: {address!r} has an unsupported scheme; allowed: http(s)://HOST:PORT")
    return address


def resolve_token(token: str | None = None) -> str | None:
    """The cluster token, looked up in Ray's own order (see the module docstring)."""
    if token:
        return token.strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            return Path(path).expanduser().read_text().strip() or None
        except OSError as e:
            raise JobError(f"RAY_AUTH_TOKEN_PATH={path!r} cannot be read ({e.strerror}); allowed: "
                           "a file holding the cluster's token") from None
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None
    return None


def _headers(token: str | None) -> dict[str, str]:
    tok = resolve_token(token)
    return {"Authorization": f"Bearer {tok}"} if tok else {}


def _get(address: str, path: str, token: str | None) -> requests.Response:
    """GET on the dashboard with a short timeout, errors made readable."""
    try:
        r = requests.get(address + path, headers=_headers(token), timeout=_HTTP_TIMEOUT_S)
    except requests.exceptions.RequestException as e:
        raise JobError(f"address: cannot reach the Ray dashboard at {address} ({type(e).__name__}); "
                       "allowed: the dashboard's http(s)://HOST:PORT of a running cluster "
                       "(is it up? is the port forwarded?)") from None
    _raise_for_auth(r, address)
    return r


def _raise_for_auth(r: requests.Response, address: str) -> None:
    if r.status_code in (401, 403):
        what = "no token was sent" if r.status_code == 401 else "the token was refused"
        raise JobError(f"the Ray cluster at {address} requires token authentication and {what}; "
                       "give the cluster's token with RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
                       "~/.ray/auth_token or token= (on the head: `ray get-auth-token`)")


def _client(address: str | None, token: str | None):
    """A JobSubmissionClient, after a quick reachability and auth check (the
    client itself has no connect timeout)."""
    address = _normalize_address(address)
    r = _get(address, "/api/version", token)
    if r.status_code != 200:
        raise JobError(f"address: {address} answered /api/version with HTTP {r.status_code}; "
                       "allowed: the address of a Ray dashboard with Ray Jobs (ray[default])")
    from ray.job_submission import JobSubmissionClient

    # Ray's client lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address
    # it is given; the address checked above must be the one used.
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        return JobSubmissionClient(address, headers=_headers(token))
    except (ConnectionError, RuntimeError, requests.exceptions.RequestException) as e:
        raise JobError(f"address: {address} is not a usable Ray Jobs endpoint ({e})") from None
    finally:
        os.environ.update(saved)


def alive_node_count(address: str | None = None, *, token: str | None = None) -> int:
    """Number of ALIVE nodes, from the dashboard's state API."""
    address = _normalize_address(address)
    r = _get(address, "/api/v0/nodes?limit=10000", token)
    try:
        r.raise_for_status()
        nodes = r.json()["data"]["result"]["result"]
    except (requests.HTTPError, ValueError, KeyError, TypeError) as e:
        raise JobError(f"address: {address} did not list its nodes ({type(e).__name__}: {e}); "
                       "allowed: a Ray 2.x dashboard") from None
    return sum(1 for n in nodes if n.get("state") == "ALIVE")


# ------------------------------------------------------------------ checks


def is_uri(path: str) -> bool:
    """s3://, gs://, abfs://, hdfs://, ... (file:// is a local path)."""
    return bool(_URI.match(path)) and not path.startswith("file://")


def check_storage(storage_path: str, *, shared_storage: bool, node_count: int | Callable[[], int]) -> None:
    """Refuse a local storage_path on a cluster of several nodes unless it is
    declared shared: each node would otherwise write to its own disk and the
    study directory would be split. `node_count` may be a callable, so it is
    only asked when it matters. A cluster that autoscales from one node counts
    as one here: give such clusters a URI or shared storage."""
    if is_uri(storage_path) or shared_storage:
        return
    n = node_count() if callable(node_count) else node_count
    if n > 1:
        raise JobError(
            f"storage_path: {storage_path!r} is a local path, but the cluster has {n} nodes, so trials "
            "would write to different disks; allowed: a URI every node reaches (s3://, gs://, abfs://, "
            "hdfs://, ...), or a path on storage mounted at the same place on every node, declared with "
            "`shared_storage: true` in the spec or --shared-storage")


def _spec_in_working_dir(spec_path: Path, working_dir: Path) -> str:
    try:
        rel = spec_path.resolve().relative_to(working_dir)
    except ValueError:
        raise JobError(f"spec: {str(spec_path)!r} is outside the working directory {str(working_dir)!r} "
                       "that is shipped to the cluster; allowed: a spec file inside it (copy it there, "
                       "or pass working_dir)") from None
    folders = rel.parts[:-1]
    if any(part in _EXCLUDED_DIRS for part in folders) or folders[:1] == ("data",):
        raise JobError(f"spec: {str(rel)!r} lies in a folder that is not shipped ({', '.join(EXCLUDES)}); "
                       "allowed: a spec file elsewhere in the working directory")
    return rel.as_posix()


def build_entrypoint(spec_rel: str, *, storage_path: str, tracking_uri: str | None,
                     extra_args: Iterable[str] = ()) -> str:
    """`python -m study.cli run SPEC --storage-path P [--tracking-uri U] ...`.
    The storage path is the one resolved here (a relative path in the spec would
    otherwise resolve inside the job's temporary copy of the working dir)."""
    cmd = ["python", "-m", "study.cli", "run", spec_rel, "--storage-path", storage_path]
    if tracking_uri:
        cmd += ["--tracking-uri", tracking_uri]
    return shlex.join(cmd + list(extra_args))


# ------------------------------------------------------------------ jobs


def submit(spec_path: str | os.PathLike, address: str | None = None, *, working_dir: str | os.PathLike = ".",
           shared_storage: bool = False, extra_args: Iterable[str] = (), token: str | None = None,
           tracking_uri: str | None = None, env_vars: Mapping[str, str] | None = None,
           node_count: int | Callable[[], int] | None = None, submission_id: str | None = None) -> str:
    """Validate the spec, check its storage against the cluster, submit the
    study as a Ray job and return its id.

    shared_storage: the spec's storage_path is mounted on every node (or set
        `shared_storage: true` in the spec).
    tracking_uri: MLflow URI for the job; default the spec's mlflow.tracking_uri,
        else this process's MLFLOW_TRACKING_URI when it names a server (http(s),
        databricks, a database URL), else the spec's default (a sqlite file in
        the study dir).
    node_count: for tests; default: ask the cluster.
    """
    from study.spec import SpecError, load_spec

    spec_file = Path(spec_path).expanduser()
    wd = Path(working_dir).expanduser().resolve()
    if not wd.is_dir():
        raise JobError(f"working_dir: {str(working_dir)!r} is not a directory; allowed: the project folder to ship")
    try:
        spec = load_spec(spec_file)
    except SpecError as e:
        raise JobError(str(e)) from None
    rel = _spec_in_working_dir(spec_file, wd)
    address = _normalize_address(address)
    client = _client(address, token)
    count = node_count if node_count is not None else (lambda: alive_node_count(address, token=token))
    check_storage(spec.storage_path, shared_storage=shared_storage or spec.shared_storage, node_count=count)

    uri = tracking_uri or spec.mlflow.tracking_uri or _server_tracking_uri()
    entrypoint = build_entrypoint(rel, storage_path=spec.storage_path, tracking_uri=uri, extra_args=extra_args)
    runtime_env: dict[str, Any] = {"working_dir": str(wd), "excludes": list(EXCLUDES)}
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return _call(address, token, None, lambda c: c.submit_job(
        entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id,
        metadata={"resstudy.study": spec.name}), client)


def submit_command(entrypoint: str, address: str | None = None, *, working_dir: str | os.PathLike | None = None,
                   token: str | None = None, env_vars: Mapping[str, str] | None = None,
                   submission_id: str | None = None) -> str:
    """Submit any shell command as a Ray job (no spec checks); return its id."""
    runtime_env: dict[str, Any] = {}
    if working_dir is not None:
        wd = Path(working_dir).expanduser().resolve()
        if not wd.is_dir():
            raise JobError(f"working_dir: {str(working_dir)!r} is not a directory")
        runtime_env.update(working_dir=str(wd), excludes=list(EXCLUDES))
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return _call(address, token, None, lambda c: c.submit_job(
        entrypoint=entrypoint, runtime_env=runtime_env or None, submission_id=submission_id))


def _server_tracking_uri() -> str | None:
    """This process's MLFLOW_TRACKING_URI when it names a server every node can
    reach; a local file or sqlite URI would mean another file on the cluster."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri if _URI.match(uri) and not uri.startswith(("file:", "sqlite:")) else None


def _plain(obj: Any) -> dict[str, Any]:
    for name in ("model_dump", "dict"):
        if hasattr(obj, name):
            return getattr(obj, name)()
    return dict(obj)


def _call(address: str | None, token: str | None, job_id: str | None, fn: Callable[[Any], Any],
          client: Any = None) -> Any:
    """fn(client) with the client's errors turned into JobErrors."""
    from ray.exceptions import AuthenticationError

    client = client or _client(address, token)
    where = _normalize_address(address)
    try:
        return fn(client)
    except AuthenticationError as e:
        raise JobError(f"the Ray cluster at {where} refused the token ({str(e).splitlines()[0]}); give the "
                       "cluster's token with RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token") from None
    except requests.exceptions.RequestException as e:
        raise JobError(f"address: lost the Ray dashboard at {where} ({type(e).__name__})") from None
    except RuntimeError as e:
        if job_id and ("404" in str(e) or "does not exist" in str(e)):
            raise JobError(f"job_id: {job_id!r} is not a job on the cluster at {where}; "
                           "allowed: an id from `resstudy submit` or `ray job list`") from None
        raise JobError(f"the cluster at {where} refused the request: {e}") from None


def job_info(job_id: str, address: str | None = None, *, token: str | None = None) -> dict[str, Any]:
    """The job's details (status, message, entrypoint, start_time, end_time, ...)."""
    return _plain(_call(address, token, job_id, lambda c: c.get_job_info(job_id)))


def status(job_id: str, address: str | None = None, *, token: str | None = None) -> str:
    """One line for people: `<id>: <STATUS> (<message>)`."""
    info = job_info(job_id, address, token=token)
    state = str(getattr(info.get("status"), "value", info.get("status")))
    message = (info.get("message") or "").strip()
    return f"{job_id}: {state}" + (f" ({message})" if message else "")


def job_status(job_id: str, address: str | None = None, *, token: str | None = None) -> str:
    """Just the state: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    return str(_call(address, token, job_id, lambda c: c.get_job_status(job_id)).value)


def wait(job_id: str, address: str | None = None, *, token: str | None = None,
         timeout: float | None = None, poll_s: float = 2.0) -> str:
    """Block until the job ends; return its final state. TimeoutError after `timeout` s."""
    deadline = None if timeout is None else time.monotonic() + timeout
    client = _client(address, token)
    while True:
        state = str(_call(address, token, job_id, lambda c: c.get_job_status(job_id), client).value)
        if state in TERMINAL:
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {state} after {timeout:.0f}s")
        time.sleep(poll_s)


def logs(job_id: str, address: str | None = None, *, follow: bool = False, token: str | None = None,
         out: TextIO | None = None) -> str | None:
    """Write the job's driver log to `out` (stdout). With follow, stream it until
    the job ends. Returns the text when not following."""
    out = out or sys.stdout
    if not follow:
        text = _call(address, token, job_id, lambda c: c.get_job_logs(job_id))
        out.write(text)
        out.flush()
        return text
    job_info(job_id, address, token=token)  # a clear error for an unknown id

    async def tail(client) -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    _call(address, token, job_id, lambda c: asyncio.run(tail(c)))
    return None


def stop(job_id: str, address: str | None = None, *, token: str | None = None) -> str:
    """Ask the job to stop; one line saying what happened."""
    stopped = _call(address, token, job_id, lambda c: c.stop_job(job_id))
    if stopped:
        return f"{job_id}: stop requested"
    return f"{job_id}: not running ({job_status(job_id, address, token=token)})"


def list_jobs(address: str | None = None, *, token: str | None = None) -> list[dict[str, Any]]:
    """All jobs on the cluster, oldest first: dicts with submission_id, status,
    entrypoint, start_time, end_time, message, metadata."""
    jobs = _call(address, token, None, lambda c: c.list_jobs())
    rows = []
    for j in jobs:
        d = _plain(j)
        d["status"] = str(getattr(d.get("status"), "value", d.get("status")))
        rows.append(d)
    return sorted(rows, key=lambda d: d.get("start_time") or 0)
