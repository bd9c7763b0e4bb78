"""Small ONNX models written with onnx.helper, each built to exercise one thing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT_DIR.glob("light_*.onnx"))


def _save(graph, path: Path, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tvmopt-tests")
    model.ir_version = 9  # readable by current ONNX Runtime releases
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _const(rng, name, shape, scale=0.5):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def conv_bn_relu(path: Path, batch: int | str = 1, channels: int = 8, size: int = 16,
                 kernel: int = 3) -> Path:
    """conv -> batch-norm -> relu -> conv (kernel x kernel) -> add(residual) -> global pool ->
    flatten -> gemm."""
    rng = np.random.default_rng(0)
    c = channels
    inits = [
        _const(rng, "w1", (c, 3, 3, 3)), _const(rng, "b1", (c,)),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), "bn_scale"),
        _const(rng, "bn_bias", (c,)), _const(rng, "bn_mean", (c,)),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), "bn_var"),
        _const(rng, "w2", (c, c, kernel, kernel), 0.2), _const(rng, "fc_w", (10, c)),
        _const(rng, "fc_b", (10,)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
                         ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[kernel // 2] * 4),
        helper.make_node("Add", ["c2", "r1"], ["res"], name="residual"),
        helper.make_node("GlobalAveragePool", ["res"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "conv_bn_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])], inits)
    return _save(graph, path)


def two_outputs(path: Path) -> Path:
    """Two inputs (one int64), two outputs: checks that names and order survive the round trip."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["mm"], name="mm"),
        helper.make_node("Cast", ["idx"], ["idx_f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Add", ["mm", "idx_f"], ["sum"], name="add"),
        helper.make_node("Tanh", ["sum"], ["tanh_out"], name="tanh"),
        helper.make_node("ReduceSum", ["mm"], ["total"], name="reduce", keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "two_outputs",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4, 6]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, [4, 5])],
        [helper.make_tensor_value_info("tanh_out", TensorProto.FLOAT, [4, 5]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
        [_const(rng, "w", (6, 5))])
    return _save(graph, path)


def unsupported_ops(path: Path) -> Path:
    """Two ops TVM's importer has no converter for, so the error must list both nodes."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Celu", ["r"], ["c"], name="my_celu"),
        helper.make_node("LpNormalization", ["c"], ["y"], name="my_lpnorm"),
    ]
    graph = helper.make_graph(
        nodes, "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    return _save(graph, path)


def tiny_conv(path: Path) -> Path:
    """One small conv + bias + relu: a single real tuning task that builds and measures fast.
    Its 6 output channels fill no SIMD block (4, 8 or 16 lanes), so on CPUs it stays NCHW (no
    layout transforms)."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 14, 14])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 14, 14])],
        [_const(rng, "w", (6, 3, 3, 3), 0.2), _const(rng, "b", (6,))])
    return _save(graph, path)


