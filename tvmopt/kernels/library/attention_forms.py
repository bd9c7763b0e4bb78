"""Attention as the exporters write it, rewritten into the one form the attention op matches.

One attention reaches tvmopt in many spellings: Hugging Face's eager BERT divides Q K^T and adds
a padding mask; GPT-2 writes its causal mask as `where(tril, scores, finfo.min)`; T5 adds a
position bias and a padding mask; PyTorch's `scaled_dot_product_attention` scales Q and K^T by
sqrt(scale) each and adds a constant causal mask; `nn.MultiheadAttention` reads sequence-first
heads; Llama rotates Q and K (the heads are then [batch, heads, seq, dim] tensors) and repeats
grouped K/V heads with expand + reshape. This pass finds each softmax between Q K^T and P V,
reads what it computes (the layout each of Q, K, V and the output is in memory, the scale, the
grouped heads, a constant causal mask, the other additive terms), and writes it again as

    q4 = permute_dims(reshape(q, in-memory shape), to [b, h, sq, d])     (k4, v4 alike)
    [k4 = reshape(broadcast_to(expand_dims(k4, 2)), [b, h, sk, d])]      grouped K/V heads
    scores = matmul(q4, permute_dims(k4, [0, 1, 3, 2]), out_dtype=float32)
    [scores = multiply(scores, scale)]
    [scores = add(scores, causal)]       a constant: the kernel generates it instead of reading it
    [scores = add(scores, [astype](mask))]   the other additive terms, summed, unbroadcast
    out = reshape(permute_dims(astype(matmul(astype(softmax(scores)), v4)), ...), out's shape)

so that one pattern (`attention.py`) sees every form, and the kernel reads the tensors where the
producers left them (no transposes). What it cannot read exactly stays as it was."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np

from . import relax_match

_is_call = relax_match.is_call

log = logging.getLogger(__name__)

ORDERS = ("bsh", "bhs", "sbh", "hbs", "hsb", "shb")  # memory orders of batch, heads, sequence
MASKED = -1e4  # a constant this negative in a where() or an additive mask hides its keys


@dataclass
class Heads:
    """A [batch, heads, seq, dim] operand read from `source`, a contiguous tensor holding it in
    memory order `order` (the head dimension innermost); with a `pitch`, its rows of heads * dim
    elements are the columns from `offset` of `source`'s rows of `pitch` (Q, K or V as a slice of
    a packed projection)."""
    source: object
    order: str
    batch: int
    heads: int
    seq: int
    dim: int
    pitch: int = 0
    offset: int = 0

    def shape_in_memory(self) -> list[int]:
        sizes = {"b": self.batch, "h": self.heads, "s": self.seq}
        return [sizes[a] for a in self.order] + [self.dim]

    def to_bhsd(self) -> list[int]:
        return [self.order.index(a) for a in "bhs"] + [3]


@dataclass
class Form:
    """One attention as it was found: what the canonical form is written from."""
    q: Heads
    k: Heads
    v: Heads
    out: Heads  # `source` is the variable the attention's result was bound to
    out_shape: list[int]
    scale: float
    causal: np.ndarray | None  # the constant causal mask, as found
    terms: list = field(default_factory=list)  # other additive terms: Expr or (cond, value)


def canonicalize(mod):
    """`mod` with every attention of main it can read written in the canonical form."""
    main = mod["main"]
    bindings, users = _bindings(main)
    forms = {}
    for var, value in bindings.items():
        if _is_call(value, "relax.nn.softmax"):
            try:
                form = _read(var, bindings, users)
            except (AttributeError, KeyError, TypeError, ValueError) as e:
                # A graph shaped unlike any exporter's: that softmax stays as it is.
                log.debug("attention: softmax %s not read (%s)", var.name_hint, e)
                form = None
            if form is not None:
                forms[form.out.source] = form
    if not forms:
        return mod
    log.debug("attention: %d softmax(es) rewritten into the canonical form", len(forms))
    block_of = {b.var: i for i, block in enumerate(main.body.blocks) for b in block.bindings}
    masks = {}  # every layer's padding mask from one where() per dataflow block, not one each
    return relax_match.rewrite_bindings(mod, {
        out: (lambda builder, remap, form=form, block=block_of.get(out):
              _Emitter(builder, remap, masks, block, bindings).attention(form))
        for out, form in forms.items()})


def _bindings(func):
    """({Var: value} of the function's bindings, {Var: number of uses})."""
    from tvm import relax

    bindings, users = {}, {}

    def count(expr):
        if isinstance(expr, relax.Var):
            users[expr] = users.get(expr, 0) + 1

    for block in func.body.blocks:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding):
                bindings[b.var] = b.value
                relax.analysis.post_order_visit(b.value, count)
    relax.analysis.post_order_visit(func.body.body, count)
    return bindings, users


