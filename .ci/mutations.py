"""The mutation table of docs/mutations.md, re-run: each row breaks the code on purpose
(replaces one snippet of one file), runs the one test that must fail under it, times it,
and restores the file whatever happens. A test that passes under its mutation is a
defect: it is printed loudly and the script exits 1. Run by hand, not by CI:

    .venv/bin/python .ci/mutations.py [--only SUBSTRING] [--lock FILE] [--write]

--only runs the rows whose description, file or test contains SUBSTRING; --lock holds
an flock on FILE around each test (the heavy ones must not share the machine); --write
rewrites the table of docs/mutations.md (every row must have run).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import re
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "mutations.md"
HEADER = "| mutation (where) | test that fails | s to fail | note |"
PRODUCED = "The table is produced by"
SUMMARY = re.compile(r"\b(passed|failed|error|errors|skipped|no tests ran)\b.* in [0-9.]+s\b")


class M(NamedTuple):
    what: str  # the table's "mutation (where)" text
    file: str
    old: str  # occurs exactly once in file
    new: str
    test: str  # the pytest node id that must fail
    note: str = ""
    tiny: bool = False  # runs the tiny study first


LEDGER, RUNNER, CLAIMS = "study/ledger.py", "study/driver/runner.py", "analysis/claims.py"
EPS, VARIANTS, DECL = "study/models/epsilon.py", "study/variants.py", "tests/study/test_declared_once.py"
SGS, CLI = "study/sgs/feature.py", "study/cli/app.py"
SECURITY = ("tests/study/test_security.py::"
            "test_a_tracking_password_reaches_no_file_no_mlflow_param_or_tag_and_no_console")
CONCURRENT = "tests/study/test_ledger.py::test_two_concurrent_resumes_cannot_both_run"
DEFAULTS = "tests/study/test_paper_defaults.py::test_the_code_defaults_are_the_pinned_ones"
EPS_GATE = "tests/study/test_models.py::test_epsilon_eval_gate_matches_training_gate_and_depends_on_batch"
ERRORS = "tests/study/test_errors.py::test_every_error_class_is_a_user_error_and_the_cli_prints_each_as_one_line_exit_2"
PLUGINS = "tests/plugins/test_declarations.py"

MUTATIONS = [
    M("the study lock released right after `prepare()` (`StudyRunner.run`)", RUNNER,
      "            if not self.prepare():", "            if not self.prepare() or lock.release():",
      "tests/study/test_ledger.py::test_the_lock_is_held_for_the_whole_run",
      "the old \"lock held while a study runs\" took the lock before the run and passed"),
    M("the same", RUNNER, "            if not self.prepare():", "            if not self.prepare() or lock.release():",
      CONCURRENT, "a third `resume` started mid-run runs"),
    M("the study lock shared instead of exclusive (`StudyLock.acquire`, `LOCK_SH`)", LEDGER,
      "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", "fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)", CONCURRENT,
      "neither resume is refused; the second dies in MLflow's schema migration, racing the first"),
    M("Holm removed from the tuned-vs-tuned table (`analysis/claims.py::tuned_vs_tuned`)", CLAIMS,
      't.loc[ok, "p_adj"] = holm(t.loc[ok, "p_value"].to_numpy())', 't.loc[ok, "p_adj"] = t.loc[ok, "p_value"]',
      "tests/analysis/test_claims.py::"
      "test_tuned_vs_tuned_holm_over_several_subjects_turns_a_lone_pass_inconclusive",
      "the old Holm test had one subject, where Holm changes nothing"),
    M("the n < 3 rule removed from the tuned-vs-tuned table", CLAIMS,
      'ok = (t[["n", "n_baseline"]].min(axis=1) >= MIN_N) & t["p_value"].notna()', 'ok = t["p_value"].notna()',
      "tests/analysis/test_claims.py::test_tuned_vs_tuned_never_decides_on_two_runs_however_large_the_gain"),
    M("Holm removed from the claims table (`analysis/claims.py::finish`)", CLAIMS,
      't.loc[testable, "p_adj"] = holm(t.loc[testable, "p_value"].to_numpy())',
      't.loc[testable, "p_adj"] = t.loc[testable, "p_value"]',
      "tests/analysis/test_claims.py::"
      "test_claims_table_holm_over_several_subjects_turns_a_lone_pass_inconclusive"),
    M("the n < 3 rule removed from the claims table", CLAIMS,
      'testable = (t["n"] >= MIN_N) & t["p_value"].notna() & ~designed',
      'testable = t["p_value"].notna() & ~designed',
      "tests/analysis/test_claims.py::test_claims_table_never_decides_on_two_pairs_among_several_subjects"),
    M("the saved spec keeps the tracking password (`spec.yaml` written from the spec, not the redacted copy)",
      RUNNER, ".write_text(saved.to_yaml())", ".write_text(spec.to_yaml())", SECURITY,
      "before, only a 6.6-minute fault test caught it"),
    M("study.json's spec keeps the tracking password", RUNNER, 'dumped = saved.model_dump(mode="json")',
      'dumped = spec.model_dump(mode="json")', SECURITY),
    M("the tracking URI printed with the \"browse it\" line", RUNNER,
      'browse it with: resstudy ui {self.study_dir}"', 'browse it with: resstudy ui {self.study_dir} "'
      ' + self.tracking_uri()', SECURITY),
    M("the tracking URI added as a trial run tag", "study/driver/stores.py", '"status": "running"}',
      '"status": "running", "tracking_uri": self.tracker.uri}', SECURITY),
    M("epsilon's default epsilon 2.5 -> 1", EPS, 'Option("epsilon", float, 2.5,', 'Option("epsilon", float, 1.0,',
      f"{DEFAULTS}[epsilon]"),
    M("epsilon's side weight 0.1 -> 0.5", EPS, 'Option("side_weight", float, 0.1,',
      'Option("side_weight", float, 0.5,', f"{DEFAULTS}[epsilon]"),
    M("SGS's k 5 -> 2", SGS, 'Option("sgs_k", float, 5.0,', 'Option("sgs_k", float, 2.0,',
      f"{DEFAULTS}[sgs]"),
    M("SGS's interval 30 -> 10", SGS, 'Option("sgs_interval", int, 30,', 'Option("sgs_interval", int, 10,',
      f"{DEFAULTS}[sgs]"),
    M("epsilon: training gates each image on its own, eval the batch (`EpsilonBlock.forward`)", EPS,
      "out = self.shortcut(x) + gate * f",
      "out = self.shortcut(x) + (torch.stack([epsilon_gate(i, self.epsilon) for i in f]).view(-1, 1, 1, 1)"
      " if self.training else gate) * f", EPS_GATE, "the old test of that name looked at eval mode only and passed"),
    M("epsilon: eval forces every gate open", EPS, "gate = epsilon_gate(f, self.epsilon)",
      "gate = epsilon_gate(f, self.epsilon) if self.training else 1.0", EPS_GATE),
    M("a rung epoch's report not waited for (`trainable`, `wait=` without the rung epochs)", "study/trainable.py",
      "reporter.report(result, wait=epoch in policy.epochs)", "reporter.report(result, wait=False)",
      "tests/study/test_trainable.py::test_the_trainer_waits_at_a_rung_epoch",
      "now decided by the training thread's state, not by `held >= 3` seconds"),
    M("`resstudy ui`'s MLflow server bound to 0.0.0.0, its printed URL still 127.0.0.1 (`study/ui.py::start`)",
      "study/ui.py", '"--host", HOST, "--port", str(port), "--workers", "1"]',
      '"--host", "0.0.0.0", "--port", str(port), "--workers", "1"]',
      "tests/study/test_ui.py::test_every_server_socket_listens_on_loopback_only", "the printed-URL test passed"),
    M("a quotient twin no longer keeps its variant's `init` (`study/models/quotient.py::_twin`)",
      "study/models/quotient.py", '{"block", "shortcut", "width", "init"}', '{"block", "shortcut", "width"}',
      "tests/study/test_runner.py::test_twins_differ_from_their_variant_runs_only_in_the_method",
      "the old twin test compared lr and weight decay only and passed", tiny=True),
    M("every learning rate 0.03 x the configured one (`train`, the schedule's base lr)", "study/train.py",
      "schedule = Schedule(cfg.lr,", "schedule = Schedule(0.03 * cfg.lr,",
      "tests/study/test_runner.py::test_a_study_learns",
      "the best run reached 0.78 validation accuracy: the old threshold of 0.3 passed",
      tiny=True),
    M("`JobError` derived from `ValueError` only, outside the one root (`study/jobs.py`)", "study/jobs.py",
      "class JobError(UserError, ValueError):", "class JobError(ValueError):", ERRORS,
      "the CLI used to find such classes by name in `sys.modules`"),
    M("the CLI re-raises the analysis' user errors (`study/cli/app.py::main`)", CLI,
      "    except UserError as e:  # anything else is a bug: it keeps its whole traceback (exit 1)\n",
      "    except UserError as e:  # anything else is a bug: it keeps its whole traceback (exit 1)\n"
      '        if type(e).__module__.startswith("analysis."):\n            raise\n', ERRORS,
      "every UserError subclass is raised through `resstudy status` in a process of its own"),
    M("registration no longer checks builder keywords against model options (`study/variants.py::_check_builder`)",
      VARIANTS, "    for name in keywords:\n", "    for name in ():\n",
      f"{PLUGINS}::test_a_plugin_that_forgets_target_model_is_refused_when_loaded",
      "the toy plugin without `target=\"model\"`: its `gamma0` was searched and never reached the network"),
    M("a model option the builder cannot take no longer refused (the same)", VARIANTS,
      "        for name in model:\n", "        for name in ():\n",
      f"{PLUGINS}::test_a_model_option_the_builder_cannot_take_is_refused"),
    M("`register_variant` no longer registers the built-ins first (`study/variants.py`)", VARIANTS,
      "    _ensure_builtins()\n    old = _VARIANTS.get(variant.name)", "    old = _VARIANTS.get(variant.name)",
      f"{PLUGINS}::test_the_builtins_register_in_their_declared_order_whatever_is_imported_first[study.variants]"),
    M("the ResNet builder grows its own depth rule (`study/models/resnet.py::blocks_per_stage`, depth >= 14)",
      "study/models/resnet.py", "    n = depth_blocks(depth)\n",
      "    n = depth_blocks(depth) if isinstance(depth, int) and depth >= 14 else None\n",
      f"{DECL}::test_every_reader_of_the_depth_rule_agrees[8_0]"),
    M("the analysis takes a folder with only `results.parquet` for a study (`analysis/load.py::find_study`)",
      "analysis/load.py", "        if is_study_dir(cand):",
      '        if is_study_dir(cand) or (cand / "results.parquet").is_file():',
      f"{DECL}::test_one_criterion_says_what_a_study_directory_is"),
    M("the device option's pattern removed (`study/config.py`)", "study/config.py",
      '"auto, cpu, cuda or cuda:N", pattern=r"auto|cpu|cuda|cuda:\\d+")', '"auto, cpu, cuda or cuda:N")',
      f"{DECL}::test_a_device_the_trainer_cannot_use_is_refused_alike_everywhere[meta]"),
    M("a categorical override keeps the user's 3.0 instead of the declared choice 3 (`study/spaces.py::_choice`)",
      "study/spaces.py", "        if same_value(value, c):\n            return c\n",
      "        if same_value(value, c):\n            return value\n",
      f"{DECL}::test_an_option_value_is_the_same_by_one_rule_in_options_and_spaces"),
    M("the trainer reads `cfg.sgs_batches` again (`study/train.py::TrialContext.probe_batches`)", "study/train.py",
      "limit=limit)", "limit=cfg.sgs_batches)",
      f"{DECL}::test_the_trainer_spec_and_analysis_name_no_variant[study/train.py]"),
    M("the SGS hooks ask for 20 probe batches whatever `sgs_batches` says (`study/sgs/feature.py::SGSHooks`)",
      SGS, "self.ctx.probe_batches(epoch, cfg.sgs_batches)", "self.ctx.probe_batches(epoch, 20)",
      "tests/study/test_sgs.py::test_recompute_replaces_every_scaling_and_a_nan_conv_goes_back_to_ones"),
    M("`search_spaces/shared.py` imports `study.options`", "search_spaces/shared.py",
      "from typing import Any, Mapping\n", "from typing import Any, Mapping\n\nimport study.options  # noqa: F401\n",
      "tests/search_spaces/test_spaces.py::test_the_search_ranges_import_nothing_of_study",
      "the package cycle study <-> search_spaces"),
    M("a designed arm gets a trial of its own even where the repeat or another arm runs the same configuration "
      "(`study/driver/arms.py::Arms._trial`)", "study/driver/arms.py", "key = _identity_key(config)",
      "key = (_identity_key(config), claim, arm)",
      "tests/study/test_arms.py::test_each_claim_gets_arms_paired_by_seed_that_differ_from_the_best_in_what_they_name",
      "each configuration trains once"),
    M("no extra seeds for an open claim (`study/driver/design.py::extra_seeds` returns none)",
      "study/driver/design.py", "return [s for s in seed_sequence(spec) if s not in used][:n]", "return []",
      "tests/study/test_arms.py::test_an_open_claim_gets_more_seeds_one_round_at_a_time_until_settled",
      "the earlier no-effect test passed: futility stopped that claim at 3 seeds before any extra seed was due"),
    M("the correction for repeated looks dropped (the fixed-n t interval at every look, `study/stats/sequential.py`)",
      "study/stats/sequential.py", "c = boundaries(_schedule(prior_looks, n, n_min), n_max, alpha)[-1]",
      "c = float(special.stdtrit(n - 1, 1 - alpha / 2))",
      "tests/study/stats/test_sequential.py::test_false_verdicts_stay_at_the_nominal_rate_under_no_effect[gaussian]",
      "16% of null claims got a verdict"),
    M("the trial ignores the events object it is handed (`study/trainable.py::trainable`)", "study/trainable.py",
      "        if events is not None:\n", "        if False:\n",
      "tests/study/test_trainable.py::"
      "test_the_events_passed_in_are_called_after_each_epoch_while_its_report_is_still_in_flight",
      "the fault tests' seam"),
    M("a failed Ray start's processes left for the next attempt (`study/driver/environment.py::init_ray` without "
      "`stop_failed_start`)", "study/driver/environment.py", "            stop_failed_start()\n", "",
      "tests/study/test_environment.py::test_a_transient_start_failure_is_retried_only_after_the_failed_start_is_stopped"),
    M("a trial opened again while its run's creation waits in the queue queues a second creation "
      "(`study/tracking.py::Tracker.create`)", "study/tracking.py",
      "        if self.known(key):", "        if key in self.ids:",
      "tests/study/test_tracking.py::test_a_trial_opened_twice_while_mlflow_is_down_gets_one_run",
      "found by merging the fault studies: a trial retried while MLflow was down got a second run, left RUNNING"),
    M("the same", "study/tracking.py",
      "        if self.known(key):", "        if key in self.ids:",
      "tests/study/test_faults.py::test_mlflow_going_away_mid_study_loses_no_metric",
      "the one fault study (every injected fault and the MLflow outage at once): 9 MLflow runs for 6 trials"),
    M("a create retried after a lost answer makes another run (no lookup by its token, `Tracker._apply`)",
      "study/tracking.py", 'max_results=1) if p.get("tried") else []', "max_results=1) if False else []",
      "tests/study/test_tracking.py::test_a_create_whose_answer_was_lost_is_retried_without_a_second_run",
      "the client timed out while a busy server still made the run"),
    M("the analysis names a variant's metric (`param_reduction` in `analysis/sensitivity.py::UNIT_METRICS`)",
      "analysis/sensitivity.py", 'UNIT_METRICS = frozenset({"val_acc", ',
      'UNIT_METRICS = frozenset({"param_reduction", "val_acc", ',
      "tests/study/test_declared_once.py::test_the_trainer_spec_and_analysis_name_no_variant[analysis/sensitivity.py]",
      "the test scanned three files before; it scans every analysis module now"),
]


class Result(NamedTuple):
    m: M
    outcome: str  # "failed" (caught), else pytest's exit status and summary (0: the test passed)
    seconds: float
    load: float  # the 1-minute load average just before the test
    why: str  # pytest's one line on the failure


def check_snippets(rows: list[M]) -> None:
    for m in rows:
        n = (ROOT / m.file).read_text().count(m.old)
        if n != 1:
            sys.exit(f"mutations.py: {m.file}: the snippet {m.old!r} occurs {n} times, not once; fix the entry")


def run_one(m: M, lock: str | None) -> Result:
    path = ROOT / m.file
    original = path.read_bytes()
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-n", "0", m.test]
    env = {k: v for k, v in os.environ.items() if k != "RESSTUDY_TEST_STUDY_DIR"}  # the tiny study runs mutated
    env.update(PYTHONDONTWRITEBYTECODE="1", COLUMNS="400")  # no bytecode of a mutated file; whole lines
    try:
        path.write_bytes(original.decode().replace(m.old, m.new).encode())
        with open(lock, "a") if lock else nullcontext() as fh:
            if fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
            load, t0 = os.getloadavg()[0], time.monotonic()
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            seconds = time.monotonic() - t0
    finally:
        path.write_bytes(original)
    said = [s.strip("= ") for s in p.stdout.splitlines() if SUMMARY.search(s)] or ["no summary"]
    outcome = "failed" if p.returncode == 1 and " failed" in said[-1] else f"exit {p.returncode}: {said[-1]}"
    if outcome != "failed":
        print(p.stdout[-3000:] + p.stderr[-2000:])
    why = [s for s in p.stdout.splitlines() if s.startswith(("FAILED ", "ERROR "))]
    return Result(m, outcome, seconds, load, why[-1].split(" - ", 1)[-1][:300] if why else "")


def table(results: list[Result]) -> str:
    lines, prev = [HEADER, "|---|---|---|---|"], None
    for r in results:
        m = r.m
        secs = f"{r.seconds:.1f}" + (" (tiny study)" if m.tiny else "")
        note = m.note if r.outcome == "failed" else f"NOT CAUGHT ({r.outcome})" + (f"; {m.note}" if m.note else "")
        lines.append(f"| {m.what} | {'the same' if m.test == prev else f'`{m.test}`'} | {secs} | {note} |")
        prev = m.test
    return "\n".join(lines) + "\n"


def write_doc(results: list[Result], wall: float) -> None:
    prose = DOC.read_text().split(HEADER, 1)[0].rstrip("\n").split("\n\n")
    prose = [p for p in prose if not p.startswith(PRODUCED)]
    lo, top = min(r.load for r in results), max(r.load for r in results)
    quiet = "quiet" if top < 1.0 else "not quiet (other work ran beside the tests)"
    text = (f"{PRODUCED} `.venv/bin/python .ci/mutations.py --write`, which lists each mutation, the snippet it "
            f"replaces and its test. Last run {time.strftime('%Y-%m-%d')}: {len(results)} rows, their tests "
            f"{sum(r.seconds for r in results) / 60:.0f} minutes together ({wall / 60:.0f} minutes from start to "
            f"end), on a {os.cpu_count()}-core {platform.machine().replace('_', '-')} machine that was {quiet}; "
            f"the 1-minute load average before the tests was {lo:.1f} to {top:.1f}.")
    prose.append(textwrap.fill(text, 79, break_on_hyphens=False, break_long_words=False))
    DOC.write_text("\n\n".join(prose) + "\n\n" + table(results))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="run the rows whose description, file or test contains this")
    ap.add_argument("--lock", help="hold an flock on this file around each test")
    ap.add_argument("--write", action="store_true", help="rewrite the table of docs/mutations.md")
    a = ap.parse_args()
    rows = [m for m in MUTATIONS if not a.only or any(a.only in s for s in (m.what, m.file, m.test))]
    if a.write and len(rows) != len(MUTATIONS):
        sys.exit("mutations.py: --write rewrites the whole table: run every row (no --only)")
    check_snippets(rows)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill restores the file too
    start, results = time.monotonic(), []
    for i, m in enumerate(rows, 1):
        r = run_one(m, a.lock)
        results.append(r)
        mark = "caught" if r.outcome == "failed" else "!!!!! NOT CAUGHT: " + r.outcome
        print(f"[{i}/{len(rows)}] {r.seconds:6.1f} s  {mark}  {m.what} -> {m.test}\n    {r.why}", flush=True)
    wall = time.monotonic() - start
    print("\n" + table(results) + f"\n{len(results)} rows in {wall / 60:.1f} minutes")
    missed = [r for r in results if r.outcome != "failed"]
    for r in missed:
        print(f"!!!!! NOT CAUGHT: {r.m.what} ({r.m.file}) -> {r.m.test}: {r.outcome}", file=sys.stderr)
    if a.write:
        write_doc(results, wall)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
