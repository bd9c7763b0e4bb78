"""Recurrent layers (LSTM, GRU, RNN) are unrolled before import and match ONNX Runtime across the
operator's options; what cannot be unrolled is named in one line."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvmopt
from conftest import assert_one_line_error
from tvmopt import build, runtime, targets

SEQ, BATCH, INPUT, HIDDEN = 5, 2, 3, 4


def _recurrent_model(path, op, *, dirs=1, layout=0, initial=True, bias=True, peepholes=False,
                     sequence_lens=False, outputs=("Y", "Y_h", "Y_c"), **attrs):
    rng = np.random.default_rng(3)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    weights = {"W": (dirs, gates * HIDDEN, INPUT), "R": (dirs, gates * HIDDEN, HIDDEN)}
    if bias:
        weights["B"] = (dirs, 2 * gates * HIDDEN)
    if peepholes:
        weights["P"] = (dirs, 3 * HIDDEN)
    x_shape = [BATCH, SEQ, INPUT] if layout else [SEQ, BATCH, INPUT]
    state_shape = [BATCH, dirs, HIDDEN] if layout else [dirs, BATCH, HIDDEN]
    y_shape = [BATCH, SEQ, dirs, HIDDEN] if layout else [SEQ, dirs, BATCH, HIDDEN]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    names = ["x", "W", "R", "B" if bias else "", "seq_lens" if sequence_lens else ""]
    if sequence_lens:
        graph_inputs.append(helper.make_tensor_value_info("seq_lens", TensorProto.INT32, [BATCH]))
    if initial:
        names.append("h0")
        graph_inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, state_shape))
        if op == "LSTM":
            names.append("c0")
            graph_inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, state_shape))
    if peepholes:
        names += [""] * (7 - len(names)) + ["P"]
    outputs = [o for o in outputs if op == "LSTM" or o != "Y_c"]
    node = helper.make_node(op, names, outputs, name="rnn", hidden_size=HIDDEN, layout=layout,
                            direction={1: "forward", 2: "bidirectional"}[dirs]
                            if "direction" not in attrs else attrs.pop("direction"), **attrs)
    graph = helper.make_graph(
        [node], "recurrent", graph_inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, y_shape if o == "Y" else state_shape)
         for o in outputs],
        [numpy_helper.from_array((rng.standard_normal(s) * 0.6).astype(np.float32), n)
         for n, s in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


CASES = {
    "lstm reverse, peepholes, clip": dict(op="LSTM", direction="reverse", peepholes=True,
                                          clip=0.8),
    "lstm bidirectional, parametrised activations": dict(
        op="LSTM", dirs=2, activations=["HardSigmoid", "Tanh", "Relu", "Sigmoid", "Elu",
                                        "Softsign"],
        activation_alpha=[0.3, 0.7], activation_beta=[0.4]),
    "lstm batch-first": dict(op="LSTM", layout=1),
    "gru bidirectional, reset before the linear": dict(op="GRU", dirs=2, linear_before_reset=0),
    "gru, reset after the linear (PyTorch's)": dict(op="GRU", linear_before_reset=1),
    "rnn relu, no bias or initial state": dict(op="RNN", bias=False, initial=False,
                                               activations=["Relu"], outputs=("Y",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unrolled_layers_match_onnxruntime(tmp_path, case):
    path = _recurrent_model(tmp_path / "m.onnx", **CASES[case])
    lib = build.build(path, targets.resolve("host"), tmp_path / "m.so")
    assert any(c.startswith("unroll-recurrent") for c in lib.manifest["normalization"])
    model = tvmopt.load(lib.path)
    inputs = runtime.random_inputs(model.inputs, seed=5)
    inputs = {k: (v - 0.5) * 4 for k, v in inputs.items()}  # both signs, past the clip
    if CASES[case].get("layout"):  # ONNX Runtime has no batch-first layers: compare with the
        twin = _recurrent_model(tmp_path / "twin.onnx", **{**CASES[case], "layout": 0})
        swap = {"x": (1, 0, 2), "h0": (1, 0, 2), "c0": (1, 0, 2), "Y": (2, 0, 1, 3),  # [S, D, B, H] -> [B, S, D, H]
                "Y_h": (1, 0, 2), "Y_c": (1, 0, 2)}  # sequence-first twin, transposed
        reference = runtime.onnxruntime_outputs(
            twin, {k: v.transpose(swap[k]) for k, v in inputs.items()})
        reference = {k: v.transpose(swap[k]) for k, v in reference.items()}
    else:
        reference = runtime.onnxruntime_outputs(path, inputs)
    assert set(reference) == {s.name for s in model.outputs}
    assert max(m.max_rel for m in runtime.compare(model(inputs), reference)) <= 1e-5


@pytest.mark.parametrize("case, expected", [
    (dict(op="LSTM", sequence_lens=True), "takes sequence_lens"),
    (dict(op="LSTM", input_forget=1), "couples its input and forget gates"),
    (dict(op="GRU", activations=["Sigmoid", "Swish"]), "unknown activation 'Swish'"),
])
def test_what_cannot_be_unrolled_is_named(invoke, tmp_path, case, expected):
    path = _recurrent_model(tmp_path / "m.onnx", **case)
    assert_one_line_error(invoke("build", path, "--target", "host", "-o", tmp_path / "m.so"),
                          expected)
