"""A real study driver (ledger, study.json, Optuna, MLflow, epoch logs, checkpoints,
artifacts) with Tune's part played by hand in this process: no Ray, seconds per study.

`HandBackend` stands in for the Tune backend (the driver's `backend` seam): it
launches each trial the driver asks for, writes a checkpoint and reports every
epoch it has not yet trained (from its latest checkpoint on, as the trainable
does), and ends it. `hand_played(monkeypatch)` makes it the default backend of
the studies a test runs. `Play.stop_after = k` stops the study like Ctrl-C once k
trials have finished and the next one has trained an epoch; `Play.on_trial(ctx, n)`
runs after the n-th trial (the driver holds the lock and its Parquet files are
not yet compacted).
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
    # the accuracies a trial reports at an epoch, by its config (default: the seed's mark only)
    accuracy: Callable[[dict[str, Any], int], float] | None = None
    # the variant's own metrics a trial reports at an epoch, by its config (discarded_ratio, ...)
    metrics: Callable[[dict[str, Any], int], dict[str, Any]] | None = None


class HandBackend:
    def __init__(self, play: type[Play]) -> None:
        self.play = play

    def start(self, ctx) -> None:
        pass

    def run(self, ctx, phase) -> None:
        while not phase.done():
            trial = phase.next_trial()
            if trial == "FINISHED" and phase.done():  # the last round's look ended it
                break
            assert isinstance(trial, dict), f"nothing to launch while {phase.phase} is not done: {trial!r}"
            _play_trial(ctx, phase, trial, self.play)


def hand_played(monkeypatch) -> type[Play]:
    from study.driver import backend

    class P(Play):
        pass

    monkeypatch.setattr(backend, "TuneBackend", lambda: HandBackend(P))
    return P


def _play_trial(ctx, phase, trial: dict[str, Any], play: type[Play]) -> None:
    from study.driver.lifecycle import StudyInterrupted
    from study.trainable import _write_checkpoint, checkpoint_epochs, read_reports

    cfg, control = trial["config"], trial["control"]
    rid, root = control["rid"], control["ckpt"]
    phase.started(rid)
    done = checkpoint_epochs(root)
    reports = read_reports(root, done[-1]) if done else []
    epochs = int(cfg.get("train_epochs") or cfg["epochs"])
    stopping = play.stop_after is not None and play.finished == play.stop_after
    last = reports[-1] if reports else {}
    for e in range(len(reports) + 1, epochs + 1):
        acc = play.accuracy(cfg, e) if play.accuracy is not None else None
        last = {"epoch": e, "status": "completed" if e == epochs else "running", "node": "here",
                "val_acc": acc if acc is not None else 0.5 + 0.01 * e + 0.001 * cfg["seed"],
                "test_acc": acc if acc is not None else 0.5 + 0.01 * e, "val_loss": 1.0 / e,
                "train_loss": 1.0 / e, "best_val_acc": 0.5 + 0.01 * e,
                **({"q_mean_stage1": 0.9, "q_dead_frac": 0.0} if cfg["variant"] == "quotient" else {}),
                **(play.metrics(cfg, e) if play.metrics is not None else {})}
        reports.append(last)
        _write_checkpoint(root, e, lambda d: Path(d, "state.pt").write_text("weights"), list(reports))
        phase.result(rid, last)
        if stopping:  # Ctrl-C: the trial keeps its checkpoint, the driver records it interrupted
            ctx.stop.set()
            phase.interrupt(ctx.ledger.trials[rid])
            raise StudyInterrupted()
    phase.ended(rid, last, "")
    play.finished += 1
    if play.on_trial is not None:
        play.on_trial(ctx, play.finished)


def build(storage: Path, monkeypatch, *, stop_after: int | None = None, name: str = "s") -> Path:
    """A study run by hand under `storage`: finished, or interrupted after `stop_after` trials."""
    from study.driver import run_study
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
