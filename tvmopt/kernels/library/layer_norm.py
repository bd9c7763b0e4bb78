"""The layer-norm op: Relax's `nn.layer_norm` over the last dimension in fp16 (as the
`fp16-activations` pass leaves transformers' layer norms), on `csrc/layer_norm.cuh`: a warp per
row, the row in registers, fp32 statistics, each element read and written once. TVM's default
schedule for it took 3.6-4.3 us per call on an H100 (GPT-2, ViT-B/16: 25 calls a model).
`rms_norm.py` is the same op without centring.

`symbol(x, gamma, beta, eps, workspace, out)`; rows and the row length are read from the tensors
at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import relax_match
from .instance import Instance, instantiation, tensor_params
from .op import Layer, Match, Op, Pattern

MAX_CHUNKS = 16  # 8-element chunks per lane: rows up to 32 * 8 * 16 = 4096 elements


@dataclass(frozen=True)
class RowsPerBlock:
    """Rows (a warp each) per CTA."""
    warps: int

    @property
    def name(self) -> str:
        return f"rows{self.warps}"

    @classmethod
    def parse(cls, name: str) -> "RowsPerBlock":
        if not name.startswith("rows") or not name[4:].isdigit():
            raise ValueError(f"not a layer-norm tactic: {name}")
        return cls(int(name[4:]))


CATALOGUE = (RowsPerBlock(4), RowsPerBlock(8), RowsPerBlock(2))


@dataclass(frozen=True)
class LayerNormGeometry:
    rows: int
    cols: int
    eps: float

    @property
    def chunks(self) -> int:
        """The instance's chunks per lane: the power of two that holds a row."""
        need, chunks = -(-self.cols // 256), 1
        while chunks < need:
            chunks *= 2
        return chunks


class LayerNorm(Op):
    name = "layer_norm"
    roles = ("x", "gamma", "beta")
    geometry_type = LayerNormGeometry
    relax_op = "relax.nn.layer_norm"
    centre = True  # subtract the mean and add beta (RMS normalisation does neither)

    def patterns(self) -> list[Pattern]:
        from tvm.relax.dpl.pattern import is_op, wildcard

        notes = {role: wildcard() for role in self.roles}
        pattern = is_op(self.relax_op)(*notes.values())
        return [Pattern(self.name, pattern, notes, self.check, 1)]

    def check(self, context) -> bool:
        """fp16 tensors, normalised over the last dimension only, with scale and centre, rows
        of a multiple of 8 the kernel holds."""
        norm = context.matched_expr
        return (bool(norm.attrs.center) and bool(norm.attrs.scale)
                and normalises_rows(context, self.roles))

    def layer(self, match: Match) -> Layer:
        (norm,) = match.calls(self.relax_op)
        args = {role: match.params[a] for role, a in zip(self.roles, norm.args)}
        return Layer(self, _geometry(norm), args)

    def key(self, g: LayerNormGeometry) -> str:
        return f"{self.name}_f16_{g.rows}x{g.cols}"

    def catalogue(self, g: LayerNormGeometry) -> tuple[RowsPerBlock, ...]:
        return CATALOGUE

    def default_tactic(self, g: LayerNormGeometry) -> RowsPerBlock:
        return CATALOGUE[0]

    def parse_tactic(self, name: str) -> RowsPerBlock:
        return RowsPerBlock.parse(name)

    def instance(self, g: LayerNormGeometry, t: RowsPerBlock, arch: str) -> Instance:
        symbol = f"tvmopt_{self.name}_{t.name}_chunks{g.chunks}"
        beta = "&beta" if self.centre else "nullptr"
        return Instance(symbol, instantiation(symbol, "layer_norm.cuh", __name__, f"""
static void Run({tensor_params(self.roles)}, double eps, {tensor_params(("workspace", "out"))}) {{
  tvmopt::layer_norm::Run<{str(self.centre).lower()}, {t.warps}, {g.chunks}>(
      "{symbol}", x, gamma, {beta}, eps, out);
}}"""))

    def params(self, g: LayerNormGeometry) -> tuple[float, ...]:
        return (g.eps,)

    def work(self, g: LayerNormGeometry) -> int:
        return g.rows * g.cols

    def describe(self, g: LayerNormGeometry) -> str:
        return f"{self.name.replace('_', ' ')} {g.rows}x{g.cols}, eps {g.eps:g}"

    def inputs(self, g: LayerNormGeometry, args: dict, rng) -> dict[str, np.ndarray]:
        arrays = {"x": (rng.standard_normal((g.rows, g.cols)) * 2 + 1).astype(np.float16),
                  "gamma": rng.uniform(0.5, 1.5, g.cols).astype(np.float16),
                  "beta": rng.standard_normal(g.cols).astype(np.float16)}
        return {role: arrays[role] for role in self.roles}

    def output_shape(self, g: LayerNormGeometry) -> tuple[int, ...]:
        return g.rows, g.cols

    def reference(self, g: LayerNormGeometry, arrays: dict[str, np.ndarray]) -> np.ndarray:
        x = arrays["x"].astype(np.float32).reshape(-1, g.cols)
        centred = x - x.mean(axis=-1, keepdims=True) if self.centre else x
        normed = centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + g.eps)
        beta = arrays["beta"].astype(np.float32) if self.centre else 0.0
        return normed * arrays["gamma"].astype(np.float32) + beta


def _geometry(norm) -> LayerNormGeometry:
    shape = relax_match.static_shape(norm.args[0])
    return LayerNormGeometry(relax_match.numel(shape[:-1]), shape[-1],
                             float(norm.attrs.epsilon))


def normalises_rows(context, roles) -> bool:
    """fp16 `roles`, normalised over the last dimension only, the vectors of its size, rows of a
    multiple of 8 the kernel holds."""
    notes = context.annotated_expr
    norm = context.matched_expr
    try:
        x = relax_match.static_shape(notes["x"])
        vectors = {relax_match.static_shape(notes[r]) for r in roles if r != "x"}
    except ValueError:
        return False
    axes = [int(a) % len(x) for a in norm.attrs.axes]
    return (axes == [len(x) - 1] and vectors == {(x[-1],)} and x[-1] % 8 == 0
            and x[-1] <= 256 * MAX_CHUNKS
            and all(relax_match.dtype(notes[r]) == "float16" for r in roles))


OP = LayerNorm()
