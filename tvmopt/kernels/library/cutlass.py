"""What the CUTLASS 3.x Hopper ops (`gemm.py`, `conv2d.py`) share: the tactic (one compiled
kernel configuration), the fused epilogue as the templates in `csrc/cutlass_sm90.cuh` take it,
its Relax pattern and its NumPy reference.

A tactic is the thread-block tile, the cluster, the kernel schedule (Hopper's warp-specialized
"cooperative" or "pingpong" kernels) and the tile scheduler ("persistent", or "streamk", which
splits K across SMs: the cure for batch-1 GEMMs whose output has fewer tiles than the GPU has
SMs). Shapes are runtime arguments, so one instance serves every layer with the same operation,
epilogue and tactic; catalogues are kept small on purpose, since each instance costs ~76 s and
3.4 GB of nvcc.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from . import relax_match
from .op import Match, Op, Pattern

SMS = 132  # H100 SXM: to judge how well a tile fills the GPU, and stream-K's scratch size
ALIGNMENT = 8  # fp16 elements per 16-byte TMA access: K and N must be multiples of it
# The epilogue functor of each activation (csrc/activations.cuh's GeluErf: the erf GELU in
# fewer instructions than CUTLASS's).
_THREAD = "cutlass::epilogue::thread::"
ACTIVATIONS = {"none": f"{_THREAD}Identity", "relu": f"{_THREAD}ReLu", "gelu": "tvmopt::GeluErf",
               "silu": f"{_THREAD}SiLu", "gelu_tanh": f"{_THREAD}GELU_taylor"}
# The erf GELU's constants, by pattern role: they must hold these values for the match to count.
GELU_CONSTANTS = {"gelu_sqrt2": 2 ** 0.5, "gelu_one": 1.0, "gelu_half": 0.5}
# The tanh GELU's, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) (GPT-2's, CLIP's "gelu_new").
TANH_GELU_CONSTANTS = {"cube": 0.044715, "sqrt_2_over_pi": (2 / math.pi) ** 0.5, "half": 0.5,
                       "one": 1.0}
# The pattern's tail after the bias: what the epilogue fuses besides it. "gated" (GEMMs only, no
# bias): the result times another tensor, a gated linear unit's product (SwiGLU's up * SiLU(gate)).
TAILS = ("residual_relu", "residual", "relu", "silu", "gelu", "gelu_tanh", "gated", "none")


@dataclass(frozen=True)
class CutlassTactic:
    tile_m: int
    tile_n: int
    tile_k: int = 64
    cluster_m: int = 1
    cluster_n: int = 1
    schedule: str = "cooperative"  # or "pingpong"; "warpspecialized" for convolutions
    scheduler: str = "persistent"  # or "streamk"; "tiles" (a CTA per output tile) for convolutions

    @property
    def name(self) -> str:
        return (f"{self.tile_m}x{self.tile_n}x{self.tile_k}_c{self.cluster_m}x{self.cluster_n}_"
                f"{self.schedule}_{self.scheduler}")

    @classmethod
    def parse(cls, name: str) -> "CutlassTactic":
        tile, cluster, schedule, scheduler = name.split("_")
        m, n, k = (int(v) for v in tile.split("x"))
        cm, cn = (int(v) for v in cluster[1:].split("x"))
        return cls(m, n, k, cm, cn, schedule, scheduler)

    @property
    def tile(self) -> str:
        """The csrc Tile<...> of the tactic."""
        return (f"tvmopt::Tile<{self.tile_m}, {self.tile_n}, {self.tile_k}, {self.cluster_m}, "
                f"{self.cluster_n}>")

    def tiles(self, m: int, n: int) -> int:
        """Output tiles of an M x N result: CTAs of a non-persistent kernel."""
        return math.ceil(m / self.tile_m) * math.ceil(n / self.tile_n)


@dataclass(frozen=True)
class Epilogue:
    bias: bool = False
    activation: str = "none"  # applied after bias and residual: act(acc + bias + residual)
    residual: bool = False
    gate: bool = False  # acc * gate, alone: no bias, residual or activation

    @property
    def name(self) -> str:
        parts = (["bias"] if self.bias else []) + (["residual"] if self.residual else []) + (
            [self.activation] if self.activation != "none" else []) + (
            ["gated"] if self.gate else [])
        return "_".join(parts) or "plain"

    @property
    def roles(self) -> tuple[str, ...]:
        """The epilogue's tensors, in the order instances take them after A and B."""
        return (("bias",) if self.bias else ()) + (("residual",) if self.residual else ()) + (
            ("gate",) if self.gate else ())

    @property
    def template(self) -> str:
        """The csrc Epilogue<...> type."""
        if self.gate:
            return "tvmopt::GatedEpilogue"
        return (f"tvmopt::Epilogue<{ACTIVATIONS[self.activation]}, "
                f"{str(self.bias).lower()}, {str(self.residual).lower()}>")

    @property
    def pointers(self) -> str:
        """The Run arguments for the bias and CUTLASS's C (the residual or the gate): the
        tensor's address, or null."""
        c = "&residual" if self.residual else "&gate" if self.gate else "nullptr"
        return f"{'&bias' if self.bias else 'nullptr'}, {c}"

    def apply(self, out: np.ndarray, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """The NumPy reference of the epilogue on an fp32 accumulator."""
        if self.gate:
            return out * arrays["gate"].astype(np.float32)
        if self.bias:
            out = out + arrays["bias"].astype(np.float32)
        if self.residual:
            out = out + arrays["residual"].astype(np.float32)
        if self.activation == "relu":
            return np.maximum(out, 0)
        if self.activation == "silu":
            return out / (1 + np.exp(-out))
        if self.activation == "gelu":
            return 0.5 * out * (1 + _erf(out / np.sqrt(2)))
        if self.activation == "gelu_tanh":
            c = TANH_GELU_CONSTANTS
            return c["half"] * out * (1 + np.tanh(c["sqrt_2_over_pi"] * (out + c["cube"] * out ** 3)))
        return out


def epilogue_patterns(anchor_op: str, prefix: str):
    """(name, pattern, annotations, epilogue, parts) for each epilogue the library fuses after
    `anchor_op`: an optional cast to fp16, bias, then an activation or a residual add (then
    ReLU), with a reshape between bias and the rest where the importer computes [B, S, K] @ [K, N]
    as a 2-D matmul between reshapes."""
    from tvm.relax.dpl.pattern import is_op, wildcard

    for cast in (True, False):
        for bias in (True, False):
            for reshape in (True, False):
                for tail in TAILS:
                    if reshape and tail == "none":
                        continue  # a trailing reshape is not the kernel's business
                    if tail == "gated" and (bias or anchor_op != "relax.matmul"):
                        continue
                    a, b = wildcard(), wildcard()
                    anchor = is_op(anchor_op)(a, b)
                    x = is_op("relax.astype")(anchor) if cast else anchor
                    notes = {"a": a, "b": b, "anchor": anchor}
                    if bias:
                        notes["bias"] = wildcard()
                        x = relax_match.add(x, notes["bias"])
                    if reshape:
                        x = is_op("relax.reshape")(x, wildcard())
                    if tail.startswith("residual"):
                        notes["residual"] = wildcard()
                        x = relax_match.add(x, notes["residual"])
                    if tail.endswith("relu"):
                        x = is_op("relax.nn.relu")(x)
                    elif tail == "silu":
                        x = is_op("relax.multiply")(x, is_op("relax.sigmoid")(x))
                    elif tail == "gelu":  # erf GELU as exported: x * (erf(x / sqrt(2)) + 1) * 0.5
                        for role in GELU_CONSTANTS:
                            notes[role] = wildcard()
                        erf = is_op("relax.erf")(is_op("relax.divide")(x, notes["gelu_sqrt2"]))
                        x = relax_match.mul(relax_match.mul(x, relax_match.add(
                            erf, notes["gelu_one"])), notes["gelu_half"])
                    elif tail == "gelu_tanh":  # as fold_tanh_gelu leaves it
                        x = is_op("relax.nn.gelu_tanh")(x)
                    elif tail == "gated":
                        notes["gate"] = wildcard()
                        x = relax_match.mul(x, notes["gate"])
                    epilogue = Epilogue(bias=bias, residual=tail.startswith("residual"),
                                        gate=tail == "gated",
                                        activation={"residual_relu": "relu", "relu": "relu",
                                                    "silu": "silu", "gelu": "gelu",
                                                    "gelu_tanh": "gelu_tanh"}.get(tail, "none"))
                    name = f"{prefix}_{epilogue.name}" + ("_reshaped" if reshape else "")
                    yield name, x, notes, epilogue


def fold_tanh_gelu(mod):
    """`mod` with the tanh GELU, which exporters write out op by op (x * x * x or pow(x, 3), the
    adds and multiplies in any operand order), as one `nn.gelu_tanh`: what the epilogue pattern
    matches (and one TVM kernel where no GEMM precedes it)."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl import rewrite_call
    from tvm.relax.dpl.pattern import is_const, is_op, wildcard

    x, mul, add = wildcard(), relax_match.mul, relax_match.add
    c = {role: is_const() for role in TANH_GELU_CONSTANTS}
    exponent = is_const()
    cube = mul(mul(x, x), x) | is_op("relax.power")(x, exponent)
    tanh = is_op("relax.tanh")(mul(add(x, mul(cube, c["cube"])), c["sqrt_2_over_pi"]))
    one_plus = add(tanh, c["one"])
    pattern = (mul(mul(x, c["half"]), one_plus) | mul(mul(x, one_plus), c["half"])
               | mul(x, mul(one_plus, c["half"])))

    def rewrite(expr, found):
        constants = {role: relax_match.scalar(found[p], {}) for role, p in c.items()}
        if exponent in found and not relax_match.close(relax_match.scalar(found[exponent], {}),
                                                      3.0):
            return expr
        if not all(relax_match.close(constants[r], v) for r, v in TANH_GELU_CONSTANTS.items()):
            return expr
        return relax.op.nn.gelu_tanh(found[x])

    functions = {gv: (rewrite_call(pattern, rewrite, f) if gv.name_hint == "main" else f)
                 for gv, f in mod.functions.items()}
    return tvm.IRModule(functions, attrs=mod.attrs)


def check_epilogue(context, n: int, out_shape) -> bool:
    """Whether the matched epilogue's tensors and constants are what the instance fuses: an fp16
    bias of N values, an fp16 residual of the output's shape, the erf GELU's constants."""
    notes = context.annotated_expr
    if "bias" in notes:
        bias = relax_match.static_shape(notes["bias"])
        if (relax_match.numel(bias) != n or bias[-1] != n
                or relax_match.dtype(notes["bias"]) != "float16"):
            return False
    for role in ("residual", "gate"):
        if role in notes and (relax_match.static_shape(notes[role]) != out_shape
                              or relax_match.dtype(notes[role]) != "float16"):
            return False
    return all(relax_match.close(relax_match.scalar(notes[role], context.matched_bindings), value)
               for role, value in GELU_CONSTANTS.items() if role in notes)


def epilogue_args(match, epilogue: Epilogue) -> dict[str, int]:
    """{"bias" | "residual" | "gate": kernel argument index}: the parameter each epilogue add
    (or the gate's multiply) takes."""
    args = {}
    calls = match.calls("relax.multiply" if epilogue.gate else "relax.add")
    for role, call in zip(epilogue.roles, calls):
        (param,) = [x for x in call.args if x in match.params]
        args[role] = match.params[param]
    return args


def epilogue_inputs(epilogue: Epilogue, args: dict, arrays: dict, out_shape, n: int, uniform):
    """Random bias and residual; a residual that is the input (a 1x1 conv whose shortcut is its
    own input) is the same array."""
    if epilogue.bias:
        arrays["bias"] = uniform((n,))
    if epilogue.residual:
        same = "residual" in args and args["residual"] == args.get("a")
        arrays["residual"] = arrays["a"] if same else uniform(out_shape)
    if epilogue.gate:
        arrays["gate"] = uniform(out_shape)
    return arrays


class CutlassOp(Op):
    """An anchor op (`anchor_op`) and the epilogue the CUTLASS templates fuse after it."""
    roles = ("a", "b", "bias", "residual", "gate")
    anchor_op: ClassVar[str]  # "relax.matmul", "relax.nn.conv2d"

    def check(self, context) -> bool:
        """Whether the instance computes a match exactly (FuseOpsByPattern's check)."""
        raise NotImplementedError

    def patterns(self) -> list[Pattern]:
        prefix = self.anchor_op.split(".")[-1]
        return [Pattern(name, pattern, notes, self.check, name.count("_"), epilogue)
                for name, pattern, notes, epilogue in epilogue_patterns(self.anchor_op, prefix)]

    def anchor(self, match: Match):
        """(the anchor call, the epilogue, {role: kernel argument index}) of a match."""
        (anchor,) = match.calls(self.anchor_op)
        epilogue = match.pattern.variant
        args = {"a": match.params[anchor.args[0]], "b": match.params[anchor.args[1]],
                **epilogue_args(match, epilogue)}
        return anchor, epilogue, args

    def parse_tactic(self, name: str) -> CutlassTactic:
        return CutlassTactic.parse(name)

    def workspace_bytes(self, tactic: CutlassTactic) -> int:
        """Stream-K keeps partial tiles of every SM in fp32; persistent kernels need none (a
        few bytes keep the argument a real tensor)."""
        if tactic.scheduler == "streamk":
            return 2 * SMS * tactic.tile_m * tactic.tile_n * 4 + (1 << 16)
        return 256


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz and Stegun 7.1.26 (error below 1.5e-7): NumPy has no erf."""
    t = 1 / (1 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
    return np.sign(x) * (1 - poly * np.exp(-x * x))
