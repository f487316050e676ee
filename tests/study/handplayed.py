"""A real study driver (ledger, study.json, Optuna, MLflow, epoch logs, checkpoints,
artifacts) with Tune's part played by hand in this process: no Ray, seconds per study.

`hand_played(monkeypatch)` swaps `StudyRunner._run_phase` for a loop that launches
each trial the driver asks for, writes a checkpoint and reports every epoch it has
not yet trained (from its latest checkpoint on, as the trainable does), and ends it.
`Play.stop_after = k` stops the study like Ctrl-C once k trials have finished and
the next one has trained an epoch; `Play.on_trial(runner, n)` runs after the n-th
trial (the driver holds the lock and its Parquet files are not yet compacted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

SPEC = {"name": "s", "dataset": "digits", "image_size": 8, "depth": 8, "epochs": 2, "trials_per_variant": 2,
        "variants": ["resnet", "quotient"], "seeds": [0, 1], "repeat_best": True, "scheduler": {"type": "none"},
        "search": {"algorithm": "random", "seed": 0}}
PLANNED = 10  # 2 searched + 2 repeats per variant, and quotient's 2 twins


class Play:
    stop_after: int | None = None
    on_trial: Callable[[Any, int], None] | None = None
    finished = 0


def hand_played(monkeypatch) -> type[Play]:
    import ray

    from study import preflight
    from study import runner as runner_lib

    class P(Play):
        pass

    def run_phase(self, phase) -> None:
        phase.reconcile()
        while not phase.done():
            cfg = phase.next_trial()
            assert isinstance(cfg, dict), f"nothing to launch while {phase.phase} is not done: {cfg!r}"
            _play_trial(self, phase, cfg, P)

    monkeypatch.setattr(runner_lib.StudyRunner, "_run_phase", run_phase)
    monkeypatch.setattr(runner_lib, "_init_ray", lambda spec: None)
    monkeypatch.setattr(preflight, "check_cluster", lambda *a, **k: None)
    monkeypatch.setattr(ray, "cluster_resources", dict)
    monkeypatch.setattr(ray, "nodes", list)
    return P


def _play_trial(runner, phase, cfg: dict[str, Any], play: type[Play]) -> None:
    from study.runner import StudyInterrupted
    from study.trainable import _write_checkpoint, checkpoint_epochs, read_reports

    rid, root = cfg["_rid"], cfg["_ckpt"]
    phase.started(rid)
    done = checkpoint_epochs(root)
    reports = read_reports(root, done[-1]) if done else []
    epochs = int(cfg.get("train_epochs") or cfg["epochs"])
    stopping = play.stop_after is not None and play.finished == play.stop_after
    last = reports[-1] if reports else {}
    for e in range(len(reports) + 1, epochs + 1):
        last = {"epoch": e, "status": "completed" if e == epochs else "running", "node": "here",
                "val_acc": 0.5 + 0.01 * e + 0.001 * cfg["seed"], "test_acc": 0.5 + 0.01 * e, "val_loss": 1.0 / e,
                "train_loss": 1.0 / e, "best_val_acc": 0.5 + 0.01 * e,
                **({"q_mean_stage1": 0.9, "q_dead_frac": 0.0} if cfg["variant"] == "quotient" else {})}
        reports.append(last)
        _write_checkpoint(root, e, lambda d: Path(d, "state.pt").write_text("weights"), list(reports))
        phase.result(rid, last)
        if stopping:  # Ctrl-C: the trial keeps its checkpoint, the driver records it interrupted
            runner.stopping = True
            phase.interrupt(runner.ledger.trials[rid])
            raise StudyInterrupted()
    phase.ended(rid, last, "")
    play.finished += 1
    if play.on_trial is not None:
        play.on_trial(runner, play.finished)


def build(storage: Path, monkeypatch, *, stop_after: int | None = None, name: str = "s") -> Path:
    """A study run by hand under `storage`: finished, or interrupted after `stop_after` trials."""
    from study.runner import run_study
    from study.spec import load_spec

    play = hand_played(monkeypatch)
    play.stop_after = stop_after
    spec = load_spec({**SPEC, "name": name, "storage_path": str(storage)})
    try:
        run_study(spec)
    except KeyboardInterrupt:
        assert stop_after is not None
    play.stop_after = None  # a resume that follows runs to the end
    return storage / name