def _shape(expr):
    try:
        return relax_match.static_shape(expr)
    except (ValueError, AttributeError, TypeError):
        return None


def _read(softmax_var, bindings, users) -> Form | None:
    """The attention around this softmax, or None where it is not one the kernel can run."""
    softmax = bindings[softmax_var]
    shape = _shape(softmax_var)
    if shape is None or len(shape) != 4 or int(softmax.attrs.axis) not in (-1, 3):
        return None
    b, h, sq, sk = shape
    # P @ V: the softmax's only user is a cast to fp16, whose only user is the matmul.
    probs = _only_user(softmax_var, bindings, users)
    if (probs is None or not _is_call(bindings[probs], "relax.astype")
            or relax_match.dtype(probs) != "float16"):
        return None  # the kernel's form is mixed precision's: fp16 tensors, fp32 softmax
    context = _only_user(probs, bindings, users)
    if context is None or not _is_call(bindings[context], "relax.matmul") \
            or not bindings[context].args[0].same_as(probs):
        return None
    scores = _scores(softmax.args[0], bindings, users)
    if scores is None:
        return None
    matmul, scale, terms = scores
    q = _heads(matmul.args[0], bindings, transposed=False)
    k = _heads(matmul.args[1], bindings, transposed=True)
    v = _heads(bindings[context].args[1], bindings, transposed=False)
    if q is None or k is None or v is None:
        return None
    (q, q_scale), (k, k_scale), (v, v_scale) = q, k, v
    d = q.dim
    if (v_scale != 1.0 or (q.batch, q.heads, q.seq) != (b, h, sq) or k.seq != sk
            or (k.batch, k.heads, k.dim) != (v.batch, v.heads, v.dim) or k.seq != v.seq
            or k.dim != d or k.batch != b or h % k.heads):
        return None
    out = _output(context, bindings, users, (b, h, sq, d))
    if out is None:
        return None
    out_heads, out_shape = out
    scale *= q_scale * k_scale
    if relax_match.close(scale, d ** -0.5):
        scale = d ** -0.5  # 1/sqrt(d), as the fp32 model had it before its constants were fp16
    form = Form(q, k, v, out_heads, out_shape, scale, None)
    for term in terms:
        value = _constant_term(term, bindings)
        if value is not None and not value.any():
            continue  # adding zeros (a mask that hides nothing)
        offset = None if value is None or form.causal is not None else causal_offset(value, sq, sk)
        if offset is not None:
            form.causal = value
            continue
        split = None if form.causal is not None else _causal_and(term, bindings, sq, sk)
        if split is not None:
            form.causal, term = split
        form.terms.append(term)
    return form


def _only_user(var, bindings, users):
    """The variable whose value is the only use of `var`, else None."""
    if users.get(var, 0) != 1:
        return None
    for other, value in bindings.items():
        if any(a.same_as(var) for a in getattr(value, "args", ())):
            return other
    return None


