"""The RMS-norm op: Relax's `nn.rms_norm` over the last dimension in fp16 (Llama's, T5's and
Qwen's norms, which the `rms-norms` graph pass folds into one op), on the layer-norm kernel
(`csrc/layer_norm.cuh`) without centring: out = x / sqrt(mean(x^2) + eps) * gamma.

`symbol(x, gamma, eps, workspace, out)`; rows and the row length are read at run time.
"""

from __future__ import annotations

from . import layer_norm


class RmsNorm(layer_norm.LayerNorm):
    name = "rms_norm"
    roles = ("x", "gamma")
    relax_op = "relax.nn.rms_norm"
    centre = False

    def check(self, context) -> bool:
        return layer_norm.normalises_rows(context, self.roles)


OP = RmsNorm()
