"""Ops the ONNX standard defines by a function body that TVM's importer cannot convert, written
out as that body.

TVM 0.27 registers its converter for com.microsoft's `Attention` (a packed QKV projection with a
`num_heads` attribute) under the name `Attention` in every domain, so ONNX's own opset-23
`Attention` (what PyTorch's dynamo exporter emits for `scaled_dot_product_attention` at opset 23)
fails in it with "'num_heads'". The standard defines that op by a context-dependent function
(its body depends on the node's attributes and input types): the nodes here are ONNX's own
decomposition, so its semantics (3-D or 4-D inputs, grouped K/V heads, causal and boolean or
additive masks, scale, softcap, a past K/V cache) are the standard's. The body's shape
arithmetic is folded away by the constant folding that follows.
"""

from __future__ import annotations

import onnx
from onnx import defs, shape_inference

# {op type in the default domain: why TVM's importer cannot take it as it stands}
EXPANDED = {"Attention": "TVM converts com.microsoft's Attention under this name"}


def expand_functions(model: onnx.ModelProto) -> dict[str, int]:
    """Replace each node of an EXPANDED op by its function body, in place; {op: count}."""
    graph = model.graph
    if not any(n.op_type in EXPANDED and n.domain in ("", "ai.onnx") for n in graph.node):
        return {}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    inferred = shape_inference.infer_shapes(model)
    types = {v.name: v.type for v in (*inferred.graph.input, *inferred.graph.value_info,
                                       *inferred.graph.output)}
    types.update((t.name, onnx.helper.make_tensor_type_proto(t.data_type, t.dims))
                 for t in graph.initializer)
    nodes, counts = [], {}
    for i, node in enumerate(graph.node):
        if node.op_type not in EXPANDED or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        nodes.extend(_body(node, opset, types, prefix=f"_tvmopt_{node.op_type}{i}_"))
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    del graph.node[:]
    graph.node.extend(nodes)
    return counts


def _body(node, opset: int, types: dict, prefix: str) -> list:
    """The node's function body with its formal inputs and outputs renamed to the node's and
    every internal name prefixed (unique in the graph)."""
    schema = defs.get_schema(node.op_type, opset, domain=node.domain)
    missing = [name for name in node.input if name and name not in types]
    if missing:
        raise ValueError(f"{node.op_type} node {node.name!r}: no type is known for {missing}")
    body = onnx.FunctionProto()
    body.ParseFromString(schema.get_context_dependent_function_with_opset_version(
        schema.since_version, node.SerializeToString(),
        [types[name].SerializeToString() if name else b"" for name in node.input]))
    renamed = {formal: actual for formal, actual in zip(body.input, node.input)}
    renamed.update((formal, actual) for formal, actual in zip(body.output, node.output) if actual)

    def rename(name: str) -> str:
        return renamed.get(name, prefix + name) if name else ""

    out = []
    for inner in body.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        copy.input[:] = [rename(n) for n in inner.input]
        copy.output[:] = [rename(n) for n in inner.output]
        copy.name = prefix + (inner.name or f"{inner.op_type}{len(out)}")
        out.append(copy)
    return out
