"""The conv2d op: an NHWC convolution with an OHWI filter in fp16 and its fused epilogue, as an
implicit GEMM on a CUTLASS 3.x Hopper conv kernel (`csrc/conv_sm90.cuh`: TMA im2col loads, no
unfolded copy of the input).

out = act(conv2d(A, B) + bias + residual), as `symbol(a, b, [bias], [residual], pad_top,
pad_left, pad_bottom, pad_right, stride_h, stride_w, dilation_h, dilation_w, workspace, out)`.
A 1x1 conv without stride or padding is a plain GEMM over the pixels: it is handed to the GEMM op.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import gemm, relax_match
from .cutlass import (ALIGNMENT, SMS, CutlassOp, CutlassTactic, Epilogue, check_epilogue,
                      epilogue_inputs)
from .instance import Instance, instantiation, tensor_params
from .op import Layer, Match

# TMA im2col loads (2-D) hold the window's corners in signed 8 bits and filter offsets in 8 bits.
IM2COL_CORNER = 128
# An instance's int arguments after its tensors (csrc ConvWindows).
PARAMS = ("pad_top", "pad_left", "pad_bottom", "pad_right", "stride_h", "stride_w",
          "dilation_h", "dilation_w")


# Hopper's implicit-GEMM convolutions have one kernel: warp-specialized, not persistent (CUTLASS
# has no cooperative, ping-pong or stream-K conv kernels for sm90), one output tile per CTA.
def _tactic(tile_m: int, tile_n: int, cluster_m: int = 1, cluster_n: int = 1) -> CutlassTactic:
    return CutlassTactic(tile_m, tile_n, 64, cluster_m, cluster_n, "warpspecialized", "tiles")


CATALOGUE: tuple[CutlassTactic, ...] = (
    _tactic(128, 128),
    _tactic(128, 64),
    _tactic(64, 128),
    _tactic(64, 64),
    _tactic(128, 128, cluster_m=2),
    _tactic(64, 128, cluster_n=2),
)


@dataclass(frozen=True)
class ConvGeometry:
    """Input [n, h, w, c], `filters` output channels of r x s, and the windows."""
    n: int
    h: int
    w: int
    c: int
    filters: int
    r: int
    s: int
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    stride: tuple[int, int]
    dilation: tuple[int, int]
    epilogue: Epilogue

    @property
    def output(self) -> tuple[int, int, int]:
        """(N, P, Q): the output's batch and spatial size."""
        top, left, bottom, right = self.padding
        p = (self.h + top + bottom - (self.r - 1) * self.dilation[0] - 1) // self.stride[0] + 1
        q = (self.w + left + right - (self.s - 1) * self.dilation[1] - 1) // self.stride[1] + 1
        return self.n, p, q

    @property
    def gemm_size(self) -> tuple[int, int, int]:
        """(M, N, K) of the implicit GEMM."""
        n, p, q = self.output
        return n * p * q, self.filters, self.c * self.r * self.s

    @property
    def pointwise(self) -> bool:
        """A 1x1 conv without stride or padding: a plain GEMM over the pixels."""
        return ((self.r, self.s) == (1, 1) and self.stride == (1, 1)
                and self.dilation == (1, 1) and self.padding == (0, 0, 0, 0))

    def im2col_loadable(self) -> bool:
        """Whether TMA's im2col mode can walk these windows (CUTLASS's can_implement rule)."""
        top, left, bottom, right = self.padding
        span_h, span_w = (self.r - 1) * self.dilation[0], (self.s - 1) * self.dilation[1]
        return (all(0 <= p < IM2COL_CORNER for p in self.padding)
                and all(-IM2COL_CORNER <= p - span < IM2COL_CORNER
                        for p, span in ((bottom, span_h), (right, span_w)))
                and 0 <= span_h < 2 * IM2COL_CORNER - 1 and 0 <= span_w < 2 * IM2COL_CORNER - 1)


