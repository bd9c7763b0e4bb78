"""The GEMM op: a matmul in fp16, and its fused epilogue, on a CUTLASS 3.x Hopper GEMM
(`csrc/gemm_sm90.cuh`).

out = act(A @ B + bias + residual), as `symbol(a, b, [bias], [residual], workspace, out)`, or
A @ B * gate (`csrc/gemm_gated_sm90.cuh`: SwiGLU's up projection times SiLU(gate)). A is
[..., M, K] row-major; B is [K, N] ("row", an ONNX MatMul weight) or [N, K] ("col", a Gemm
transB weight, or an OHWI 1x1 conv filter, which `conv2d.py` hands here); a B of rank > 2 makes a
batched GEMM over its leading dimensions. N and K are multiples of 8; `gemm_padding.py` pads
the constant weight of a GEMM whose sizes are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import gemm_padding, relax_match
from .cutlass import (ALIGNMENT, SMS, CutlassOp, CutlassTactic, Epilogue, check_epilogue,
                      epilogue_inputs, fold_tanh_gelu)
from .instance import Instance, instantiation, tensor_params
from .op import Layer, Match

# Cooperative kernels split a tile between two consumer warp groups: tile_m >= 128. Ping-pong
# kernels give each warp group its own tile. Stream-K runs on the cooperative kernel.
CATALOGUE: tuple[CutlassTactic, ...] = (
    CutlassTactic(128, 128),
    CutlassTactic(128, 256),
    CutlassTactic(128, 64),
    CutlassTactic(64, 128, schedule="pingpong"),
    CutlassTactic(64, 64, schedule="pingpong"),
    CutlassTactic(128, 128, cluster_m=2),
    CutlassTactic(128, 64, scheduler="streamk"),
    CutlassTactic(128, 128, scheduler="streamk"),
    # Measured on an H100 with 256x128 (clusters 1 and 2) and 128x256 in a cluster of 2, which won
    # no layer by 1% (gemm_tactics_h100_2026-12-07.md): at 4096-12608 rows, 128x192 makes whole
    # waves of N=768 and N=2304 tiles;
    # ping-pong 128x128 overlaps one tile's epilogue with the next one's mainloop.
    CutlassTactic(128, 192),
    CutlassTactic(128, 128, schedule="pingpong"),
)
_SCHEDULES = {"cooperative": "tvmopt::Cooperative", "pingpong": "tvmopt::Pingpong"}
_SCHEDULERS = {"persistent": "cutlass::gemm::PersistentScheduler",
               "streamk": "cutlass::gemm::StreamKScheduler"}


@dataclass(frozen=True)
class GemmGeometry:
    m: int
    n: int
    k: int
    batch: int  # GEMMs of a batched B; 1 where B is shared by every row of A
    b_layout: str  # "row": B is [K, N]; "col": B is [N, K] (or an OHWI 1x1 filter)
    epilogue: Epilogue


class Gemm(CutlassOp):
    name = "gemm"
    anchor_op = "relax.matmul"
    geometry_type = GemmGeometry

    def canonicalize(self, mod):
        """The tanh GELU folded (module-wide, once: the conv epilogues see it too, since every
        op canonicalises before any pattern is matched), then GEMMs by a constant weight whose N
        or K is not a multiple of 8 padded with zeros to one (`gemm_padding.py`)."""
        return gemm_padding.canonicalize(fold_tanh_gelu(mod))

    def check(self, context) -> bool:
        return _check(context)

    def layer(self, match: Match) -> Layer:
        anchor, epilogue, args = self.anchor(match)
        a_shape = relax_match.static_shape(anchor.args[0])
        b_shape = relax_match.static_shape(anchor.args[1])
        k, n = b_shape[-2], b_shape[-1]
        batch = 1 if len(b_shape) == 2 else relax_match.numel(b_shape[:-2])
        m = relax_match.numel(a_shape) // (k * batch)
        return Layer(self, GemmGeometry(m, n, k, batch, "row", epilogue), args)

    def key(self, g: GemmGeometry) -> str:
        return f"gemm_f16_{g.b_layout}_{g.epilogue.name}_{g.m}x{g.n}x{g.k}x{g.batch}"

    def catalogue(self, g: GemmGeometry) -> tuple[CutlassTactic, ...]:
        return CATALOGUE

    def default_tactic(self, g: GemmGeometry) -> CutlassTactic:
        """The largest tile that still gives most SMs a tile; stream-K when even small tiles
        leave most SMs idle and K is deep enough to split."""
        small = CutlassTactic(64, 64, schedule="pingpong")
        for tactic in (CutlassTactic(128, 128), CutlassTactic(128, 64), small):
            if tactic.tiles(g.m, g.n) >= SMS * 3 // 4:
                return tactic
        return CutlassTactic(128, 64, scheduler="streamk") if g.k >= 1024 else small

    def instance(self, g: GemmGeometry, t: CutlassTactic, arch: str) -> Instance:
        e = g.epilogue
        symbol = f"tvmopt_cutlass_gemm_{g.b_layout}_{e.name}_{t.name}"
        layout = "RowMajor" if g.b_layout == "row" else "ColumnMajor"
        params = tensor_params(("a", "b", *e.roles, "workspace", "out"))
        header = "gemm_gated_sm90.cuh" if e.gate else "gemm_sm90.cuh"
        return Instance(symbol, instantiation(symbol, header, __name__, f"""
