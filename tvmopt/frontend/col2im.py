"""ONNX Col2Im (opset 18; torch's `F.fold` as the dynamo exporter writes it), which TVM's importer
has no converter for, written in ONNX ops it has: normalisation calls this before import."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import TvmoptError

OPS = frozenset({"Col2Im"})

_FLOAT_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
                 onnx.TensorProto.DOUBLE: np.float64}


def as_conv_transpose(model) -> int:
    """Col2Im -> Reshape + a grouped ConvTranspose by a one-hot kernel (exact; TVM has no Col2Im).

    Col2Im sums the blocks of its (N, C*K, L) input, K = prod(block_shape), into an
    (N, C, *image_shape) image: value k of channel c in column (l1, l2, ...) is added at
    l * strides + k * dilations - pads_begin. Laid out on the (L1, L2, ...) grid of columns, that
    is a ConvTranspose with C groups of K input channels, whose kernel holds, for input channel
    c*K + k, a single 1 at block position k; strides, dilations and pads carry over, and
    output_padding gives back the rows no block reaches. Needs image_shape and block_shape as
    constants (constant folding makes shape arithmetic so once the input dims are fixed).
    """
    graph = model.graph
    if not any(_is_col2im(n) for n in graph.node):
        return 0
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    infos = {vi.name: vi for vi in (*graph.input, *graph.value_info, *graph.output)}
    nodes, count = [], 0
    for node in graph.node:
        if not _is_col2im(node):
            nodes.append(node)
            continue
        count += 1
        tag = node.name or node.output[0]
        image, block = (_constant_ints(constants, node.input[i], tag, what)
                        for i, what in ((1, "image_shape"), (2, "block_shape")))
        rank = len(image)
        attrs = {a.name: list(helper.get_attribute_value(a)) for a in node.attribute}
        strides = attrs.get("strides", [1] * rank)
        dilations = attrs.get("dilations", [1] * rank)
        pads = attrs.get("pads", [0] * 2 * rank)
        if not 1 <= rank <= 3 or any(len(v) != rank for v in (block, strides, dilations)) \
                or len(pads) != 2 * rank:
            raise TvmoptError(f"Col2Im node {tag!r}: image_shape {image}, block_shape {block}, "
                              "strides, dilations and pads disagree on the number of spatial "
                              "dims, or there are more than 3; re-export the model")
        spans = [size + pads[i] + pads[i + rank] - dilations[i] * (block[i] - 1) - 1
                 for i, size in enumerate(image)]
        if min(spans) < 0:
            raise TvmoptError(f"Col2Im node {tag!r}: a block of {block} (dilations {dilations}) "
                              f"does not fit in the padded image {image}; re-export the model")
        grid = [span // stride + 1 for span, stride in zip(spans, strides)]
        leftover = [span % stride for span, stride in zip(spans, strides)]
        blocks = int(np.prod(block))
        dims, elem_type = _dims_and_type(infos.get(node.input[0]))
        if elem_type not in _FLOAT_DTYPES:
            dtype = onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "unknown"
            raise TvmoptError(f"Col2Im node {tag!r}: its input's type is {dtype}; tvmopt builds "
                              "Col2Im (F.fold) on float32, float16 and float64 tensors")
        if len(dims) != 3 or not isinstance(dims[1], int) or dims[1] % blocks:
            raise TvmoptError(f"Col2Im node {tag!r}: its input's channel dim (C x {blocks} block "
                              f"positions) is not known statically (shape {dims}); fix the input "
                              "sizes with --input-shape")
        if isinstance(dims[2], int) and dims[2] != int(np.prod(grid)):
            raise TvmoptError(f"Col2Im node {tag!r}: {dims[2]} columns given, but image {image} "
                              f"holds {int(np.prod(grid))} blocks of {block}; re-export the model")
        channels = dims[1] // blocks
        one_hot = np.eye(blocks, dtype=_FLOAT_DTYPES[elem_type]).reshape(blocks, 1, *block)
        kernel, grid_shape, columns = f"{tag}/col2im_kernel", f"{tag}/col2im_grid", f"{tag}/columns"
        graph.initializer.extend([
            numpy_helper.from_array(np.tile(one_hot, (channels, 1) + (1,) * rank), kernel),
            numpy_helper.from_array(np.array([0, 0, *grid], np.int64), grid_shape)])
        extra = {"output_padding": leftover} if any(leftover) else {}
        nodes += [
            helper.make_node("Reshape", [node.input[0], grid_shape], [columns],
                             name=f"{tag}/to_grid"),
            helper.make_node("ConvTranspose", [columns, kernel], [node.output[0]], name=tag,
                             group=channels, kernel_shape=block, strides=strides,
                             dilations=dilations, pads=pads, **extra),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _is_col2im(node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type == "Col2Im"


def _constant_ints(constants: dict, name: str, tag: str, what: str) -> list[int]:
    if name not in constants:
        raise TvmoptError(f"Col2Im node {tag!r}: its {what} is computed in the graph; tvmopt "
                          "builds Col2Im (F.fold) with a constant output size and kernel size: "
                          "fix the input sizes with --input-shape, or export with constant sizes")
    return [int(v) for v in numpy_helper.to_array(constants[name]).reshape(-1)]


def _dims_and_type(vi) -> tuple[list, int]:
    """A value's dims (an int where known, else None) and element type (0: unknown)."""
    if vi is None:
        return [], 0
    tt = vi.type.tensor_type
    return ([d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if tt.HasField("shape") else []), tt.elem_type
