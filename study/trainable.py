"""One Tune trial: a study.train run whose epochs become tune.report calls.

The trial keeps its own checkpoints under <study>/checkpoints/<trial id>/epoch-NNNN
(local path or URI, through pyarrow.fs) and starts from the latest complete one
that can be read (one that cannot is set aside as epoch-NNNN.corrupt), so a
retry after an error, a rescheduled trial after a lost node and a trial resumed
by a new driver all continue where the last checkpoint left off; Tune never
holds a checkpoint. Checkpoints follow a policy (ASHA rung epochs, every N
seconds, the last epoch) so a killed trial loses at most one interval.

The driver's events object (study.driver.options.Events, passed in through
Tune's parameter passing) is called after every reported epoch: a no-op in
production, the seam where tests plug faults in.
"""

from __future__ import annotations

import json
import os
import queue
import tempfile
import threading
import time
from typing import Any, Callable

CHECKPOINTS = "checkpoints"
DONE_MARK = "done.json"


# ---------------------------------------------------------------- checkpoints on any filesystem


def _fs(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def checkpoint_epochs(ckpt_root: str) -> list[int]:
    """Epochs with a complete checkpoint (its done mark written last), ascending."""
    import pyarrow.fs as pafs

    fs, root = _fs(ckpt_root)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except (OSError, FileNotFoundError):
        return []
    epochs = []
    for info in infos:
        name = info.base_name
        if info.type == pafs.FileType.Directory and name.startswith("epoch-") and name[6:].isdigit():
            if fs.get_file_info(f"{info.path}/{DONE_MARK}").type == pafs.FileType.File:
                epochs.append(int(name[6:]))
    return sorted(epochs)


def checkpoint_path(ckpt_root: str, epoch: int) -> str:
    return f"{ckpt_root.rstrip('/')}/epoch-{epoch:04d}"


def read_reports(ckpt_root: str, epoch: int) -> list[dict[str, Any]]:
    """The epoch reports a checkpoint holds (every epoch up to it, as the trial reported them)."""
    fs, path = _fs(checkpoint_path(ckpt_root, epoch))
    with fs.open_input_stream(f"{path}/{DONE_MARK}") as f:
        return json.loads(f.read().decode())["reports"]


def _write_checkpoint(ckpt_root: str, epoch: int, save: Callable[[str], None], reports: list[dict],
                      keep: int = 2) -> None:
    import pyarrow.fs as pafs

    fs, root = _fs(ckpt_root)
    fs.create_dir(root, recursive=True)
    final = f"{root}/epoch-{epoch:04d}"
    with tempfile.TemporaryDirectory(prefix="resstudy-ckpt-") as d:
        save(d)
        with open(os.path.join(d, DONE_MARK), "w") as f:
            json.dump({"epoch": epoch, "reports": reports}, f, default=str)
        if isinstance(fs, pafs.LocalFileSystem):
            import shutil

            tmp = f"{final}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(d, tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)  # one rename: a kill leaves the old or the new, never half
        else:
            # Object stores have no rename: the done mark goes last and marks it complete.
            fs.create_dir(final, recursive=True)
            for name in sorted(os.listdir(d), key=lambda n: n == DONE_MARK):
                pafs.copy_files(os.path.join(d, name), f"{final}/{name}",
                                source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    for old in checkpoint_epochs(ckpt_root)[:-keep]:
        fs.delete_dir(f"{root}/epoch-{old:04d}")


def _load(ckpt_root: str, epoch: int) -> dict[str, Any]:
    from study.train import load_checkpoint

    import pyarrow.fs as pafs

    fs, path = _fs(checkpoint_path(ckpt_root, epoch))
    if isinstance(fs, pafs.LocalFileSystem):
        return load_checkpoint(path)
    with tempfile.TemporaryDirectory(prefix="resstudy-ckpt-") as d:
        pafs.copy_files(path, d, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return load_checkpoint(d)


def resume_point(ckpt_root: str) -> tuple[int, dict[str, Any] | None, list[dict[str, Any]]]:
    """(epoch, state, reports) of the newest checkpoint that can be read; (0, None, [])
    for none. One that cannot be read (garbage in state.pt, a damaged done mark) is set
    aside, so the trial goes on from the one before it instead of failing at every retry,
    and neither a retry nor the driver's replay counts it again."""
    from study.train import CHECKPOINT_FILE, CheckpointError

    for epoch in reversed(checkpoint_epochs(ckpt_root)):
        path = checkpoint_path(ckpt_root, epoch)
        try:
            file = f"{path}/{DONE_MARK}"
            reports = read_reports(ckpt_root, epoch)
            file = f"{path}/{CHECKPOINT_FILE}"
            state = _load(ckpt_root, epoch)
        # ValueError/KeyError/TypeError: the done mark is not the JSON object written with it.
        # An OSError is left to fail the attempt: storage that cannot be reached now may be
        # reachable at the retry, and the checkpoint may be sound.
        except (CheckpointError, ValueError, KeyError, TypeError) as e:
            _set_aside(ckpt_root, epoch, file, e)
            continue
        return epoch, state, reports
    return 0, None, []


def _set_aside(ckpt_root: str, epoch: int, file: str, error: Exception) -> None:
    import sys

    import pyarrow.fs as pafs

    fs, path = _fs(checkpoint_path(ckpt_root, epoch))
    n = 0
    while fs.get_file_info(aside := f"{path}.corrupt" + (f"-{n}" if n else "")).type != pafs.FileType.NotFound:
        n += 1  # an earlier one set aside at this epoch is kept too
    try:
        fs.move(path, aside)  # `epoch-NNNN.corrupt` is not an epoch to checkpoint_epochs
        where = f"moved to {aside}"
    except (OSError, NotImplementedError):
        # object stores move no directories; without its done mark it is not a checkpoint
        fs.delete_file(f"{path}/{DONE_MARK}")
        where = f"its {DONE_MARK} deleted"
    reason = " ".join(str(error).split())[:160]  # torch's messages run over lines
    print(f"resstudy: warning: {file} cannot be read ({type(error).__name__}: {reason}); checkpoint of epoch "
          f"{epoch} set aside ({where}), the trial resumes from an older one or from the start",
          file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the policy


class CheckpointPolicy:
    """When to write a checkpoint: at the `epochs` listed (ASHA rungs), when
    `every_s` seconds have passed since the last one (0: every epoch), and at
    the last epoch."""

    def __init__(self, epochs: list[int] | tuple[int, ...] = (), every_s: float = 300.0, last: int = 0) -> None:
        self.epochs, self.every_s, self.last = set(epochs), float(every_s), last
        self._since = time.monotonic()

    def due(self, epoch: int) -> bool:
        if epoch in self.epochs or epoch == self.last or time.monotonic() - self._since >= self.every_s:
            self._since = time.monotonic()
            return True
        return False


# ---------------------------------------------------------------- reports off the training thread


class Reporter:
    """Hands epoch reports to `deliver` (tune.report) on a thread of its own.

    tune.report blocks the calling thread until the driver has taken the report
    (a round trip of tens of ms per epoch, a few % of a short GPU epoch), so the
    trainer queues it and goes on. A report with `wait=True` (an ASHA rung: the
    scheduler may stop the trial there) blocks until it is delivered, so a trial
    never trains past a rung it was stopped at. Tune stops a trial by raising
    SystemExit inside tune.report; that, or any error there, is raised in the
    training thread at its next report, and the reports queued behind it are
    dropped (a retry replays any checkpointed epoch the driver missed). Until
    then, every queued report is delivered before `close` returns.
    """

    def __init__(self, deliver: Callable[[dict[str, Any]], None]) -> None:
        self.deliver = deliver
        self.failure: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="resstudy-reporter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            result, delivered = item
            if self.failure is None:
                try:
                    self.deliver(result)
                except BaseException as e:  # SystemExit: Tune stopped the trial
                    self.failure = e
            delivered.set()

    def check(self) -> None:
        """Raise here what the delivery thread met (a stop, an error)."""
        if self.failure is not None:
            raise self.failure

    def report(self, result: dict[str, Any], wait: bool = False) -> None:
        self.check()
        delivered = threading.Event()
        self._queue.put((result, delivered))
        if wait:
            delivered.wait()
            self.check()

    def close(self) -> None:
        """Deliver what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()


# ---------------------------------------------------------------- the trainable


PRELOAD = "study.trainable.preload"  # the embedded Ray's worker setup hook (study.driver.environment)
_PRELOADING: threading.Thread | None = None


def _preload() -> None:
    try:
        from study.timeline import mark

        mark("trial: worker preload begun")
        # Tune's trainable classes first: creating the trial's actor imports them (ray.tune,
        # pandas: about 0.7 s), and Tune counts the trial started only once that is done
        import ray.tune.trainable.function_trainable  # noqa: F401
        import torch  # noqa: F401

        import study.train  # noqa: F401
        from study.variants import list_variants

        list_variants()  # loads the built-in variants
        mark("trial: worker preloaded (ray.tune, torch, study.train)")
    except Exception:  # noqa: BLE001  (what failed here fails again, with its trace, in the trial)
        pass


def preload() -> None:
    """Ray's worker setup hook, in the embedded Ray: import what every trial imports
    (Tune's trainable classes, torch, the trainer, the built-in variants) on a thread,
    as the worker starts. The raylet starts workers as the driver connects, so the first trial's
    imports run while the driver still sets up MLflow, Optuna and Tune. A thread, not the
    hook itself: a worker still in its hook takes no task, and the raylet would start
    another one for the first trial. The trainable waits for the thread before its own
    imports (two threads importing the same modules could each hold a lock the other
    wants)."""
    global _PRELOADING
    if _PRELOADING is None:
        _PRELOADING = threading.Thread(target=_preload, name="resstudy-preload", daemon=True)
        _PRELOADING.start()


def trainable(trial: dict[str, Any], events: Any = None) -> None:
    """Run one trial: `trial` is {"config": the TrainConfig dict, "control": the driver's
    data (rid: trial id, ckpt: checkpoint root, ckpt_epochs, ckpt_every_s, plugins, phase)};
    `events` the driver's events object (after_epoch is called after each report)."""
    from study.timeline import mark

    mark(f"trial: trainable called ({trial['control']['rid']})")
    if _PRELOADING is not None:
        _PRELOADING.join()
    import ray
    from ray import tune

    from study.config import TrainConfig
    from study.train import train
    from study.variants import load_plugins

    mark("trial: imports (torch, study.train)")
    config, control = trial["config"], trial["control"]
    load_plugins(control.get("plugins", ()))  # variants a spec's plugin files register
    rid, ckpt_root = control["rid"], control["ckpt"]
    cfg = TrainConfig.from_dict(config)
    policy = CheckpointPolicy(control.get("ckpt_epochs", ()), control.get("ckpt_every_s", 300.0), cfg.epochs)
    node = "local"  # outside Ray (a unit test calling the trainable directly)
    # ray.get_runtime_context() outside Ray would start a whole local Ray instance
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        node = f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:12]}"

    start_epoch, resume, reports = resume_point(ckpt_root)
    reporter = Reporter(tune.report)

    def report(metrics: dict[str, Any], info: dict[str, Any], save) -> None:
        epoch = int(metrics["epoch"])
        if epoch == start_epoch + 1:
            mark("trial: first epoch trained and evaluated")
        reporter.check()  # stopped or failed since the last epoch: no checkpoint, no report
        result = dict(metrics, rid=rid, node=node, start_epoch=start_epoch,
                      info_json=json.dumps(info) if info else "")
        reports.append({k: v for k, v in result.items() if k != "info_json"})
        if metrics["status"] != "diverged" and policy.due(epoch):
            # the checkpoint first, then the report: a report the driver saw always has its checkpoint
            # when checkpointing every epoch
            _write_checkpoint(ckpt_root, epoch, save, reports)
            result["ckpt_epoch"] = epoch
        # rung epochs (the policy's) are reported in step: the scheduler decides there
        reporter.report(result, wait=epoch in policy.epochs)
        if events is not None:
            events.after_epoch(config, control, epoch)

    try:
        train(cfg, report, resume=resume)
    finally:
        reporter.close()
    reporter.check()
