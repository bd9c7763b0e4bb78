"""Stage 3: tuning — MetaSchedule's evolutionary search and XGBoost cost model, driven by tvmopt.

Task extraction runs on the output of `passes.run_pipeline`, which is also what the build applies
tuned schedules to, so a record stored for a task is found again at build time.

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
import re
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TvmoptError, first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    name: str
    weight: int  # how many times the model calls this kernel
    flops: float  # per call
    mod: object  # the kernel as a one-function IRModule (MetaSchedule's workload)

    def as_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, "flops": self.flops}


def extract_tasks(mod, target) -> list[Task]:
    """One task per distinct kernel, heaviest (weight × FLOPs) first."""
    from tvm.s_tir import analysis
    from tvm.s_tir import meta_schedule as ms

    tasks = []
    for t in ms.relax_integration.extract_tasks(mod, target):
        kernel = t.dispatched[0]
        try:
            flops = float(analysis.estimate_tir_flops(kernel))
        except Exception:  # noqa: BLE001 - the estimator rejects some loop forms; FLOPs are advisory
            log.debug("no FLOP estimate for %s", t.task_name)
            flops = 0.0
        tasks.append(Task(t.task_name, int(t.weight), flops, kernel))
    tasks.sort(key=lambda t: (-t.weight * t.flops, t.name))
    return tasks


def kernel_tasks(mod, tasks: list[Task]) -> dict[str, str]:
    """{kernel function name: its task's name}; kernels with one structure share one task."""
    import tvm
    import tvm_ffi

    out = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        # MetaSchedule's workload form: the kernel alone, named main.
        workload = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        for task in tasks:
            if tvm_ffi.structural_equal(workload, task.mod):
                out[gv.name_hint] = task.name
                break
    return out


# --- options ---------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "30m", "1h30m"."""
    m = _DURATION_RE.match(text)
    if not text.strip() or not m or not any(m.groups()):
        raise TvmoptError(f"--time-budget {text!r}: expected a duration such as 90s, 30m or 1h30m")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise TvmoptError("--time-budget must be positive")
    return total


@dataclass(frozen=True)
class TuneOptions:
    trials: int = 1000  # total over all tasks, counting trials already in the database
    trials_per_task: int | None = None
    time_budget_s: float | None = None
    batch_size: int = 64  # candidates built and measured per round
    patience: int = 3  # rounds without a 1% gain before a task stops
    rpc_tracker: str | None = None  # HOST:PORT
    rpc_key: str | None = None
    seed: int = 0
    workers: int | None = None  # parallel builds; default: all cores

    def validate(self) -> None:
        if self.trials < 1:
            raise TvmoptError("--trials must be at least 1")
        if self.trials_per_task is not None and self.trials_per_task < 1:
            raise TvmoptError("--trials-per-task must be at least 1")
        if self.batch_size < 1:
            raise TvmoptError("--batch-size must be at least 1")
        if bool(self.rpc_tracker) != bool(self.rpc_key):
            raise TvmoptError("--rpc-tracker and --rpc-key go together; give both or neither")


# --- progress state ----------------------------------------------------------------------------


@dataclass
class TaskProgress:
    task: Task
    prior_trials: int = 0  # found in the database when this run started
    trials: int = 0  # measured by this run
    best_sec: float | None = None
    stale_rounds: int = 0
    finished: str | None = None  # why the task stopped, once it has
    tensor_core: bool = False

    @property
    def total_trials(self) -> int:
        return self.prior_trials + self.trials

    @property
    def gflops(self) -> float | None:
        if not self.best_sec or not self.task.flops:
            return None
        return self.task.flops / self.best_sec / 1e9

    def as_dict(self) -> dict:
        return {
            **self.task.as_dict(),
            "trials": self.total_trials, "trials_this_run": self.trials,
            "best_sec": self.best_sec, "gflops": self.gflops,
            "tensor_core": self.tensor_core, "finished": self.finished,
        }


@dataclass
class TuneReport:
    target_key: str
    tasks: list[TaskProgress]
    budget: int
    run_uid: str = ""
    seconds: dict[str, float] = field(default_factory=lambda: {
        "search": 0.0, "build": 0.0, "measure": 0.0, "database": 0.0})
    elapsed_s: float = 0.0
    eta_s: float | None = None
    stop_reason: str = ""
    interrupted: bool = False

    @property
    def trials_this_run(self) -> int:
        return sum(t.trials for t in self.tasks)

    @property
    def trials_total(self) -> int:
        return sum(t.total_trials for t in self.tasks)

    @property
    def tasks_done(self) -> int:
        return sum(1 for t in self.tasks if t.finished)

    def estimated_latency(self) -> float | None:
        """Sum over tasks of weight x best latency, once every task has a measurement."""
        if any(t.best_sec is None for t in self.tasks):
            return None
        return sum(t.task.weight * t.best_sec for t in self.tasks)

    def trials_per_minute(self) -> float:
        return 60.0 * self.trials_this_run / self.elapsed_s if self.elapsed_s else 0.0

    def as_dict(self) -> dict:
        return {
            "target": self.target_key, "run_uid": self.run_uid, "budget": self.budget,
            "trials_total": self.trials_total, "trials_this_run": self.trials_this_run,
            "elapsed_s": self.elapsed_s, "trials_per_minute": self.trials_per_minute(),
            "seconds": self.seconds, "estimated_latency_sec": self.estimated_latency(),
            "stop_reason": self.stop_reason, "interrupted": self.interrupted,
            "tasks": [t.as_dict() for t in self.tasks],
        }


# --- measurement backends ------------------------------------------------------------------------


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def local_device_name(target) -> str:
    import tvm

    kind = target.kind.name
    if kind in ("cuda", "rocm"):
        dev = tvm.device(kind, 0)
        if not dev.exist:
            raise TvmoptError(f"tuning for {kind} measures on the device, and this machine has "
                              f"no {kind} GPU; run it there or use --rpc-tracker/--rpc-key")
        return dev.device_name
    return _cpu_name()


def check_tracker(address: str, key: str, timeout_s: float = 5.0) -> dict:
    """Fail fast (well under 10 s) with a clear message when the tracker or its servers are missing."""
    from tvm import rpc

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TvmoptError(f"--rpc-tracker {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise TvmoptError(f"RPC tracker {address} is unreachable ({e.strerror or e}); start it "
                          "with `python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port "
                          f"{port}` or fix --rpc-tracker") from None
    summary = rpc.connect_tracker(host, int(port)).summary()
    if _key_missing(summary, key):
        known = ", ".join(sorted(summary.get("queue_info", {}))) or "none"
        raise TvmoptError(f"no RPC server is registered under key {key!r} at {address} (keys: "
                          f"{known}); start one with `python -m tvm.exec.rpc_server --tracker "
                          f"{address} --key {key}`")
    return summary


def _key_missing(summary: dict, key: str) -> bool:
    queue = summary.get("queue_info", {}).get(key)
    return not queue or int(queue.get("free", 0)) + int(queue.get("pending", 0)) == 0


def _evaluator_config(target):
    from tvm.s_tir import meta_schedule as ms

    # Enough repetitions for a stable median on short kernels, without MetaSchedule's 100 ms floor
    # per candidate that dominates CPU tuning time.
    return ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=10 if target.kind.name ==
                                     "llvm" else 20, enable_cpu_cache_flush=False)


