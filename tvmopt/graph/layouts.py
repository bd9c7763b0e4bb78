"""Layout passes: which memory layout each conv runs in, and the legalisation that lowers the
packed convs to their kernel.

- layout-nhwc (`--layout NHWC`): conv2d to NHWC/OHWI, the layout the kernel library's GPU convs
  take;
- layout-nchwc (CPUs, NCHW): conv2d to NCHW{b}c with weights packed to OIHW{b}i{b}o at build time
  (`tvmopt.kernels.packed_conv` decides the block and which ops can follow it);
- legalize: Relax ops to TIR kernels, packed convs to conv2d_NCHWc.

Each layout pass checks its result is well-formed Relax, so that a failure leaves the module as
it was (the pipeline then says the convs stay NCHW) instead of a broken module failing later.
"""

from __future__ import annotations

from .relax_helpers import each_relax_function, op_names, well_formed_or_raise


def nhwc_passes(relax, target):
    import tvm

    # conv2d_transpose would follow its NHWC input, and TVM lowers it in NCHW/IOHW only (the
    # build then fails in VM codegen): it stays NCHW, transposes at its boundary.
    return [well_formed_or_raise(tvm.transform.Sequential([
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"],
                                       "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}),
        relax.transform.FoldConstant(),  # transpose the constant weights once, at build time
    ]), "NHWCLayouts")]


def packed_conv_passes(relax, target):
    import tvm

    from ..kernels import packed_conv

    if relax.pipeline.BackendDispatcher.is_gpu_target(target):
        return []
    convert = well_formed_or_raise(tvm.transform.Sequential([
        # ops whose layout inference mishandles packed inputs read NCHW (packed_conv.FOLLOW_*)
        each_relax_function("FenceUnpackedOps", packed_conv.fence_mutator()),
        relax.transform.ConvertLayout({}, packed_conv.layouts_for(target)),
        each_relax_function("RemoveFences", packed_conv.unfence_mutator()),
        relax.transform.CanonicalizeBindings(),
        relax.transform.FoldConstant(),  # pack the constant weights once, at build time
        relax.transform.EliminateCommonSubexpr(),  # one packing of a tensor two convs read
    ]), "PackedConvLayouts")

    @tvm.transform.module_pass(opt_level=0, name="PackedConvLayoutsWhenConvs")
    def when_convs(mod, _ctx):
        # Without convs ConvertLayout only adds work: it transposes even a 0-d reduction result.
        has_conv = any("relax.nn.conv2d" in op_names(mod, gv) for gv, func in mod.functions.items()
                       if isinstance(func, relax.Function))
        return convert(mod) if has_conv else mod

    return [when_convs]


def legalize_passes(relax, target):
    from ..kernels import packed_conv

    return [
        relax.transform.LegalizeOps({"relax.nn.conv2d": packed_conv.legalize_conv2d}),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
    ]