def data_movement_only(path: Path) -> Path:
    """Transpose and reshape: no kernel does arithmetic, so there is nothing to tune."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[1, 0]),
        helper.make_node("Reshape", ["t", "shape"], ["y"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes, "data_movement",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [24])],
        [numpy_helper.from_array(np.array([24], np.int64), "shape")])
    return _save(graph, path)


def one_relu(path: Path, shape=(1, 4), *, dtype: int = TensorProto.FLOAT, cast: bool = False,
             outputs: bool = True, ir_version: int = 9) -> Path:
    """Relu of one input of `shape` and `dtype` (cast to float32 first with `cast`): the smallest
    model, to put odd declarations in front of tvmopt (no outputs, a newer IR, bfloat16, strings)."""
    nodes = [helper.make_node("Relu", ["xf" if cast else "x"], ["y"], name="relu")]
    if cast:
        nodes.insert(0, helper.make_node("Cast", ["x"], ["xf"], name="cast", to=TensorProto.FLOAT))
    out_type = TensorProto.FLOAT if cast else dtype
    graph = helper.make_graph(
        nodes, "one_relu", [helper.make_tensor_value_info("x", dtype, list(shape))],
        [helper.make_tensor_value_info("y", out_type, list(shape))] if outputs else [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="tvmopt-tests")
    model.ir_version = ir_version
    onnx.save(model, str(path))  # unchecked: some of these are meant to be refused
    return path


def split_with_num_outputs(path: Path, width: int) -> Path:
    """An opset-17 Split carrying opset 18's `num_outputs` (some torch 2.11 exports): the model
    fails ONNX's checker as written, and its meaning is unambiguous."""
    nodes = [helper.make_node("Split", ["x"], ["a", "b", "c"], name="split", axis=1,
                              num_outputs=3),
             helper.make_node("Concat", ["c", "a"], ["y"], name="concat", axis=1),
             helper.make_node("Relu", ["b"], ["z"], name="relu")]
    graph = helper.make_graph(
        nodes, "split18", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, None]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def data_dependent_loop(path: Path) -> Path:
    """A Loop whose trip count comes from the input's values."""
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones((1, 4), np.float32), "one")])
    nodes = [helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
             helper.make_node("Cast", ["top"], ["trips"], to=TensorProto.INT64),
             helper.make_node("Loop", ["trips", "", "x"], ["y"], name="repeat", body=body)]
    graph = helper.make_graph(nodes, "loop", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return _save(graph, path)


def non_max_suppression(path: Path) -> Path:
    """Detection post-processing: NonMaxSuppression over 2 images x 3 classes x 50 boxes."""
    nodes = [helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score"],
                              ["selected"], name="nms")]
    graph = helper.make_graph(
        nodes, "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [2, 50, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, 3, 50])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
        [numpy_helper.from_array(np.array([7], np.int64), "max_out"),
         numpy_helper.from_array(np.array([0.4], np.float32), "iou"),
         numpy_helper.from_array(np.array([0.2], np.float32), "score")])
    return _save(graph, path)


def shared_anchor(path: Path, channels: int = 8, size: int = 8, width: int | None = None) -> Path:
    """Two 3x3 convs of one shape with different epilogues (relu; residual add then relu): two
    kernels with one anchor block, which tuning searches once. `width` (default `size`) 1 leaves
    the CPU default schedule nothing to vectorise: a baseline any search beats."""
    rng = np.random.default_rng(7)
    c = channels
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["res"], name="residual"),
        helper.make_node("Relu", ["res"], ["y"], name="relu2"),
    ]
    graph = helper.make_graph(
        nodes, "shared_anchor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, size, width or size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, size, width or size])],
        [_const(rng, "w1", (c, c, 3, 3), 0.2), _const(rng, "b1", (c,)),
         _const(rng, "w2", (c, c, 3, 3), 0.2), _const(rng, "b2", (c,))])
    return _save(graph, path)