class Conv2d(CutlassOp):
    name = "conv2d"
    anchor_op = "relax.nn.conv2d"
    geometry_type = ConvGeometry

    def check(self, context) -> bool:
        return _check(context)

    def layer(self, match: Match) -> Layer:
        anchor, epilogue, args = self.anchor(match)
        g = _geometry(anchor, epilogue)
        if g.pointwise:
            a_pixels = relax_match.numel(relax_match.static_shape(anchor.args[0])) // g.c
            return Layer(gemm.OP, gemm.GemmGeometry(a_pixels, g.filters, g.c, 1, "col",
                                                    epilogue), args)
        return Layer(self, g, args)

    def key(self, g: ConvGeometry) -> str:
        return (f"conv2d_f16_{g.epilogue.name}_{g.n}x{g.h}x{g.w}x{g.c}_k{g.filters}"
                f"r{g.r}s{g.s}_p{'x'.join(map(str, g.padding))}"
                f"_s{'x'.join(map(str, g.stride))}_d{'x'.join(map(str, g.dilation))}")

    def catalogue(self, g: ConvGeometry) -> tuple[CutlassTactic, ...]:
        return CATALOGUE

    def default_tactic(self, g: ConvGeometry) -> CutlassTactic:
        """The largest tile that still gives most SMs a tile."""
        m, n, _ = g.gemm_size
        for tactic in (_tactic(128, 128), _tactic(128, 64)):
            if tactic.tiles(m, n) >= SMS * 3 // 4:
                return tactic
        return _tactic(64, 64)

    def instance(self, g: ConvGeometry, t: CutlassTactic, arch: str) -> Instance:
        e = g.epilogue
        symbol = f"tvmopt_cutlass_conv2d_{e.name}_{t.name}"
        params = ", ".join([tensor_params(("a", "b", *e.roles)),
                            *(f"int64_t {p}" for p in PARAMS),
                            tensor_params(("workspace", "out"))])
        return Instance(symbol, instantiation(symbol, "conv_sm90.cuh", __name__, f"""
using Instance = tvmopt::ConvSm90<{t.tile}, {e.template}>;
static void Run({params}) {{
  Instance::Run("{symbol}", a, b, {e.pointers}, {{{", ".join(PARAMS)}}}, workspace, out);
}}"""))

    def params(self, g: ConvGeometry) -> tuple[int, ...]:
        values = (*g.padding, *g.stride, *g.dilation)
        assert len(values) == len(PARAMS)
        return values

    def work(self, g: ConvGeometry) -> int:
        m, n, k = g.gemm_size
        return m * n * k

    def describe(self, g: ConvGeometry) -> str:
        m, n, k = g.gemm_size
        stride = "" if g.stride == (1, 1) else f" stride {g.stride[0]}x{g.stride[1]}"
        return (f"conv2d {g.r}x{g.s}{stride} {g.n}x{g.h}x{g.w}x{g.c}->{g.filters} "
                f"(GEMM {m}x{n}x{k})")

    def inputs(self, g: ConvGeometry, args: dict, rng) -> dict[str, np.ndarray]:
        def uniform(shape, scale=1.0):
            return (rng.uniform(-1, 1, shape) * scale).astype(np.float16)

        arrays = {"a": uniform((g.n, g.h, g.w, g.c)),
                  "b": uniform((g.filters, g.r, g.s, g.c), 1 / np.sqrt(g.gemm_size[2]))}
        return epilogue_inputs(g.epilogue, args, arrays, self.output_shape(g), g.filters,
                               uniform)

    def output_shape(self, g: ConvGeometry) -> tuple[int, ...]:
        return (*g.output, g.filters)

    def reference(self, g: ConvGeometry, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """NHWC x OHWI in fp32, one filter tap at a time (no im2col copy of a batch-64 input)."""
        a, b = arrays["a"].astype(np.float32), arrays["b"].astype(np.float32)
        n, p, q = g.output
        top, left, bottom, right = g.padding
        padded = np.pad(a, ((0, 0), (top, bottom), (left, right), (0, 0)))
        out = np.zeros((n, p, q, g.filters), np.float32)
        for i in range(g.r):
            for j in range(g.s):
                y, x = i * g.dilation[0], j * g.dilation[1]
                window = padded[:, y:y + (p - 1) * g.stride[0] + 1:g.stride[0],
                                x:x + (q - 1) * g.stride[1] + 1:g.stride[1]]
                out += window @ b[:, i, j, :].T
        return g.epilogue.apply(out, arrays)

    def geometry_from_dict(self, d: dict) -> ConvGeometry:
        return ConvGeometry(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
                               if k != "epilogue"}, epilogue=Epilogue(**d["epilogue"]))


def _geometry(conv, epilogue: Epilogue) -> ConvGeometry | None:
    """The geometry of an NHWC/OHWI conv without groups (what the library runs), else None."""
    attrs = conv.attrs
    if not (attrs.data_layout == "NHWC" and attrs.kernel_layout == "OHWI"
            and attrs.out_layout == "NHWC" and int(attrs.groups) == 1):
        return None
    n, h, w, c = relax_match.static_shape(conv.args[0])
    filters, r, s, _ = relax_match.static_shape(conv.args[1])
    padding = tuple(int(v) for v in attrs.padding)
    if len(padding) == 2:
        padding = padding * 2
    return ConvGeometry(n, h, w, c, filters, r, s, padding, tuple(int(v) for v in attrs.strides),
                        tuple(int(v) for v in attrs.dilation), epilogue)


def _check(context) -> bool:
    if relax_match.leaks(context):
        return False
    notes = context.annotated_expr
    a, b, out = notes["a"], notes["b"], context.matched_expr
    try:
        out_shape = relax_match.static_shape(out)
        g = _geometry(notes["anchor"], Epilogue())
    except ValueError:
        return False
    if any(relax_match.dtype(e) != "float16" for e in (a, b, out)):
        return False
    if g is None or not (g.pointwise or g.im2col_loadable()):
        return False
    if g.filters % ALIGNMENT or g.c % ALIGNMENT:
        return False
    return check_epilogue(context, g.filters, out_shape)


OP = Conv2d()
