"""Which layers the kernel library can run: Relax patterns matched after mixed precision and
before legalisation, so that each match becomes one fused kernel of its own.

A match is a GEMM-shaped anchor (a matmul, or a 1x1 stride-1 NHWC conv) in fp16 followed by the
epilogue the library fuses: bias, then an activation or a residual add (then ReLU). TVM still
compiles each match as an ordinary kernel (tuning tasks are unchanged); the module attribute
LAYERS_ATTR tells the build which kernels the library may replace and how to call it.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import asdict, dataclass

from .sources import Epilogue

log = logging.getLogger(__name__)

LAYERS_ATTR = "tvmopt_library_layers"
# The erf GELU's constants, by pattern role: they must hold these values for the match to count.
GELU_CONSTANTS = {"gelu_sqrt2": 2 ** 0.5, "gelu_one": 1.0, "gelu_half": 0.5}
ALIGNMENT = 8  # fp16 elements per 16-byte TMA access: K and N must be multiples of it


@dataclass(frozen=True)
class Layer:
    b_layout: str  # "row": B is [K, N]; "col": B is [N, K]
    epilogue: Epilogue
    args: dict  # {"a" | "b" | "bias" | "residual": index of the kernel argument}
    m: int
    n: int
    k: int
    batch: int

    @property
    def key(self) -> str:
        """What a tactic's time on this layer depends on: the tactic records' layer_key."""
        return (f"gemm_f16_{self.b_layout}_{self.epilogue.name}_{self.m}x{self.n}x{self.k}"
                f"x{self.batch}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Layer":
        d = json.loads(text)
        return cls(**{**d, "epilogue": Epilogue(**d["epilogue"])})


def layers(mod) -> dict[str, Layer]:
    """{kernel name: Layer} recorded by the partition pass (empty when it did not run)."""
    found = mod.attrs.get(LAYERS_ATTR, {}) if mod.attrs is not None else {}
    return {str(k): Layer.from_json(str(v)) for k, v in found.items()}


def partition_pass():
    """The graph pass: fold the weights' casts, group each match into a function, record it."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="PartitionKernelLibrary")
    def partition(mod, _ctx):
        mod = relax.transform.FoldConstant()(mod)
        mod = relax.transform.FuseOpsByPattern(_patterns(), bind_constants=False,
                                               annotate_codegen=False)(mod)
        found = {}
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function) and func.attrs and "Composite" in func.attrs:
                found[gv.name_hint] = _describe(func).to_json()
        if found:
            log.info("kernel library: %d layer(s) can run CUTLASS kernels", len(found))
            mod = mod.with_attr(LAYERS_ATTR, found)
        return mod

    return partition


def _patterns():
    """(name, pattern, annotations, check), longest first: FuseOpsByPattern takes the first."""
    from tvm.relax.dpl.pattern import is_op, wildcard

    out = []
    for anchor_op, cast, bias, reshape, tail in itertools.product(
            ("relax.matmul", "relax.nn.conv2d"), (True, False), (True, False), (True, False),
            ("residual_relu", "residual", "relu", "silu", "gelu", "none")):
        if tail.startswith("residual") and not bias:
            continue  # a residual alone would look like a bias of the output's shape
        if reshape and tail == "none":
            continue  # a trailing reshape is not the kernel's business
        a, b = wildcard(), wildcard()
        anchor = is_op(anchor_op)(a, b)
        x = is_op("relax.astype")(anchor) if cast else anchor
        notes = {"a": a, "b": b, "anchor": anchor}
        if bias:
            notes["bias"] = wildcard()
            x = _add(x, notes["bias"])
        if reshape:  # the importer computes [B, S, K] @ [K, N] as a 2-D matmul between reshapes
            x = is_op("relax.reshape")(x, wildcard())
        if tail.startswith("residual"):
            notes["residual"] = wildcard()
            x = _add(x, notes["residual"])
        if tail.endswith("relu"):
            x = is_op("relax.nn.relu")(x)
        elif tail == "silu":
            x = is_op("relax.multiply")(x, is_op("relax.sigmoid")(x))
        elif tail == "gelu":  # erf GELU as exported: x * (erf(x / sqrt(2)) + 1) * 0.5
            for role in GELU_CONSTANTS:
                notes[role] = wildcard()
            erf = is_op("relax.erf")(is_op("relax.divide")(x, notes["gelu_sqrt2"]))
            x = _mul(_mul(x, _add(erf, notes["gelu_one"])), notes["gelu_half"])
        epilogue = Epilogue(bias=bias, residual=tail.startswith("residual"),
                            activation={"residual_relu": "relu", "relu": "relu", "silu": "silu",
                                        "gelu": "gelu"}.get(tail, "none"))
        name = f"{anchor_op.split('.')[-1]}_{epilogue.name}" + ("_reshaped" if reshape else "")
        out.append((f"tvmopt_library.{name}", x, notes, _check))
    return sorted(out, key=lambda p: -p[0].count("_"))  # more parts: a longer chain


