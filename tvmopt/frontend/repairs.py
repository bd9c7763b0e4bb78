"""Mend, in memory, exporter bugs that make a model fail ONNX's checker although its meaning is
clear, and say what was mended. Loading applies these before the checker runs (so they cannot
wait for normalisation, which comes after the input shapes are fixed); the build records each
line in the manifest's normalisation list.

Known today: Split nodes carrying opset 18's `num_outputs` in an older-opset model.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import TvmoptError
from .specs import model_opset


def repair(model: onnx.ModelProto) -> list[str]:
    """Every known exporter bug mended in `model` (modified in place): one line each."""
    return _split_num_outputs(model)


def _split_num_outputs(model: onnx.ModelProto) -> list[str]:
    """Split nodes carrying opset 18's `num_outputs` in an older-opset model (some torch 2.11
    exports): the attribute goes, and its meaning becomes the explicit `split` sizes."""
    opset = model_opset(model)
    broken = [n for n in model.graph.node if n.op_type == "Split" and n.domain in ("", "ai.onnx")
              and any(a.name == "num_outputs" for a in n.attribute)]
    if opset >= 18 or not broken:
        return []
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        shapes = {vi.name: vi.type.tensor_type.shape for vi in (
            *inferred.graph.input, *inferred.graph.value_info)}
    except Exception:  # noqa: BLE001 - shapes only make the repair exact; it works without
        shapes = {}
    shapes.update({t.name: onnx.TensorShapeProto(dim=[onnx.TensorShapeProto.Dimension(
        dim_value=d) for d in t.dims]) for t in model.graph.initializer})
    repaired = []
    for node in broken:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        parts, given = int(attrs["num_outputs"]), len(node.output)
        name = node.name or node.output[0]
        if parts != given:
            raise TvmoptError(f"Split node {name!r} says num_outputs={parts} but has {given} "
                              "outputs (and num_outputs needs opset 18); re-export the model")
        kept = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(kept)
        has_sizes = "split" in attrs or (len(node.input) > 1 and node.input[1])
        size = _dim(shapes.get(node.input[0]), int(attrs.get("axis", 0)))
        if has_sizes:
            how = "kept its split sizes"
        elif size is None or size % parts == 0:
            how = f"split into {parts} equal parts"  # what an opset-13 Split without sizes does
        else:  # opset 18: parts of ceil(size / parts), the last one smaller
            chunk = -(-size // parts)
            sizes = [min(chunk, size - i * chunk) for i in range(parts)]
            how = f"split {size} as {sizes}"
            if opset >= 13:
                const = f"{name}/split_sizes"
                model.graph.initializer.append(onnx.numpy_helper.from_array(
                    np.array(sizes, np.int64), const))
                del node.input[1:]
                node.input.append(const)
            else:
                node.attribute.append(onnx.helper.make_attribute("split", sizes))
        repaired.append(f"Split node {name!r}: opset-18 attribute num_outputs={parts} in an "
                        f"opset-{opset} model; {how}")
    return repaired


def _dim(shape, axis: int) -> int | None:
    if shape is None or not shape.dim:
        return None
    dim = shape.dim[axis]
    return dim.dim_value if dim.HasField("dim_value") else None
