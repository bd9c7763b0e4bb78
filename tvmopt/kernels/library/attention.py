"""The attention op: a whole attention as the ONNX exporters write it op by op, from the head
split of Q, K and V to the head merge, on one of two kernel families: tvmopt's own
(`csrc/attention.cuh`: FlashAttention-2's scheme, scores in registers through mma.sync; every
form) and CUTLASS's Hopper FMHA (`csrc/fmha_sm90.cuh`: TMA and warp-specialised wgmma,
FlashAttention-3's scheme; the forms it `fits`). Both are tactics of one layer, measured alike.

out = softmax(scale * Q K^T + mask) V per batch and head, as `symbol(q, k, v, [mask], *PARAMS,
workspace, out)`. Q, K, V and the output are read and written where their producers keep them
(`attention_forms` rewrites every exported form into the one this op's patterns match): batch,
heads and sequence in any memory order with the head dimension innermost; K and V may have
fewer heads than Q (grouped-query attention); a constant causal mask becomes the kernel's own;
the other mask is additive, fp16 or fp32, any shape that broadcasts to [batch, heads, seq_q,
seq_k]. Batch and sequence lengths are read from the tensors at run time.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass

import numpy as np

from . import attention_forms, projections, relax_match
from .instance import Instance, instantiation, tensor_params
from .op import Layer, Match, Op, Pattern

HEAD_DIMS = (32, 64, 80, 96, 128)  # instantiated in every instance; others stay on TVM kernels
KEY_BLOCK = 64
# An instance's arguments after its tensors.
PARAMS = ("batch", "heads", "kv_heads", "head_dim", "q_layout", "k_layout", "v_layout",
          "out_layout", "q_pitch", "k_pitch", "v_pitch", "q_offset", "k_offset", "v_offset",
          "mask_batch_stride", "mask_head_stride", "mask_query_stride", "causal_offset", "scale")
PROJECTED = ("bsh",) * 4  # [batch, seq, heads * head_dim]: Q, K, V and out as projections write
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
        return f"{self.rows}x{self.key_block}x16_c1x1_mma_online"

    @classmethod
    def parse(cls, name: str) -> "AttentionTactic":
        found = re.fullmatch(r"(\d+)x(\d+)x16_c1x1_mma_online", name)
        if found is None or int(found[1]) % 16:
            raise ValueError(f"not an attention tactic: {name}")
        return cls(int(found[1]) // 16, int(found[2]))


# Fewer warps per CTA: more CTAs for a small batch; more: K and V loaded once for more queries.
CATALOGUE: tuple[AttentionTactic, ...] = (AttentionTactic(4), AttentionTactic(2),
                                          AttentionTactic(1))


@dataclass(frozen=True)
class FmhaTactic:
    """CUTLASS's Hopper FMHA: query rows and keys per tile, for one head dimension, on the
    cooperative (two warp groups share a tile) or ping-pong (persistent) schedule."""
    rows: int
    keys: int
    head_dim: int
    schedule: str

    @property
    def name(self) -> str:
        return f"{self.rows}x{self.keys}x{self.head_dim}_c1x1_fmha_{self.schedule}"

    @classmethod
    def parse(cls, name: str) -> "FmhaTactic":
        found = re.fullmatch(r"(\d+)x(\d+)x(\d+)_c1x1_fmha_(cooperative|pingpong)", name)
        if found is None:
            raise ValueError(f"not an FMHA tactic: {name}")
        return cls(int(found[1]), int(found[2]), int(found[3]), found[4])

    def fits(self, g: "AttentionGeometry") -> bool:
        """What the FMHA mainloop computes (csrc/fmha_mask.cuh adds the scale and the mask): as
        many K/V heads as Q heads, a positive scale, an additive mask the same for every query (a
        padding mask) or a causal one (of offset 0, with no more queries than keys), not both."""
        return (g.head_dim == self.head_dim and g.groups == 1 and g.scale > 0
                and g.mask_strides[2] == 0
                and (g.causal is None or (g.causal == 0 and g.seq_q <= g.seq_k
                                          and g.mask_shape is None)))


# CUTLASS's example's tiles for each head dimension.
FMHA_CATALOGUE: tuple[FmhaTactic, ...] = (
    FmhaTactic(128, 64, 64, "cooperative"), FmhaTactic(128, 64, 64, "pingpong"),
    FmhaTactic(128, 128, 128, "cooperative"), FmhaTactic(128, 128, 128, "pingpong"))


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
    kv_heads: int = 0  # K and V heads (grouped-query attention); 0: as many as Q
    causal: int | None = None  # keys after query + causal are hidden; None: no causal mask
    layouts: tuple[str, ...] = PROJECTED  # memory order of b, h, s in Q, K, V and the output
    # Q, K and V as column slices of packed projections: (pitch, first column) of each, rows of
    # `pitch` elements, (0, 0) for one that is a tensor of its own; () where all three are.
    packed: tuple[int, ...] = ()

    def slice_of(self, role: str) -> tuple[int, int] | None:
        """(pitch, first column) where `role` ("q", "k" or "v") is read as a column slice of a
        packed projection; None where it is a tensor of its own."""
        i = 2 * "qkv".index(role)
        return (self.packed[i], self.packed[i + 1]) if self.packed and self.packed[i] else None

    @property
    def groups(self) -> int:
        return self.heads // (self.kv_heads or self.heads)

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

    def canonicalize(self, mod):
        return attention_forms.canonicalize(projections.combine_projections(mod))

    def patterns(self) -> list[Pattern]:
        """The canonical form `attention_forms` writes: each of Q, K, V a permuted reshape of the
        tensor it is read from (K and V maybe repeated for grouped heads), scores = Q K^T in
        fp32, maybe scaled, maybe a constant causal mask and an additive mask (maybe cast) added,
        softmax, cast, @ V, cast, and the result permuted and reshaped into its tensor."""
        from tvm.relax.dpl.pattern import is_const, is_op, wildcard

        def heads(role, notes, grouped, packed):
            notes[role] = wildcard()
            x = notes[role]
            if packed:  # each of Q, K and V may be a slice of a packed projection, or not
                x = is_op("relax.strided_slice")(x, varg_default_wildcard=True) | x
            x = is_op("relax.permute_dims")(is_op("relax.reshape")(x, wildcard()))
            if grouped:
                x = is_op("relax.reshape")(is_op("relax.broadcast_to")(
                    is_op("relax.expand_dims")(x), wildcard()), wildcard())
            return x

        out = []
        for scaled, causal, mask, grouped, packed in itertools.product(
                (True, False), (True, False), ("cast", "fp", None), (True, False), (True, False)):
            notes = {}
            q = heads("q", notes, False, packed)
            k = is_op("relax.permute_dims")(heads("k", notes, grouped, packed))
            x = is_op("relax.matmul")(q, k)
            if scaled:
                notes["scale"] = is_const()
                x = is_op("relax.multiply")(x, notes["scale"])
            if causal:
                notes["causal"] = is_const()
                x = is_op("relax.add")(x, notes["causal"])
            if mask:
                notes["mask"] = wildcard()
                addend = is_op("relax.astype")(notes["mask"]) if mask == "cast" else notes["mask"]
                x = is_op("relax.add")(x, addend)
            p = is_op("relax.astype")(is_op("relax.nn.softmax")(x))
            context = is_op("relax.astype")(is_op("relax.matmul")(
                p, heads("v", notes, grouped, packed)))
            x = is_op("relax.reshape")(is_op("relax.permute_dims")(context), wildcard())
            name = "_".join(["attention", "scaled" if scaled else "unscaled",
                             *(["causal"] if causal else []), f"{mask or 'no'}mask",
                             *(["grouped"] if grouped else []), *(["packed"] if packed else [])])
            out.append(Pattern(name, x, notes, functools.partial(_check, causal=causal, mask=mask),
                               name.count("_") + (mask == "cast"), (causal, mask)))
        return out

    def layer(self, match: Match) -> Layer:
        """The canonical form read again in the outlined function."""
        parts = _parts(_root(match.bindings), match.bindings, *match.pattern.variant)
        args = {role: match.params[parts[role]] for role in self.roles if role in parts}
        return Layer(self, geometry(parts, match.bindings), args)

    def key(self, g: AttentionGeometry) -> str:
        mask = "x".join(map(str, g.mask_shape)) if g.mask_shape else "none"
        key = (f"attention_f16_{g.batch}x{g.heads}x{g.seq_q}x{g.seq_k}x{g.head_dim}"
               f"_mask_{g.mask_kind}_{mask}")
        # Features BERT-style attention never had extend the key it has always had.
        if g.groups > 1:
            key += f"_kvheads{g.kv_heads}"
        if g.causal is not None:
            key += f"_causal{g.causal}"
        if g.layouts != PROJECTED:
            key += "_layout" + "".join(g.layouts)
        if g.packed:
            key += "_packed" + "x".join(map(str, g.packed))
        return key

    def features(self, key: str) -> tuple[str, tuple[int, ...]]:
        """Where Q, K and V are read from (layouts, packed projections) changes the addresses,
        not the work: a layer is predicted from one that differs only in those."""
        kind, sizes = super().features(key)
        return re.sub(r"_(layout|packed)[^_]*", "", kind), sizes

    def catalogue(self, g: AttentionGeometry) -> tuple[AttentionTactic | FmhaTactic, ...]:
        return CATALOGUE + tuple(t for t in FMHA_CATALOGUE if t.fits(g))

    def default_tactic(self, g: AttentionGeometry) -> AttentionTactic:
        """Four warps: the fastest, or within 2% of it, at every shape measured on an H100 (batch 1
        to 64, sequence 77 to 1024, head dims 64 to 128), however few CTAs a small batch makes."""
        return CATALOGUE[0]

    def parse_tactic(self, name: str) -> AttentionTactic | FmhaTactic:
        return (FmhaTactic if "_fmha_" in name else AttentionTactic).parse(name)

    def instance(self, g: AttentionGeometry, t: AttentionTactic | FmhaTactic,
                 arch: str) -> Instance:
        causal = g.causal is not None
        symbol = f"tvmopt_attention_{g.mask_kind}{'_causal' if causal else ''}_{t.name}"
        masked = g.mask_kind != "nomask"
        tensors = tensor_params(("q", "k", "v", *(("mask",) if masked else ())))
        ints = ", ".join(f"int64_t {p}" for p in PARAMS[:-1])
        if isinstance(t, FmhaTactic):
            header = "fmha_sm90.cuh"
            kernel = (f"tvmopt::fmha::Fmha<{t.rows}, {t.keys}, {t.head_dim}, "
                      f"tvmopt::fmha::{t.schedule.capitalize()}, {_MASK_TYPES[g.mask_kind]}, "
                      f"{str(causal).lower()}>")
        else:
            header = "attention.cuh"
            kernel = (f"tvmopt::attention::MmaKernel<tvmopt::attention::Config<{t.warps}, "
                      f"{t.key_block}, {_MASK_TYPES[g.mask_kind]}, {str(causal).lower()}>, "
                      f"{', '.join(map(str, HEAD_DIMS))}>")
        return Instance(symbol, instantiation(symbol, header, __name__, f"""
