"""The search across driver kills, Tune played by hand: a resumed search proposes
what the unbroken one would have, for every sampler a spec may name."""

from __future__ import annotations

import math
import typing
from pathlib import Path

import optuna
import pytest

from study.ledger import StudyLock
from study.spec import SearchSpec, load_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

ALGORITHMS = typing.get_args(SearchSpec.model_fields["algorithm"].annotation)
TRIALS, KILLED_AFTER = 8, 4  # TPE and CMA-ES leave their 2 startup trials before the kill


def _spec(root: Path, algorithm: str, seed: int | None = 0):
    # sgs: conditional and categorical params, so every sampler's independent path is drawn on too
    return load_spec({"name": "s", "dataset": "digits", "image_size": 8, "depth": 8, "epochs": 2,
                      "trials_per_variant": TRIALS, "variants": ["sgs"], "storage_path": str(root),
                      "scheduler": {"type": "none"},
                      "search": {"algorithm": algorithm, "seed": seed, "n_startup_trials": 2,
                                 "grid_points": 2}})


class _Driver:
    """One driver process: what `resstudy run`/`resume` builds before Tune starts."""

    def __init__(self, spec) -> None:
        from study.driver.phases import Phase
        from study.driver.lifecycle import check_storage
        from study.driver.runner import StudyRunner

        self.runner = StudyRunner(spec)
        check_storage(self.runner.study_dir)
        self.lock = StudyLock(self.runner.study_dir).acquire()
        assert self.runner.prepare()
        self.phase = Phase(self.runner.ctx, "sgs", 8, "search")
        self.phase.reconcile()

    def trials(self, n: int) -> list[dict]:
        """Ask n trials, each told (COMPLETE) before the next is asked, as with max_concurrent 1."""
        out = []
        for _ in range(n):
            trial = self.phase.next_trial()
            cfg = trial["config"]
            searched = {k: cfg[k] for k in self.runner.ctx.ledger.trials[trial["control"]["rid"]]["searched"]}
            # an objective the model can learn from: best at lr 0.03, small weight decay
            val = 1.0 - abs(math.log10(cfg["lr"] / 0.03)) - 100 * cfg["weight_decay"]
            self.phase.finish(self.runner.ctx.ledger.trials[trial["control"]["rid"]], "completed",
                              {"epoch": 2, "status": "completed", "val_acc": val})
            out.append(searched)
        return out

    def kill(self) -> None:
        self.runner.ctx.ledger.close()
        self.lock.release()


def _unbroken(root: Path, algorithm: str) -> list[dict]:
    d = _Driver(_spec(root, algorithm))
    try:
        return d.trials(TRIALS)
    finally:
        d.kill()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_resumed_search_proposes_what_the_unbroken_one_would_have(tmp_path, algorithm):
    """Every sampler the spec allows: ask and tell 4 trials, kill the driver, rebuild everything as
    `resstudy resume` does, ask and tell the rest. The proposals are those of an unbroken search."""
    expected = _unbroken(tmp_path / "unbroken", algorithm)
    assert len({repr(c) for c in expected}) == TRIALS, "the unbroken search itself repeats"

    first = _Driver(_spec(tmp_path / "resumed", algorithm))
    before = first.trials(KILLED_AFTER)
    first.kill()
    again = _Driver(_spec(tmp_path / "resumed", algorithm))
    try:
        after = again.trials(TRIALS - KILLED_AFTER)
    finally:
        again.kill()
    assert before + after == expected


@pytest.mark.parametrize("damage", ["missing", "garbage", "stale"])
def test_a_sampler_state_that_cannot_be_used_is_reseeded_never_started_over(tmp_path, damage, capsys):
    """No usable state (deleted, damaged, or saved before a trial Optuna holds: a kill between Optuna's
    ask and the save): the resumed sampler is re-seeded from the trials asked, says so in one line,
    and proposes nothing it proposed before."""
    spec = _spec(tmp_path, "random")
    first = _Driver(spec)
    before = first.trials(KILLED_AFTER)
    state = first.phase.sampler_state.path
    if damage == "stale":
        first.phase.optuna.ask()  # Optuna's trial is stored; the kill comes before the state is saved
    first.kill()
    assert state.is_file()
    if damage == "missing":
        state.unlink()
    elif damage == "garbage":
        state.write_bytes(b"\x00\xffnot json")
    capsys.readouterr()
    again = _Driver(spec)
    try:
        after = again.trials(TRIALS - KILLED_AFTER - (damage == "stale"))
    finally:
        again.kill()
    notes = [line for line in capsys.readouterr().out.splitlines() if "sampler state" in line]
    assert len(notes) == 1 and str(state) in notes[0] and "re-seeded" in notes[0], notes
    proposed = [repr(c) for c in before + after]
    assert len(set(proposed)) == len(proposed), proposed
