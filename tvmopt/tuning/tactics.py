"""Measuring a kernel library's tactics per layer (TensorRT's recipe), into the tuning database.

Every catalogue tactic not yet measured for a layer on this target is compiled (once, into the
kernel cache), linked with a CUDA-graph timer into one shared library, and run on the device,
locally or on an RPC server, with the layer's own GEMM size or convolution. Each result is
checked against a NumPy reference before its time is stored: a tactic that cannot run the shape
or computes it wrongly is stored as a failure. The build then takes, per layer, the fastest of the measured
tactics and the TIR records (`kernels.library`). TIR records are timed by TVM's time evaluator,
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
from ..kernels.library import KernelLibrary, nvcc
from ..kernels.library.partition import ROLES, Layer
from ..kernels.library.sources import TIMER_SOURCE, TIMER_SYMBOL, workspace_bytes
from ..kernels.library.tactics import Tactic
from .options import TuneOptions

log = logging.getLogger("tvmopt.tuning")

GRAPH_SECONDS = 1e-3  # each timing replays a graph of about this long: well above event jitter
REPEATS = 5
MAX_REL_ERR = 1e-2  # fp16 output against an fp32 reference, relative to the largest value


@dataclass
class LayerTactics:
    layer: Layer
    weight: int  # calls per inference, over every kernel of the layer's size
    todo: list[Tactic]


def pending(layer: Layer, target, store) -> bool:
    """Whether a catalogue tactic is not yet measured for the layer on this target."""
    done = store.measured_tactics(layer.key, target_identity(target)[0], KernelLibrary.name)
    return any(t.name not in done for t in layer.tactics)


def measure_tactics(layers: dict[str, tuple[Layer, int]], target, store, options: TuneOptions,
                    *, device: str, run_uid: str,
                    should_stop: Callable[[], bool] = lambda: False) -> int:
    """Measure the tactics not yet in the database for each layer ({task: (layer, weight)});
    returns how many were measured."""
    tsha = target_identity(target)[0]
    plan: dict[str, LayerTactics] = {}
    for layer, weight in layers.values():
        if layer.key in plan:
            plan[layer.key].weight += weight
            continue
        done = store.measured_tactics(layer.key, tsha, KernelLibrary.name)
        plan[layer.key] = LayerTactics(layer, weight,
                                       [t for t in layer.tactics if t.name not in done])
    plan = {k: p for k, p in plan.items() if p.todo}
    if not plan:
        return 0
    arch = str(target.attrs["arch"])
    specs = {(p.layer.key, t): p.layer.instance(t, arch) for p in plan.values() for t in p.todo}
    sources = {s.symbol: s.source() for s in specs.values()}
    log.info("kernel library: measuring %d tactics on %d layer(s)", len(specs), len(plan))
    failed: dict[str, str] = {}  # a tactic nvcc rejects is a failed tactic, not a failed tune
    objects = nvcc.compile_all({**sources, TIMER_SYMBOL: TIMER_SOURCE}, arch, failed=failed)
    if TIMER_SYMBOL in failed:
        raise TvmoptError(failed[TIMER_SYMBOL])
    version = nvcc.toolchain().version
    measured = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tvmopt-tactics-") as tmp:
        lib = nvcc.link_shared(sorted(set(objects.values())), Path(tmp) / "tactics.so")
        session = _Session(lib, options)
        ordered = sorted(plan.values(), key=lambda p: -p.weight * p.layer.m * p.layer.n * p.layer.k)
        for i, p in enumerate(ordered, 1):
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
            log.info("tactics: layer %d/%d %s: best %s%s  elapsed %s  ETA %s", i, len(ordered),
                     p.layer.key, seconds(ok[best]) if best else "none ran",
                     f" ({best.name})" if best else "", duration(elapsed),
                     duration(elapsed / i * (len(ordered) - i)))
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
    arrays = _inputs(layer, np.random.default_rng(0))
    reference = _reference(layer, arrays)
    on_device = {}  # by array: a residual that is the layer's own input is the same buffer
    for array in arrays.values():
        if id(array) not in on_device:
            on_device[id(array)] = session.tensor(array)
    args = [on_device[id(arrays[role])] for role in ROLES if role in arrays]
    workspace = session.tensor(np.zeros(max(workspace_bytes(t) for t in specs), np.uint8))
    out = session.tensor(np.zeros(reference.shape, np.float16))
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


def _inputs(layer: Layer, rng) -> dict[str, np.ndarray]:
    """Random fp16 operands of the layer's shape; a residual that is the input (a 1x1 conv whose
    shortcut is its own input) is not made twice."""
    if (att := layer.attention) is not None:
        return _attention_inputs(att, rng)
    lead = (layer.batch,) if layer.batch > 1 else ()
    if (g := layer.conv) is not None:
        a_shape, b_shape = (g.n, g.h, g.w, g.c), (layer.n, g.r, g.s, g.c)
        out_shape = (*g.output, layer.n)
    else:
        a_shape, out_shape = (*lead, layer.m, layer.k), (*lead, layer.m, layer.n)
        b_shape = (*lead, layer.k, layer.n) if layer.b_layout == "row" else (layer.n, layer.k)

    def uniform(shape, scale=1.0):
        return (rng.uniform(-1, 1, shape) * scale).astype(np.float16)

    arrays = {"a": uniform(a_shape), "b": uniform(b_shape, 1 / np.sqrt(layer.k))}
    if layer.epilogue.bias:
        arrays["bias"] = uniform((layer.n,))
    if layer.epilogue.residual:
        same = layer.args.get("residual") == layer.args.get("a")
        arrays["residual"] = arrays["a"] if same else uniform(out_shape)
    return arrays


def _conv(g, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NHWC x OHWI in fp32, one filter tap at a time (no im2col copy of a batch-64 input)."""
    n, p, q = g.output
    top, left, bottom, right = g.padding
    padded = np.pad(a, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out = np.zeros((n, p, q, b.shape[0]), np.float32)
    for i in range(g.r):
        for j in range(g.s):
            y, x = i * g.dilation[0], j * g.dilation[1]
            window = padded[:, y:y + (p - 1) * g.stride[0] + 1:g.stride[0],
                            x:x + (q - 1) * g.stride[1] + 1:g.stride[1]]
            out += window @ b[:, i, j, :].T
    return out


def _attention_inputs(g, rng) -> dict[str, np.ndarray]:
    """q, k, v as the projections write them ([batch, seq, heads * head_dim]) and, for a masked
    layer, an additive mask of the layer's shape that hides the last quarter of the keys."""
    hidden = g.heads * g.head_dim
    arrays = {"q": rng.standard_normal((g.batch, g.seq_q, hidden)).astype(np.float16),
              "k": rng.standard_normal((g.batch, g.seq_k, hidden)).astype(np.float16),
              "v": rng.standard_normal((g.batch, g.seq_k, hidden)).astype(np.float16)}
    if g.mask_shape is not None:
        mask = np.zeros(g.mask_shape, np.float32)
        mask[..., g.seq_k - g.seq_k // 4:] = -65504.0
        arrays["mask"] = mask.astype(g.mask_dtype)
    return arrays


def _attention(g, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """softmax(scale * Q K^T + mask) V per batch and head, in fp32, heads merged again."""
    def heads(x):
        return x.astype(np.float32).reshape(g.batch, -1, g.heads, g.head_dim).transpose(0, 2, 1, 3)

    scores = heads(arrays["q"]) @ heads(arrays["k"]).transpose(0, 1, 3, 2) * g.scale
    if "mask" in arrays:
        mask = arrays["mask"].astype(np.float32)
        scores = scores + mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    return (probs @ heads(arrays["v"])).transpose(0, 2, 1, 3).reshape(arrays["q"].shape)


def _reference(layer: Layer, arrays: dict[str, np.ndarray]) -> np.ndarray:
    if layer.attention is not None:
        return _attention(layer.attention, arrays)
    a, b = arrays["a"].astype(np.float32), arrays["b"].astype(np.float32)
    if layer.conv is not None:
        out = _conv(layer.conv, a, b)
    else:
        out = a @ (b if layer.b_layout == "row" else b.T)
    if "bias" in arrays:
        out += arrays["bias"].astype(np.float32)
    if "residual" in arrays:
        out += arrays["residual"].astype(np.float32)
    activation = layer.epilogue.activation
    if activation == "relu":
        out = np.maximum(out, 0)
    elif activation == "silu":
        out = out / (1 + np.exp(-out))
    elif activation == "gelu":
        out = 0.5 * out * (1 + _erf(out / np.sqrt(2)))
    elif activation != "none":
        raise TvmoptError(f"no reference for the {activation} epilogue")
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz and Stegun 7.1.26 (error below 1.5e-7): NumPy has no erf."""
    t = 1 / (1 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
    return np.sign(x) * (1 - poly * np.exp(-x * x))


def _rel_err(out: np.ndarray, reference: np.ndarray) -> float:
    out = out.astype(np.float32)
    if not np.isfinite(out).all():
        return float("inf")
    return float(np.abs(out - reference).max() / max(np.abs(reference).max(), 1e-6))
