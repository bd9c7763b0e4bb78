"""The attention op: a whole attention as the ONNX exporters write it op by op, from the head
split of Q, K and V to the head merge, on tvmopt's fused kernel (`csrc/attention.cuh`:
FlashAttention's online softmax, tensor cores through WMMA).

out = softmax(scale * Q K^T + mask) V per batch and head, as `symbol(q, k, v, [mask], batch,
heads, mask_batch_stride, mask_head_stride, mask_query_stride, scale, workspace, out)`: Q, K, V
and the output in the [batch, seq, heads * head_dim] layout the projections write; the mask
additive, fp16 or fp32, any shape that broadcasts to [batch, heads, seq_q, seq_k].
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from . import relax_match
from .cutlass import SMS
from .instance import Instance, instantiation, tensor_params
from .op import Layer, Match, Op, Pattern

HEAD_DIMS = (32, 64, 128)  # instantiated in every instance; others stay on TVM kernels
KEY_BLOCK = 64
# An instance's arguments after its tensors.
PARAMS = ("batch", "heads", "mask_batch_stride", "mask_head_stride", "mask_query_stride",
          "scale")
_MASK_TYPES = {"nomask": "void", "f16mask": "half", "f32mask": "float"}


@dataclass(frozen=True)
class AttentionTactic:
    """Warps of 16 query rows per CTA, by a block of keys per step."""
    warps: int
    key_block: int = KEY_BLOCK

    @property
    def rows(self) -> int:
        return 16 * self.warps

    @property
    def name(self) -> str:  # the shape of a CUTLASS tactic's name, as tactic records hold it
        return f"{self.rows}x{self.key_block}x16_c1x1_wmma_online"

    @classmethod
    def parse(cls, name: str) -> "AttentionTactic":
        found = re.fullmatch(r"(\d+)x(\d+)x16_c1x1_wmma_online", name)
        if found is None or int(found[1]) % 16:
            raise ValueError(f"not an attention tactic: {name}")
        return cls(int(found[1]) // 16, int(found[2]))


# Fewer warps per CTA: more CTAs for a small batch; more: K and V loaded once for more queries.
CATALOGUE: tuple[AttentionTactic, ...] = (AttentionTactic(4), AttentionTactic(2),
                                          AttentionTactic(1))


@dataclass(frozen=True)
class AttentionGeometry:
    batch: int
    heads: int
    seq_q: int
    seq_k: int
    head_dim: int
    scale: float
    mask_shape: tuple[int, ...] | None  # broadcast to [batch, heads, seq_q, seq_k]; None: no mask
    mask_dtype: str | None  # "float16" or "float32"

    @property
    def mask_strides(self) -> tuple[int, int, int]:
        """Element strides of the mask along batch, head and query (0 where it broadcasts)."""
        if self.mask_shape is None:
            return 0, 0, 0
        shape = (1,) * (4 - len(self.mask_shape)) + tuple(self.mask_shape)
        strides, step = [], 1
        for size in reversed(shape):
            strides.append(step if size > 1 else 0)
            step *= size
        _, query, head, batch = strides
        return batch, head, query

    @property
    def mask_kind(self) -> str:
        return {None: "nomask", "float16": "f16mask", "float32": "f32mask"}[self.mask_dtype]


class Attention(Op):
    name = "attention"
    roles = ("q", "k", "v", "mask")
    geometry_type = AttentionGeometry

    def patterns(self) -> list[Pattern]:
        """Attention as mixed precision leaves it: heads split (reshape, permute), scores =
        Q @ K^T cast to fp16, scaled (multiply or divide by a constant), masked (an add, in fp16
        or after the cast to fp32 the softmax runs in), softmax, cast, @ V, cast, heads merged."""
        from tvm.relax.dpl.pattern import is_op, wildcard

        def heads(x):
            return is_op("relax.permute_dims")(is_op("relax.reshape")(x, wildcard()))

        out = []
        for scale in ("multiply", "divide", None):
            for mask in ("fp16", "fp32", None):
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
                x = relax_match.add(x, notes["mask"]) if mask == "fp16" else x
                x = is_op("relax.astype")(x)
                x = relax_match.add(x, notes["mask"]) if mask == "fp32" else x
                notes["softmax"] = is_op("relax.nn.softmax")(x)
                notes["context"] = is_op("relax.matmul")(
                    is_op("relax.astype")(notes["softmax"]), notes["v_heads"])
                notes["merged"] = is_op("relax.permute_dims")(
                    is_op("relax.astype")(notes["context"]))
                x = is_op("relax.reshape")(notes["merged"], wildcard())
                name = f"attention_{scale or 'unscaled'}_{mask or 'unmasked'}"
                out.append(Pattern(name, x, notes, _check, name.count("_")))
        return out

    def layer(self, match: Match) -> Layer:
        """The notes found again by position in the outlined function."""
        values = match.bindings

        def producer(var):
            return values.get(var, var)

        scores, context = match.calls("relax.matmul")
        notes = {"q_heads": producer(scores.args[0]), "k_heads": producer(scores.args[1]),
                 "v_heads": producer(context.args[1])}
        for role in "qkv":
            notes[role] = producer(notes[f"{role}_heads"].args[0]).args[0]
        (notes["softmax"],) = match.calls("relax.nn.softmax")
        for scaling in match.calls("relax.multiply") + match.calls("relax.divide"):
            notes["scale"] = scaling.args[1]
        for add in match.calls("relax.add"):
            notes["mask"] = next(a for a in add.args if a in match.params)
        for permute in match.calls("relax.permute_dims"):
            if producer(permute.args[0]).op.name == "relax.astype":
                notes["merged"] = permute
        args = {role: match.params[notes[role]] for role in self.roles if role in notes}
        return Layer(self, geometry(notes, values), args)

    def key(self, g: AttentionGeometry) -> str:
        mask = "x".join(map(str, g.mask_shape)) if g.mask_shape else "none"
        return (f"attention_f16_{g.batch}x{g.heads}x{g.seq_q}x{g.seq_k}x{g.head_dim}"
                f"_mask_{g.mask_kind}_{mask}")

    def catalogue(self, g: AttentionGeometry) -> tuple[AttentionTactic, ...]:
        return CATALOGUE

    def default_tactic(self, g: AttentionGeometry) -> AttentionTactic:
        """The most queries per CTA that still gives most SMs a CTA."""
        for tactic in CATALOGUE:
            if g.batch * g.heads * -(-g.seq_q // tactic.rows) >= SMS * 3 // 4:
                return tactic
        return CATALOGUE[-1]

    def parse_tactic(self, name: str) -> AttentionTactic:
        return AttentionTactic.parse(name)

    def instance(self, g: AttentionGeometry, t: AttentionTactic, arch: str) -> Instance:
        symbol = f"tvmopt_attention_{g.mask_kind}_{t.name}"
        masked = g.mask_kind != "nomask"
        tensors = tensor_params(("q", "k", "v", *(("mask",) if masked else ())))
        ints = ", ".join(f"int64_t {p}" for p in PARAMS[:-1])
        config = (f"tvmopt::attention::Config<{t.warps}, {t.key_block}, "
                  f"{_MASK_TYPES[g.mask_kind]}>")
        return Instance(symbol, instantiation(symbol, "attention.cuh", __name__, f"""
