"""The designed experiments of one experiment, run after its search: each claim's
arms paired by seed, the variant's sensitivity sweeps, and more seeds, round by
round, for the claims still open (study/driver/design.py plans them; the
stopping rule is study/stats/sequential.py's). Before a claim is judged, its
claimed arm must show that it was exercised (Claim.exercised: epsilon's arms
discarded a block, SGS's scalings moved off ones); where it was not, the design
moves the declared knob along its searched range and runs the arms again there,
and records what it did.

What the driver decided is recorded once, in study.json under
``design[experiment]``: each claim's arms and the trial ids of every arm at
every seed, every look (n, interval, verdicts, the alpha it was tested at, the
reported effect it was judged against), what was done to exercise it, and why
the claim stopped; each sweep's levels and their trials. The analysis reads
it and never decides again. A trial whose configuration another trial of the
experiment already runs (the repeat, the twin, an arm of another claim) is that
trial: each configuration trains once.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from ray.tune.search import Searcher

from study import spaces
from study.config import TrainConfig
from study.driver import design
from study.driver.context import Context
from study.driver.phases import Phase, launch, matched_epochs
from study.ledger import FINISHED
from study.variants import get_variant

PHASE = "arms"


def _identity_key(config: dict[str, Any]) -> str:
    """One trial per configuration: the config as it trains, less the epochs a twin is
    matched to after its partner ran (set later, on the record)."""
    return json.dumps({k: v for k, v in config.items() if k != "train_epochs"}, sort_keys=True)


def claim_family(spec: Any) -> int:
    """The study's claims tested for a verdict (the Bonferroni family): every claim of
    every experiment, and each claim's as-published comparison where the design runs
    one. Claims a study cannot test (not exercised) stay in it, which only makes the
    correction stricter."""
    n = 0
    for variant, _ in spec.experiments():
        v = get_variant(variant)
        n += len(v.claims)
        if spec.design is not None and spec.design.published and v.published is not None:
            n += sum(1 for c in v.claims if c.published)
    return max(n, 1)


class Arms(Phase):
    """Phase "arms" of one experiment."""

    def __init__(self, ctx: Context, variant: str, depth: int) -> None:
        super().__init__(ctx, variant, depth, PHASE)
        # what each arm searched: the search's params active at the arm's own config
        self.params = spaces.space_params(variant, ctx.spec.space_overrides(variant), ctx.spec.variants[variant].fixed)
        self.design: dict[str, Any] | None = ctx.ledger.state.get("design", {}).get(self.experiment)
        self._index: dict[str, str] | None = None
        if self.design is not None:  # resumed: the trials decided so far
            self._replan()

    @property
    def plan(self) -> dict[str, Any]:
        """The design as recorded (exists once create_fixed has run)."""
        assert self.design is not None, "the design is made once the search is over"
        return self.design

    # ------------------------------------------------------------ round one

    def create_fixed(self) -> bool:
        """The plan and round one, once the search is over (a resumed study keeps its plan)."""
        if self.design is not None:
            return True
        ctx, spec = self.ctx, self.ctx.spec
        best = ctx.best_search_record(self.experiment)
        if best is None or spec.design is None:
            return False
        claims = design.claims_plan(spec, self.subject, self.depth, best["config"])
        sweeps = design.sweeps_plan(spec, self.subject, self.depth, best["config"])
        self.design = {
            "best_rid": best["rid"], "started": time.time(), "extra_trials": 0,
            "claims": {key: {**{k: e[k] for k in ("text", "kind", "metric", "margin", "gain_metric", "base",
                                                  "compare", "configs", "partner", "full", "reported",
                                                  "exercise")},
                             "arms": {arm: [] for arm in e["compare"]}, "seeds": [], "looks": [], "acted": [],
                             "exercised": None if e["exercise"] else e["skip"] is None,
                             "stop": "running" if e["skip"] is None else "not_exercised", "why": e["skip"] or ""}
                       for key, e in claims.items()},
            "sweeps": {opt: {"option": opt, "levels": {k: [] for k in e["full"]}, "labels": e["labels"],
                             "best_value": e["best_value"], "seeds": e["seeds"], "skip": e["skip"]}
                       for opt, e in sweeps.items()},
        }
        self.ctx.ledger.state.setdefault("design", {})[self.experiment] = self.design
        for key, c in self.design["claims"].items():
            if c["stop"] == "running":
                self._add_seeds(key, list(spec.seeds))
        for opt, e in sweeps.items():
            for _, arm, cfg in design.sweep_trials(e):
                key = next(k for k, label in e["labels"].items() if label == arm)
                self.design["sweeps"][opt]["levels"][key].append(self._trial(cfg, e["claim"], arm))
        self.ctx.ledger.save_state()
        self._replan()
        return True

    def _replan(self) -> None:
        """The progress view counts the experiment's trials as they are now planned."""
        trials = self.ctx.ledger.trials.values()
        self.ctx.progress.replan(self.label, sum(1 for r in trials if r["experiment"] == self.experiment))

    def _add_seeds(self, key: str, seeds: list[int]) -> None:
        c = self.plan["claims"][key]
        entry = {"claim": key, "compare": c["compare"], "full": c["full"]}
        by_seed: dict[tuple[int, str], str] = {}
        for _, arm, cfg in design.arm_trials(entry, seeds):
            partner_arm = c["partner"].get(arm)
            partner = by_seed.get((cfg["seed"], partner_arm)) if partner_arm else None
            rid = self._trial(cfg, key, arm, partner)
            by_seed[(cfg["seed"], arm)] = rid
            c["arms"][arm].append(rid)
        c["seeds"].extend(seeds)

    def _trial(self, config: dict[str, Any], claim: str, arm: str, partner: str | None = None) -> str:
        """The rid of the experiment's trial of this configuration, made where none exists."""
        if self._index is None:
            self._index = {_identity_key(r["config"]): r["rid"] for r in self.ctx.ledger.trials.values()
                           if r["experiment"] == self.experiment and r["phase"] != "search"}
        key = _identity_key(config)
        if key not in self._index:
            searched = [p.name for p in self.params if p.name in config and p.is_active(config)]
            rec = self.new_record(config, variant=config["variant"], arm=arm, optuna_number=None,
                                  searched=searched, claim=claim)
            if partner is not None:
                rec = self.ctx.ledger.update(rec["rid"], partner=partner)
            self._index[key] = rec["rid"]
        return self._index[key]

    # ------------------------------------------------------------ Tune asks for the next trial

    def next_trial(self):
        if self.ctx.stop.is_set() or self.design is None:
            return Searcher.FINISHED
        waiting = False
        for rec in self.unfinished():
            if rec["rid"] in self.launched:
                continue
            if rec.get("partner"):
                matched = matched_epochs(self.ctx, rec, self.ctx.ledger.trials[rec["partner"]])
                if matched is None:  # its partner still trains: the twin trains the epochs it did
                    waiting = True
                    continue
                rec = matched
            return launch(self.ctx, rec, PHASE, None, self.launched, self.live)
        if waiting or self.live or not self._answered():
            return None  # a round is decided once every trial of it has ended
        if self._next_round():
            return self.next_trial()
        return Searcher.FINISHED

    def done(self) -> bool:
        if self.design is None:
            return True
        return not self.unfinished() and all(c["stop"] != "running" for c in self.design["claims"].values())

    def _answered(self) -> bool:
        """Every trial the open claims hold (theirs, the repeat's, the twin's) has ended."""
        trials = self.ctx.ledger.trials
        running = [c for c in self.plan["claims"].values() if c["stop"] == "running"]
        return all(self._answered_probe(c) for c in running) and all(
            trials[rid]["status"] in FINISHED for c in running for rids in c["arms"].values() for rid in rids)

    # ------------------------------------------------------------ after each round: look, stop or add seeds

    def _diffs(self, c: dict[str, Any]) -> list[float]:
        """metric(A) - metric(B) per seed where both arms completed, in seed order."""
        a, b = c["compare"]
        trials = self.ctx.ledger.trials
        out = []
        for ra, rb in zip(c["arms"][a], c["arms"][b]):
            va, vb = (_value(trials[r], c["metric"]) for r in (ra, rb))
            if va is not None and vb is not None:
                out.append(va - vb)
        return out

    def _next_round(self) -> bool:
        """Look at every open claim; True when trials were added for another round."""
        from study.stats import sequential

        spec = self.ctx.spec
        design_spec = spec.design
        assert design_spec is not None
        n_max = design.max_seeds(spec)
        alpha = sequential.claim_alpha(claim_family(spec), design_spec.alpha)
        added = False
        plan = self.plan
        for key, c in plan["claims"].items():
            if c["stop"] != "running":
                continue
            if c.get("exercised") is False or c.get("exercised") is None and c.get("exercise"):
                acted = self._exercise(key, c)
                added |= acted
                if acted or c["stop"] != "running":
                    continue
            diffs = self._diffs(c)
            reported = (c.get("reported") or {}).get("value")
            look = sequential.look(diffs, max(n_max, sequential.MIN_N), alpha=alpha,
                                   margin=float(c["margin"] or 0.0), reported=reported,
                                   prior_looks=[x["n"] for x in c["looks"]])
            c["looks"].append({**look.record(), "time": time.time(), "seeds": len(c["seeds"])})
            stop = look.stop
            if stop is None and len(diffs) < sequential.MIN_N and len(c["seeds"]) >= n_max:
                stop = "max_seeds"
            if stop is None:
                more = design.extra_seeds(spec, c["seeds"])
                hours = (time.time() - plan["started"]) / 3600
                why = design.budget_stop(spec, trials_used=plan["extra_trials"], hours_used=hours,
                                         next_trials=len(c["compare"]) * len(more))
                if not more:
                    stop = "max_seeds"
                elif why:
                    stop, c["why"] = "budget", why
                else:
                    before = len(self._rids)
                    self._add_seeds(key, more)
                    plan["extra_trials"] += len(self._rids) - before
                    added = True
            if stop is not None:
                c["stop"] = stop
        self.ctx.ledger.save_state()
        if added:
            self._replan()
        return added

    # ------------------------------------------------------------ was the claim exercised at all?

    def _exercise(self, key: str, c: dict[str, Any]) -> bool:
        """Check that the claimed arm's runs show the claim at work (its Exercise metric
        averaging above its line). Where they do not, move the knob one step along its
        searched range and probe it with one run of the claimed arm; once a probe shows
        the claim at work, plan every arm there at every seed (True: trials were added).
        With no step left, stop the claim as not exercised, saying why."""
        ex = c["exercise"]
        arm = ex["arm"]
        trials = self.ctx.ledger.trials
        probe = c.get("probe")
        rids = [probe["rid"]] if probe else c["arms"][arm]
        values = [v for v in (_value(trials[r], ex["metric"]) for r in rids) if v is not None]
        seen = sum(values) / len(values) if values else None
        if seen is not None and seen > ex["above"]:
            c["exercised"], c["probe"] = True, None
            if not probe:
                return False
            before = len(self._rids)
            self._add_seeds(key, list(self.ctx.spec.seeds))  # the probe is arm A's trial at the first seed
            self.plan["extra_trials"] += len(self._rids) - before
            return True
        knob = ex.get("knob")
        now = (probe["full"] if probe else c["full"])[arm].get(knob) if knob else None
        said = (f"{ex['text']} did not happen: {ex['metric']} averaged "
                f"{'nothing (no completed run)' if seen is None else format(seen, '.3g')} over "
                f"{_plural(len(rids), 'run')} of the {arm!r} arm")
        if knob:
            said += f" at {knob} = {_shown(now)}"
        if probe:
            c["acted"][-1]["outcome"] = said
        tried = [x["to"] for x in c["acted"]]
        steps_left = int(ex.get("steps") or 0) - len(tried)
        levels = [] if not knob or steps_left <= 0 else design.exercise_levels(
            self.ctx.spec, self.subject, knob, now, ex.get("toward", "high"), steps_left)
        first = c["acted"][0]["why"] if c["acted"] else said
        if not levels:
            moved = f"; then tried {knob} = {', '.join(map(_shown, tried))}, with the same result" if tried else ""
            end = "" if not knob else (f"; {knob} is at the end of its searched range" if steps_left > 0
                                       else f"; the {ex.get('steps')} step(s) the claim allows are spent")
            c["exercised"], c["probe"] = False, None
            c["stop"], c["why"] = "not_exercised", first + moved + end
            return False
        hours = (time.time() - self.plan["started"]) / 3600
        over = design.budget_stop(self.ctx.spec, trials_used=self.plan["extra_trials"], hours_used=hours,
                                  next_trials=1 + len(c["compare"]) * len(self.ctx.spec.seeds))
        if over:
            c["exercised"], c["probe"] = False, None
            c["stop"], c["why"] = "not_exercised", f"{first}; moving {knob} would pass the {over}"
            return False
        new = levels[0]
        full = {a: TrainConfig.from_dict(c["full"][a]).replace(**{knob: new})
                for a in c["compare"] if a not in c["partner"]}
        for twin_arm, of in c["partner"].items():
            twin = full[of].twin()
            assert twin is not None  # the arm was planned as a twin
            full[twin_arm] = twin
        if not c["acted"]:
            c["before_acting"] = {"full": c["full"], "arms": c["arms"], "seeds": c["seeds"]}
        c["acted"].append({"option": knob, "from": now, "to": new, "why": said, "time": time.time()})
        c["full"] = {a: cfg.to_dict() for a, cfg in full.items()}
        for a in c["configs"]:
            if a not in c["partner"]:
                c["configs"][a] = {**c["configs"][a], knob: new}
        c["arms"], c["seeds"], c["looks"], c["exercised"] = {a: [] for a in c["compare"]}, [], [], None
        seed = self.ctx.spec.seeds[0]
        rid = self._trial(TrainConfig.from_dict(c["full"][arm]).replace(seed=seed).to_dict(), key, arm)
        c["probe"] = {"rid": rid, "full": c["full"], "seed": seed}
        self.plan["extra_trials"] += 1
        return True

    def _answered_probe(self, c: dict[str, Any]) -> bool:
        probe = c.get("probe")
        return probe is None or self.ctx.ledger.trials[probe["rid"]]["status"] in FINISHED


def _shown(v: Any) -> str:
    """A knob's value for a person: a float to 4 significant digits (the searched one is a
    long binary fraction), anything else as Python writes it."""
    return format(v, ".4g") if isinstance(v, float) else repr(v)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _value(rec: dict[str, Any], metric: str) -> float | None:
    """A completed trial's metric, where it is a finite number."""
    v = (rec.get("row") or {}).get(metric)
    if rec["status"] != "completed" or not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return None
    return float(v)


__all__ = ["Arms", "PHASE", "claim_family"]
