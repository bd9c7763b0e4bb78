"""Provider 2 (after tuned records): a kernel library (CUTLASS 3.x, Hopper) for the GEMM-shaped
layers it covers.

The graph pass `partition-kernel-library` groups each layer the library can run into a kernel
of its own and records it (`partition.py`); at build time this provider swaps such a kernel's
call for a call into a compiled CUTLASS instance (`sources.py`, compiled once into a cache by
`nvcc.py`) that is linked into the artifact. Tactics (`tactics.py`) pick the instance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .nvcc import Unavailable, compile_all, toolchain
from .partition import Layer, layers, partition_pass
from .sources import GemmSpec, gemm_source, workspace_bytes
from .tactics import default_tactic

log = logging.getLogger(__name__)

ARCHS = ("sm_90a",)  # what the templates are written for (wgmma, TMA)


@dataclass(frozen=True)
class ExternKernel:
    """A kernel replaced by a call into linked code: `symbol(*args, workspace, out)`."""
    symbol: str
    args: tuple[int, ...]  # which of the kernel's arguments to pass, in the symbol's order
    workspace: int  # bytes
    object_file: Path
    tactic: str
    gemm: str  # the layer's GEMM size, "MxNxK" (with "xL" batches)


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
        covered = {k.name: layer for k in kernels
                   if (layer := ctx.library_layers.get(k.name)) is not None}
        if not covered:
            return {}
        arch = str(ctx.target.attrs["arch"])
        specs = {name: GemmSpec(layer.b_layout, layer.epilogue,
                                default_tactic(layer.m, layer.n, layer.k), arch)
                 for name, layer in covered.items()}
        objects = compile_all({s.symbol: gemm_source(s) for s in set(specs.values())}, arch)
        return {name: ExternKernel(spec.symbol, _arg_order(covered[name]),
                                   workspace_bytes(spec.tactic), objects[spec.symbol],
                                   spec.tactic.name, _gemm(covered[name]))
                for name, spec in specs.items()}


def _gemm(layer: Layer) -> str:
    return f"{layer.m}x{layer.n}x{layer.k}" + (f"x{layer.batch}" if layer.batch > 1 else "")


def _arg_order(layer: Layer) -> tuple[int, ...]:
    return tuple(layer.args[role] for role in ("a", "b", "bias", "residual") if role in layer.args)


__all__ = ["ExternKernel", "KernelLibrary", "graph_passes", "layers", "supports", "toolchain"]