def _scores(expr, bindings, users):
    """(the Q K^T matmul, scale, additive terms) of what the softmax reads, walking back through
    casts, scalar multiplies and divides, adds and where(mask, scores, very negative); None if
    it is not that, or an intermediate value is used elsewhere."""
    from tvm import relax

    scale, terms = 1.0, []
    while True:
        if isinstance(expr, relax.Var) and expr in bindings:
            if users.get(expr, 0) != 1:
                return None
            value = bindings[expr]
        else:
            return None
        if _is_call(value, "relax.matmul"):
            return value, scale, terms
        if _is_call(value, "relax.astype"):
            expr = value.args[0]
        elif _is_call(value, "relax.multiply") or _is_call(value, "relax.divide"):
            found = _scalar_operand(value, bindings, divide=_is_call(value, "relax.divide"))
            if found is None:
                return None
            factor, expr = found
            scale *= factor
        elif _is_call(value, "relax.add"):
            left = _scores(value.args[0], bindings, users)
            if left is not None:
                return left[0], scale * left[1], left[2] + [value.args[1]] + terms
            right = _scores(value.args[1], bindings, users)
            if right is not None:
                return right[0], scale * right[1], right[2] + [value.args[0]] + terms
            return None
        elif _is_call(value, "relax.where"):
            fill = relax_match.scalar(value.args[2], bindings)
            if fill is None or fill > MASKED:
                return None
            terms.append((value.args[0], fill))
            expr = value.args[1]
        else:
            return None


def _scalar_operand(call, bindings, *, divide: bool):
    """(factor, the other operand) of a multiply or divide by a positive scalar constant."""
    for i in ((1,) if divide else (1, 0)):
        c = relax_match.scalar(call.args[i], bindings)
        if c is not None and c > 0:
            return (1.0 / c if divide else c), call.args[1 - i]
    return None


def _heads(expr, bindings, *, transposed: bool):
    """(Heads, scale) of a [b, h, s, d] operand ([b, h, d, s] when `transposed`), seen through
    scalar multiplies, grouped-head repeats and views of one contiguous tensor; None if it is
    not one."""
    scale = 1.0
    while True:
        value = bindings.get(expr)
        if value is None or not _is_call(value, "relax.multiply"):
            break
        found = _scalar_operand(value, bindings, divide=False)
        if found is None:
            break
        scale *= found[0]
        expr = found[1]
    if transposed:  # K^T of grouped heads: permute_dims(repeat(k4), [0, 1, 3, 2])
        value = bindings.get(expr)
        if _is_call(value, "relax.permute_dims") and [int(a) for a in value.attrs.axes] == [
                0, 1, 3, 2]:
            grouped = _grouped(value.args[0], bindings)
            if grouped is not None:
                heads = _view(grouped, bindings, transposed=False)
                return (heads, scale) if heads is not None else None
    else:
        grouped = _grouped(expr, bindings)
        if grouped is not None:
            heads = _view(grouped, bindings, transposed=False)
            return (heads, scale) if heads is not None else None
    heads = _view(expr, bindings, transposed=transposed)
    return (heads, scale) if heads is not None else None


def _grouped(expr, bindings):
    """The [b, kv_heads, s, d] tensor that `repeat_kv` (expand_dims, broadcast_to, reshape)
    repeats into `expr`, else None."""
    value = bindings.get(expr)
    while _is_call(value, "relax.reshape") and _shape(value.args[0]) == _shape(expr):
        expr, value = value.args[0], bindings.get(value.args[0])  # a reshape to its own shape
    if not _is_call(value, "relax.reshape"):
        return None
    broadcast = bindings.get(value.args[0])
    if not _is_call(broadcast, "relax.broadcast_to"):
        return None
    expanded = bindings.get(broadcast.args[0])
    if not _is_call(expanded, "relax.expand_dims") or [int(a) for a in expanded.attrs.axis] != [2]:
        return None
    inner, wide, out = _shape(expanded.args[0]), _shape(value.args[0]), _shape(expr)
    if inner is None or wide is None or out is None or len(inner) != 4:
        return None
    b, kv, s, d = inner
    if len(wide) != 5 or wide[:2] != (b, kv) or wide[3:] != (s, d) \
            or out != (b, kv * wide[2], s, d):
        return None
    return expanded.args[0]


