"""Measure a built artifact: latency distribution and throughput (`bench`), time per kernel (`profile`).

Compute time is taken by TVM's time evaluator, which times each call on the device (CUDA events on
a GPU, a steady clock after synchronising on a CPU), with inputs already on the device. Copies
between host and device are timed apart from compute, each bracketed by device synchronisation.
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import manifest as artifact_manifest
from . import runtime
from .errors import TvmoptError
from .targets import host_cpu_name

log = logging.getLogger(__name__)

NOISY_CV = 0.10  # coefficient of variation above which a run is flagged as unstable
MIN_ITERATIONS = 20  # below this, tail percentiles are not meaningful
DEFAULT_ITERATIONS = 200
_CHUNK = 20  # timed calls per time-evaluator batch when running for a duration


@dataclass(frozen=True)
class BenchOptions:
    batch: int | None = None  # checked against the artifact's batch; defaults to it
    warmup: int = 10
    iterations: int | None = None  # default DEFAULT_ITERATIONS unless duration_s is given
    duration_s: float | None = None
    cuda_graph: bool | None = None  # None: whatever the artifact was built with


@dataclass
class LatencyStats:
    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float
    cv: float


@dataclass
class BenchReport:
    artifact: str
    target_key: str
    device: str
    batch: int
    warmup: int
    iterations: int
    cuda_graph: bool
    latency_ms: LatencyStats
    inferences_per_s: float
    samples_per_s: float
    h2d_ms: float | None  # None where inputs already live in host memory (CPU targets)
    d2h_ms: float | None
    end_to_end_ms: float  # p50 compute + copies
    peak_memory_bytes: int | None
    memory_measure: str
    timer: str
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(latencies_s: list[float]) -> LatencyStats:
    """Percentiles (linear interpolation) and spread of per-call latencies, in milliseconds."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    p = np.percentile(ms, [50, 90, 95, 99])
    return LatencyStats(float(ms.min()), mean, *(float(x) for x in p), float(ms.max()), std,
                        std / mean if mean > 0 else 0.0)


def stability_warnings(stats: LatencyStats, iterations: int) -> list[str]:
    warnings = []
    if stats.cv > NOISY_CV:
        warnings.append(
            f"latency is unstable: coefficient of variation {stats.cv:.0%} (> {NOISY_CV:.0%}); "
            "close other programs, pin the clocks, or raise --warmup and --iterations")
    if iterations < MIN_ITERATIONS:
        warnings.append(f"only {iterations} iterations: p95/p99 are not meaningful; use at least "
                        f"{MIN_ITERATIONS}")
    return warnings


def _batched_input(model: runtime.Model):
    """The first input with a leading dim, whose size counts the samples per inference."""
    return next((spec for spec in model.inputs if len(spec.shape)), None)


def artifact_batch(model: runtime.Model) -> int:
    spec = _batched_input(model)
    return int(spec.shape[0]) if spec is not None else 1


def device_name(device) -> str:
    """The CPU's model name or the GPU's, as the vendor reports it."""
    if _is_host(device):
        return host_cpu_name()
    return str(device.device_name)


def _is_host(device) -> bool:
    return device.dlpack_device_type() == 1


def _check_options(model: runtime.Model, options: BenchOptions) -> tuple[int, bool]:
    batch = artifact_batch(model)
    if options.batch is not None and options.batch < 1:
        raise TvmoptError(f"--batch must be at least 1 (got {options.batch})")
    if options.batch is not None and options.batch != batch:
        spec = _batched_input(model)
        how = (f"rebuild with --input-shape {spec.name}="
               + "x".join(str(d) for d in (options.batch, *spec.shape[1:])) if spec is not None
               else "its inputs have no batch dimension")
        raise TvmoptError(f"{model.path} was built for batch {batch}; to measure batch "
                          f"{options.batch} {how}")
    built_with = bool(model.manifest.get("cuda_graph", False))
    if options.cuda_graph is not None and options.cuda_graph != built_with:
        if model.manifest["target"]["kind"] != "cuda":
            raise TvmoptError("--cuda-graph applies to CUDA artifacts only; "
                              f"{model.path} is for {model.manifest['target_key']}")
        flag = "--cuda-graph" if options.cuda_graph else "no --cuda-graph"
        raise TvmoptError(f"{model.path} was built {'with' if built_with else 'without'} CUDA "
                          f"graphs; rebuild it with `tvmopt build ... {flag}` to measure that")
    if options.iterations is not None and options.duration_s is not None:
        raise TvmoptError("give --iterations or --duration, not both")
    if (options.iterations is not None and options.iterations < 1) or options.warmup < 0 or (
            options.duration_s is not None and options.duration_s <= 0):
        raise TvmoptError("--iterations and --duration must be positive, --warmup not negative")
    return batch, built_with


