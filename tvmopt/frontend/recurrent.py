"""Normalisation step: unroll LSTM, GRU and RNN layers into MatMul and elementwise arithmetic.

TVM's Relax ONNX importer has no recurrent converters. With every dimension fixed, as a build has
them, a recurrent layer is a known number of steps, and ONNX's own equations for each step are a
handful of standard ops. The input projection of every step is one MatMul over the whole
sequence; each step then adds one small MatMul (H R^T) and the gates' arithmetic, which TVM fuses.
The weights are sliced and transposed by graph ops that constant folding removes afterwards.

Covered: every direction (forward, reverse, bidirectional), both layouts, biases, initial states,
peepholes, cell clipping, GRU's `linear_before_reset` either way, and every activation the ONNX
spec lists. Refused with a message: per-example `sequence_lens` (packed sequences) and LSTM's
coupled `input_forget` gate.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import TvmoptError

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                        "RNN": ["Tanh"]}
# activation -> (alpha default, beta default) for those that take parameters
_PARAMETERS = {"leakyrelu": (0.01, None), "thresholdedrelu": (1.0, None), "elu": (1.0, None),
               "hardsigmoid": (0.2, 0.5), "affine": (1.0, 0.0), "scaledtanh": (1.0, 1.0)}
_PLAIN = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softsign": "Softsign",
          "softplus": "Softplus"}


def unroll_recurrent(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """The model with its top-level recurrent nodes unrolled, and a summary (None: none found)."""
    graph = model.graph
    if not any(_is_recurrent(n) for n in graph.node):
        return model, None
    shapes = _known_shapes(model)
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    nodes, counts, steps = [], Counter(), set()
    for index, node in enumerate(graph.node):
        if not _is_recurrent(node):
            nodes.append(node)
            continue
        emit = _Emitter(graph, f"{node.name or node.op_type + str(index)}/unrolled", opset)
        seq = _Layer(node, emit, shapes).unroll()
        nodes += emit.nodes
        counts[node.op_type] += 1
        steps.add(seq)
    del graph.node[:]
    graph.node.extend(nodes)
    summary = ", ".join(f"{op} x{n}" for op, n in sorted(counts.items()))
    lengths = "/".join(str(s) for s in sorted(steps))
    return model, f"{summary} into {lengths} steps of MatMul and elementwise ops"


def _is_recurrent(node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in GATES


def _known_shapes(model) -> dict[str, tuple]:
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    return shapes


class _Emitter:
    """Appends nodes and constants under one name prefix."""

    def __init__(self, graph, prefix: str, opset: int):
        self.graph, self.prefix, self.opset = graph, prefix, opset
        self.nodes: list = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs) -> str:
        out = output or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=self._name(op_type), **attrs))
        return out

    def const(self, value, dtype=np.int64) -> str:
        name = self._name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def pick(self, tensor: str, index: int) -> str:
        """tensor[index:index + 1] along axis 0 (a Slice: TVM imports Gather as a `take` that
        warns once per node)."""
        return self.columns(tensor, index, index + 1, axis=0)

    def columns(self, tensor: str, start: int, stop: int, axis: int = -1) -> str:
        return self.op("Slice", tensor, self.const([start]), self.const([stop]), self.const([axis]))

    def reshape(self, tensor: str, shape) -> str:
        return self.op("Reshape", tensor, self.const(list(shape)))


class _Layer:
    """One recurrent node, unrolled by ONNX's equations (operator docs, LSTM/GRU/RNN)."""

    def __init__(self, node, emit: _Emitter, shapes: dict):
        self.node, self.emit, self.op = node, emit, node.op_type
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.inputs = list(node.input) + [""] * (8 - len(node.input))
        self.layout = int(self.attrs.get("layout", 0))
        x_shape = shapes.get(self.inputs[0])
        where = f"{self.op} node {node.name!r}"
        if x_shape is None or len(x_shape) != 3:
            raise TvmoptError(f"{where}: the shape of its input sequence is unknown, so it cannot "
                              "be unrolled; fix the model's input dims with --input-shape")
        self.seq, self.batch, _ = (x_shape[1], x_shape[0], x_shape[2]) if self.layout else x_shape
        self.hidden = int(self.attrs["hidden_size"])
        self.direction = self.attrs.get("direction", b"forward")
        self.direction = self.direction.decode() if isinstance(self.direction, bytes) else self.direction
        self.dirs = 2 if self.direction == "bidirectional" else 1
        if self.inputs[4]:
            raise TvmoptError(f"{where} takes sequence_lens (per-example lengths, e.g. from "
                              "pack_padded_sequence): tvmopt unrolls fixed-length sequences only; "
                              "export with padded, unpacked sequences")
        if self.op == "LSTM" and self.attrs.get("input_forget", 0):
            raise TvmoptError(f"{where} couples its input and forget gates (input_forget=1), "
                              "which tvmopt does not unroll; export an LSTM without it")
        self.activations = self._activations(where)

    def _activations(self, where: str) -> list[list]:
        """Per direction, the activation callables (f, g, h order), with their alpha/beta."""
        names = [n.decode() if isinstance(n, bytes) else n
                 for n in self.attrs.get("activations", [])] or _DEFAULT_ACTIVATIONS[self.op] * self.dirs
        alphas = list(self.attrs.get("activation_alpha", []))
        betas = list(self.attrs.get("activation_beta", []))
        funcs = []
        for name in names:
            key = name.lower()
            if key in _PLAIN:
                funcs.append((key, None, None))
            elif key in _PARAMETERS:
                alpha_default, beta_default = _PARAMETERS[key]
                alpha = alphas.pop(0) if alphas else alpha_default
                beta = (betas.pop(0) if betas else beta_default) if beta_default is not None else None
                funcs.append((key, alpha, beta))
            else:
                raise TvmoptError(f"{where}: unknown activation {name!r}; ONNX allows "
                                  + ", ".join(sorted({*_PLAIN, *_PARAMETERS})))
        per_direction = len(_DEFAULT_ACTIVATIONS[self.op])
        return [funcs[d * per_direction:(d + 1) * per_direction] for d in range(self.dirs)]

    def _activate(self, func, x: str) -> str:
        key, alpha, beta = func
        e = self.emit
        if key in _PLAIN:
            return e.op(_PLAIN[key], x)
        if key == "affine":
            return e.op("Add", e.op("Mul", x, e.const(alpha, np.float32)), e.const(beta, np.float32))
        if key == "scaledtanh":
            inner = e.op("Tanh", e.op("Mul", x, e.const(beta, np.float32)))
            return e.op("Mul", inner, e.const(alpha, np.float32))
        if key == "hardsigmoid":
            return e.op("HardSigmoid", x, alpha=alpha, beta=beta)
        return e.op({"leakyrelu": "LeakyRelu", "thresholdedrelu": "ThresholdedRelu",
                     "elu": "Elu"}[key], x, alpha=alpha)

    def _clip(self, x: str) -> str:
        if "clip" not in self.attrs:
            return x
        bound = float(self.attrs["clip"])
        e = self.emit
        return e.op("Min", e.op("Max", x, e.const(-bound, np.float32)), e.const(bound, np.float32))

    def unroll(self) -> int:
        e, h, gates = self.emit, self.hidden, GATES[self.op]
        x, w, r, b = self.inputs[:4]
        initial_h, initial_c, peepholes = self.inputs[5], self.inputs[6], self.inputs[7]
        if self.layout:  # [batch, seq, ...] -> [seq, batch, ...]
            x = e.op("Transpose", x, perm=[1, 0, 2])
            initial_h = initial_h and e.op("Transpose", initial_h, perm=[1, 0, 2])
            initial_c = initial_c and e.op("Transpose", initial_c, perm=[1, 0, 2])
        # Every value keeps a leading axis of 1 (a step, a direction) and broadcasts over it.
        zeros = e.const(np.zeros((1, self.batch, h)), np.float32)
        ys, last_h, last_c = [], [], []
        for d in range(self.dirs):
            w_t = e.op("Transpose", e.pick(w, d), perm=[0, 2, 1])  # [1, input, gates*h]
            r_t = e.op("Transpose", e.pick(r, d), perm=[0, 2, 1])  # [1, h, gates*h]
            projected = e.op("MatMul", x, w_t)                  # every step's X W^T at once
            recurrent_bias = None
            if b:
                bias = e.pick(b, d)
                input_bias = e.columns(bias, 0, gates * h)
                recurrent_bias = e.columns(bias, gates * h, 2 * gates * h)
                if self.op == "GRU":  # Rb_h stays apart: the reset gate may scale it
                    z_r_bias = e.op("Concat", e.columns(recurrent_bias, 0, 2 * h),
                                    e.const(np.zeros((1, h)), np.float32), axis=-1)
                    input_bias = e.op("Add", input_bias, z_r_bias)
                else:
                    input_bias = e.op("Add", input_bias, recurrent_bias)
                    recurrent_bias = None
                projected = e.op("Add", projected, input_bias)
            state = {"h": e.pick(initial_h, d) if initial_h else zeros,
                     "c": e.pick(initial_c, d) if initial_c else zeros}
            peep = e.pick(peepholes, d) if peepholes else None
            reverse = self.direction == "reverse" or d == 1
            outputs = {}
            for t in (reversed(range(self.seq)) if reverse else range(self.seq)):
                step = e.pick(projected, t)
                if self.op == "LSTM":
                    self._lstm_step(step, r_t, peep, state, self.activations[d])
                elif self.op == "GRU":
                    self._gru_step(step, r_t, recurrent_bias, state, self.activations[d])
                else:
                    pre = e.op("Add", step, e.op("MatMul", state["h"], r_t))
                    state["h"] = self._activate(self.activations[d][0], self._clip(pre))
                outputs[t] = state["h"]
            ys.append(e.reshape(e.op("Concat", *(outputs[t] for t in range(self.seq)), axis=0),
                                [self.seq, 1, self.batch, h]))
            last_h.append(state["h"])
            last_c.append(state["c"])
        self._outputs(ys, last_h, last_c)
        return self.seq

    def _lstm_step(self, step, r_t, peep, state, funcs) -> None:
        e, h = self.emit, self.hidden
        f, g, act_h = funcs
        pre = e.op("Add", step, e.op("MatMul", state["h"], r_t))
        i_pre, o_pre, f_pre, c_pre = (e.columns(pre, k * h, (k + 1) * h) for k in range(4))
        if peep:  # P holds the i, o, f peepholes
            i_pre = e.op("Add", i_pre, e.op("Mul", e.columns(peep, 0, h), state["c"]))
            f_pre = e.op("Add", f_pre, e.op("Mul", e.columns(peep, 2 * h, 3 * h), state["c"]))
        i = self._activate(f, self._clip(i_pre))
        forget = self._activate(f, self._clip(f_pre))
        candidate = self._activate(g, self._clip(c_pre))
        c = e.op("Add", e.op("Mul", forget, state["c"]), e.op("Mul", i, candidate))
        if peep:
            o_pre = e.op("Add", o_pre, e.op("Mul", e.columns(peep, h, 2 * h), c))
        o = self._activate(f, self._clip(o_pre))
        state["h"], state["c"] = e.op("Mul", o, self._activate(act_h, c)), c

    def _gru_step(self, step, r_t, recurrent_bias, state, funcs) -> None:
        e, h = self.emit, self.hidden
        f, g = funcs
        prev = state["h"]
        x_z, x_r, x_h = (e.columns(step, k * h, (k + 1) * h) for k in range(3))
        hr = e.op("MatMul", prev, e.columns(r_t, 0, 2 * h))  # the z and r gates only
        z = self._activate(f, self._clip(e.op("Add", x_z, e.columns(hr, 0, h))))
        reset = self._activate(f, self._clip(e.op("Add", x_r, e.columns(hr, h, 2 * h))))
        r_h = e.columns(r_t, 2 * h, 3 * h)
        rb_h = recurrent_bias and e.columns(recurrent_bias, 2 * h, 3 * h)
        if self.attrs.get("linear_before_reset", 0):
            recurrent = e.op("MatMul", prev, r_h)
            recurrent = e.op("Add", recurrent, rb_h) if rb_h else recurrent
            recurrent = e.op("Mul", reset, recurrent)
        else:
            recurrent = e.op("MatMul", e.op("Mul", reset, prev), r_h)
            recurrent = e.op("Add", recurrent, rb_h) if rb_h else recurrent
        candidate = self._activate(g, self._clip(e.op("Add", x_h, recurrent)))
        # H = (1 - z) * candidate + z * H_prev = candidate + z * (H_prev - candidate)
        state["h"] = e.op("Add", candidate, e.op("Mul", z, e.op("Sub", prev, candidate)))

    def _outputs(self, ys, last_h, last_c) -> None:
        """Y joins the directions on axis 1, Y_h and Y_c on axis 0; batch-first layouts put the
        batch first again ([batch, seq, dirs, h] and [batch, dirs, h])."""
        e = self.emit
        y_name, h_name, c_name = (list(self.node.output) + ["", "", ""])[:3]
        for name, parts, axis, perm in ((y_name, ys, 1, [2, 0, 1, 3]),
                                        (h_name, last_h, 0, [1, 0, 2]),
                                        (c_name, last_c if self.op == "LSTM" else [], 0, [1, 0, 2])):
            if not name or not parts:
                continue
            joined = e.op("Concat", *parts, axis=axis)
            if self.layout:
                e.op("Transpose", joined, perm=perm, output=name)
            else:
                e.op("Identity", joined, output=name)
