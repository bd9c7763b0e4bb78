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
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..database import FAILED_RUN_SEC, open_database, target_identity
from ..errors import TvmoptError, first_line
from ..formatting import duration
from ..prepare import ModelOptions, prepare
from ..targets import Preset
from ..tasks import Task, extract_tasks
from ..toolchain import toolchain
from .measure import PersistentBuilder, make_runner
from .options import TuneOptions
from .report import ProgressCallback, TaskProgress, TuneReport, log_progress
from .space import SEARCH_SETTINGS, search_target, space_generator, uses_tensor_cores

log = logging.getLogger("tvmopt.tuning")


class _StopAfterBatch:
    """First Ctrl-C or SIGTERM: finish the batch being measured, then stop. Second: stop now.

    SIGTERM is what `timeout`, systemd and CI runners send; it gets the same clean stop. The build
    and measurement workers ignore both (`measure.ignore_stop_signals`), so a terminal's Ctrl-C,
    which reaches the whole process group, does not kill the batch in flight.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stop_now: Callable[[int], None]):
        self.signal_name: str | None = None  # the first stop signal received
        self.stop_now = stop_now  # called with the signal number on a second one; exits
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:
            log.warning("%s again: stopping now; the batch in flight is not recorded", name)
            self.stop_now(signum)
        self.signal_name = name
        log.warning("%s: stopping after the current batch (send it again to stop at once)",
                    "Ctrl-C" if name == "SIGINT" else name)

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


@dataclass
class _Clock:
    """Estimates of how long a round takes, for the time budget and the ETA."""

    search_s: float | None = None  # per round
    per_candidate_s: float | None = None  # build + measure + database, per candidate

    def observe(self, search_s: float, rest_s: float, n: int) -> None:
        per = rest_s / max(n, 1)
        blend = (lambda old, new: new if old is None else 0.7 * old + 0.3 * new)
        self.search_s = blend(self.search_s, search_s)
        self.per_candidate_s = blend(self.per_candidate_s, per)

    def round_s(self, n: int) -> float | None:
        if self.search_s is None:
            return None
        return self.search_s + n * self.per_candidate_s


# MetaSchedule narrates every evolutionary step at INFO; tvmopt reports progress itself.
_SEARCH_LOG = logging.getLogger("tvmopt.search")
_SEARCH_LOG.setLevel(logging.WARNING)


class Tuner:
    """Tunes a model's tasks for one target into the tuning database.

    Each round picks the task where a better kernel saves the most (weight x current best latency,
    with every task measured once first), asks its evolutionary search for a batch of candidates,
    builds them in parallel, measures them (locally or on RPC servers), stores every result, and
    retrains the shared XGBoost cost model.
    """

    def __init__(self, tasks: list[Task], target, precision: str, store, options: TuneOptions,
                 *, model_sha256: str | None = None, command: str = "",
                 on_progress: ProgressCallback | None = None):
        options.validate()
        self.tasks = [t for t in tasks if t.flops > 0]
        if not self.tasks:
            raise TvmoptError("the model has no tunable task (no kernel does arithmetic); "
                              "build it directly with `tvmopt build`")
        self.target = target
        self.precision = precision
        self.store = store
        self.options = options
        self.model_sha256 = model_sha256
        self.command = command
        self.on_progress = on_progress or log_progress
        self.clock = _Clock()
        self.device_type = "cpu" if target.kind.name == "llvm" else target.kind.name

    # -- setup ------------------------------------------------------------------------------

    def _prior_state(self, progress: TaskProgress) -> None:
        """Trials already in the database for this task and target count toward the budget."""
        workload_id = self.store.find_workload(progress.task.mod)
        if workload_id is None:
            return
        tsha = target_identity(self.target)[0]
        progress.prior_trials = self.store.count_trials(workload_id, tsha)
        best = self.store.best_records(workload_id, tsha, 1)
        if best:
            progress.best_sec = best[0].mean_sec
            progress.tensor_core = uses_tensor_cores(best[0].trace_json)

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
        from tvm.s_tir import meta_schedule as ms

        opts = self.options
        report = TuneReport(target_identity(self.target)[1], [TaskProgress(t) for t in self.tasks],
                            budget=opts.trials)
        for p in report.tasks:
            self._prior_state(p)
        if report.trials_total >= opts.trials:
            report.stop_reason = (f"the budget of {opts.trials} trials is already spent "
                                  f"({report.trials_total} in the database)")
            for p in report.tasks:
                p.finished = p.finished or "budget"
            return report
        # Only now start the measuring and building processes: a spent budget needs neither.
        runner, device = make_runner(self.target, opts)
        workers = opts.workers or os.cpu_count() or 1
        builder = PersistentBuilder(max_workers=workers)
        builder.start()
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
        stop = _StopAfterBatch(lambda signum: self._exit_now(report.run_uid, signum))
        try:
            with stop:
                while True:
                    report.elapsed_s = time.perf_counter() - start
                    reason = self._should_stop(report, stop.requested)
                    if reason:
                        report.stop_reason = reason
                        break
                    progress = self._pick(report)
                    n = self._batch_size(report, progress)
                    if progress.task.name not in contexts:
                        contexts[progress.task.name] = self._context(progress, database,
                                                                     cost_model, n)
                    ctx = contexts[progress.task.name]
                    if ctx is None:
                        progress.finished = "no schedule space"
                        continue
                    self._round(report, progress, ctx, n, builder, runner, database, cost_model)
                    report.elapsed_s = time.perf_counter() - start
                    report.eta_s = self._eta(report)
                    self.on_progress(report, progress)
        finally:
            report.interrupted = stop.requested
            report.stop_signal = stop.signal_name
            report.elapsed_s = time.perf_counter() - start
            builder.shutdown()
            self.store.end_run(report.run_uid, report.trials_this_run)
            for ctx in contexts.values():
                if ctx is not None:
                    with contextlib.suppress(Exception):
                        ctx.post_tuning()
        return report

    def _should_stop(self, report: TuneReport, interrupted: bool) -> str | None:
        opts = self.options
        if interrupted:
            return "interrupted after the current batch"
        if report.trials_total >= opts.trials:
            return f"trial budget reached ({opts.trials})"
        if all(p.finished for p in report.tasks):
            return "every task converged or reached its trial limit"
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

    def _pick(self, report: TuneReport) -> TaskProgress:
        open_tasks = [p for p in report.tasks if not p.finished]
        unmeasured = [p for p in open_tasks if p.best_sec is None]
        if unmeasured:  # measure every task once before comparing them
            return max(unmeasured, key=lambda p: p.task.weight * p.task.flops)
        # The gain from a task is bounded by its share of the model's time; favour the tasks
        # where that share is large and that have had few trials.
        return max(open_tasks, key=lambda p: p.task.weight * p.best_sec / math.sqrt(1 + p.trials))

    def _batch_size(self, report: TuneReport, progress: TaskProgress) -> int:
        opts = self.options
        n = min(opts.batch_size, opts.trials - report.trials_total)
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
            ctx.pre_tuning(max_trials=max(cap - progress.prior_trials, n), num_trials_per_iter=n,
                           design_spaces=spaces, database=database, cost_model=cost_model)
            return ctx
        log.warning("task %s: MetaSchedule could not generate a schedule space; it keeps TVM's "
                    "default schedule", progress.task.name)
        return None

    def _round(self, report, progress, ctx, n, builder, runner, database, cost_model) -> None:
        from tvm.s_tir import meta_schedule as ms

        t0 = time.perf_counter()
        candidates = ctx.generate_measure_candidates()
        t1 = time.perf_counter()
        report.seconds["search"] += t1 - t0
        if not candidates:
            progress.finished = "search space exhausted"
            return
        candidates = list(candidates)[:n]
        built = builder.build([ms.builder.BuilderInput(c.sch.mod, self.target) for c in candidates])
        t2 = time.perf_counter()
        report.seconds["build"] += t2 - t1
        results: list = [None] * len(candidates)
        runnable = [(i, b) for i, b in enumerate(built) if b.error_msg is None]
        futures = runner.run([
            ms.runner.RunnerInput(b.artifact_path, self.device_type, candidates[i].args_info)
            for i, b in runnable])
        for (i, _), future in zip(runnable, futures):
            results[i] = future.result()
        for i, b in enumerate(built):
            if b.error_msg is not None:
                results[i] = ms.runner.RunnerResult(None, b.error_msg)
        t3 = time.perf_counter()
        report.seconds["measure"] += t3 - t2
        for b in built:
            if b.artifact_path:
                shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
        workload = ms.database.Workload(progress.task.mod)
        with self.store.write():  # the round's records land together, or not at all
            self.store.add_workload(progress.task.mod, name=progress.task.name)
            for c, r in zip(candidates, results):
                database.commit_tuning_record(ms.database.TuningRecord(
                    c.sch.trace, workload, r.run_secs if r.error_msg is None else None,
                    self.target, c.args_info))
        ctx.notify_runner_results(candidates, results)
        cost_model.update(ctx, candidates, results)
        t4 = time.perf_counter()
        report.seconds["database"] += t4 - t3
        self.clock.observe(t1 - t0, t4 - t1, len(candidates))
        progress.trials += len(candidates)
        self._update_best(progress, candidates, results)
        cap = self.options.trials_per_task
        if cap is not None and progress.total_trials >= cap:
            progress.finished = "trial limit per task"
        elif progress.stale_rounds >= self.options.patience:
            progress.finished = "converged"

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

    def _update_best(self, progress: TaskProgress, candidates, results) -> None:
        measured = [(sum(map(float, r.run_secs)) / len(r.run_secs), c) for c, r in
                    zip(candidates, results) if r.error_msg is None and r.run_secs
                    and max(map(float, r.run_secs)) < FAILED_RUN_SEC]
        if not measured:
            progress.stale_rounds += 1
            return
        best_sec, best = min(measured, key=lambda x: x[0])
        if progress.best_sec is None or best_sec < progress.best_sec * 0.99:
            progress.stale_rounds = 0
        else:
            progress.stale_rounds += 1
        if progress.best_sec is None or best_sec < progress.best_sec:
            progress.best_sec = best_sec
            progress.tensor_core = uses_tensor_cores(str(best.sch.trace))


def tune(model, preset: Preset, *, db_path=None, model_options: ModelOptions = ModelOptions(),
         options: TuneOptions = TuneOptions(), command: str = "",
         on_progress: ProgressCallback | None = None) -> TuneReport:
    """Tune a model (a path or a loaded model) for a preset's target into the tuning database.

    `model_options` must be those the build will use: they decide which kernels there are."""
    options.validate()
    prepared = prepare(model, preset, model_options)
    target = search_target(preset.tvm_target())
    tasks = extract_tasks(prepared.mod, target)
    with open_database(db_path) as store, toolchain(preset):
        tuner = Tuner(tasks, target, model_options.precision, store, options,
                      model_sha256=prepared.model.sha256, command=command, on_progress=on_progress)
        return tuner.run()