def _view(expr, bindings, *, transposed: bool) -> Heads | None:
    """`expr` as a view (reshapes and permutes) of a contiguous tensor, if one layout fits."""
    shape = _shape(expr)
    if shape is None or len(shape) != 4:
        return None
    chain = []
    while True:
        value = bindings.get(expr)
        if _is_call(value, "relax.permute_dims") or _is_call(value, "relax.reshape"):
            chain.append(value)
            expr = value.args[0]
        else:
            break
    if not chain:  # a tensor of its own (rotated Q and K): read where it is
        return None if transposed else Heads(expr, "bhs", *shape)
    heads = _heads_of_view(expr, list(reversed(chain)), shape, transposed)
    packed = _column_slice(expr, bindings)
    if heads is None or packed is None or heads.order[-1] != "h":
        return heads
    heads.source, heads.pitch, heads.offset = packed
    return heads


def _column_slice(expr, bindings):
    """(packed tensor, its row length, the first column) where `expr` is one piece of a split of
    a tensor's rows (GPT-2's packed Q, K, V projection) or a slice of its columns (projections
    combined by `projections`), else None."""
    import tvm
    import tvm.tirx  # noqa: F401 - IntImm

    item = bindings.get(expr)
    if _is_call(item, "relax.strided_slice"):  # combined projections (`projections`)
        whole = _shape(item.args[0])
        axes, begin, end = ([int(v) for v in arg.fields] for arg in item.args[1:4])
        strides = [int(v) for v in item.args[4].fields] if len(item.args) > 4 else [1]
        if whole is None or axes not in ([-1], [len(whole) - 1]) or strides != [1]:
            return None
        return item.args[0], whole[-1], begin[0]
    if not isinstance(item, tvm.relax.TupleGetItem):
        return None
    split = bindings.get(item.tuple_value)
    if not _is_call(split, "relax.split"):
        return None
    whole = _shape(split.args[0])
    if whole is None or int(split.attrs.axis) not in (-1, len(whole) - 1):
        return None
    sections = split.attrs.indices_or_sections
    if isinstance(sections, tvm.tirx.IntImm):  # that many equal sections
        width = whole[-1] // int(sections)
        starts = [i * width for i in range(int(sections))]
    else:
        starts = [0] + [int(i) for i in sections]
    return split.args[0], whole[-1], starts[item.index]


def _apply(source_shape, ops):
    """(shape, strides) of `source` after the views `ops`, or None where a reshape reads a
    non-contiguous view."""
    shape = list(source_shape)
    strides = _contiguous(shape)
    for op in ops:
        if op.op.name == "relax.permute_dims":
            axes = ([int(a) for a in op.attrs.axes] if op.attrs.axes is not None
                    else list(reversed(range(len(shape)))))
            shape, strides = [shape[a] for a in axes], [strides[a] for a in axes]
        else:
            new = [int(d) for d in op.args[1].values] if hasattr(op.args[1], "values") else None
            if new is None:
                return None
            if new == shape:
                continue
            if strides != _contiguous(shape):
                return None
            shape, strides = new, _contiguous(new)
    return shape, strides


def _contiguous(shape) -> list[int]:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return list(reversed(strides))


def _heads_of_view(source, ops, shape, transposed: bool) -> Heads | None:
    source_shape = _shape(source)
    if source_shape is None:
        return None
    applied = _apply(source_shape, ops)
    if applied is None:
        return None
    _, strides = applied
    names = "bhds" if transposed else "bhsd"
    sizes = dict(zip(names, shape))
    stride = dict(zip(names, strides))
    if stride["d"] != 1 and sizes["d"] != 1:
        return None
    order = _order(sizes, stride)
    return None if order is None else Heads(source, order, sizes["b"], sizes["h"], sizes["s"],
                                            sizes["d"])


def _order(sizes: dict, stride: dict) -> str | None:
    """The memory order of batch, heads and sequence whose contiguous strides (the head
    dimension innermost) these are; a dimension of size 1 may have any stride."""
    for order in ORDERS:
        expected = dict(zip(order, _contiguous([sizes[a] for a in order] + [sizes["d"]])[:3]))
        if all(stride[a] == expected[a] or sizes[a] == 1 for a in "bhs"):
            return order
    return None


