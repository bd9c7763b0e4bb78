"""Stage 3: tuning. MetaSchedule's evolutionary search and XGBoost cost model, driven by tvmopt.

Task extraction runs on the prepared module, which is also what the build compiles, so a record
stored for a task is found again at build time.

tvmopt drives MetaSchedule's parts (TuneContext, EvolutionarySearch, XGBModel, builder, runner)
with its own round loop instead of `ms.tune_tasks`, because users need what that loop cannot give:
trials spent where they pay (weight x current latency), tasks that stop when they stop improving,
a wall-clock budget, progress with an ETA, Ctrl-C after the current batch, and resuming from the
records already in the team database.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field

from ..database import FAILED_RUN_SEC, DatabaseUnavailable, open_database, target_identity
from ..errors import TvmoptError, first_line
from ..formatting import duration
from ..prepare import ModelOptions, prepare
from ..targets import Preset
from ..kernels.defaults import hand_scheduled
from ..tasks import Task, extract_tasks
from ..toolchain import toolchain
from .control import RoundClock, StopAfterBatch, round_not_stored, store_round
from .measure import PersistentBuilder, make_runner
from .options import TuneOptions
from . import library_tactics
from .report import ProgressCallback, TaskProgress, TuneReport, log_progress
from .space import SEARCH_SETTINGS, search_target, space_generator, uses_tensor_cores

log = logging.getLogger("tvmopt.tuning")


# MetaSchedule narrates every evolutionary step at INFO; tvmopt reports progress itself.
_SEARCH_LOG = logging.getLogger("tvmopt.search")
_SEARCH_LOG.setLevel(logging.WARNING)


@dataclass
class _Round:
    """Candidates on their way through build and measurement, for one task's search round (`ctx`
    set) or for the baselines of many tasks. Schedules transferred to the task's anchor-block
    siblings ride along, measured once the task's own results are in."""

    entries: list  # (TaskProgress, MeasureCandidate)
    ctx: object = None  # the searched task's TuneContext
    search_s: float = 0.0
    measure_s: float = 0.0  # building and measuring it, transfers included
    results: list = field(default_factory=list)
    transfers: list = field(default_factory=list)  # (TaskProgress, MeasureCandidate)
    transfer_results: list = field(default_factory=list)
    transfer_failed: list = field(default_factory=list)  # siblings the transfer could not serve

    @property
    def task(self) -> TaskProgress | None:
        return self.entries[0][0] if self.ctx is not None else None


# A task's first search round measures this many candidates, so every task has searched
# schedules early (breadth first); later rounds measure a full --batch-size.
FIRST_ROUND = 16


