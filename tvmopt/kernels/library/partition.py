"""Which layers the kernel library can run: Relax patterns matched after mixed precision and
before legalisation, so that each match becomes one fused kernel of its own.

A match is either an anchor in fp16 (a matmul; a 1x1 stride-1 NHWC conv, which is a GEMM; any
other NHWC conv, as an implicit GEMM) followed by the epilogue the library fuses: bias, then an
activation or a residual add (then ReLU); or a whole attention as exported op by op, from the
head split of Q, K and V to the head merge (`attention.py`). TVM still compiles each match as an
ordinary kernel (tuning tasks are unchanged); the module attribute LAYERS_ATTR tells the build
which kernels the library may replace and how to call it.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import asdict, dataclass

from .attention import (ATTENTION_CATALOGUE, HEAD_DIMS, AttentionGeometry,
                        default_attention_tactic)
from .sources import CONV_PARAMS, Epilogue, InstanceSpec
from .tactics import SMS, Tactic, catalogue, default_tactic

log = logging.getLogger(__name__)

LAYERS_ATTR = "tvmopt_library_layers"
# The erf GELU's constants, by pattern role: they must hold these values for the match to count.
GELU_CONSTANTS = {"gelu_sqrt2": 2 ** 0.5, "gelu_one": 1.0, "gelu_half": 0.5}
ALIGNMENT = 8  # fp16 elements per 16-byte TMA access: K and N must be multiples of it
# TMA im2col loads (2-D) hold the window's corners in signed 8 bits and filter offsets in 8 bits.
IM2COL_CORNER = 128
# Kernel arguments by role, in the order the instances take them.
ROLES = ("a", "b", "bias", "residual", "q", "k", "v", "mask")


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution beyond its GEMM size: input [n, h, w, c], filter r x s, and its windows."""
    n: int
    h: int
    w: int
    c: int
    r: int
    s: int
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    stride: tuple[int, int]
    dilation: tuple[int, int]

    @property
    def params(self) -> tuple[int, ...]:
        """The instance's int arguments, in the order of sources.CONV_PARAMS."""
        values = (*self.padding, *self.stride, *self.dilation)
        assert len(values) == len(CONV_PARAMS)
        return values

    @property
    def output(self) -> tuple[int, int, int]:
        """(N, P, Q): the output's batch and spatial size."""
        top, left, bottom, right = self.padding
        p = (self.h + top + bottom - (self.r - 1) * self.dilation[0] - 1) // self.stride[0] + 1
        q = (self.w + left + right - (self.s - 1) * self.dilation[1] - 1) // self.stride[1] + 1
        return self.n, p, q

    def im2col_loadable(self) -> bool:
        """Whether TMA's im2col mode can walk these windows (CUTLASS's can_implement rule)."""
        top, left, bottom, right = self.padding
        span_h, span_w = (self.r - 1) * self.dilation[0], (self.s - 1) * self.dilation[1]
        return (all(0 <= p < IM2COL_CORNER for p in self.padding)
                and all(-IM2COL_CORNER <= p - span < IM2COL_CORNER
                        for p, span in ((bottom, span_h), (right, span_w)))
                and 0 <= span_h < 2 * IM2COL_CORNER - 1 and 0 <= span_w < 2 * IM2COL_CORNER - 1)


