"""The ops the kernel library runs, in the order their patterns are tried: adding an op is one
module implementing `op.Op` and one line here.

Order matters where patterns overlap: an earlier op takes its matches first (attention's two
matmuls would otherwise match as GEMMs).
"""

from __future__ import annotations

import json

from . import attention, conv2d, gemm, layer_norm, rms_norm
from .op import Layer, Op, Pattern

OPS: list[Op] = [
    attention.OP,
    gemm.OP,
    conv2d.OP,
    layer_norm.OP,
    rms_norm.OP,
]


def op_named(name: str) -> Op:
    for op in OPS:
        if op.name == name:
            return op
    raise KeyError(f"no kernel-library op {name!r}")


def patterns() -> list[tuple[Op, Pattern]]:
    """Every op's patterns in the order FuseOpsByPattern should try them: by op, then the most
    specific first."""
    return [(op, p) for op in OPS for p in sorted(op.patterns(), key=lambda p: -p.parts)]


def layer_from_json(text: str) -> Layer:
    d = json.loads(text)
    op = op_named(d["op"])
    return Layer(op, op.geometry_from_dict(d["geometry"]), d["args"])