class PersistentBuilder:
    """MetaSchedule's LocalBuilder, but its worker processes live across rounds.

    LocalBuilder starts a fresh process pool for every batch (against a slow leak in its
    workers), and each worker then imports TVM: measured here, 16 s per batch on 2 cores against
    0.2 s of actual compiling per candidate. This pool is reused and only recycled every
    `recycle_every` batches, which bounds the leak.
    """

    def __init__(self, max_workers: int, timeout_sec: float = 60.0, recycle_every: int = 25):
        self.max_workers = max_workers
        self.timeout_sec = timeout_sec
        self.recycle_every = recycle_every
        self._pool = None
        self._batches = 0

    def start(self) -> None:
        """Start the workers and their TVM import now, so it overlaps the first search."""
        from tvm.support.popen_pool import PopenPoolExecutor

        self.shutdown()
        self._pool = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_sec)
        self._batches = 0
        self._warmup = [self._pool.submit(_import_builder) for _ in range(self.max_workers)]

    def _executor(self):
        if self._pool is None or self._batches >= self.recycle_every:
            self.start()
        self._batches += 1
        return self._pool

    def build(self, build_inputs) -> list:
        from tvm.s_tir.meta_schedule.builder import BuilderResult
        from tvm.s_tir.meta_schedule.builder.local_builder import _worker_func
        from tvm.support.popen_pool import StatusKind

        results = []
        jobs = [(build_cpu_candidate if b.target.kind.name == "llvm" else None, None, b.mod,
                 b.target, None) for b in build_inputs]
        for outcome in self._executor().map_with_error_catching(lambda x: _worker_func(*x), jobs):
            if outcome.status == StatusKind.COMPLETE:
                results.append(BuilderResult(outcome.value, None))
            elif outcome.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(None, f"build timed out after {self.timeout_sec} s"))
            else:
                results.append(BuilderResult(None, f"build failed: {outcome.value}"))
        return results

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _import_builder() -> None:
    """Runs in a build worker: the imports its first build would otherwise pay for."""
    import tvm.s_tir.meta_schedule.builder.local_builder  # noqa: F401
    import tvm.s_tir.transform  # noqa: F401


