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
