"""A toy kernel-library op: Relax's relu(x + bias) in fp16 on a one-file CUDA kernel
(`bias_relu.cuh` beside this file). The tests register it with one line, as a real op is
registered in `tvmopt/kernels/library/registry.py`: proof that an op is one module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvmopt.kernels.library import relax_match
from tvmopt.kernels.library.instance import Instance, instantiation, tensor_params
from tvmopt.kernels.library.op import Layer, Match, Op, Pattern

HEADER = Path(__file__).with_name("bias_relu.cuh")


@dataclass(frozen=True)
class Threads:
    count: int

    @property
    def name(self) -> str:
        return f"threads{self.count}"


@dataclass(frozen=True)
class BiasReluGeometry:
    rows: int
    width: int


class BiasRelu(Op):
    name = "bias_relu"
    roles = ("x", "bias")
    geometry_type = BiasReluGeometry

    def __init__(self, header: Path = HEADER):
        self.header = header  # a test may compile a changed copy

    def patterns(self) -> list[Pattern]:
        from tvm.relax.dpl.pattern import is_op, wildcard

        notes = {"x": wildcard(), "bias": wildcard()}
        pattern = is_op("relax.nn.relu")(is_op("relax.add")(notes["x"], notes["bias"]))
        return [Pattern("bias_relu", pattern, notes, _check, 1)]

    def layer(self, match: Match) -> Layer:
        (add,) = match.calls("relax.add")
        x, bias = add.args
        *lead, width = relax_match.static_shape(x)
        args = {"x": match.params[x], "bias": match.params[bias]}
        return Layer(self, BiasReluGeometry(relax_match.numel(lead), width), args)

    def key(self, g: BiasReluGeometry) -> str:
        return f"bias_relu_f16_{g.rows}x{g.width}"

    def catalogue(self, g: BiasReluGeometry) -> tuple[Threads, ...]:
        return Threads(256), Threads(128)

    def default_tactic(self, g: BiasReluGeometry) -> Threads:
        return Threads(256)

    def parse_tactic(self, name: str) -> Threads:
        return Threads(int(name.removeprefix("threads")))

    def instance(self, g: BiasReluGeometry, t: Threads, arch: str) -> Instance:
        symbol = f"toy_bias_relu_{t.name}"
        return Instance(symbol, instantiation(symbol, str(self.header), __name__, f"""
static void Run({tensor_params(("x", "bias", "workspace", "out"))}) {{
  toy::Run<{t.count}>("{symbol}", x, bias, out);
}}"""))

    def work(self, g: BiasReluGeometry) -> int:
        return g.rows * g.width

    def describe(self, g: BiasReluGeometry) -> str:
        return f"bias + ReLU {g.rows}x{g.width}"

    def inputs(self, g: BiasReluGeometry, args: dict, rng) -> dict[str, np.ndarray]:
        return {"x": rng.standard_normal((g.rows, g.width)).astype(np.float16),
                "bias": rng.standard_normal(g.width).astype(np.float16)}

    def output_shape(self, g: BiasReluGeometry) -> tuple[int, ...]:
        return g.rows, g.width

    def reference(self, g: BiasReluGeometry, arrays: dict[str, np.ndarray]) -> np.ndarray:
        return np.maximum(arrays["x"].astype(np.float32) + arrays["bias"].astype(np.float32), 0)


def _check(context) -> bool:
    notes = context.annotated_expr
    try:
        x, bias = (relax_match.static_shape(notes[r]) for r in ("x", "bias"))
    except ValueError:
        return False
    return (not relax_match.leaks(context) and bias == x[-1:]
            and all(relax_match.dtype(notes[r]) == "float16" for r in ("x", "bias")))


OP = BiasRelu()
