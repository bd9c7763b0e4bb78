"""Provider 1: a kernel library for the layers it covers, where it is the fastest measured
choice: CUTLASS 3.x Hopper GEMMs and convolutions, and a fused attention kernel of tvmopt's own.

The package is an op registry. Each op is one module implementing `op.Op` (its Relax patterns
and checks, its typed geometry, cache key, tactic catalogue and default, the instantiation of its
CUDA source in `csrc/`, and a NumPy reference), listed in `registry.OPS`:

- `gemm.py`, `conv2d.py` (sharing `cutlass.py`: tactics and the fused epilogue), `attention.py`;
- `partition.py`: the graph pass grouping each match into a kernel of its own, as a `Layer`;
- `instance.py`: the instantiations and the `csrc/` headers they include;
- `nvcc.py`, `kernel_cache.py`, `resources.py`: compiling instances once into a shared cache.

At build time this provider swaps a partitioned kernel's call for a call into the instance of
the layer's tactic, linked into the artifact: per layer, the tactic `tvmopt tune` measured
fastest, if it beats the layer's best TIR record (tuned or default schedule); untuned, the tactic
`tactic_model.py` predicts from the nearest measured layer (else the op's default tactic) unless
a searched TIR record exists.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ...database import target_identity
from .nvcc import Unavailable, compile_all, cuda_toolchain
from .op import Layer
from .partition import layers, partition_pass
from .tactic_model import Choice, TacticModel

log = logging.getLogger(__name__)

ARCHS = ("sm_90a",)  # what the sources are written for (wgmma, TMA)


@dataclass(frozen=True)
class ExternKernel:
    """A kernel replaced by a call into linked code: `symbol(*args, *params, workspace, out)`."""
    symbol: str
    args: tuple[int, ...]  # which of the kernel's arguments to pass, in the symbol's order
    params: tuple[int | float, ...]  # scalars after them (a conv's or an attention's geometry)
    workspace: int  # bytes
    object_file: Path
    tactic: str
    layer: str  # what it computes, for people: "GEMM MxNxK[xL]", the conv and its GEMM size
    measured_sec: float | None  # the tactic's time on this layer, None where unmeasured
    tactic_source: str  # "measured", "predicted from LAYER_KEY" or "default"


def supports(target) -> bool:
    return target.kind.name == "cuda" and str(target.attrs.get("arch", "")) in ARCHS


def graph_passes(relax, target) -> list:
    """The partition pass where the library can run, with a one-line reason where it cannot."""
    if not supports(target):
        return []
    try:
        cuda_toolchain()
    except Unavailable as e:
        log.warning("kernel library off, TVM kernels run every layer: %s", e)
        return []
    return [partition_pass()]


class KernelLibrary:
    name = "cutlass"  # the provider's name in tactic records and manifests

    def provide(self, kernels, ctx) -> dict[str, ExternKernel]:
        arch = ctx.target.attrs.get("arch")
        model = TacticModel.load(ctx.store, target_identity(ctx.target)[0], self.name,
                                 str(arch) if arch is not None else None)
        chosen: dict[str, tuple[Layer, Choice]] = {}
        for kernel in kernels:
            layer = ctx.library_layers.get(kernel.name)
            if layer is not None and (choice := _choose(kernel, layer, ctx, model)) is not None:
                chosen[kernel.name] = (layer, choice)
                log.debug("kernel library: %s (%s): tactic %s, %s", kernel.name, layer.describe(),
                          choice.tactic.name, choice.describe())
        if not chosen:
            return {}
        sources = Counter(choice.source for _, choice in chosen.values())
        log.info("kernel library: %d layer(s): %d measured tactic(s), %d predicted from measured "
                 "layers, %d default", len(chosen), sources["measured"], sources["predicted"],
                 sources["default"])
        arch = str(ctx.target.attrs["arch"])
        instances = {name: layer.instance(choice.tactic, arch)
                     for name, (layer, choice) in chosen.items()}
        failed: dict[str, str] = {}
        objects = compile_all({i.symbol: i.source for i in instances.values()}, arch,
                              failed=failed)
        if failed:
            # nvcc rejected an instance or was killed twice (out of memory): the build goes on,
            # with TVM kernels for the layers that would have called it.
            lost = sorted(name for name, i in instances.items() if i.symbol not in objects)
            log.warning("kernel library: %d instance(s) could not be compiled, TVM kernels run "
                        "their %d layer(s) instead: %s", len(failed), len(lost),
                        "; ".join(failed.values()))
        return {name: ExternKernel(instance.symbol, layer.arg_order, layer.params,
                                   layer.op.workspace_bytes(choice.tactic),
                                   objects[instance.symbol], choice.tactic.name, layer.describe(),
                                   choice.measured_sec, choice.describe())
                for name, instance in instances.items() if instance.symbol in objects
                for layer, choice in [chosen[name]]}


def _choose(kernel, layer: Layer, ctx, model: TacticModel) -> Choice | None:
    """The tactic for a layer the library should run, None where a TIR kernel is faster.
    Measured beats unmeasured: a measured tactic runs unless the best TIR record (a tuned
    schedule or the measured default) is faster; without tactic records of its own the predicted
    (or default) tactic runs unless a searched TIR record exists (measured on an H100, the
    default tactics run untuned BERT-base at 0.92 ms against 2.59 ms for TVM's default
    schedules)."""
    from ..tuned import best_record

    choice = model.choose(layer)
    tir = best_record(kernel, ctx)
    if choice.measured_sec is not None:
        return None if tir is not None and tir[0].mean_sec < choice.measured_sec else choice
    return None if tir is not None and not tir[1] else choice


__all__ = ["ExternKernel", "KernelLibrary", "Layer", "cuda_toolchain", "graph_passes", "layers",
           "supports"]
