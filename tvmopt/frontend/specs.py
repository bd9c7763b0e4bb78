"""What an ONNX graph declares about itself, read without changing it: its inputs' and outputs'
tensor specs, its opset, and its nodes (subgraphs included).

Every later step of the frontend asks these questions, and `TensorSpec` travels on to the build
and the runtime, so they live apart from loading and from import.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .dtypes import dtype_name

Dim = int | str  # a fixed size, or the name of a symbolic (dynamic) dimension


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


def _value_info_spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    tt = vi.type.tensor_type
    dims: list[Dim] = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))  # 0 too: an empty tensor, refused in resolve_inputs
        else:
            dims.append(d.dim_param or f"{vi.name}_dim{i}")
    return TensorSpec(vi.name, tuple(dims), dtype_name(tt.elem_type))


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The real inputs: old exports also list every initializer as a graph input."""
    initializers = {i.name for i in model.graph.initializer}
    return [_value_info_spec(vi) for vi in model.graph.input if vi.name not in initializers]


def graph_outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_value_info_spec(vi) for vi in model.graph.output]


def model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return onnx.defs.onnx_opset_version()


def all_nodes(graph: onnx.GraphProto):
    """Every node of the graph and, depth first, of the subgraphs its nodes hold (If, Loop...)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attr.g)
            for g in attr.graphs:
                yield from all_nodes(g)
