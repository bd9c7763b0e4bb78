"""Which ONNX ops tvmopt can import: those TVM's ONNX importer converts, and those normalisation
rewrites into such ops before import. `tvmopt inspect` lists the rest, and import refuses a model
that has any, naming them, rather than failing inside TVM.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .col2im import OPS as REWRITTEN_OPS
from .recurrent import GATES
from .specs import all_nodes


@dataclass(frozen=True)
class UnsupportedNode:
    node: str
    op_type: str


def _supported_ops() -> set[str]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    # Constant and If are handled by the importer itself rather than through its converter map;
    # recurrent layers are unrolled, and Col2Im written as a ConvTranspose, before import.
    return set(_get_convert_map()) | {"Constant", "If"} | set(GATES) | REWRITTEN_OPS


def unsupported_nodes(model: onnx.ModelProto) -> list[UnsupportedNode]:
    supported = _supported_ops()
    return [
        UnsupportedNode(node.name or f"#{i}", node.op_type)
        for i, node in enumerate(all_nodes(model.graph))
        if node.op_type not in supported
    ]
