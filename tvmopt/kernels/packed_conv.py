"""Packed convolutions for CPUs: NCHW{b}c activations and OIHW{b}i{b}o weights, b the SIMD width.

In NCHW a conv's contiguous output axis is its width: 7 at ResNet's last stage, so a 16-lane
AVX-512 vector is half empty, and every weight is a scalar broadcast. Packed, the innermost axis
is b output channels: every vector is full whatever the image size, the weights of one input
channel are one vector load, and an input value is broadcast to all of them. This is the layout of
ONNX Runtime's and oneDNN's CPU convolutions. The graph pipeline converts to it (`layout-nchwc`),
folding the weights' packing into constants at build time; here packed conv2d calls are lowered to
TOPI's `conv2d_NCHWc`, which `cpu_gemm` then tiles like any other conv.
"""

from __future__ import annotations

import re

PACKED = re.compile(r"NCHW\d+c")


def layouts_for(target):
    """ConvertLayout's per-call choice: packed layouts for ungrouped convs, NCHW for grouped ones,
    which TOPI's packed conv cannot compute; other ops follow their inputs. A block is the fp32
    lanes of one SIMD register (AVX-512: 16, AVX2: 8, NEON/SSE: 4).

    A conv whose input channels fill no block (a network's stem, reading 3 colour channels) reads
    NCHW and writes packed output: packing its input would be a transpose to a mostly empty block,
    and converting its output after it a pass over the network's largest activation. TVM keeps
    convs whose output channels fill no block in NCHW."""
    from .cpu_simd import vector_lanes

    block = vector_lanes(target)
    packed = {"relax.nn.conv2d": [f"NCHW{block}c", f"OIHW{block}i{block}o"]}
    packed_output = {"relax.nn.conv2d": ["NCHW", f"OIHW{block}o", f"NCHW{block}c"]}
    plain = {"relax.nn.conv2d": ["NCHW", "OIHW"]}

    def choose(call):
        if getattr(call.op, "name", None) != "relax.nn.conv2d":
            return {}
        if int(call.attrs.groups) != 1:
            return plain
        in_channels = call.args[1].ty.shape[1]
        if str(call.attrs.kernel_layout) == "OIHW" and int(in_channels) % block:
            return packed_output
        return packed

    return choose


# What ConvertLayout carries in NCHW{b}c. TVM infers an op's layout from its inputs' (its
# FRelaxInferLayout), and for packed inputs several of those inferences are wrong in TVM 0.27:
# a split by indices keeps its channel indices unscaled (32 channels, 2 blocks, split at 16: a
# 0-channel second half); conv2d_transpose makes a 4-D layout of the 5-D one ("Layouts must have
# the same size"); layer, group and instance norms fail on it; channel reductions with keepdims
# and binary ops with a 1-channel operand (a spatial attention map) give 5-D results to 4-D ops;
# comparisons give packed bool tensors whose layout transform cannot be lowered. So only the ops
# below follow a packed input, under the conditions `follows_packed` checks; every other op with a
# layout inference reads its tensors through a fence (`fence_mutator`), which makes ConvertLayout
# hand it NCHW, with a layout_transform at the boundary, and is removed after
# (`unfence_mutator`). Ops without a layout inference (reshape, matmul, clip, pad, ...) get NCHW
# from ConvertLayout itself.
FOLLOW_UNARY = frozenset(f"relax.{name}" for name in (
    "abs", "acos", "acosh", "asin", "asinh", "astype", "atan", "atanh", "ceil", "cos", "cosh",
    "erf", "exp", "floor", "log", "negative", "round", "rsqrt", "sigmoid", "sign", "sin", "sinh",
    "sqrt", "square", "tan", "tanh", "trunc", "nn.relu", "nn.silu", "nn.gelu", "nn.gelu_tanh",
    "nn.selu"))
FOLLOW_BINARY = frozenset(f"relax.{name}" for name in (
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "power"))
FOLLOW_REDUCTION = frozenset(f"relax.{name}" for name in (
    "mean", "sum", "max", "min", "prod", "variance", "std"))
