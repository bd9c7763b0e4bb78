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
    """ConvertLayout's per-call choice: packed layouts for ungrouped convs (TVM keeps a conv
    whose channels fill no whole block in NCHW), NCHW for grouped ones, which TOPI's packed conv
    cannot compute; other ops follow their inputs. A block is the fp32 lanes of one SIMD register
    (AVX-512: 16, AVX2: 8, NEON/SSE: 4)."""
    from .cpu_simd import vector_lanes

    block = vector_lanes(target)
    packed = {"relax.nn.conv2d": [f"NCHW{block}c", f"OIHW{block}i{block}o"]}
    plain = {"relax.nn.conv2d": ["NCHW", "OIHW"]}

    def choose(call):
        if getattr(call.op, "name", None) != "relax.nn.conv2d":
            return {}
        return packed if int(call.attrs.groups) == 1 else plain

    return choose


def legalize_conv2d(bb, call):
    """LegalizeOps' rule for conv2d: packed layouts through `topi.nn.conv2d_NCHWc`, the rest as
    TVM legalizes them."""
    import tvm
    from tvm import topi

    attrs = call.attrs
    if not PACKED.fullmatch(str(attrs.data_layout)):
        default = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")
        return default(bb, call)
    return bb.call_te(topi.nn.conv2d_NCHWc, call.args[0], call.args[1], attrs.strides,
                      attrs.padding, attrs.dilation, str(attrs.data_layout), str(attrs.out_layout),
                      str(call.ty.dtype), primfunc_name_hint="conv2d_NCHWc")