class Tuner:
    """Tunes a model's tasks for one target into the tuning database.

    It first measures every task's baseline (the schedule the build would use untuned) in one
    batch, so the model estimate exists within minutes and no tuned kernel can be slower than
    it. Then each round picks a task (every task gets a small first round before any gets a
    second; after that, where a better kernel saves the most: weight x current best latency),
    asks its evolutionary search for a batch, builds the batch in parallel, measures it (locally
    or on RPC servers), stores every result, and retrains the shared XGBoost cost model. Kernels
    with the same anchor conv/matmul and other epilogues share one search: the winning schedule
    is transferred to them and measured on each. When measurement happens off this CPU (a GPU, an
    RPC device), the next round's search runs while the current round is measured.
    """

    def __init__(self, tasks: list[Task], target, precision: str, store, options: TuneOptions,
                 *, model_sha256: str | None = None, command: str = "",
                 on_progress: ProgressCallback | None = None, library_layers: dict | None = None):
        options.validate()
        self.tasks = [t for t in tasks if t.flops > 0 and not hand_scheduled(t.mod["main"])]
        if not self.tasks:
            raise TvmoptError("the model has no tunable task (no kernel does arithmetic, or "
                              "only hand-scheduled ones); build it directly with `tvmopt build`")
        self.target = target
        self.precision = precision
        self.store = store
        self.options = options
        self.model_sha256 = model_sha256
        self.command = command
        self.on_progress = on_progress or log_progress
        self.library_layers = library_layers or {}  # {task name: kernels.library.Layer}
        self.clock = RoundClock()
        self.device_type = "cpu" if target.kind.name == "llvm" else target.kind.name
        # Searching while measuring on this same CPU would disturb the timings.
        self.overlap = self.device_type != "cpu" or bool(options.rpc_tracker)
        self.siblings: dict[str, list[TaskProgress]] = {}  # leader task name -> its siblings
        self._builder = self._runner = self._report = self._stop = None
        self._db_failed = False  # a round could not be stored (database locked, disk full)
        self._baselines: dict[str, tuple] = {}
        self._stale_baselines: set[str] = set()  # tasks with records but none of their baseline

    # -- setup ------------------------------------------------------------------------------

    def _prior_state(self, progress: TaskProgress) -> None:
        """Trials already in the database for this task and target count toward the budget."""
        self._library_best(progress)
        workload_id = self.store.find_workload(progress.task.mod)
        if workload_id is None:
            return
        tsha = target_identity(self.target)[0]
        progress.prior_trials = self.store.count_trials(workload_id, tsha)
        best = self.store.best_records(workload_id, tsha, 1)
        trace = self._baseline(progress)[1]
        if best:
            progress.best_sec = best[0].mean_sec
            progress.tensor_core = uses_tensor_cores(best[0].trace_json)
            progress.baseline_sec = self.store.measured_sec(workload_id, tsha, trace)
        if progress.prior_trials and not self.store.has_measured(workload_id, tsha, trace):
            # Tuned before its default schedule changed: measured whatever the budget, or the
            # build could keep a record slower than what it now gives the kernel untuned.
            self._stale_baselines.add(progress.task.name)

    def _baseline(self, progress: TaskProgress):
        """(the task's baseline as a traced Schedule, its trace as stored): what the build gives
        the kernel untuned, the default schedule or the plain loop nest."""
        from ..kernels.defaults import baseline

        name = progress.task.name
        if name not in self._baselines:
            self._baselines[name] = baseline(progress.task.mod, self.target)
        return self._baselines[name]

    def _group_by_anchor(self, report: TuneReport) -> None:
        """Tasks whose anchor block (the conv/matmul) is the same share a search: the heaviest
        leads, the others are marked as tuned with it (MetaSchedule's anchor-block equality,
        kept per fused kernel in the database so every record is measured on its own kernel)."""
        import tvm_ffi
        from tvm.s_tir.analysis import find_anchor_sblock

        leaders: dict[int, TaskProgress] = {}
        for p in report.tasks:  # heaviest first
            anchor = find_anchor_sblock(p.task.mod)
            if anchor is None:
                continue
            key = tvm_ffi.structural_hash(anchor, map_free_vars=True)
            leader = leaders.setdefault(key, p)
            if leader is not p and tvm_ffi.structural_equal(
                    find_anchor_sblock(leader.task.mod), anchor, map_free_vars=True):
                self.siblings.setdefault(leader.task.name, []).append(p)
                p.finished = f"tuned with {leader.task.name}"

    def _warm_start(self, cost_model) -> int:
        """Train the cost model on this target's records (AutoTVM's load_history, for XGBoost)."""
        from tvm.s_tir import meta_schedule as ms

        tsha = target_identity(self.target)[0]
        database = self.store.for_target(self.target)
        trained = 0
        for workload_id in self.store.workload_ids_for_target(tsha)[:200]:
            mod = self.store.load_workload_mod(workload_id)
            try:
                ctx = ms.TuneContext(mod=mod, target=self.target, space_generator=None,
                                     search_strategy=None, num_threads=1)
                records = database.get_top_k(ms.database.Workload(mod), 64)
                candidates = [r.as_measure_candidate() for r in records]
                results = [ms.runner.RunnerResult([float(s) for s in r.run_secs], None)
                           for r in records]
                if candidates:
                    cost_model.update(ctx, candidates, results)
                    trained += len(candidates)
            except Exception as e:  # noqa: BLE001 - a stale record must not stop a new tune
                log.debug("warm start skipped workload %d: %s", workload_id, e)
        return trained

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> TuneReport:
        from concurrent.futures import ThreadPoolExecutor

        from tvm.s_tir import meta_schedule as ms

        opts = self.options
        report = TuneReport(target_identity(self.target)[1], [TaskProgress(t) for t in self.tasks],
                            budget=opts.trials)
        self._report = report
        for p in report.tasks:
            self._prior_state(p)
        tactics_pending = any(library_tactics.pending(layer, self.target, self.store)
                              for layer in self.library_layers.values())
        if report.trials_total >= opts.trials and not tactics_pending and not (
                opts.trials and self._stale_baselines):
            report.stop_reason = (
                "--trials 0: no kernel-library tactic left to measure (nothing else is)"
                if not opts.trials
                else f"the budget of {opts.trials} trials is already spent "
                     f"({report.trials_total} in the database)")
            for p in report.tasks:
                p.finished = p.finished or "budget"
            return report
        self._group_by_anchor(report)
        # Only now start the measuring and building processes: a spent budget needs neither.
        self._runner, device = make_runner(self.target, opts)
        workers = opts.workers or os.cpu_count() or 1
        self._builder = cost_model = None  # --trials 0 measures tactics only: no TIR builds
        if opts.trials:
            self._builder = PersistentBuilder(max_workers=workers)
            self._builder.start()
            cost_model = ms.cost_model.XGBModel(num_tuning_cores=workers, adaptive_training=True)
            warm = self._warm_start(cost_model)
            if warm:
                log.info("warm start: cost model trained on %d records already measured for %s",
                         warm, report.target_key)
        report.run_uid = self.store.begin_run(model_sha256=self.model_sha256, command=self.command,
                                              target_key=report.target_key)
        self.store.set_run_tasks(report.run_uid, [p.task for p in report.tasks])
        database = self.store.for_target(self.target, device=device, run_uid=report.run_uid)
        contexts: dict[str, object] = {}
        start = time.perf_counter()
        stop = self._stop = StopAfterBatch(lambda signum: self._exit_now(report.run_uid, signum))
        in_flight = None  # (round, future) being built and measured in the background
        try:
            with stop, ThreadPoolExecutor(max_workers=1) as measurer:
                if tactics_pending:
                    self._measure_tactics(report, device, stop)
                baselines = self._baseline_round(report) if opts.trials else None
                if baselines is not None and not stop.requested:
                    self._measure(baselines)
                    self._finish(report, (baselines, None), database, cost_model, start)
                while True:
                    report.elapsed_s = time.perf_counter() - start
                    reason = self._should_stop(report, stop.requested)
                    busy = in_flight[0].task if in_flight else None
                    progress = None if reason else self._pick(report, busy)
                    if progress is None:
                        if in_flight:  # its results may reopen or end the tuning
                            self._finish(report, in_flight, database, cost_model, start)
                            in_flight = None
                            continue
                        report.stop_reason = reason or "every task converged or reached its trial limit"
                        break
                    n = self._batch_size(report, progress)
                    if progress.task.name not in contexts:
                        contexts[progress.task.name] = self._context(progress, database,
                                                                     cost_model, n)
                    ctx = contexts[progress.task.name]
                    if ctx is None:
                        progress.finished = "no schedule space"
                        continue
                    rnd = self._search(progress, ctx, n)
                    if in_flight:
                        self._finish(report, in_flight, database, cost_model, start)
                        in_flight = None
                    if rnd is None:
                        continue
                    if self.overlap:
                        in_flight = (rnd, measurer.submit(self._measure, rnd))
                    else:
                        self._measure(rnd)
                        self._finish(report, (rnd, None), database, cost_model, start)
                if in_flight:
                    self._finish(report, in_flight, database, cost_model, start)
        finally:
            report.interrupted = stop.requested
            report.stop_signal = stop.signal_name
            report.elapsed_s = time.perf_counter() - start
            if self._builder is not None:
                self._builder.shutdown()
            self.store.end_run(report.run_uid, report.trials_this_run, at_once=self._db_failed)
            for ctx in contexts.values():
                if ctx is not None:
                    with contextlib.suppress(Exception):
                        ctx.post_tuning()
        return report

    def _measure_tactics(self, report: TuneReport, device: str, stop: StopAfterBatch) -> None:
        """The kernel library's tactics for its layers, before any TIR search: they take minutes,
        and a layer the library runs fast needs fewer TIR trials (`_share`)."""
        t0 = time.perf_counter()
        weights = {p.task.name: p.task.weight for p in report.tasks}
        report.tactics_measured = library_tactics.measure_tactics(
            {name: (layer, weights.get(name, 1)) for name, layer in self.library_layers.items()},
            self.target, self.store, self.options, device=device, run_uid=report.run_uid,
            should_stop=lambda: stop.requested)
        report.seconds["tactics"] = time.perf_counter() - t0
        for p in report.tasks:
            self._library_best(p)

    def _library_best(self, progress: TaskProgress) -> None:
        """The library's fastest measured tactic for the task's layer, if it has one."""
        layer = self.library_layers.get(progress.task.name)
        best = (self.store.best_tactic(layer.key, target_identity(self.target)[0])
                if layer is not None else None)
        if best is not None:
            progress.library_sec, progress.library_tactic = best.mean_sec, best.tactic

    def _finish(self, report, in_flight, database, cost_model, start) -> None:
        rnd, future = in_flight
        if future is not None:
            future.result()
        self._commit(report, rnd, database, cost_model)
        report.elapsed_s = time.perf_counter() - start
        report.eta_s = self._eta(report)
        self.on_progress(report, rnd.task)

    def _should_stop(self, report: TuneReport, interrupted: bool) -> str | None:
        opts = self.options
        if interrupted:
            return "interrupted after the current batch"
        if not opts.trials:
            return "--trials 0: kernel-library tactics only"
        if report.trials_total >= opts.trials:
            return f"trial budget reached ({opts.trials})"
        if opts.time_budget_s is not None:
            left = opts.time_budget_s - report.elapsed_s
            smallest = self.clock.round_s(min(4, opts.batch_size))
            if left <= 0 or (smallest is not None and smallest > left):
                return f"time budget reached ({duration(opts.time_budget_s)})"
        return None

    def _eta(self, report: TuneReport) -> float | None:
        """Time left if the remaining trials run at this run's rate, capped by the time budget."""
        if not report.trials_this_run:
            return None
        eta = (self.options.trials - report.trials_total) * report.elapsed_s / report.trials_this_run
        if self.options.time_budget_s is not None:
            eta = min(eta, self.options.time_budget_s - report.elapsed_s)
        return max(eta, 0.0)

    def _share(self, progress: TaskProgress) -> float:
        """The model time a task's search can improve: its own and its anchor siblings'."""
        group = [progress, *self.siblings.get(progress.task.name, ())]
        return sum(p.task.weight * (p.model_sec if p.model_sec is not None else 1.0) for p in group)

    def _pick(self, report: TuneReport, busy: TaskProgress | None) -> TaskProgress | None:
        open_tasks = [p for p in report.tasks if not p.finished and p is not busy]
        if not open_tasks:
            return None
        fresh = [p for p in open_tasks if p.rounds == 0]
        if fresh:  # breadth first: a first round for every task before any gets a second
            return max(fresh, key=self._share)
        # The gain from a task is bounded by its share of the model's time; favour the tasks
        # where that share is large and that have had few trials.
        return max(open_tasks, key=lambda p: self._share(p) / math.sqrt(1 + p.trials))

    def _batch_size(self, report: TuneReport, progress: TaskProgress) -> int:
        opts = self.options
        n = min(opts.batch_size, opts.trials - report.trials_total)
        if progress.rounds == 0:
            n = min(n, FIRST_ROUND)
        if opts.trials_per_task is not None:
            n = min(n, opts.trials_per_task - progress.total_trials)
        if opts.time_budget_s is not None and self.clock.per_candidate_s:
            left = opts.time_budget_s - report.elapsed_s - (self.clock.search_s or 0.0)
            n = min(n, max(4, int(left / self.clock.per_candidate_s)))
        return max(n, 1)

    def _context(self, progress: TaskProgress, database, cost_model, n: int):
        """A pre-tuned TuneContext, or None when no schedule space can be generated."""
        from tvm.s_tir import meta_schedule as ms

        opts = self.options
        cap = opts.trials_per_task or opts.trials
        # Design-space generation samples, and TVM 0.27's tensor-core rules sometimes sample an
        # invalid compute-at ("not a stage pipeline"): retry with other seeds, then fall back to
        # the target's default rules.
        generators = [space_generator(self.target, self.precision)] * 4 + [
            space_generator(self.target, "fp32")]
        for attempt, generator in enumerate(generators):
            ctx = ms.TuneContext(
                mod=progress.task.mod, target=self.target, space_generator=generator,
                search_strategy=ms.search_strategy.EvolutionarySearch(**SEARCH_SETTINGS),
                task_name=progress.task.name, rand_state=opts.seed + 7919 * attempt,
                num_threads=opts.workers or os.cpu_count() or 1, logger=_SEARCH_LOG,
            )
            try:
                spaces = ctx.generate_design_space()
            except Exception as e:  # noqa: BLE001 - TVM raises ScheduleError and others here
                log.debug("design space for %s failed (attempt %d): %s", progress.task.name,
                          attempt + 1, first_line(e))
                continue
            # Every round may ask for a full batch; a smaller one takes the first candidates.
            ctx.pre_tuning(max_trials=max(cap - progress.prior_trials, opts.batch_size),
                           num_trials_per_iter=opts.batch_size, design_spaces=spaces,
                           database=database, cost_model=cost_model)
            return ctx
        log.warning("task %s: MetaSchedule could not generate a schedule space; it keeps TVM's "
                    "default schedule", progress.task.name)
        return None

    def _baseline_round(self, report: TuneReport) -> _Round | None:
        """Each task's baseline not yet measured for this target, heaviest first, in one round."""
        from tvm.s_tir import meta_schedule as ms

        tsha = target_identity(self.target)[0]
        room = self.options.trials - report.trials_total
        entries = []
        for p in report.tasks:
            if len(entries) >= room and p.task.name not in self._stale_baselines:
                continue
            sch, trace_json = self._baseline(p)
            workload_id = self.store.find_workload(p.task.mod)
            if workload_id is not None and self.store.has_measured(workload_id, tsha, trace_json):
                continue
            args = ms.arg_info.ArgInfo.from_prim_func(p.task.mod["main"])
            entries.append((p, ms.MeasureCandidate(sch, args)))
        return _Round(entries) if entries else None

    def _search(self, progress: TaskProgress, ctx, n: int) -> _Round | None:
        t0 = time.perf_counter()
        candidates = ctx.generate_measure_candidates()
        search_s = time.perf_counter() - t0
        self._report.seconds["search"] += search_s
        if not candidates:
            progress.finished = "search space exhausted"
            return None
        return _Round([(progress, c) for c in list(candidates)[:n]], ctx=ctx, search_s=search_s)

    def _measure(self, rnd: _Round) -> None:
        """Build and measure a round, then the leader's new best transferred to its siblings.
        Runs in the background while the next round is searched (when `overlap`)."""
        start = time.perf_counter()
        rnd.results = self._build_and_run([c for _, c in rnd.entries])
        siblings = self.siblings.get(rnd.task.task.name) if rnd.task is not None else None
        best = _best(rnd.entries, rnd.results)
        if siblings and best is not None and (rnd.task.best_sec is None
                                              or best[0] < rnd.task.best_sec):
            rnd.transfers, rnd.transfer_failed = self._transfer(rnd.task, best[1], siblings)
            rnd.transfer_results = self._build_and_run([c for _, c in rnd.transfers])
        rnd.measure_s = time.perf_counter() - start

    def _transfer(self, leader: TaskProgress, leader_candidate, siblings):
        """The leader's schedule applied to each sibling kernel through their shared anchor."""
        import tvm
        from tvm.s_tir import meta_schedule as ms
        from tvm.s_tir.meta_schedule.trace_apply import schedule_using_anchor_trace

        transfers, failed = [], []
        for sibling in siblings:
            sch = tvm.s_tir.Schedule(sibling.task.mod)
            try:
                schedule_using_anchor_trace(sch, leader_candidate.sch.trace, self.target)
            except Exception as e:  # noqa: BLE001 - TVM raises ScheduleError and others here
                log.debug("anchor trace of %s does not apply to %s: %s", leader.task.name,
                          sibling.task.name, first_line(e))
                failed.append(sibling)
                continue
            args = ms.arg_info.ArgInfo.from_prim_func(sibling.task.mod["main"])
            transfers.append((sibling, ms.MeasureCandidate(sch, args)))
        return transfers, failed

    def _build_and_run(self, candidates) -> list:
        from tvm.s_tir import meta_schedule as ms

        if not candidates:
            return []
        seconds = self._report.seconds
        log.debug("building and measuring %d candidate(s)", len(candidates))
        t0 = time.perf_counter()
        built = self._builder.build([ms.builder.BuilderInput(c.sch.mod, self.target)
                                     for c in candidates])
        t1 = time.perf_counter()
        seconds["build"] += t1 - t0
        results: list = [None] * len(candidates)
        runnable = [(i, b) for i, b in enumerate(built) if b.error_msg is None]
        futures = self._runner.run([
            ms.runner.RunnerInput(b.artifact_path, self.device_type, candidates[i].args_info)
            for i, b in runnable])
        for (i, _), future in zip(runnable, futures):
            results[i] = future.result()
        for i, b in enumerate(built):
            if b.error_msg is not None:
                results[i] = ms.runner.RunnerResult(None, b.error_msg)
        seconds["measure"] += time.perf_counter() - t1
        for b in built:
            if b.artifact_path:
                shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
        return results

    def _commit(self, report: TuneReport, rnd: _Round, database, cost_model) -> None:
        """Store a measured round in one transaction, then update the search and the tasks."""
        from tvm.s_tir import meta_schedule as ms

        from ..database.metaschedule import record_to_json

        t0 = time.perf_counter()
        entries = [*zip(rnd.entries, rnd.results), *zip(rnd.transfers, rnd.transfer_results)]

        def write():  # the round's records land together, or not at all; straight into the
            # store: through MetaSchedule's FFI a SQLite error would come back a RuntimeError
            for (p, c), r in entries:
                self.store.add_record(self.store.add_workload(p.task.mod, name=p.task.name),
                                      self.target, record_to_json(ms.database.TuningRecord(
                                          c.sch.trace, ms.database.Workload(p.task.mod),
                                          r.run_secs if r.error_msg is None else None,
                                          self.target, c.args_info)),
                                      device=database.device, run_uid=database.run_uid)
        try:  # waits while another process writes (a long merge), the results in memory
            store_round(self.store, write, len(entries), lambda: self._stop.requested)
        except DatabaseUnavailable as e:
            self._db_failed = True
            raise round_not_stored(e, len(entries), self.command) from None
        leader = rnd.task
        if leader is not None:
            candidates = [c for _, c in rnd.entries]
            rnd.ctx.notify_runner_results(candidates, rnd.results)
            cost_model.update(rnd.ctx, candidates, rnd.results)
        report.seconds["database"] += time.perf_counter() - t0
        cap = self.options.trials_per_task
        for (p, c), r in entries:
            p.trials += 1
            self._update_best(p, c, r, baseline=leader is None)
            if cap is not None and p.total_trials >= cap and not p.finished:
                p.finished = "trial limit per task"
        for sibling in rnd.transfer_failed:  # it gets its own search instead
            self.siblings[leader.task.name].remove(sibling)
            sibling.finished = None
        self.clock.observe(rnd.search_s if leader is not None else None,
                           rnd.measure_s + time.perf_counter() - t0, len(entries))
        if leader is None:
            return
        leader.rounds += 1
        best = _best(rnd.entries, rnd.results)
        if best is not None and (leader.best_sec is None or best[0] < leader.best_sec * 0.99):
            leader.stale_rounds = 0
        else:
            leader.stale_rounds += 1
        if leader.stale_rounds >= self.options.patience and not leader.finished:
            leader.finished = "converged"

    def _update_best(self, progress: TaskProgress, candidate, result, *, baseline: bool) -> None:
        sec = _mean_sec(result)
        if sec is None:
            return
        if baseline:
            progress.baseline_sec = sec
        if progress.best_sec is None or sec < progress.best_sec:
            progress.best_sec = sec
            progress.tensor_core = uses_tensor_cores(str(candidate.sch.trace))

    def _exit_now(self, run_uid: str, signum: int) -> None:
        """A second stop signal: exit at once, as kill -9 would but tidily. The round's records
        are written in one transaction, so an unfinished one is simply not there; the workers
        (which ignore the signal) are ended, the run marked ended, and the resume line printed."""
        import psutil

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        if not self.store.end_run_abruptly(run_uid):
            log.warning("the run could not be marked ended (the database was busy)")
        if self.command:
            sys.stderr.write(f"stopped at once; resume with: {self.command}\n")
        sys.stderr.flush()
        os._exit(128 + signum)