FOLLOW_POOL = frozenset(f"relax.nn.{name}" for name in (
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"))
# Ops whose layout inference fails whatever their inputs' layouts (stack: "Index -1 out of
# bounds"; dynamic_strided_slice: "Back optional access"): lowered to their TIR kernels before
# ConvertLayout, which then treats them as ops without layout inference.
LOWERED_BEFORE = frozenset(("relax.stack", "relax.dynamic_strided_slice"))
_CHANNEL_AXIS = 1


def _is_float_tensor(ty) -> bool:
    from tvm import relax

    return isinstance(ty, relax.TensorType) and str(ty.dtype) in ("float16", "float32")


def _float_results(ty) -> bool:
    from tvm import relax

    if isinstance(ty, relax.TupleType):
        return all(_float_results(field) for field in ty.fields)
    return _is_float_tensor(ty)


def split_by_sections(call):
    """A split by indices cutting its axis into equal pieces, as the same split by the number of
    pieces (a C2f block's channel halves, `x.split((c, c), 1)`), which ConvertLayout scales to
    blocks; other calls unchanged."""
    import tvm
    from tvm import relax

    if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.split"):
        return call
    points = call.attrs.indices_or_sections
    if isinstance(points, tvm.tirx.IntImm) or not isinstance(call.ty, relax.TupleType):
        return call
    extents = [field.shape[int(call.attrs.axis)] for field in call.ty.fields]
    if not all(isinstance(e, tvm.tirx.IntImm) for e in extents):
        return call
    if len({int(e) for e in extents}) != 1 or int(extents[0]) == 0:
        return call
    return relax.op.split(call.args[0], len(extents), int(call.attrs.axis))


def follows_packed(call) -> bool:
    """Whether ConvertLayout may give a call (of an op with a layout inference, in NCHW) packed
    inputs: the ops and conditions checked against TVM 0.27's inference, op by op."""
    import tvm
    import tvm_ffi
    from tvm import relax

    name = call.op.name
    if name in ("relax.nn.conv2d", "relax.concat"):  # conv2d: `layouts_for` decides
        return name == "relax.nn.conv2d" or _float_results(call.ty)
    if not _float_results(call.ty):
        return False
    if name in FOLLOW_UNARY:
        return True
    if name in FOLLOW_POOL:
        return str(call.attrs.layout) == "NCHW" and str(call.attrs.out_layout) == "NCHW"
    if name in FOLLOW_BINARY:
        # every operand of the result's rank has its channels (a bias of 1 x C x 1 x 1 does; a
        # 1-channel attention map does not); lower-rank operands only as constants, never packed
        rank = call.ty.ndim
        for arg in call.args:
            ty = arg.ty
            if not isinstance(ty, relax.TensorType) or ty.ndim == 0:
                continue
            if ty.ndim == rank and rank > _CHANNEL_AXIS:
                if not tvm_ffi.structural_equal(ty.shape[_CHANNEL_AXIS],
                                                call.ty.shape[_CHANNEL_AXIS]):
                    return False
            elif not isinstance(arg, tvm.ir.expr.Constant):
                return False
        return True
    if name in FOLLOW_REDUCTION:
        ndim = call.args[0].ty.ndim
        axes = call.attrs.axis
        return axes is not None and _CHANNEL_AXIS not in {int(a) % ndim for a in axes}
    if name == "relax.split":
        return (isinstance(call.attrs.indices_or_sections, tvm.tirx.IntImm)
                or int(call.attrs.axis) % call.args[0].ty.ndim != _CHANNEL_AXIS)
    return False


def fence_mutator():
    """The mutator class run before ConvertLayout: each call of an op with a layout inference
    that `follows_packed` refuses reads its tensor variables through a fence, an identity
    reshape (an op without layout inference, so ConvertLayout gives it NCHW input and output);
    equal-piece splits by indices become splits by sections first, and LOWERED_BEFORE ops their
    TIR kernels."""
    import tvm
    from tvm import relax

    inference = "FRelaxInferLayout"

    @relax.expr_functor.mutator
    class Fence(relax.PyExprMutator):
        def fence(self, arg):
            if isinstance(arg, relax.Tuple):
                return relax.Tuple([self.fence(field) for field in arg.fields])
            if not isinstance(arg, relax.Var):
                return arg
            if isinstance(arg.ty, relax.TupleType):
                return relax.Tuple([self.fence(self.builder_.emit(relax.TupleGetItem(arg, i)))
                                    for i in range(len(arg.ty.fields))])
            ty = arg.ty
            if isinstance(ty, relax.TensorType) and ty.ndim > 0 and ty.shape is not None:
                return self.builder_.emit(relax.op.reshape(arg, ty.shape), "fence")
            return arg

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call.op, tvm.ir.Op) or call.op.get_attr(inference) is None:
                return call
            if call.op.name in LOWERED_BEFORE and call.op.get_attr("FLegalize") is not None:
                return call.op.get_attr("FLegalize")(self.builder_, call)
            call = self.builder_.normalize(split_by_sections(call))
            if follows_packed(call):
                return call
            return relax.Call(call.op, [self.fence(a) for a in call.args], call.attrs,
                              call.ty_args)

    return Fence


def unfence_mutator():
    """The mutator class undoing `fence_mutator`'s fences after ConvertLayout: a reshape to its
    input's own shape is its input."""
    import tvm
    import tvm_ffi
    from tvm import relax

    reshape = tvm.ir.Op.get("relax.reshape")

    @relax.expr_functor.mutator
    class Unfence(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op != reshape:
                return call
            source = call.args[0]
            if (isinstance(source.ty, relax.TensorType) and source.ty.shape is not None
                    and tvm_ffi.structural_equal(source.ty.shape, call.ty.shape)):
                return source
            return call

    return Unfence


def legalize_conv2d(bb, call):
    """LegalizeOps' rule for conv2d: packed layouts through `topi.nn.conv2d_NCHWc`, the rest as
    TVM legalizes them."""
    import tvm
    from tvm import topi

    attrs = call.attrs
    if PACKED.fullmatch(str(attrs.data_layout)):
        return bb.call_te(topi.nn.conv2d_NCHWc, call.args[0], call.args[1], attrs.strides,
                          attrs.padding, attrs.dilation, str(attrs.data_layout),
                          str(attrs.out_layout), str(call.ty.dtype),
                          primfunc_name_hint="conv2d_NCHWc")
    if str(attrs.data_layout) == "NCHW" and PACKED.fullmatch(str(attrs.out_layout)):
        return bb.call_te(_conv2d_nchw_to_packed, call.args[0], call.args[1], attrs.strides,
                          attrs.padding, attrs.dilation, call.ty.shape, str(call.ty.dtype),
                          primfunc_name_hint="conv2d_NCHW_to_NCHWc")
    default = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")
    return default(bb, call)


def _conv2d_nchw_to_packed(data, kernel, strides, padding, dilation, out_shape, out_dtype):
    """An ungrouped conv from NCHW input and OIHW{b}o weights to NCHW{b}c output, of the shape
    Relax inferred for the call."""
    from tvm import te, topi
    from tvm.topi.utils import get_const_tuple

    _, in_channels, kernel_h, kernel_w, _ = get_const_tuple(kernel.shape)
    stride_h, stride_w = (int(s) for s in strides)
    dilation_h, dilation_w = (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    padded = topi.nn.pad(data, (0, 0, top, left), (0, 0, bottom, right), name="data_pad")
    ic = te.reduce_axis((0, in_channels), name="ic")
    kh = te.reduce_axis((0, kernel_h), name="kh")
    kw = te.reduce_axis((0, kernel_w), name="kw")
    return te.compute(
        tuple(int(d) for d in out_shape),
        lambda b, oc, oh, ow, lane: te.sum(
            padded[b, ic, oh * stride_h + kh * dilation_h, ow * stride_w + kw * dilation_w]
            .astype(out_dtype) * kernel[oc, ic, kh, kw, lane].astype(out_dtype),
            axis=[ic, kh, kw]),
        name="conv2d_NCHW_to_NCHWc", tag="conv2d_NCHWc")