@dataclass(frozen=True)
class Layer:
    b_layout: str  # "row": B is [K, N]; "col": B is [N, K] (or a conv's [N, R, S, C] filter)
    epilogue: Epilogue
    args: dict  # {"a" | "b" | "bias" | "residual": index of the kernel argument}
    m: int
    n: int
    k: int
    batch: int
    conv: ConvGeometry | None = None  # an implicit-GEMM convolution; None for a GEMM
    attention: AttentionGeometry | None = None  # a fused attention (m, n, k: Sq, D, Sk)

    @property
    def op(self) -> str:
        return "attention" if self.attention else "conv2d" if self.conv else "gemm"

    @property
    def key(self) -> str:
        """What a tactic's time on this layer depends on: the tactic records' layer_key."""
        if (g := self.attention) is not None:
            mask = "x".join(map(str, g.mask_shape)) if g.mask_shape else "none"
            return (f"attention_f16_{g.batch}x{g.heads}x{g.seq_q}x{g.seq_k}x{g.head_dim}"
                    f"_mask_{g.mask_kind}_{mask}")
        if self.conv:
            g = self.conv
            return (f"conv2d_f16_{self.epilogue.name}_{g.n}x{g.h}x{g.w}x{g.c}_k{self.n}"
                    f"r{g.r}s{g.s}_p{'x'.join(map(str, g.padding))}"
                    f"_s{'x'.join(map(str, g.stride))}_d{'x'.join(map(str, g.dilation))}")
        return (f"gemm_f16_{self.b_layout}_{self.epilogue.name}_{self.m}x{self.n}x{self.k}"
                f"x{self.batch}")

    @property
    def tactics(self) -> tuple[Tactic, ...]:
        return ATTENTION_CATALOGUE if self.attention else catalogue(self.op)

    def default_tactic(self) -> Tactic:
        if self.attention:
            return default_attention_tactic(self.attention, SMS)
        return default_tactic(self.m, self.n, self.k, self.op)

    def instance(self, tactic: Tactic, arch: str) -> InstanceSpec:
        """The kernel instance that runs this layer with `tactic`."""
        mask = self.attention.mask_kind if self.attention else "nomask"
        return InstanceSpec(self.op, self.b_layout, self.epilogue, tactic, arch, mask)

    @property
    def params(self) -> tuple[int | float, ...]:
        """Scalar arguments the instance takes after the layer's tensors."""
        geometry = self.attention or self.conv
        return geometry.params if geometry else ()

    @property
    def arg_order(self) -> tuple[int, ...]:
        """Which of the kernel's arguments the instance takes, in its order."""
        return tuple(self.args[role] for role in ROLES if role in self.args)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Layer":
        d = json.loads(text)
        geometries = {}
        for field, kind in (("conv", ConvGeometry), ("attention", AttentionGeometry)):
            if (g := d.pop(field, None)) is not None:
                geometries[field] = kind(**{k: tuple(v) if isinstance(v, list) else v
                                            for k, v in g.items()})
        return cls(**{**d, "epilogue": Epilogue(**d["epilogue"]), **geometries})


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
        call_args = _call_args(mod)
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function) and func.attrs and "Composite" in func.attrs:
                found[gv.name_hint] = _describe(func, call_args.get(gv.name_hint, ())).to_json()
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
    # attention first: its two matmuls would otherwise match as GEMMs
    return _attention_patterns() + sorted(out, key=lambda p: -p[0].count("_"))  # longest first


def _attention_patterns():
    """Attention as mixed precision leaves it: heads split (reshape, permute), scores = Q @ K^T
    cast to fp16, scaled (multiply or divide by a constant), masked (an add, in fp16 or after
    the cast to fp32 the softmax runs in), softmax, cast, @ V, cast, heads merged."""
    from tvm.relax.dpl.pattern import is_op, wildcard

    def heads(x):
        return is_op("relax.permute_dims")(is_op("relax.reshape")(x, wildcard()))

    out = []
    for scale, mask in itertools.product(("multiply", "divide", None), ("fp16", "fp32", None)):
        notes = {role: wildcard() for role in ("q", "k", "v")}
        for role in ("q", "k", "v"):
            notes[f"{role}_heads"] = heads(notes[role])
        notes["scores"] = is_op("relax.matmul")(notes["q_heads"], notes["k_heads"])
        x = is_op("relax.astype")(notes["scores"])
        if scale:
            notes["scale"] = wildcard()
            x = is_op(f"relax.{scale}")(x, notes["scale"])
        if mask:
            notes["mask"] = wildcard()
        x = _add(x, notes["mask"]) if mask == "fp16" else x
        x = is_op("relax.astype")(x)
        x = _add(x, notes["mask"]) if mask == "fp32" else x
        notes["softmax"] = is_op("relax.nn.softmax")(x)
        notes["context"] = is_op("relax.matmul")(is_op("relax.astype")(notes["softmax"]),
                                                 notes["v_heads"])
        notes["merged"] = is_op("relax.permute_dims")(is_op("relax.astype")(notes["context"]))
        x = is_op("relax.reshape")(notes["merged"], wildcard())
        name = f"attention_{scale or 'unscaled'}_{mask or 'unmasked'}"
        out.append((f"tvmopt_library.{name}", x, notes, _check_attention))
    return out