def _mean_sec(result) -> float | None:
    """A measurement's mean latency, or None for a failed or timed-out candidate."""
    if result.error_msg is not None or not result.run_secs:
        return None
    secs = [float(s) for s in result.run_secs]
    return sum(secs) / len(secs) if max(secs) < FAILED_RUN_SEC else None


def _best(entries, results):
    """(latency, candidate) of the fastest measured candidate, or None."""
    measured = [(sec, c) for (_, c), r in zip(entries, results) if (sec := _mean_sec(r)) is not None]
    return min(measured, key=lambda x: x[0]) if measured else None


def tune(model, preset: Preset, *, db_path=None, model_options: ModelOptions = ModelOptions(),
         options: TuneOptions = TuneOptions(), command: str = "",
         on_progress: ProgressCallback | None = None) -> TuneReport:
    """Tune a model (a path or a loaded model) for a preset's target into the tuning database.

    `model_options` must be those the build will use: they decide which kernels there are."""
    options.validate()
    prepared = prepare(model, preset, model_options)
    target = search_target(preset.tvm_target())
    tasks = extract_tasks(prepared.mod, target)
    layers = library_tactics.task_layers(prepared.mod, tasks)
    with open_database(db_path) as store, toolchain(preset):
        tuner = Tuner(tasks, target, model_options.precision, store, options,
                      model_sha256=prepared.model.sha256, command=command, on_progress=on_progress,
                      library_layers=layers)
        return tuner.run()