def build_cpu_candidate(mod, target, _params):
    """MetaSchedule's default_build without its `import tvm.s_tir.tensor_intrin`.

    That import registers every tensor intrinsic (CUDA's alone take 10 s) and costs 15 s in each
    fresh worker; a CPU candidate arrives already tensorized and does not need the registry.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def make_runner(target, options: TuneOptions):
    from tvm.s_tir import meta_schedule as ms

    evaluator = _evaluator_config(target)
    if options.rpc_tracker:
        summary = check_tracker(options.rpc_tracker, options.rpc_key)
        host, _, port = options.rpc_tracker.rpartition(":")
        free = int(summary["queue_info"][options.rpc_key].get("free", 1)) or 1
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port),
                                     tracker_key=options.rpc_key, session_timeout_sec=60)
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                                   max_workers=free), f"rpc:{options.rpc_key}@{options.rpc_tracker}"
    return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=30), local_device_name(target)


def search_target(target):
    """MetaSchedule's CPU search needs the core count as a target attribute."""
    import json

    import tvm

    if target.kind.name != "llvm" or "num-cores" in target.attrs:
        return target
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return tvm.target.Target({**json.loads(str(target)), "num-cores": cores})


def space_generator(target, precision: str):
    """Tensor-core rules for fp16 on CUDA; TVM's per-target defaults (vectorize/parallel on CPU)."""
    import tvm.s_tir.tensor_intrin  # noqa: F401 - registers the wmma/mma intrinsics the rules name
    from tvm.s_tir import meta_schedule as ms

    if target.kind.name == "cuda" and precision == "fp16":
        return ms.space_generator.PostOrderApply(
            sch_rules="cuda-tensorcore", postprocs="cuda-tensorcore", mutator_probs="cuda-tensorcore")
    return ms.space_generator.PostOrderApply()


_TENSOR_CORE_RE = re.compile(r"wmma|mma_sync|mma_f16|mma_bf16|tensor_core", re.IGNORECASE)


def uses_tensor_cores(trace_json: str) -> bool:
    return bool(_TENSOR_CORE_RE.search(trace_json))