using Config = {config};
static void Run({tensors}, {ints}, double scale, {tensor_params(("workspace", "out"))}) {{
  tvmopt::attention::Run<Config, {", ".join(map(str, HEAD_DIMS))}>(
      "{symbol}", q, k, v, {"&mask" if masked else "nullptr"}, {", ".join(PARAMS)}, out);
}}"""))

    def params(self, g: AttentionGeometry) -> tuple[int | float, ...]:
        values = (g.batch, g.heads, *g.mask_strides, g.scale)
        assert len(values) == len(PARAMS)
        return values

    def work(self, g: AttentionGeometry) -> int:
        return 2 * g.batch * g.heads * g.seq_q * g.seq_k * g.head_dim

    def describe(self, g: AttentionGeometry) -> str:
        mask = (f", {g.mask_kind[:3]} mask {'x'.join(map(str, g.mask_shape))}"
                if g.mask_shape else "")
        return (f"attention {g.batch}x{g.heads} heads, {g.seq_q}x{g.seq_k} x {g.head_dim}, "
                f"scale {g.scale:g}{mask}")

    def inputs(self, g: AttentionGeometry, args: dict, rng) -> dict[str, np.ndarray]:
        """q, k, v as the projections write them and, for a masked layer, an additive mask of
        the layer's shape that hides the last quarter of the keys."""
        hidden = g.heads * g.head_dim
        arrays = {"q": rng.standard_normal((g.batch, g.seq_q, hidden)).astype(np.float16),
                  "k": rng.standard_normal((g.batch, g.seq_k, hidden)).astype(np.float16),
                  "v": rng.standard_normal((g.batch, g.seq_k, hidden)).astype(np.float16)}
        if g.mask_shape is not None:
            mask = np.zeros(g.mask_shape, np.float32)
            mask[..., g.seq_k - g.seq_k // 4:] = -65504.0
            arrays["mask"] = mask.astype(g.mask_dtype)
        return arrays

    def output_shape(self, g: AttentionGeometry) -> tuple[int, ...]:
        return g.batch, g.seq_q, g.heads * g.head_dim

    def reference(self, g: AttentionGeometry, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """softmax(scale * Q K^T + mask) V per batch and head, in fp32, heads merged again."""
        def heads(x):
            return x.astype(np.float32).reshape(g.batch, -1, g.heads,
                                                g.head_dim).transpose(0, 2, 1, 3)

        scores = heads(arrays["q"]) @ heads(arrays["k"]).transpose(0, 1, 3, 2) * g.scale
        if "mask" in arrays:
            mask = arrays["mask"].astype(np.float32)
            scores = scores + mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        return (probs @ heads(arrays["v"])).transpose(0, 2, 1, 3).reshape(arrays["q"].shape)


def _check(context) -> bool:
    if relax_match.leaks(context):
        return False
    try:
        g = geometry(context.annotated_expr, context.matched_bindings)
    except ValueError:
        return False
    return g is not None and relax_match.dtype(context.matched_expr) == "float16"


def geometry(notes, bindings) -> AttentionGeometry | None:
    """The geometry of a matched attention the kernel can run, else None (ValueError where a
    shape is dynamic)."""
    shape, dtype = relax_match.static_shape, relax_match.dtype
    q_heads, k_heads, v_heads = (notes[f"{r}_heads"] for r in "qkv")
    b, h, sq, d = shape(q_heads)
    sk = shape(k_heads)[3]
    axes = {r: [int(a) for a in notes[f"{r}_heads"].attrs.axes] for r in "qkv"}
    split = [b, -1, h, d]  # each of q, k, v is [batch, seq, heads * head_dim] in memory
    if (axes != {"q": [0, 2, 1, 3], "k": [0, 2, 3, 1], "v": [0, 2, 1, 3]}
            or [int(a) for a in notes["merged"].attrs.axes] != [0, 2, 1, 3]
            or int(notes["softmax"].attrs.axis) not in (-1, 3) or d not in HEAD_DIMS
            or shape(k_heads) != (b, h, d, sk) or shape(v_heads) != (b, h, sk, d)
            or any(dtype(notes[r]) != "float16" for r in "qkv")):
        return None
    for r in "qkv":
        in_memory = shape(notes[f"{r}_heads"].args[0])
        if [in_memory[0], -1, *in_memory[2:]] != split or shape(notes[r])[-1] != h * d:
            return None
    scale = 1.0
    if "scale" in notes:
        c = relax_match.scalar(notes["scale"], bindings)
        if not c or c < 0:  # the kernel starts its scores from mask / scale
            return None
        scale = c if relax_match.consumer(bindings, notes["scale"]) == "relax.multiply" else 1 / c
    mask_shape = mask_dtype = None
    if "mask" in notes:
        mask_shape, mask_dtype = shape(notes["mask"]), dtype(notes["mask"])
        full = (1,) * (4 - len(mask_shape)) + mask_shape
        if (len(mask_shape) > 4 or full[3] != sk or mask_dtype not in ("float16", "float32")
                or any(m not in (1, want) for m, want in zip(full, (b, h, sq, sk)))):
            return None
    return AttentionGeometry(b, h, sq, sk, d, scale, mask_shape, mask_dtype)


OP = Attention()