def library_layers(path: Path, *, epilogues: str = "all", hidden: int = 64, seq: int = 32,
                   channels: int = 16, size: int = 8) -> Path:
    """The layer classes the CUTLASS kernel library takes, for an fp16 NHWC build: on tokens
    x (1 x seq x hidden) MatMul + bias + ReLU, MatMul + bias + SiLU, MatMul + bias + GELU (erf,
    as PyTorch exports it), a plain MatMul, a batched MatMul (attention scores); on an image y,
    a 3x3 conv with bias + ReLU (an implicit GEMM), a 1x1 conv with bias + residual + ReLU (a
    GEMM) and a strided 3x3 conv with bias. `epilogues="relu"` keeps only the two bias + ReLU
    layers (two kernel instances: a GEMM and a 3x3 conv), for builds that must stay cheap to
    compile."""
    rng = np.random.default_rng(11)
    h, c = hidden, channels
    inits = [_const(rng, "w1", (h, 2 * h), 0.2), _const(rng, "b1", (2 * h,)),
             _const(rng, "k1", (2 * c, c, 3, 3), 0.1), _const(rng, "kb1", (2 * c,))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["t1" if epilogues == "all" else "tokens"]),
        helper.make_node("Conv", ["y", "k1", "kb1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["image"]),
    ]
    outputs = ["tokens", "image"]
    if epilogues == "all":
        inits += [_const(rng, "w_out", (2 * h, h), 0.1), _const(rng, "w2", (h, h), 0.2),
                  _const(rng, "b2", (h,)),
                  _const(rng, "k2", (2 * c, 2 * c, 1, 1), 0.3), _const(rng, "kb2", (2 * c,)),
                  _const(rng, "k3", (c, 2 * c, 3, 3), 0.1), _const(rng, "kb3", (c,)),
                  _const(rng, "w3", (h, h), 0.2), _const(rng, "b3", (h,)),
                  numpy_helper.from_array(np.array(np.sqrt(2), np.float32), "sqrt2"),
                  numpy_helper.from_array(np.array(1, np.float32), "one"),
                  numpy_helper.from_array(np.array(0.5, np.float32), "half")]
        nodes = nodes[:-1] + [
            helper.make_node("MatMul", ["t1", "w_out"], ["tokens"]),  # plain (no bias)
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "k2", "kb2"], ["c2"]),
            helper.make_node("Add", ["c2", "r1"], ["res"]),
            helper.make_node("Relu", ["res"], ["image"]),
            helper.make_node("Conv", ["image", "k3", "kb3"], ["strided"], pads=[1, 1, 1, 1],
                             strides=[2, 2]),
            helper.make_node("MatMul", ["tokens", "w2"], ["m2"]),
            helper.make_node("Add", ["m2", "b2"], ["a2"]),
            helper.make_node("Sigmoid", ["a2"], ["s2"]),
            helper.make_node("Mul", ["a2", "s2"], ["silu"]),
            helper.make_node("Transpose", ["silu"], ["silu_t"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["silu", "silu_t"], ["scores"]),  # batched over dim 0
            helper.make_node("MatMul", ["tokens", "w3"], ["m3"]),
            helper.make_node("Add", ["m3", "b3"], ["a3"]),
            helper.make_node("Div", ["a3", "sqrt2"], ["d3"]),
            helper.make_node("Erf", ["d3"], ["e3"]),
            helper.make_node("Add", ["e3", "one"], ["p3"]),
            helper.make_node("Mul", ["a3", "p3"], ["q3"]),
            helper.make_node("Mul", ["q3", "half"], ["gelu"]),
        ]
        outputs += ["scores", "gelu", "strided"]
    out_shapes = {"tokens": [1, seq, h if epilogues == "all" else 2 * h],
                  "image": [1, 2 * c, size, size], "scores": [1, seq, seq], "gelu": [1, seq, h],
                  "strided": [1, c, size // 2, size // 2]}
    graph = helper.make_graph(
        nodes, "library_layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, h]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, size, size])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, out_shapes[o]) for o in outputs],
        inits)
    return _save(graph, path)


def attention_block(path: Path, *, batch: int = 2, seq: int = 32, heads: int = 2,
                    head_dim: int = 64) -> Path:
    """One BERT encoder attention block as transformers exports it in eager mode: Q, K, V
    projections split into heads (Reshape + Transpose, K transposed for Q @ K^T), scores scaled
    by 1/sqrt(head_dim), an additive padding mask from an int64 attention_mask (the last quarter
    of each sequence padded in the inputs tests give), Softmax, P @ V, heads merged, then the
    output projection, the residual add and LayerNorm."""
    rng = np.random.default_rng(5)
    h = heads * head_dim
    inits = [_const(rng, name, (h, h), 0.1) for name in ("wq", "wk", "wv", "wo")]
    inits += [_const(rng, name, (h,)) for name in ("bq", "bk", "bv", "bo", "gamma", "beta")]
    inits += [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in (
        ("heads_shape", [batch, seq, heads, head_dim]), ("merged_shape", [batch, seq, h]),
        ("mask_shape", [batch, 1, 1, seq]))]
    inits += [numpy_helper.from_array(np.array(v, np.float32), name) for name, v in (
        ("scale", np.sqrt(head_dim)), ("one", 1.0), ("most_negative", -3.4028234663852886e38))]
    nodes = []
    for p in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}_mm"]),
                  helper.make_node("Add", [f"{p}_mm", f"b{p}"], [f"{p}_proj"]),
                  helper.make_node("Reshape", [f"{p}_proj", "heads_shape"], [f"{p}_heads"]),
                  helper.make_node("Transpose", [f"{p}_heads"], [f"{p}_t"],
                                   perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3])]
    nodes += [
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["mask_f", "mask_shape"], ["mask_4d"]),
        helper.make_node("Sub", ["one", "mask_4d"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "most_negative"], ["additive_mask"]),
        helper.make_node("MatMul", ["q_t", "k_t"], ["scores"]),
        helper.make_node("Div", ["scores", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "additive_mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v_t"], ["context"]),
        helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_t", "merged_shape"], ["merged"]),
        helper.make_node("MatMul", ["merged", "wo"], ["o_mm"]),
        helper.make_node("Add", ["o_mm", "bo"], ["o_proj"]),
        helper.make_node("Add", ["o_proj", "x"], ["residual"]),
        helper.make_node("LayerNormalization", ["residual", "gamma", "beta"], ["y"], axis=-1,
                         epsilon=1e-12),
    ]
    graph = helper.make_graph(
        nodes, "attention_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, h]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, h])], inits)
    return _save(graph, path)


def masked_scores(path: Path, *, batch: int = 3, heads: int = 4, seq: int = 37,
                  head_dim: int = 16) -> Path:
    """An attention score matmul plus its additive mask, all three graph inputs: Q
    (batch, heads, seq, head_dim) @ K^T (batch, heads, head_dim, seq) + mask (batch, 1, seq, seq).
    At a sequence length no vector width divides (37) its build once never finished on CPUs."""
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["q", "k_t"], ["scores"]),
         helper.make_node("Add", ["scores", "mask"], ["y"])], "masked_scores",
        [helper.make_tensor_value_info("q", f, [batch, heads, seq, head_dim]),
         helper.make_tensor_value_info("k_t", f, [batch, heads, head_dim, seq]),
         helper.make_tensor_value_info("mask", f, [batch, 1, seq, seq])],
        [helper.make_tensor_value_info("y", f, [batch, heads, seq, seq])])
    return _save(graph, path)


