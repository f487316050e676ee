"""One experiment (variant, depth) as one Tune run: its search first; once every
search trial has ended, the trials that follow from its best configuration
(repeat, twin, designed arms), on the actors the search used (a Tune start costs
seconds). Tune's events go to the phase that owns the trial; the rung scheduler
sees the search trials only."""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher


class Phases:
    """The phases of one experiment, seen by the backend as one phase."""

    def __init__(self, members: list[Any]) -> None:
        self.members = members
        self.ctx, self.experiment = members[0].ctx, members[0].experiment
        self.phase = "+".join(p.phase for p in members)
        self.search = members[0] if members[0].phase == "search" else None
        self.fixed = [p for p in members if p.phase != "search"]
        self._created: dict[str, bool] = {}
        self.rungs = self.search.rungs if self.search is not None else None
        self.launched = _Union([p.launched for p in members])
        self.live = _Union([p.live for p in members])

    def _owner(self, rid: str) -> Any:
        name = self.ctx.ledger.trials[rid]["phase"]
        return next(p for p in self.members if p.phase == name)

    def _searching(self) -> bool:
        return self.search is not None and not self.search.done()

    def _fixed(self) -> list[Any]:
        """The later phases whose trials exist (created once the search is over)."""
        out = []
        for p in self.fixed:
            if p.phase not in self._created:
                self.ctx.events.phase_start(self.experiment, p.phase)
                self._created[p.phase] = p.create_fixed()
            if self._created[p.phase]:
                out.append(p)
        return out

    def reconcile(self) -> None:
        for p in self.members:
            p.reconcile()

    def unfinished(self) -> list[dict[str, Any]]:
        return [r for p in self.members for r in p.unfinished()]

    def done(self) -> bool:
        if self._searching():
            return False
        return all(p.done() for p in self._fixed())

    def next_trial(self):
        if self.ctx.stop.is_set():
            return Searcher.FINISHED
        waiting = False
        if self.search is not None:
            cfg = self.search.next_trial()
            if cfg is not Searcher.FINISHED:
                return cfg
            if self._searching():
                # the later trials follow from the best search trial: wait for the running ones
                return None if self.search.live else Searcher.FINISHED
        for p in self._fixed():
            cfg = p.next_trial()
            if cfg is None:
                waiting = True
            elif cfg is not Searcher.FINISHED:
                return cfg
        return None if waiting else Searcher.FINISHED

    def is_search(self, rid: str) -> bool:
        return self.ctx.ledger.trials[rid]["phase"] == "search"

    def started(self, rid: str) -> None:
        self._owner(rid).started(rid)

    def retried(self, rid: str) -> None:
        self._owner(rid).retried(rid)

    def result(self, rid: str, result: dict[str, Any]) -> None:
        self._owner(rid).result(rid, result)

    def ended(self, rid: str, result: dict[str, Any], error: str) -> None:
        self._owner(rid).ended(rid, result, error)

    def pruned(self, rid: str, epoch: int) -> None:
        self._owner(rid).pruned(rid, epoch)

    def interrupt(self, rec: dict[str, Any]) -> None:
        self._owner(rec["rid"]).interrupt(rec)


class _Union:
    """The members' sets seen as one (iterate, test, clear, discard)."""

    def __init__(self, sets: list[set]) -> None:
        self.sets = sets

    def __iter__(self):
        return iter([x for s in self.sets for x in s])

    def __contains__(self, x: object) -> bool:
        return any(x in s for s in self.sets)

    def __bool__(self) -> bool:
        return any(self.sets)

    def clear(self) -> None:
        for s in self.sets:
            s.clear()

    def discard(self, x: Any) -> None:
        for s in self.sets:
            s.discard(x)


__all__ = ["Phases"]