def _output(context, bindings, users, bhsd) -> tuple[Heads, list[int]] | None:
    """Where the attention's [b, h, sq, d] result ends up: the last of the single-use views
    after the cast that follows P V, read as a layout of that (contiguous) tensor."""
    cast = _only_user(context, bindings, users)
    if cast is None or not _is_call(bindings[cast], "relax.astype"):
        return None
    last, chain = cast, []
    while True:
        nxt = _only_user(last, bindings, users) if users.get(last, 0) == 1 else None
        value = bindings.get(nxt) if nxt is not None else None
        if value is None or not (_is_call(value, "relax.permute_dims")
                                 or _is_call(value, "relax.reshape")):
            break
        chain.append(value)
        last = nxt
    final_shape = _shape(last)
    if final_shape is None:
        return None
    # The result as a view of the final tensor: the chain undone, last view first.
    shapes = [list(bhsd)] + [list(_shape(_var_of(c, bindings))) for c in chain]
    undo = []
    for i in reversed(range(len(chain))):
        if chain[i].op.name == "relax.permute_dims":
            axes = [int(a) for a in chain[i].attrs.axes]
            undo.append(("permute", [axes.index(j) for j in range(len(axes))]))
        else:
            undo.append(("reshape", shapes[i]))
    shape, strides = list(final_shape), _contiguous(final_shape)
    for kind, arg in undo:
        if kind == "permute":
            shape, strides = [shape[a] for a in arg], [strides[a] for a in arg]
        elif arg != shape:
            if strides != _contiguous(shape):
                return None
            shape, strides = arg, _contiguous(arg)
    if shape != list(bhsd):
        return None
    sizes = dict(zip("bhsd", bhsd))
    stride = dict(zip("bhsd", strides))
    order = _order(sizes, stride) if stride["d"] == 1 else None
    return None if order is None else (Heads(last, order, *bhsd), list(final_shape))


def _var_of(call, bindings):
    for var, value in bindings.items():
        if value.same_as(call):
            return var
    raise KeyError(call)


def _constant_term(term, bindings) -> np.ndarray | None:
    """An additive term's value where it is a constant (a where() on a constant condition
    included), else None."""
    import tvm

    if isinstance(term, tuple):
        cond, fill = term
        cond = bindings.get(cond, cond)
        if isinstance(cond, tvm.ir.expr.Constant):
            return np.where(cond.value.numpy(), 0.0, fill).astype(np.float32)
        return None
    value = bindings.get(term, term)
    if _is_call(value, "relax.astype"):
        value = bindings.get(value.args[0], value.args[0])
    if isinstance(value, tvm.ir.expr.Constant):
        return value.value.numpy().astype(np.float32)
    return None


def _causal_and(term, bindings, sq: int, sk: int):
    """(the causal mask as an additive constant, the term left: (padding, fill)) where the term
    is where(causal & padding, 0, fill) with `causal` a constant causal pattern: the one mask
    transformers 5.x builds from causality and the attention_mask input (Llama, GPT-2). The
    kernel then generates the causal part, skipping the key blocks it hides, and reads only the
    padding. None for any other term."""
    expr = term[0] if isinstance(term, tuple) else term
    value = bindings.get(expr)
    while _is_call(value, "relax.astype"):
        value = bindings.get(value.args[0])
    if isinstance(term, tuple):  # where(cond, scores, fill): cond is the visible keys
        both, fill = value, term[1]
    elif _is_call(value, "relax.where") and relax_match.scalar(value.args[1], bindings) == 0.0:
        both, fill = bindings.get(value.args[0]), relax_match.scalar(value.args[2], bindings)
    else:
        return None
    if fill is None or fill > MASKED or not _is_call(both, "relax.logical_and"):
        return None
    for pattern, padding in (both.args, both.args[::-1]):
        try:
            visible = relax_match.constant_value(pattern, bindings)
        except ValueError:
            continue
        additive = np.where(visible, 0.0, fill).astype(np.float32)
        if causal_offset(additive, sq, sk) is not None:
            return additive, (padding, fill)
    return None