def _add(x, y):
    from tvm.relax.dpl.pattern import is_op

    return is_op("relax.add")(x, y) | is_op("relax.add")(y, x)


def _mul(x, y):
    from tvm.relax.dpl.pattern import is_op

    return is_op("relax.multiply")(x, y) | is_op("relax.multiply")(y, x)


def _scalar(expr, bindings) -> float | None:
    """The value of a scalar constant (seen through the variable it is bound to and a cast, as
    mixed precision leaves them), else None."""
    import tvm

    expr = bindings.get(expr, expr)
    if isinstance(expr, tvm.relax.Call) and expr.op.name == "relax.astype":
        expr = expr.args[0]
    return scalar_constant(expr)


def scalar_constant(expr) -> float | None:
    """The value of a one-element Relax constant, else None."""
    import tvm

    if not isinstance(expr, tvm.ir.expr.Constant) or expr.value.numpy().size != 1:
        return None
    return float(expr.value.numpy().reshape(()))


def _check(context) -> bool:
    from tvm.relax.backend.utils import has_leaking_intermediate_variables

    if has_leaking_intermediate_variables(context):
        return False
    notes = context.annotated_expr
    a, b, anchor = notes["a"], notes["b"], notes["anchor"]
    out = context.matched_expr
    try:
        a_shape, b_shape, out_shape = (_static_shape(e) for e in (a, b, out))
    except ValueError:
        return False
    if any(_dtype(e) != "float16" for e in (a, b, out)):
        return False
    if anchor.op.name == "relax.nn.conv2d":
        if not _is_pointwise_conv(anchor, b_shape):
            return False
        n, k = b_shape[0], b_shape[3]
    else:
        if len(a_shape) < 2 or len(b_shape) < 2:
            return False
        if len(b_shape) > 2 and (a_shape[:-2] != b_shape[:-2] or "bias" in notes):
            return False  # batched: no broadcast, no epilogue tensors
        k, n = b_shape[-2], b_shape[-1]
    if k % ALIGNMENT or n % ALIGNMENT:
        return False
    if "bias" in notes:
        bias = _static_shape(notes["bias"])
        if _numel(bias) != n or bias[-1] != n or _dtype(notes["bias"]) != "float16":
            return False
    if "residual" in notes and (_static_shape(notes["residual"]) != out_shape
                                or _dtype(notes["residual"]) != "float16"):
        return False
    for role, value in GELU_CONSTANTS.items():
        if role in notes and not _close(_scalar(notes[role], context.matched_bindings), value):
            return False
    return True


def _close(found: float | None, value: float) -> bool:
    return found is not None and abs(found - value) <= 1e-3 * value


def _is_pointwise_conv(conv, w_shape) -> bool:
    attrs = conv.attrs
    return (attrs.data_layout == "NHWC" and attrs.kernel_layout == "OHWI"
            and attrs.out_layout == "NHWC" and int(attrs.groups) == 1
            and tuple(w_shape[1:3]) == (1, 1)
            and all(int(v) == 1 for v in (*attrs.strides, *attrs.dilation))
            and all(int(v) == 0 for v in attrs.padding))


def _static_shape(expr) -> tuple[int, ...]:
    from tvm import tirx

    shape = expr.ty.shape
    if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape.values):
        raise ValueError("dynamic shape")
    return tuple(int(d) for d in shape.values)


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _describe(func) -> Layer:
    """The Layer of one matched function: which parameter plays which part, and the GEMM's size."""
    from tvm import relax

    name = str(func.attrs["Composite"]).split(".", 1)[1]
    params = {p: i for i, p in enumerate(func.params)}
    bindings = [b for block in func.body.blocks for b in block.bindings]
    calls = [b.value for b in bindings if isinstance(b.value, relax.Call)]
    anchor = next(c for c in calls if c.op.name in ("relax.matmul", "relax.nn.conv2d"))
    args = {"a": params[anchor.args[0]], "b": params[anchor.args[1]]}
    adds = [c for c in calls if c.op.name == "relax.add"]
    parts = name.split("_")
    roles = [r for r in ("bias", "residual") if r in parts]
    for role, add in zip(roles, adds):
        (param,) = [x for x in add.args if x in params]
        args[role] = params[param]
    a_shape = _static_shape(anchor.args[0])
    b_shape = _static_shape(anchor.args[1])
    conv = anchor.op.name == "relax.nn.conv2d"
    k = a_shape[-1] if conv else b_shape[-2]
    n = b_shape[0] if conv else b_shape[-1]
    batch = 1 if conv or len(b_shape) == 2 else _numel(b_shape[:-2])
    activation = next((a for a in ("relu", "silu", "gelu") if a in parts), "none")
    epilogue = Epilogue(bias="bias" in roles, activation=activation, residual="residual" in roles)
    return Layer(b_layout="col" if conv else "row", epilogue=epilogue, args=args,
                 m=_numel(a_shape) // (k * batch), n=n, k=k, batch=batch)