def _check_attention(context) -> bool:
    from tvm.relax.backend.utils import has_leaking_intermediate_variables

    if has_leaking_intermediate_variables(context):
        return False
    try:
        geometry = attention_geometry(context.annotated_expr, context.matched_bindings)
    except ValueError:
        return False
    return geometry is not None and _dtype(context.matched_expr) == "float16"


def attention_geometry(notes, bindings) -> AttentionGeometry | None:
    """The geometry of a matched attention the kernel can run, else None (ValueError where a
    shape is dynamic)."""
    q_heads, k_heads, v_heads = (notes[f"{r}_heads"] for r in "qkv")
    b, h, sq, d = _static_shape(q_heads)
    sk = _static_shape(k_heads)[3]
    axes = {r: [int(a) for a in notes[f"{r}_heads"].attrs.axes] for r in "qkv"}
    split = [b, -1, h, d]  # each of q, k, v is [batch, seq, heads * head_dim] in memory
    if (axes != {"q": [0, 2, 1, 3], "k": [0, 2, 3, 1], "v": [0, 2, 1, 3]}
            or [int(a) for a in notes["merged"].attrs.axes] != [0, 2, 1, 3]
            or int(notes["softmax"].attrs.axis) not in (-1, 3) or d not in HEAD_DIMS
            or _static_shape(k_heads) != (b, h, d, sk) or _static_shape(v_heads) != (b, h, sk, d)
            or any(_dtype(notes[r]) != "float16" for r in "qkv")):
        return None
    for r in "qkv":
        in_memory = _static_shape(notes[f"{r}_heads"].args[0])
        if [in_memory[0], -1, *in_memory[2:]] != split or _static_shape(notes[r])[-1] != h * d:
            return None
    scale = 1.0
    if "scale" in notes:
        c = _scalar(notes["scale"], bindings)
        if not c or c < 0:  # the kernel starts its scores from mask / scale
            return None
        scale = c if _consumer(bindings, notes["scale"]) == "relax.multiply" else 1.0 / c
    mask_shape = mask_dtype = None
    if "mask" in notes:
        mask_shape, mask_dtype = _static_shape(notes["mask"]), _dtype(notes["mask"])
        full = (1,) * (4 - len(mask_shape)) + mask_shape
        if (len(mask_shape) > 4 or full[3] != sk or mask_dtype not in ("float16", "float32")
                or any(m not in (1, want) for m, want in zip(full, (b, h, sq, sk)))):
            return None
    return AttentionGeometry(b, h, sq, sk, d, scale, mask_shape, mask_dtype)


def _consumer(bindings, expr) -> str:
    """The op name of the matched call that takes `expr` as an argument."""
    import tvm

    for value in bindings.values():
        if isinstance(value, tvm.relax.Call) and any(a.same_as(expr) for a in value.args):
            return value.op.name
    return ""


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
        geometry = _conv_geometry(anchor)
        if geometry is None or not (_is_pointwise(geometry) or geometry.im2col_loadable()):
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


def _conv_geometry(conv) -> ConvGeometry | None:
    """The geometry of an NHWC/OHWI conv without groups (what the library runs), else None."""
    attrs = conv.attrs
    if not (attrs.data_layout == "NHWC" and attrs.kernel_layout == "OHWI"
            and attrs.out_layout == "NHWC" and int(attrs.groups) == 1):
        return None
    n, h, w, c = _static_shape(conv.args[0])
    _, r, s, _ = _static_shape(conv.args[1])
    padding = tuple(int(v) for v in attrs.padding)
    if len(padding) == 2:
        padding = padding * 2
    return ConvGeometry(n, h, w, c, r, s, padding, tuple(int(v) for v in attrs.strides),
                        tuple(int(v) for v in attrs.dilation))


