"""Measuring a kernel library's tactics per layer (TensorRT's recipe), into the tuning database.

A tune measures the layers with no tactic measured of their own on this target, on a shortlist
of at most MAX_INSTANCES instances for the whole model: each instance costs about a minute of
nvcc, and every catalogue tactic of every epilogue of ResNet-50 is dozens. The shortlist takes
each layer's predicted tactic (`kernels.library.tactic_model`: the fastest of the nearest
measured layer of its kind, else the op's default), heaviest layers first, then each layer's
next candidates, until it is full; each instance it holds is measured on every such layer it
runs. A layer the shortlist leaves out is measured by the next tune. Each instance is compiled
(once, into the kernel cache), linked with a CUDA-graph timer into one shared library, and run on
the device, locally or on an RPC server, with operands of the layer's own shape from its op. Each
result is checked against the op's NumPy reference before its time is stored: a tactic that
cannot run the shape or computes it wrongly is stored as a failure. The build then takes, per
layer, the fastest of the measured tactics and the TIR records (`kernels.library`). TIR records are timed by TVM's time evaluator,
whose per-call launch cost shows on kernels of a few microseconds; a CUDA-graph artifact (the
default) pays none, as the tactics' timing does.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..database import target_identity
from ..errors import TvmoptError, first_line
from ..formatting import duration, seconds
from ..kernels import library
from ..kernels.library import KernelLibrary, nvcc
from ..kernels.library.instance import TIMER_SYMBOL, timer
from ..kernels.library.instance import Instance
from ..kernels.library.op import Layer
from ..kernels.library.tactic_model import TacticModel
from ..tasks import Task, kernel_tasks
from .options import TuneOptions

log = logging.getLogger("tvmopt.tuning")

GRAPH_SECONDS = 1e-3  # each timing replays a graph of about this long: well above event jitter
REPEATS = 5
MAX_REL_ERR = 1e-2  # fp16 output against an fp32 reference, relative to the largest value
# Kernel-library instances one tune compiles and measures at most (each about a minute of one
# core and 3.4 GB of nvcc), however many layers and epilogues the model has.
MAX_INSTANCES = 8


@dataclass
class LayerTactics:
    layer: Layer
    weight: int  # calls per inference, over every kernel of the layer's size
    todo: list  # the op's tactics to measure


def task_layers(mod, tasks: list[Task]) -> dict[str, Layer]:
    """{task name: Layer} for the tasks whose kernel the library can run."""
    task_of = kernel_tasks(mod, tasks)
    return {task_of[name].name: layer for name, layer in library.layers(mod).items()
            if name in task_of}


def _untried(layer: Layer, tsha: str, store) -> list:
    """The catalogue tactics a layer has not tried on this target, while none of its catalogue
    ran on it (records of tactics the library has since dropped do not count)."""
    ran = store.ran_tactics(layer.key, tsha)
    if any(t.name in ran for t in layer.tactics):
        return []
    done = store.measured_tactics(layer.key, tsha, KernelLibrary.name)
    return [t for t in layer.tactics if t.name not in done]


def pending(layer: Layer, target, store) -> bool:
    """Whether the layer has no tactic measured on this target yet, and one left to try."""
    return bool(_untried(layer, target_identity(target)[0], store))


def shortlist(plans: list[LayerTactics], model: TacticModel, arch: str,
              limit: int = MAX_INSTANCES) -> dict[str, Instance]:
    """{symbol: instance} of at most `limit` instances for the layers of `plans` (heaviest
    first): round r takes each layer's r-th candidate among its untried tactics, best predicted
    first, so every layer's predicted tactic is in when they fit."""
    candidates = [[t for t, _ in model.ranked(p.layer) if t in p.todo] for p in plans]
    chosen: dict[str, Instance] = {}
    for r in range(max(map(len, candidates), default=0)):
        for plan, tactics in zip(plans, candidates):
            if len(chosen) == limit:
                return chosen
            if r < len(tactics):
                instance = plan.layer.instance(tactics[r], arch)
                chosen.setdefault(instance.symbol, instance)
    return chosen


@dataclass
class TacticPlan:
    """What a tune measures: the layers on the shortlist (heaviest first), each tactic's
    instance, and how many layers with tactics to try the shortlist left to the next tune."""
    measuring: list[LayerTactics]
    specs: dict  # {(layer key, tactic): Instance}
    left: int

    @property
    def sources(self) -> dict[str, str]:
        return {s.symbol: s.source for s in self.specs.values()}


def plan_tactics(layers: dict[str, tuple[Layer, int]], target, store,
                 limit: int = MAX_INSTANCES) -> TacticPlan:
    """The shortlist of at most `limit` instances for the layers ({task: (layer, weight)}) with
    no tactic measured of their own on this target."""
    tsha = target_identity(target)[0]
    plan: dict[str, LayerTactics] = {}
    for layer, weight in layers.values():
        if layer.key in plan:
            plan[layer.key].weight += weight
            continue
        plan[layer.key] = LayerTactics(layer, weight, _untried(layer, tsha, store))
    ordered = sorted((p for p in plan.values() if p.todo), key=lambda p: -p.weight * p.layer.work)
    arch = str(target.attrs["arch"])
    chosen = shortlist(ordered, TacticModel.load(store, tsha, KernelLibrary.name, arch), arch,
                       limit) if ordered else {}
    for p in ordered:  # each instance of the shortlist is measured on every layer it runs
        p.todo = [t for t in p.todo if p.layer.instance(t, arch).symbol in chosen]
    measuring = [p for p in ordered if p.todo]
    specs = {(p.layer.key, t): p.layer.instance(t, arch) for p in measuring for t in p.todo}
    return TacticPlan(measuring, specs, len(ordered) - len(measuring))