using Instance = tvmopt::GemmSm90<{t.tile}, {_SCHEDULES[t.schedule]},
    {_SCHEDULERS[t.scheduler]}, cutlass::layout::{layout},
    {e.template}>;
static void Run({params}) {{
  Instance::Run("{symbol}", a, b, {e.pointers}, workspace, out);
}}"""))

    def work(self, g: GemmGeometry) -> int:
        return g.m * g.n * g.k * g.batch

    def describe(self, g: GemmGeometry) -> str:
        return f"GEMM {g.m}x{g.n}x{g.k}" + (f"x{g.batch}" if g.batch > 1 else "")

    def inputs(self, g: GemmGeometry, args: dict, rng) -> dict[str, np.ndarray]:
        def uniform(shape, scale=1.0):
            return (rng.uniform(-1, 1, shape) * scale).astype(np.float16)

        lead = (g.batch,) if g.batch > 1 else ()
        b_shape = (*lead, g.k, g.n) if g.b_layout == "row" else (g.n, g.k)
        arrays = {"a": uniform((*lead, g.m, g.k)), "b": uniform(b_shape, 1 / np.sqrt(g.k))}
        return epilogue_inputs(g.epilogue, args, arrays, self.output_shape(g), g.n, uniform)

    def output_shape(self, g: GemmGeometry) -> tuple[int, ...]:
        return ((g.batch,) if g.batch > 1 else ()) + (g.m, g.n)

    def reference(self, g: GemmGeometry, arrays: dict[str, np.ndarray]) -> np.ndarray:
        a, b = arrays["a"].astype(np.float32), arrays["b"].astype(np.float32)
        return g.epilogue.apply(a @ (b if g.b_layout == "row" else b.T), arrays)

    def geometry_from_dict(self, d: dict) -> GemmGeometry:
        return GemmGeometry(**{**d, "epilogue": Epilogue(**d["epilogue"])})


def _check(context) -> bool:
    if relax_match.leaks(context):
        return False
    notes = context.annotated_expr
    a, b, out = notes["a"], notes["b"], context.matched_expr
    try:
        a_shape, b_shape, out_shape = (relax_match.static_shape(e) for e in (a, b, out))
    except ValueError:
        return False
    if any(relax_match.dtype(e) != "float16" for e in (a, b, out)):
        return False
    if len(a_shape) < 2 or len(b_shape) < 2:
        return False
    if len(b_shape) > 2 and (a_shape[:-2] != b_shape[:-2] or "bias" in notes):
        return False  # batched: no broadcast, no epilogue tensors
    k, n = b_shape[-2], b_shape[-1]
    if k % ALIGNMENT or n % ALIGNMENT:
        return False
    return check_epilogue(context, n, out_shape)


OP = Gemm()