def _is_pointwise(g: ConvGeometry) -> bool:
    """A 1x1 conv without stride or padding: a plain GEMM over the pixels."""
    return ((g.r, g.s) == (1, 1) and g.stride == (1, 1) and g.dilation == (1, 1)
            and g.padding == (0, 0, 0, 0))


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


def _call_args(mod) -> dict:
    """{function name: the arguments main calls it with} (constants the match lifted into
    parameters are among them)."""
    from tvm import relax

    found = {}

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, relax.GlobalVar):
            found[expr.op.name_hint] = tuple(expr.args)

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def _describe(func, call_args) -> Layer:
    """The Layer of one matched function: which parameter plays which part, and the GEMM's size."""
    from tvm import relax

    name = str(func.attrs["Composite"]).split(".", 1)[1]
    params = {p: i for i, p in enumerate(func.params)}
    bindings = [b for block in func.body.blocks for b in block.bindings]
    calls = [b.value for b in bindings if isinstance(b.value, relax.Call)]
    if name.startswith("attention"):
        return _describe_attention(func, params, bindings, call_args)
    anchor = next(c for c in calls if c.op.name in ("relax.matmul", "relax.nn.conv2d"))
    args = {"a": params[anchor.args[0]], "b": params[anchor.args[1]]}
    adds = [c for c in calls if c.op.name == "relax.add"]
    parts = name.split("_")
    roles = [r for r in ("bias", "residual") if r in parts]
    for role, add in zip(roles, adds):
        (param,) = [x for x in add.args if x in params]
        args[role] = params[param]
    activation = next((a for a in ("relu", "silu", "gelu") if a in parts), "none")
    epilogue = Epilogue(bias="bias" in roles, activation=activation, residual="residual" in roles)
    a_shape = _static_shape(anchor.args[0])
    b_shape = _static_shape(anchor.args[1])
    if anchor.op.name == "relax.nn.conv2d":
        geometry = _conv_geometry(anchor)
        out_shape = _static_shape(anchor)
        if _is_pointwise(geometry):
            return Layer("col", epilogue, args, m=_numel(a_shape) // geometry.c, n=b_shape[0],
                         k=geometry.c, batch=1)
        return Layer("col", epilogue, args, m=_numel(out_shape[:3]), n=b_shape[0],
                     k=geometry.c * geometry.r * geometry.s, batch=1, conv=geometry)
    k, n = b_shape[-2], b_shape[-1]
    batch = 1 if len(b_shape) == 2 else _numel(b_shape[:-2])
    return Layer("row", epilogue, args, m=_numel(a_shape) // (k * batch), n=n, k=k, batch=batch)


def _describe_attention(func, params, bindings, call_args) -> Layer:
    """The attention Layer of a matched function, its notes found again by position."""
    from tvm import relax

    values = {b.var: b.value for b in bindings}
    # the constants the match lifted into parameters, as the call passes them
    values.update((p, a) for p, a in zip(func.params, call_args)
                  if not isinstance(a, relax.Var))

    def producer(var):
        return values.get(var, var)

    scores, context = [v for v in values.values()
                       if isinstance(v, relax.Call) and v.op.name == "relax.matmul"]
    notes = {"q_heads": producer(scores.args[0]), "k_heads": producer(scores.args[1]),
             "v_heads": producer(context.args[1])}
    for role in "qkv":
        notes[role] = producer(notes[f"{role}_heads"].args[0]).args[0]
    for value in values.values():
        if not isinstance(value, relax.Call):
            continue
        if value.op.name == "relax.nn.softmax":
            notes["softmax"] = value
        elif value.op.name in ("relax.multiply", "relax.divide"):
            notes["scale"] = value.args[1]
        elif value.op.name == "relax.add":
            notes["mask"] = next(a for a in value.args if a in params)
        elif value.op.name == "relax.permute_dims" and producer(value.args[0]).op.name == "relax.astype":
            notes["merged"] = value
    geometry = attention_geometry(notes, values)
    args = {role: params[notes[role]] for role in ("q", "k", "v", "mask") if role in notes}
    return Layer("row", Epilogue(), args, m=geometry.seq_q, n=geometry.head_dim,
                 k=geometry.seq_k, batch=geometry.batch * geometry.heads, attention=geometry)