def _timed_calls(model: runtime.Model, options: BenchOptions) -> list[float]:
    """Seconds per call, one figure per call, timed on the device."""
    vm, device = model.vm, model.device
    for _ in range(options.warmup):
        vm.invoke_stateful("main")
    device.sync()
    if options.duration_s is None:
        count = options.iterations or DEFAULT_ITERATIONS
        return [float(x) for x in vm.time_evaluator("invoke_stateful", device, number=1,
                                                    repeat=count)("main").results]
    timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=_CHUNK)
    latencies: list[float] = []
    deadline = time.perf_counter() + options.duration_s
    while not latencies or time.perf_counter() < deadline:  # at least one batch of calls
        latencies += [float(x) for x in timer("main").results]
    return latencies


def _median_wall(fn, device, repeat: int) -> float:
    """Median seconds of `fn`, each run bracketed by device synchronisation."""
    samples = []
    for _ in range(repeat):
        device.sync()
        start = time.perf_counter()
        fn()
        device.sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _free_device_memory(device) -> int | None:
    try:
        return int(device.available_global_memory)
    except Exception:  # noqa: BLE001 - not every device API reports it
        return None


def bench(path: str | Path, options: BenchOptions = BenchOptions(), *, seed: int = 0,
          sha256: str | None = None) -> BenchReport:
    """Load an artifact and measure it on random inputs of its input specs."""
    import tvm

    manifest = artifact_manifest.read(path)
    device = runtime.device_for(manifest, Path(path))
    free_before = None if _is_host(device) else _free_device_memory(device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = runtime.load(path, sha256=sha256)
    batch, cuda_graph = _check_options(model, options)

    host_inputs = runtime.random_inputs(model.inputs, seed=seed)
    args = [tvm.runtime.tensor(host_inputs[s.name], device) for s in model.inputs]
    model.vm.set_input("main", *args)
    latencies = _timed_calls(model, options)
    stats = summarize(latencies)

    h2d = d2h = None
    if not _is_host(device):
        copies = min(max(len(latencies), 5), 50)
        # Into the buffers already on the device: the copy alone, not an allocation with it.
        h2d = _median_wall(lambda: [arg.copyfrom(host_inputs[s.name])
                                    for arg, s in zip(args, model.inputs)], device, copies) * 1e3
        outputs = runtime.flatten_outputs(model.vm.get_outputs("main"))
        d2h = _median_wall(lambda: [t.numpy() for t in outputs], device, copies) * 1e3

    if _is_host(device):
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        peak, measure = grown_kib * 1024, "growth of the process's peak RSS while loading and running"
    else:
        free_after = _free_device_memory(device)
        if free_before is None or free_after is None:
            peak, measure = None, "not reported by this device"
        else:
            peak = max(free_before - free_after, 0)  # other processes may free memory meanwhile
            measure = "device memory in use after the run minus before loading (cudaMemGetInfo)"

    return BenchReport(
        artifact=str(path), target_key=manifest["target_key"], device=device_name(device),
        batch=batch, warmup=options.warmup, iterations=len(latencies), cuda_graph=cuda_graph,
        latency_ms=stats,
        inferences_per_s=1e3 / stats.mean, samples_per_s=batch * 1e3 / stats.mean,
        h2d_ms=h2d, d2h_ms=d2h, end_to_end_ms=stats.p50 + (h2d or 0.0) + (d2h or 0.0),
        peak_memory_bytes=peak, memory_measure=measure,
        timer="TVM time evaluator, one call per sample"
              + (" (CUDA events)" if device.dlpack_device_type() == 2 else ""),
        warnings=stability_warnings(stats, len(latencies)),
    )


# --- profile ---------------------------------------------------------------------------------

@dataclass
class KernelRow:
    kernel: str  # the compiled function's name
    task: str | None  # the tuning task it belongs to (kernels of one shape share a task)
    tuned: bool | None  # None for time outside kernels
    provider: str | None  # where its implementation came from (tvmopt.kernels); None: unrecorded
    calls: int
    mean_us: float  # per call
    total_us: float  # per inference
    share: float  # of the model's measured latency

    def as_dict(self) -> dict:
        return asdict(self)


CUDA_GRAPH_CAPTURE = "vm.builtin.cuda_graph.run_or_capture"


def kernel_calls(events: list[tuple[str, bool, list]]) -> list[tuple[str, list]]:
    """(symbol, arguments) of each kernel call of one inference, from the VM instrument's events
    (symbol, before the call?, arguments). A CUDA graph's first call runs its function twice, a
    warm-up and then under capture, with the same arguments: a capture's calls count once."""
    calls: list[tuple[str, list]] = []
    starts: list[int] = []
    for symbol, before, call_args in events:
        if symbol == CUDA_GRAPH_CAPTURE:
            if before:
                starts.append(len(calls))
                continue
            start = starts.pop()
            half = (len(calls) - start) // 2
            first, second = calls[start:start + half], calls[start + half:]
            if [c[0] for c in first] == [c[0] for c in second]:
                del calls[start + half:]
        elif before and not symbol.startswith("vm.builtin."):
            calls.append((symbol, call_args))
    return calls


def profile(path: str | Path, *, repeat: int = 20, seed: int = 0,
            sha256: str | None = None) -> tuple[float, list[KernelRow]]:
    """(model latency in µs, one row per kernel, slowest first, plus the time outside kernels).

    The VM's instrument hook records every kernel call of one inference with its arguments; each
    distinct call is then timed alone on the device by the time evaluator. Timed alone a kernel
    finds its data in cache; in the model, on a CPU, it often does not, which the last row counts
    with the VM's own time.
    """
    import tvm

    model = runtime.load(path, sha256=sha256)
    inputs = runtime.random_inputs(model.inputs, seed=seed)
    args = [tvm.runtime.tensor(inputs[s.name], model.device) for s in model.inputs]
    latency_us = statistics.median(model.time(inputs, number=5, repeat=repeat)) * 1e6

    events: list[tuple[str, bool, list]] = []

    def record(_func, symbol, before, _ret, *call_args):
        events.append((str(symbol), bool(before), list(call_args)))
        return 0  # VMInstrumentReturnKind.NO_OP: run the call

    vm = model.fresh_vm()
    vm.set_instrument(record)
    vm["main"](*args)
    calls = kernel_calls(events)

    kernels = model.manifest.get("kernels", {})
    providers = dict(model.manifest.get("kernel_providers", {}))
    # Library layers call a shared kernel instance by its symbol (which names its tactic).
    providers.update((lib["symbol"], "cutlass")
                     for lib in model.manifest.get("library_kernels", {}).values())
    tuned_tasks = set(model.manifest.get("tuned_tasks", []))
    library = model.kernel_library()
    per_kernel: dict[str, list[float]] = {}
    timed: dict[tuple, float] = {}
    for symbol, call_args in calls:
        key = (symbol, tuple(tuple(a.shape) if hasattr(a, "shape") else repr(a) for a in call_args))
        if key not in timed:
            timer = library.time_evaluator(symbol, model.device, number=10, repeat=max(3, repeat // 4))
            timed[key] = statistics.median(timer(*call_args).results) * 1e6
        per_kernel.setdefault(symbol, []).append(timed[key])

    rows = []
    for symbol, times in per_kernel.items():
        task = kernels.get(symbol)
        total = sum(times)
        rows.append(KernelRow(symbol, task, task in tuned_tasks if task else False,
                              providers.get(symbol), len(times), total / len(times), total,
                              total / latency_us))
    rows.sort(key=lambda r: -r.total_us)
    outside = latency_us - sum(r.total_us for r in rows)
    if outside > 0:
        rows.append(KernelRow("(outside kernels: VM, copies, cold caches)", None, None, None, 1,
                              outside, outside, outside / latency_us))
    return latency_us, rows
