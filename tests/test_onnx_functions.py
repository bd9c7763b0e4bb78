"""ONNX ops defined by a function body that TVM's importer cannot convert (tvmopt/frontend/
functions.py): opset-23 Attention in the forms exporters write, imported as the standard's own
decomposition and checked against ONNX Runtime's kernel for the op."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvmopt
from tvmopt import build, runtime, targets

B, S, HEADS, KV_HEADS, D = 2, 5, 4, 2, 8


def _attention_model(path, *, rank: int, causal: int, mask, kv_heads: int = KV_HEADS,
                     scale: float | None = None, rms_norm: bool = False):
    """Q, K, V (3-D [B, S, heads * D] with head counts as attributes, or 4-D [B, heads, S, D])
    through one opset-23 Attention; optionally an RMSNormalization on Q first (Qwen2's q_norm)."""
    def shape(heads):
        return [B, S, heads * D] if rank == 3 else [B, heads, S, D]

    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, shape(HEADS)),
              helper.make_tensor_value_info("k", TensorProto.FLOAT, shape(kv_heads)),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, shape(kv_heads))]
    names = ["q_normed" if rms_norm else "q", "k", "v"]
    if mask is not None:
        inputs.append(helper.make_tensor_value_info("mask", mask, [S, S]))
        names.append("mask")
    attrs = {"is_causal": causal}
    if rank == 3:
        attrs.update(q_num_heads=HEADS, kv_num_heads=kv_heads)
    if scale is not None:
        attrs["scale"] = scale
    nodes = [helper.make_node("Attention", names, ["y"], **attrs)]
    inits = []
    if rms_norm:
        inits.append(helper.make_tensor("gamma", TensorProto.FLOAT, [shape(HEADS)[-1]],
                                        np.linspace(0.5, 1.5, shape(HEADS)[-1]).tolist()))
        nodes.insert(0, helper.make_node("RMSNormalization", ["q", "gamma"], ["q_normed"],
                                         axis=-1, epsilon=1e-6))
    graph = helper.make_graph(nodes, "attention23", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape(HEADS))],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


FORMS = {
    "causal, grouped K/V heads": dict(rank=3, causal=1, mask=None),
    "boolean mask": dict(rank=3, causal=0, mask=TensorProto.BOOL),
    "additive mask and causal": dict(rank=3, causal=1, mask=TensorProto.FLOAT),
    "4-D, one K/V head per Q head, scale": dict(rank=4, causal=0, mask=None, kv_heads=HEADS,
                                                 scale=0.3),
    "RMSNormalization, then causal GQA": dict(rank=3, causal=1, mask=None, rms_norm=True),
}


@pytest.mark.parametrize("form", FORMS)
def test_opset23_attention_matches_onnxruntime(tmp_path, form):
    path = _attention_model(tmp_path / "a.onnx", **FORMS[form])
    result = build.build(path, targets.resolve("host"), tmp_path / "a.so")
    assert ("expand-functions: Attention x1 as the ONNX standard's function body"
            in result.manifest["normalization"])
    model = tvmopt.load(result.path)
    inputs = runtime.random_inputs(model.inputs, seed=3)
    if "mask" in inputs and inputs["mask"].dtype == bool:
        inputs["mask"] = np.random.default_rng(4).random((S, S)) < 0.7
        inputs["mask"][:, 0] = True  # every query sees a key
    (mismatch,) = runtime.compare(model(inputs), runtime.onnxruntime_outputs(path, inputs))
    assert mismatch.max_rel <= 1e-5, mismatch


def test_the_expanded_model_keeps_no_attention_node(tmp_path):
    """What TVM imports: the decomposition, with its shape arithmetic folded to constants."""
    from tvmopt import prepare

    path = _attention_model(tmp_path / "a.onnx", **FORMS["causal, grouped K/V heads"])
    prepared = prepare.prepare(path, targets.resolve("host"))
    ops = {n.op_type for n in prepared.model.proto.graph.node}
    assert "Attention" not in ops and {"MatMul", "Softmax"} <= ops
    assert not ops & {"Shape", "Range"}, ops
    assert [c.step for c in prepared.normalization].count("expand-functions") == 1