using Kernel = {kernel};
static void Run({tensors}, {ints}, double scale, {tensor_params(("workspace", "out"))}) {{
  tvmopt::attention::Run<Kernel>("{symbol}", q, k, v, {"&mask" if masked else "nullptr"},
                                 {", ".join(PARAMS)}, workspace, out);
}}"""))

    def params(self, g: AttentionGeometry) -> tuple[int | float, ...]:
        codes = [int("".join(str("bhs".index(a)) for a in order)) for order in g.layouts]
        packed = g.packed or (0,) * 6
        values = (g.batch, g.heads, g.kv_heads or g.heads, g.head_dim, *codes, *packed[0::2],
                  *packed[1::2], *g.mask_strides, g.causal or 0, g.scale)
        assert len(values) == len(PARAMS)
        return values

    def work(self, g: AttentionGeometry) -> int:
        return 2 * g.batch * g.heads * g.seq_q * g.seq_k * g.head_dim

    def describe(self, g: AttentionGeometry) -> str:
        mask = (f", {g.mask_kind[:3]} mask {'x'.join(map(str, g.mask_shape))}"
                if g.mask_shape else "")
        mask += f", causal (offset {g.causal})" if g.causal is not None else ""
        mask += f", {g.kv_heads} K/V heads" if g.groups > 1 else ""
        mask += f", layouts {'/'.join(g.layouts)}" if g.layouts != PROJECTED else ""
        sliced = [role.upper() for role in "qkv" if g.slice_of(role)]
        mask += f", {', '.join(sliced)} read from packed projections" if sliced else ""
        return (f"attention {g.batch}x{g.heads} heads, {g.seq_q}x{g.seq_k} x {g.head_dim}, "
                f"scale {g.scale:g}{mask}")

    def inputs(self, g: AttentionGeometry, args: dict, rng) -> dict[str, np.ndarray]:
        """q, k, v in the memory order of the layer's layouts and, for a masked layer, an
        additive mask of the layer's shape that hides the last quarter of the keys."""
        kv = g.kv_heads or g.heads
        arrays = {}
        for role, order, heads, seq in (
                ("q", g.layouts[0], g.heads, g.seq_q), ("k", g.layouts[1], kv, g.seq_k),
                ("v", g.layouts[2], kv, g.seq_k)):
            same = [r for r in arrays if args.get(r) is not None and args.get(r) == args.get(role)]
            shape = _in_memory(order, g.batch, heads, seq, g.head_dim)
            if g.slice_of(role):  # rows of the packed projection, its pitch wide
                shape = (*shape[:2], g.slice_of(role)[0])
            arrays[role] = (arrays[same[0]] if same else
                            rng.standard_normal(shape).astype(np.float16))
        if g.mask_shape is not None:
            mask = np.zeros(g.mask_shape, np.float32)
            mask[..., g.seq_k - g.seq_k // 4:] = -65504.0
            arrays["mask"] = mask.astype(g.mask_dtype)
        return arrays

    def output_shape(self, g: AttentionGeometry) -> tuple[int, ...]:
        return _in_memory(g.layouts[3], g.batch, g.heads, g.seq_q, g.head_dim)

    def reference(self, g: AttentionGeometry, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """softmax(scale * Q K^T + mask) V per batch and head in fp32, K/V heads repeated for
        grouped heads, written in the output's memory order."""
        def bhsd(role, order):
            x = arrays[role].astype(np.float32)
            if g.slice_of(role):
                start = g.slice_of(role)[1]
                heads = g.heads if role == "q" else g.kv_heads or g.heads
                x = x[..., start:start + heads * g.head_dim]
                x = x.reshape(*x.shape[:2], heads, g.head_dim)
            x = x.reshape(*x.shape[:2], -1, g.head_dim) if order == "bsh" else x
            return x.transpose([order.index(a) for a in "bhs"] + [3])

        q = bhsd("q", g.layouts[0])
        k, v = (np.repeat(bhsd(r, o), g.groups, axis=1)
                for r, o in (("k", g.layouts[1]), ("v", g.layouts[2])))
        scores = q @ k.transpose(0, 1, 3, 2) * g.scale
        if "mask" in arrays:
            mask = arrays["mask"].astype(np.float32)
            scores = scores + mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        if g.causal is not None:
            rows, cols = np.indices((g.seq_q, g.seq_k))
            scores = np.where(cols > rows + g.causal, -np.inf, scores)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        out = (probs @ v).transpose(["bhs".index(a) for a in g.layouts[3]] + [3])
        return out.reshape(self.output_shape(g))


def _in_memory(order: str, batch: int, heads: int, seq: int, dim: int) -> tuple[int, ...]:
    """The shape of a tensor holding [b, h, s, d] in memory order `order` ([b, s, h * d] for the
    projections' order)."""
    if order == "bsh":
        return batch, seq, heads * dim
    sizes = {"b": batch, "h": heads, "s": seq}
    return (*(sizes[a] for a in order), dim)


def _check(context, causal: bool, mask: str | None) -> bool:
    if relax_match.leaks(context):
        return False
    try:
        parts = _parts(context.matched_expr, context.matched_bindings, causal, mask)
        g = geometry(parts, context.matched_bindings)
    except (AttributeError, KeyError, TypeError, ValueError):  # not the canonical form
        return False
    return g is not None and relax_match.dtype(context.matched_expr) == "float16"


def _root(bindings):
    """The value no other binding reads: the outlined function's result."""
    used = {a for value in bindings.values() for a in getattr(value, "args", ())}
    (root,) = [value for var, value in bindings.items()
               if var not in used and getattr(getattr(value, "op", None), "name", "")
               == "relax.reshape"]
    return root


def _parts(root, bindings, causal: bool, mask: str | None) -> dict:
    """The pieces of the canonical form below its final reshape: the tensors by role, the scale
    and causal constants, and the calls that say how each tensor is laid out."""
    def value(expr):
        return bindings.get(expr, expr)

    def heads(x, role):
        grouped = None
        if value(x).op.name == "relax.reshape" and value(value(x).args[0]).op.name == \
                "relax.broadcast_to":
            grouped = value(x)
            x = value(value(grouped.args[0]).args[0]).args[0]
        permute = value(x)
        reshape = value(permute.args[0])
        source, sliced = reshape.args[0], None
        if getattr(getattr(value(source), "op", None), "name", "") == "relax.strided_slice":
            sliced = value(source)
            source = sliced.args[0]
        return {role: source, f"{role}_permute": permute, f"{role}_grouped": grouped,
                f"{role}_heads": x, f"{role}_slice": sliced}

    parts = {"out_permute": value(root.args[0])}
    context = value(value(parts["out_permute"].args[0]).args[0])
    probs = value(value(context.args[0]).args[0])
    parts["softmax"] = probs
    parts.update(heads(context.args[1], "v"))
    x = value(probs.args[0])
    if mask:
        addend = x.args[1]
        parts["mask"] = value(addend).args[0] if mask == "cast" else addend
        x = value(x.args[0])
    if causal:
        parts["causal"] = x.args[1]
        x = value(x.args[0])
    if x.op.name == "relax.multiply":
        parts["scale"] = x.args[1]
        x = value(x.args[0])
    parts.update(heads(x.args[0], "q"))
    parts.update(heads(value(x.args[1]).args[0], "k"))
    return parts


def geometry(parts, bindings) -> AttentionGeometry | None:
    """The geometry of a matched attention the kernel can run, else None (ValueError where a
    shape is dynamic)."""
    shape, dtype = relax_match.static_shape, relax_match.dtype
    b, h, sq, d = shape(parts["q_heads"])
    _, kv, sk, _ = shape(parts["k_heads"])
    if (d not in HEAD_DIMS or int(parts["softmax"].attrs.axis) not in (-1, 3)
            or shape(parts["v_heads"]) != (b, kv, sk, d) or h % kv
            or any(dtype(parts[r]) != "float16" for r in "qkv")
            or (parts["k_grouped"] is None) != (parts["v_grouped"] is None)
            or (parts["k_grouped"] is None) != (kv == h)):
        return None
    layouts = []
    for role in "qkv":
        axes = [int(a) for a in parts[f"{role}_permute"].attrs.axes]
        if axes[3] != 3:
            return None
        layouts.append("".join("bhs"[axes.index(j)] for j in range(3)))
    axes = [int(a) for a in parts["out_permute"].attrs.axes]
    if axes[3] != 3:
        return None
    layouts.append("".join("bhs"[axes[j]] for j in range(3)))
    scale = 1.0
    if "scale" in parts:
        scale = relax_match.scalar(parts["scale"], bindings)
        if not scale or scale < 0:  # the kernel starts its scores from mask / scale
            return None
    causal = None
    if "causal" in parts:
        causal = attention_forms.causal_offset(
            relax_match.constant_value(parts["causal"], bindings), sq, sk)
        if causal is None:
            return None
    mask_shape = mask_dtype = None
    if "mask" in parts:
        mask_shape, mask_dtype = shape(parts["mask"]), dtype(parts["mask"])
        full = (1,) * (4 - len(mask_shape)) + mask_shape
        if (len(mask_shape) > 4 or full[3] != sk or mask_dtype not in ("float16", "float32")
                or any(m not in (1, want) for m, want in zip(full, (b, h, sq, sk)))):
            return None
    packed = ()
    if any(parts[f"{role}_slice"] is not None for role in "qkv"):
        packed = _packed(parts, layouts)
        if packed is None:
            return None
    return AttentionGeometry(b, h, sq, sk, d, scale, mask_shape, mask_dtype,
                             kv if kv != h else 0, causal, tuple(layouts), packed)


def _packed(parts, layouts) -> tuple[int, ...] | None:
    """(pitch, first column) of Q, K and V, (0, 0) for a tensor of its own, the others each a
    slice of its tensor's rows along the last axis with the heads innermost, else None."""
    found = []
    for role, order in zip("qkv", layouts):
        sliced = parts[f"{role}_slice"]
        if sliced is None:
            found += [0, 0]
            continue
        source = relax_match.static_shape(parts[role])
        axes, begin, end = ([int(v) for v in arg.fields] for arg in sliced.args[1:4])
        strides = [int(v) for v in sliced.args[4].fields] if len(sliced.args) > 4 else [1]
        if (order[-1] != "h" or axes not in ([len(source) - 1], [-1]) or strides != [1]
                or begin[0] % 8 or source[-1] % 8 or end[0] > source[-1]):
            return None
        found += [source[-1], begin[0]]
    return tuple(found)


OP = Attention()
