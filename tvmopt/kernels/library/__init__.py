"""Provider 1: a kernel library (CUTLASS 3.x, Hopper) for the GEMMs and convolutions it covers,
and a fused attention kernel of tvmopt's own (`attention.py`), where it is the fastest measured
choice.

The graph pass `partition-kernel-library` groups each layer the library can run into a kernel
of its own and records it (`partition.py`); at build time this provider swaps such a kernel's
call for a call into a compiled CUTLASS instance (`sources.py`, compiled once into a cache by
`nvcc.py`) that is linked into the artifact. Tactics (`tactics.py`) pick the instance: per layer,
the tactic `tvmopt tune` measured fastest, if it beats the layer's best TIR record (tuned or
default schedule); untuned, a default tactic unless a searched TIR record exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ...database import target_identity
from .nvcc import Unavailable, compile_all, toolchain
from .partition import Layer, layers, partition_pass
from .sources import workspace_bytes
from .tactics import Tactic

log = logging.getLogger(__name__)

ARCHS = ("sm_90a",)  # what the templates are written for (wgmma, TMA)


@dataclass(frozen=True)
class ExternKernel:
    """A kernel replaced by a call into linked code: `symbol(*args, *params, workspace, out)`."""
    symbol: str
    args: tuple[int, ...]  # which of the kernel's arguments to pass, in the symbol's order
    params: tuple[int | float, ...]  # scalars after them (a conv's or an attention's geometry)
    workspace: int  # bytes
    object_file: Path
    tactic: str
    layer: str  # what it computes, for people: "GEMM MxNxK[xL]" or the conv and its GEMM size
    measured_sec: float | None  # the tactic's time on this layer, None for a default tactic


def supports(target) -> bool:
    return target.kind.name == "cuda" and str(target.attrs.get("arch", "")) in ARCHS


def graph_passes(relax, target) -> list:
    """The partition pass where the library can run, with a one-line reason where it cannot."""
    if not supports(target):
        return []
    try:
        toolchain()
    except Unavailable as e:
        log.warning("kernel library off, TVM kernels run every layer: %s", e)
        return []
    return [partition_pass()]


class KernelLibrary:
    name = "cutlass"

    def provide(self, kernels, ctx) -> dict[str, ExternKernel]:
        tsha = target_identity(ctx.target)[0]
        chosen = {}  # {kernel name: (layer, tactic, measured seconds or None)}
        for kernel in kernels:
            layer = ctx.library_layers.get(kernel.name)
            if layer is not None and (choice := _choose(kernel, layer, ctx, tsha)) is not None:
                chosen[kernel.name] = (layer, *choice)
        if not chosen:
            return {}
        arch = str(ctx.target.attrs["arch"])
        specs = {name: layer.instance(tactic, arch) for name, (layer, tactic, _) in chosen.items()}
        failed: dict[str, str] = {}
        objects = compile_all({s.symbol: s.source() for s in set(specs.values())}, arch,
                              failed=failed)
        if failed:
            # nvcc rejected an instance or was killed twice (out of memory): the build goes on,
            # with TVM kernels for the layers that would have called it.
            lost = sorted(name for name, spec in specs.items() if spec.symbol not in objects)
            log.warning("kernel library: %d instance(s) could not be compiled, TVM kernels run "
                        "their %d layer(s) instead: %s", len(failed), len(lost),
                        "; ".join(failed.values()))
            specs = {name: spec for name, spec in specs.items() if spec.symbol in objects}
        return {name: ExternKernel(spec.symbol, layer.arg_order, layer.params,
                                   workspace_bytes(spec.tactic), objects[spec.symbol],
                                   spec.tactic.name, _describe(layer), measured)
                for name, spec in specs.items()
                for layer, _, measured in [chosen[name]]}


def _choose(kernel, layer: Layer, ctx, tsha: str) -> tuple[Tactic, float | None] | None:
    """(tactic, its measured time) for a layer the library should run, None where a TIR kernel
    is faster. Measured beats unmeasured: a measured tactic runs unless the best TIR record
    (a tuned schedule or the measured default) is faster; without tactic records the default
    tactic runs unless a searched TIR record exists (measured on an H100, the default tactics
    run untuned BERT-base at 0.92 ms against 2.59 ms for TVM's default schedules)."""
    from ..tuned import best_record

    tactic = ctx.store.best_tactic(layer.key, tsha)
    tir = best_record(kernel, ctx)
    if tactic is not None:
        if tir is not None and tir[0].mean_sec < tactic.mean_sec:
            return None
        return Tactic.parse(tactic.tactic), tactic.mean_sec
    if tir is not None and not tir[1]:
        return None
    return layer.default_tactic(), None


def _describe(layer: Layer) -> str:
    if (a := layer.attention) is not None:
        mask = f", {a.mask_kind[:3]} mask {'x'.join(map(str, a.mask_shape))}" if a.mask_shape else ""
        return (f"attention {a.batch}x{a.heads} heads, {a.seq_q}x{a.seq_k} x {a.head_dim}, "
                f"scale {a.scale:g}{mask}")
    gemm = f"{layer.m}x{layer.n}x{layer.k}" + (f"x{layer.batch}" if layer.batch > 1 else "")
    if (g := layer.conv) is None:
        return f"GEMM {gemm}"
    stride = "" if g.stride == (1, 1) else f" stride {g.stride[0]}x{g.stride[1]}"
    return f"conv2d {g.r}x{g.s}{stride} {g.n}x{g.h}x{g.w}x{g.c}->{layer.n} (GEMM {gemm})"


__all__ = ["ExternKernel", "KernelLibrary", "Layer", "graph_passes", "layers", "supports",
           "toolchain"]