def causal_offset(mask: np.ndarray, sq: int, sk: int) -> int | None:
    """The offset c where `mask` (additive, broadcasting to [.., sq, sk] alike for every batch
    and head) hides exactly the keys after query + c, else None."""
    if mask.ndim < 2 or mask.shape[-2:] != (sq, sk) or any(d != 1 for d in mask.shape[:-2]):
        return None
    mask = mask.reshape(sq, sk)
    visible = mask == 0
    offset = int(visible[0].sum()) - 1
    if offset < 0:
        return None
    rows, cols = np.indices((sq, sk))
    expected = cols <= rows + offset
    if expected.all() or not np.array_equal(visible, expected) or not np.all(mask[~expected] <= MASKED):
        return None
    return offset


class _Emitter:
    """Writes a Form's canonical ops through a block builder."""

    def __init__(self, builder, remap, masks: dict, block, bindings):
        self.bb, self.remap, self.masks, self.block = builder, remap, masks, block
        self.unexpanded = lambda expr: relax_match.unexpanded(  # a mask expanded over queries
            expr, bindings, builder, remap, masks.setdefault(("unexpanded", block), {}))

    def heads(self, h: Heads, groups: int):
        from tvm import relax

        x = self.remap(h.source)
        if h.pitch:
            last = len(relax_match.static_shape(h.source)) - 1
            x = self.bb.emit(relax.op.strided_slice(x, [last], [h.offset],
                                                    [h.offset + h.heads * h.dim]))
        x = self.bb.emit(relax.op.reshape(x, h.shape_in_memory()))
        x = self.bb.emit(relax.op.permute_dims(x, h.to_bhsd()))
        if groups > 1:
            x = self.bb.emit(relax.op.expand_dims(x, [2]))
            x = self.bb.emit(relax.op.broadcast_to(x, [h.batch, h.heads, groups, h.seq, h.dim]))
            x = self.bb.emit(relax.op.reshape(x, [h.batch, h.heads * groups, h.seq, h.dim]))
        return x

    def mask(self, terms):
        """One additive mask from the terms (fp16 or fp32 as found when there is one)."""
        from tvm import relax

        parts = []
        for term in terms:
            if not isinstance(term, tuple):
                parts.append(self.unexpanded(term))
                continue
            cond, fill = term
            if (self.block, cond, fill) not in self.masks:
                self.masks[self.block, cond, fill] = self.bb.emit(relax.op.where(
                    self.unexpanded(cond), relax.const(0.0, "float32"),
                    relax.const(fill, "float32")))
            parts.append(self.masks[self.block, cond, fill])
        if len(parts) == 1:
            return parts[0]
        widened = [p if relax_match.dtype(p) == "float32"
                   else self.bb.emit(relax.op.astype(p, "float32")) for p in parts]
        return functools.reduce(lambda a, b: self.bb.emit(relax.op.add(a, b)), widened)

    def attention(self, form: Form):
        from tvm import relax

        groups = form.q.heads // form.k.heads
        mask = self.mask(form.terms) if form.terms else None
        q = self.heads(form.q, 1)
        k = self.heads(form.k, groups)
        v = self.heads(form.v, groups)
        x = self.bb.emit(relax.op.matmul(q, self.bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2])),
                                         out_dtype="float32"))
        if form.scale != 1.0:
            x = self.bb.emit(relax.op.multiply(x, relax.const(form.scale, "float32")))
        if form.causal is not None:
            x = self.bb.emit(relax.op.add(x, relax.const(form.causal)))
        if mask is not None:
            if relax_match.dtype(mask) != "float32":
                mask = self.bb.emit(relax.op.astype(mask, "float32"))
            x = self.bb.emit(relax.op.add(x, mask))
        p = self.bb.emit(relax.op.astype(self.bb.emit(relax.op.nn.softmax(x, axis=-1)),
                                         "float16"))
        context = self.bb.emit(relax.op.matmul(p, v, out_dtype="float32"))
        context = self.bb.emit(relax.op.astype(context, "float16"))
        # From [b, h, s, d] to the order the result is in memory.
        merged = self.bb.emit(relax.op.permute_dims(
            context, ["bhs".index(a) for a in form.out.order] + [3]))
        return relax.op.reshape(merged, form.out_shape)


__all__ = ["Form", "Heads", "canonicalize", "causal_offset"]