# --- the tuner ---------------------------------------------------------------------------------


# MetaSchedule's defaults (population 512, 4 genetic iterations) spend most of a small-batch round
# in search; benchmarks/tuning_speed.py compares these settings with them at equal trials.
SEARCH_SETTINGS = {"population_size": 512, "genetic_num_iters": 4}


class _StopAfterBatch:
    """First Ctrl-C: finish the batch being measured, then stop. Second: stop now."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after the current batch (press again to stop at once)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


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

ProgressCallback = Callable[[TuneReport, "TaskProgress | None"], None]


def _log_progress(report: TuneReport, current: TaskProgress | None) -> None:
    log.info(format_progress(report, current))


def format_progress(report: TuneReport, current: TaskProgress | None = None) -> str:
    est = report.estimated_latency()
    return (f"tasks {report.tasks_done}/{len(report.tasks)}  trials {report.trials_total}/"
            f"{report.budget}  est. latency {_fmt_sec(est) if est else '?'}  elapsed "
            f"{_fmt_duration(report.elapsed_s)}  ETA "
            f"{_fmt_duration(report.eta_s) if report.eta_s is not None else '?'}"
            + (f"  [{current.task.name}]" if current else ""))


def _fmt_sec(sec: float) -> str:
    return f"{sec * 1e3:.3f} ms" if sec >= 1e-4 else f"{sec * 1e6:.1f} µs"


def _fmt_duration(sec: float) -> str:
    sec = int(round(sec))
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m" if sec >= 3600 else f"{sec // 60}m{sec % 60:02d}s"


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
        self.on_progress = on_progress or _log_progress
        self.clock = _Clock()
        self.device_type = "cpu" if target.kind.name == "llvm" else target.kind.name

    # -- setup ------------------------------------------------------------------------------

    def _prior_state(self, progress: TaskProgress) -> None:
        """Trials already in the database for this task and target count toward the budget."""
        from .database import target_identity

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

        from .database import target_identity

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

        from .database import target_identity

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
        try:
            with _StopAfterBatch() as stop:
                while True:
                    report.elapsed_s = time.perf_counter() - start
                    reason = self._should_stop(report, stop.requested)
                    if reason:
                        report.stop_reason = reason
                        report.interrupted = stop.requested
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
            return "interrupted"
        if report.trials_total >= opts.trials:
            return f"trial budget reached ({opts.trials})"
        if all(p.finished for p in report.tasks):
            return "every task converged or reached its trial limit"
        if opts.time_budget_s is not None:
            left = opts.time_budget_s - report.elapsed_s
            smallest = self.clock.round_s(min(4, opts.batch_size))
            if left <= 0 or (smallest is not None and smallest > left):
                return f"time budget reached ({_fmt_duration(opts.time_budget_s)})"
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
        self.store.add_workload(progress.task.mod, name=progress.task.name)
        workload = ms.database.Workload(progress.task.mod)
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

    def _update_best(self, progress: TaskProgress, candidates, results) -> None:
        from .database import FAILED_RUN_SEC

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


def tune(model_path, preset, *, db_path=None, build_options=None, options: TuneOptions = TuneOptions(),
         command: str = "", on_progress: ProgressCallback | None = None) -> TuneReport:
    """Tune a model for a preset's target; records go into the tuning database."""
    from . import build
    from .database import open_database
    from .frontend import model_sha256

    options.validate()
    build_options = build_options or build.BuildOptions()
    prepared = build.prepare(model_path, preset, build_options)
    target = search_target(preset.tvm_target())
    tasks = extract_tasks(prepared.mod, target)
    with open_database(db_path) as store, build.toolchain(preset):
        tuner = Tuner(tasks, target, build_options.precision, store, options,
                      model_sha256=model_sha256(model_path, prepared.data_files), command=command,
                      on_progress=on_progress)
        return tuner.run()