def measure_tactics(layers: dict[str, tuple[Layer, int]], target, store, options: TuneOptions,
                    *, device: str, run_uid: str,
                    should_stop: Callable[[], bool] = lambda: False,
                    limit: int = MAX_INSTANCES) -> int:
    """Measure a shortlist of at most `limit` instances' tactics on the layers ({task: (layer,
    weight)}) with none measured of their own; returns how many (layer, tactic) pairs were
    measured."""
    plan = plan_tactics(layers, target, store, limit)
    measuring, specs = plan.measuring, plan.specs
    if not measuring:
        return 0
    arch = str(target.attrs["arch"])
    sources = plan.sources
    log.info("kernel library: measuring %d tactics of %d instance(s) (at most %d) on %d layer(s)"
             "%s", len(specs), len(sources), limit, len(measuring),
             f"; {plan.left} layer(s) left to the next tune" if plan.left else "")
    failed: dict[str, str] = {}  # a tactic nvcc rejects is a failed tactic, not a failed tune
    objects = nvcc.compile_all({**sources, TIMER_SYMBOL: timer().source}, arch, failed=failed)
    if TIMER_SYMBOL in failed:
        raise TvmoptError(failed[TIMER_SYMBOL])
    version = nvcc.cuda_toolchain().version
    measured = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tvmopt-tactics-") as tmp:
        lib = nvcc.link_shared(sorted(set(objects.values())), Path(tmp) / "tactics.so")
        session = _Session(lib, options)
        for i, p in enumerate(measuring, 1):
            if should_stop():
                break
            compiled = {t: specs[p.layer.key, t] for t in p.todo
                        if specs[p.layer.key, t].symbol in objects}
            results = _measure_layer(session, p, compiled) if compiled else {}
            results.update((t, (None, failed[specs[p.layer.key, t].symbol]))
                           for t in p.todo if t not in compiled)
            with store.write():
                for tactic, (run_secs, error) in results.items():
                    store.add_tactic_record(p.layer.key, KernelLibrary.name, tactic.name, target,
                                            run_secs, error=error, device=device,
                                            library_version=version, run_uid=run_uid)
            measured += len(results)
            ok = {t: sum(r) / len(r) for t, (r, _) in results.items() if r}
            best = min(ok, key=ok.get) if ok else None
            elapsed = time.perf_counter() - start
            log.info("tactics: layer %d/%d %s: best %s%s  elapsed %s  ETA %s", i, len(measuring),
                     p.layer.key, seconds(ok[best]) if best else "none ran",
                     f" ({best.name})" if best else "", duration(elapsed),
                     duration(elapsed / i * (len(measuring) - i)))
    return measured


class _Session:
    """The measurement library loaded where the kernels run: this GPU, or an RPC server's."""

    def __init__(self, lib: Path, options: TuneOptions):
        import tvm

        if options.rpc_tracker:
            from tvm import rpc

            host, _, port = options.rpc_tracker.rpartition(":")
            remote = rpc.connect_tracker(host, int(port)).request(
                options.rpc_key, session_timeout=600)
            remote.upload(str(lib))
            self.module = remote.load_module(lib.name)
            self.device = remote.cuda(0)
            self._remote = remote  # the session lives as long as its module
        else:
            self.module = tvm.runtime.load_module(str(lib))
            self.device = tvm.cuda(0)
        self.timer = self.module[TIMER_SYMBOL]

    def tensor(self, array: np.ndarray):
        import tvm

        return tvm.runtime.tensor(array, self.device)

    def time(self, symbol: str, args: list) -> list[float]:
        """Seconds per call, REPEATS times, each from a graph of about GRAPH_SECONDS."""
        once = self.timer(symbol, 10, *args)
        calls = int(min(2000, max(10, GRAPH_SECONDS / max(once, 1e-9))))
        return [self.timer(symbol, calls, *args) for _ in range(REPEATS)]


def _measure_layer(session: _Session, plan: LayerTactics, specs: dict) -> dict:
    """{tactic: (run_secs, None) or (None, why it failed)} for one layer."""
    layer = plan.layer
    op, geometry = layer.op, layer.geometry
    arrays = op.inputs(geometry, layer.args, np.random.default_rng(0))
    reference = op.reference(geometry, arrays)
    on_device = {}  # by array: a residual that is the layer's own input is the same buffer
    for array in arrays.values():
        if id(array) not in on_device:
            on_device[id(array)] = session.tensor(array)
    args = [on_device[id(arrays[role])] for role in op.roles if role in arrays]
    workspace = session.tensor(np.zeros(max(op.workspace_bytes(t) for t in specs), np.uint8))
    out = session.tensor(np.zeros(op.output_shape(geometry), np.float16))
    results = {}
    for tactic, spec in specs.items():
        try:
            run_secs = session.time(spec.symbol, [*args, *layer.params, workspace, out])
        except Exception as e:  # noqa: BLE001 - the kernel's own check or a launch error, as text
            results[tactic] = (None, first_line(e, 200))
            continue
        err = _rel_err(out.numpy(), reference)
        results[tactic] = ((run_secs, None) if err <= MAX_REL_ERR else
                           (None, f"wrong result: max rel err {err:.3g} > {MAX_REL_ERR}"))
    return results


def _rel_err(out: np.ndarray, reference: np.ndarray) -> float:
    out = out.astype(np.float32)
    if not np.isfinite(out).all():
        return float("inf")
    return float(np.abs(out - reference).max() / max(np.abs(reference).max(), 1e-6))