# Col2Im cases: name -> (image_shape, block_shape, attributes). "padded", "mixed" and "1d" leave
# rows or columns past the last block (ConvTranspose's output_padding).
COL2IM_CASES = {
    "plain": ((5, 5), (2, 2), {}),
    "stride2": ((8, 6), (2, 2), {"strides": [2, 2]}),
    "dilated": ((7, 6), (3, 2), {"dilations": [2, 1]}),
    "padded": ((6, 7), (3, 3), {"strides": [2, 1], "pads": [1, 0, 1, 2]}),
    "mixed": ((9, 4), (2, 3), {"strides": [3, 1], "dilations": [1, 2], "pads": [0, 1, 1, 1]}),
    "1d": ((10,), (3,), {"strides": [2], "pads": [1, 1]}),
}


def col2im(path: Path, cases: dict = COL2IM_CASES, *, batch: int = 2, channels: int = 3) -> Path:
    """One Col2Im node (opset 18, as torch's F.fold exports) per case, each from its own input
    `x_<case>` (batch, channels * block positions, columns) to its own output `y_<case>`; the
    image and block shapes are initializers."""
    nodes, inputs, outputs, inits = [], [], [], []
    for name, (image, block, attrs) in cases.items():
        rank = len(image)
        strides, dilations = attrs.get("strides", [1] * rank), attrs.get("dilations", [1] * rank)
        pads = attrs.get("pads", [0] * 2 * rank)
        columns = int(np.prod([(size + pads[i] + pads[i + rank] - dilations[i] * (block[i] - 1)
                                - 1) // strides[i] + 1 for i, size in enumerate(image)]))
        inits += [numpy_helper.from_array(np.array(image, np.int64), f"image_{name}"),
                  numpy_helper.from_array(np.array(block, np.int64), f"block_{name}")]
        nodes.append(helper.make_node("Col2Im", [f"x_{name}", f"image_{name}", f"block_{name}"],
                                      [f"y_{name}"], name=f"col2im_{name}", **attrs))
        inputs.append(helper.make_tensor_value_info(
            f"x_{name}", TensorProto.FLOAT, [batch, channels * int(np.prod(block)), columns]))
        outputs.append(helper.make_tensor_value_info(
            f"y_{name}", TensorProto.FLOAT, [batch, channels, *image]))
    return _save(helper.make_graph(nodes, "col2im", inputs, outputs, inits), path, opset=18)
