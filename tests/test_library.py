"""The CUTLASS kernel library (tvmopt/kernels/library): which layers it takes, the kernel
instances it compiles (once, into the cache) and links into the artifact, and its fallbacks.
Compiling needs nvcc and the nvidia-cutlass headers but no GPU; tests/test_gpu.py runs them."""

import dataclasses
import logging
import subprocess

import pytest

import instances
import models
import records
from tvmopt import build, prepare, targets
from tvmopt.kernels import library
from tvmopt.kernels.library import attention as attention_op
from tvmopt.kernels.library import conv2d, gemm, nvcc, registry
from tvmopt.prepare import ModelOptions

HOPPER = "cuda-sm90a"
FP16_NHWC = ModelOptions(precision="fp16", layout="NHWC")


def _layers(path, preset=HOPPER, options=FP16_NHWC):
    return library.layers(prepare.prepare(path, targets.resolve(preset), options).mod)


def test_every_gemm_and_conv_layer_and_epilogue_is_offered_to_the_library(tmp_path):
    layers = _layers(models.library_layers(tmp_path / "m.onnx"))
    by_epilogue = sorted((l.op.name, l.geometry.epilogue.name) for l in layers.values())
    assert by_epilogue == [("conv2d", "bias"), ("conv2d", "bias_relu"),
                           ("gemm", "bias_gelu"), ("gemm", "bias_relu"),
                           ("gemm", "bias_residual_relu"), ("gemm", "bias_silu"),
                           ("gemm", "plain"), ("gemm", "plain")]
    (residual,) = [l for l in layers.values() if l.geometry.epilogue.residual]
    # the 1x1 conv is the GEMM op's: M = 8*8 pixels, N = K = 32 channels, B is the [N, K]
    # filter; its residual is its own input
    g = residual.geometry
    assert (residual.op, g.b_layout, g.m, g.n, g.k, g.batch) == (gemm.OP, "col", 64, 32, 32, 1)
    assert residual.args == {"a": 0, "b": 1, "bias": 2, "residual": 0}
    assert {l.geometry.b_layout for l in layers.values() if l.op is gemm.OP and l != residual} \
        == {"row"}
    # the strided 3x3 conv: 32 -> 16 channels on 8x8 pixels, stride 2, padding 1: 4x4 outputs
    (strided,) = [l for l in layers.values()
                  if l.op is conv2d.OP and l.geometry.stride == (2, 2)]
    assert strided.geometry.gemm_size == (16, 16, 9 * 32)
    assert strided.params == (1, 1, 1, 1, 2, 2, 1, 1)  # padding, stride, dilation
    assert registry.layer_from_json(strided.to_json()) == strided


@pytest.mark.parametrize("preset, options", [
    ("cuda-sm80", FP16_NHWC),  # no Ampere templates yet
    (HOPPER, ModelOptions(precision="fp32", layout="NHWC")),
    (HOPPER, ModelOptions(precision="fp16", layout="NHWC", kernels="tvm")),
])
def test_the_library_stays_out_where_it_does_not_apply(tmp_path, preset, options):
    assert _layers(models.library_layers(tmp_path / "m.onnx"), preset, options) == {}


def test_without_nvcc_the_build_says_so_and_uses_tvm_kernels(tmp_path, monkeypatch, caplog):
    def missing():
        raise nvcc.Unavailable("nvcc not found (PATH, CUDA_HOME, /usr/local/cuda); install it")

    monkeypatch.setattr(library, "cuda_toolchain", missing)
    path = models.library_layers(tmp_path / "m.onnx", epilogues="relu")
    with caplog.at_level(logging.WARNING):
        result = build.build(path, targets.resolve(HOPPER), tmp_path / "m.so", options=FP16_NHWC)
    assert "cutlass" not in result.manifest["kernel_providers"].values()
    assert result.manifest["library_kernels"] == {}
    (line,) = [r.getMessage() for r in caplog.records if "kernel library off" in r.getMessage()]
    assert "nvcc not found" in line


@pytest.fixture(scope="module")
def kernel_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kernel-cache")


def test_hopper_artifact_links_cutlass_instances_from_the_cache(tmp_path, kernel_cache,
                                                                 monkeypatch, invoke, caplog):
    """Compile only (no GPU): the GEMM and the 3x3 conv (an implicit GEMM) run CUTLASS instances,
    two of them, compiled once; a second build finds both in the cache."""
    monkeypatch.setenv("TVMOPT_CACHE", str(kernel_cache))
    path = models.library_layers(tmp_path / "m.onnx", epilogues="relu")
    lib = tmp_path / "m.so"
    with caplog.at_level(logging.INFO):
        result = build.build(path, targets.resolve(HOPPER), lib, options=FP16_NHWC)
    assert "compiling 2 kernel-library instance(s)" in caplog.text
    assert "ETA" in caplog.text
    kernels = result.manifest["library_kernels"]
    assert sorted(k["symbol"].split("_")[2] for k in kernels.values()) == ["conv2d", "gemm"]
    assert sorted(p for p in result.manifest["kernel_providers"].values()
                  if p == "cutlass") == ["cutlass", "cutlass"]
    exported = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                              text=True, check=True).stdout
    assert all(k["symbol"] in exported for k in kernels.values())
    # The CUDA runtime is inside: a C++ program without it (the deploy example) can load the .so.
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True,
                               text=True, check=True).stdout
    assert "cuda" not in undefined.lower(), undefined
    assert len(list((kernel_cache / "kernels").glob("*.o"))) == 2

    shown = invoke("inspect", lib)
    assert shown.exit_code == 0, shown.output
    assert "2 cutlass" in shown.output
    assert all(f"tactic {k['tactic']}" in shown.output for k in kernels.values())

    caplog.clear()
    with caplog.at_level(logging.INFO):
        build.build(path, targets.resolve(HOPPER), tmp_path / "again.so", options=FP16_NHWC)
    assert "kernel-library instance" not in caplog.text


def test_an_instance_nvcc_rejects_fails_the_build_or_is_set_aside(tmp_path, monkeypatch):
    """compile_all raises nvcc's first error for an instance it rejects; given a `failed` dict
    (as builds and tactic measurement pass one) it leaves the instance out and records the error
    there instead: a build then runs those layers with TVM kernels, with one warning, and `tune`
    records the tactic as failed. Nothing half-written is left in the cache."""
    from tvmopt.errors import TvmoptError

    monkeypatch.setenv("TVMOPT_CACHE", str(tmp_path))
    sources = {"broken": "this is not C++;"}
    with pytest.raises(TvmoptError, match="nvcc failed on broken: .*error"):
        nvcc.compile_all(sources, "sm_90a")
    failed = {}
    assert nvcc.compile_all(sources, "sm_90a", failed=failed) == {}
    assert list(failed) == ["broken"] and "error" in failed["broken"]
    assert not list(tmp_path.rglob("*.o"))  # nothing half-written in the cache


@pytest.mark.parametrize("stride, pads, dilation", [
    ((1, 1), (1, 1, 1, 1), (1, 1)), ((2, 2), (1, 1, 1, 1), (1, 1)), ((2, 1), (0, 1, 2, 0), (1, 2))])
def test_tactics_are_checked_against_a_reference_conv_that_matches_onnxruntime(
        tmp_path, stride, pads, dilation):
    """`tune` judges each conv tactic's output by the conv2d op's NumPy reference: it must be
    ONNX Runtime's Conv (+ bias + ReLU), strides, asymmetric padding and dilation included."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.uniform(-1, 1, (16, 8, 3, 3)).astype(np.float32)
    bias = rng.uniform(-1, 1, 16).astype(np.float32)
    out = [(size + pads[i] + pads[i + 2] - 2 * dilation[i] - 1) // stride[i] + 1
           for i, size in enumerate((9, 10))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=stride, pads=pads,
                          dilations=dilation), helper.make_node("Relu", ["c"], ["y"])],
        "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 9, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, *out])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    path = models._save(graph, tmp_path / "conv.onnx")
    (layer,) = _layers(path).values()
    assert layer.op is conv2d.OP and layer.geometry.stride == stride
    arrays = layer.op.inputs(layer.geometry, layer.args, rng)
    expected, = ort.InferenceSession(str(path)).run(None, {
        "x": arrays["a"].astype(np.float32).transpose(0, 3, 1, 2)})
    arrays["b"][:] = weight.transpose(0, 2, 3, 1)  # OHWI: the layer's filter layout
    arrays["bias"][:] = bias
    got = layer.op.reference(layer.geometry, arrays).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2)  # fp16 weights and bias


def test_a_residual_is_its_own_operand_unless_the_layer_reads_its_input_twice():
    """Tactic measurement's operands: a GEMM whose residual is another tensor (or whose kernel
    arguments are unknown, as the benchmarks measure) gets a residual of the output's shape; a
    1x1 conv whose shortcut is its own input gets that input."""
    import numpy as np

    from tvmopt.kernels.library.cutlass import Epilogue

    g = gemm.GemmGeometry(64, 32, 128, 1, "row", Epilogue(bias=True, residual=True))
    for args in ({}, {"a": 0, "b": 1, "bias": 2, "residual": 3}):
        arrays = gemm.OP.inputs(g, args, np.random.default_rng(0))
        assert arrays["residual"].shape == (64, 32) and arrays["residual"] is not arrays["a"]
    square = gemm.GemmGeometry(64, 64, 64, 1, "row", Epilogue(residual=True))
    arrays = gemm.OP.inputs(square, {"a": 0, "b": 1, "residual": 0}, np.random.default_rng(0))
    assert arrays["residual"] is arrays["a"]


def _gemm_layer(tmp_path):
    """The library model's GEMM layer: (model path, its Kernel, its Layer)."""
    from tvmopt.kernels import Kernel
    from tvmopt.tasks import extract_tasks, kernel_tasks, kernels

    path = models.library_layers(tmp_path / "m.onnx", epilogues="relu")
    mod = prepare.prepare(path, targets.resolve(HOPPER), FP16_NHWC).mod
    task_of = kernel_tasks(mod, extract_tasks(mod, targets.resolve(HOPPER).tvm_target()))
    (name, layer), = [(n, l) for n, l in library.layers(mod).items() if "matmul" in n]
    return path, Kernel(name, kernels(mod)[name], task_of[name]), layer


def _commit_tir(store, task, sec: float, *, tuned: bool) -> None:
    records.commit_schedule(store, task, targets.resolve(HOPPER).tvm_target(), sec, tuned=tuned)


MEASURED = "128x64x64_c1x1_cooperative_persistent"


def _neighbour(layer) -> str:
    """The key of a layer like `layer` with twice its M: near enough to predict from."""
    return layer.op.key(dataclasses.replace(layer.geometry, m=2 * layer.geometry.m))


@pytest.mark.parametrize("tir, tactic_sec, runs", [
    ([], None, "default tactic"),  # untuned, nothing measured near it: the library's default
    ([(10e-6, False)], None, "default tactic"),  # only the TIR default measured
    ([(10e-6, True)], None, "tir"),  # a searched TIR record, no tactic measured
    ([(10e-6, False)], 8e-6, "measured tactic"),
    ([(10e-6, False)], 12e-6, "tir"),  # TVM's default schedule measured faster
    ([(10e-6, False), (6e-6, True)], 8e-6, "tir"),
    ([(10e-6, False), (9e-6, True)], 8e-6, "measured tactic"),
    ([], "neighbour", "predicted tactic"),  # untuned, a layer of its kind measured near it
    ([(10e-6, False)], "neighbour", "predicted tactic"),
    ([(10e-6, True)], "neighbour", "tir"),  # a prediction is no measurement either
])
def test_each_layer_runs_the_fastest_measured_kernel(tmp_path, tir, tactic_sec, runs):
    from tvmopt.database import open_database, target_identity
    from tvmopt.kernels import BuildContext
    from tvmopt.kernels.library import KernelLibrary, _choose
    from tvmopt.kernels.library.cutlass import CutlassTactic
    from tvmopt.kernels.library.tactic_model import Choice, TacticModel

    _, kernel, layer = _gemm_layer(tmp_path)
    target = targets.resolve(HOPPER).tvm_target()
    with open_database(tmp_path / "t.db") as store:
        for sec, tuned in tir:
            _commit_tir(store, kernel.task, sec, tuned=tuned)
        if tactic_sec == "neighbour":
            store.add_tactic_record(_neighbour(layer), "cutlass", MEASURED, target, [3e-6])
        elif tactic_sec is not None:
            store.add_tactic_record(layer.key, "cutlass", MEASURED, target, [tactic_sec])
        model = TacticModel.load(store, target_identity(target)[0], KernelLibrary.name)
        choice = _choose(kernel, layer, BuildContext(target, store, {kernel.name: layer}), model)
    assert layer.default_tactic().name != MEASURED
    expected = {"tir": None,
                "measured tactic": Choice(CutlassTactic.parse(MEASURED), "measured", tactic_sec),
                "predicted tactic": Choice(CutlassTactic.parse(MEASURED), "predicted",
                                           neighbour=_neighbour(layer)),
                "default tactic": Choice(layer.default_tactic(), "default")}[runs]
    assert choice == expected


def test_a_measured_tactic_is_built_and_shown(tmp_path, kernel_cache, monkeypatch, invoke):
    """The measured tactic (here the one the cache holds already) is linked, and inspect says
    it was measured and how fast."""
    from tvmopt.database import open_database

    monkeypatch.setenv("TVMOPT_CACHE", str(kernel_cache))
    path, kernel, layer = _gemm_layer(tmp_path)
    tactic = layer.default_tactic().name
    db = tmp_path / "t.db"
    with open_database(db) as store:
        _commit_tir(store, kernel.task, 10e-6, tuned=False)
        store.add_tactic_record(layer.key, "cutlass", tactic, targets.resolve(HOPPER).tvm_target(),
                                [4e-6])
    lib = tmp_path / "m.so"
    result = build.build(path, targets.resolve(HOPPER), lib, db_path=db, options=FP16_NHWC)
    built = result.manifest["library_kernels"][kernel.name]
    assert (built["tactic"], built["measured_sec"]) == (tactic, pytest.approx(4e-6))
    shown = invoke("inspect", lib)
    assert f"tactic {tactic}  (measured 4.0 µs)" in shown.output, shown.output


def test_a_predicted_tactic_is_built_and_shown(tmp_path, kernel_cache, monkeypatch, invoke,
                                              caplog):
    """An untuned GEMM near a measured one runs that layer's fastest tactic (here the instance
    the cache holds already); the log, the manifest and inspect say where it came from."""
    from tvmopt.database import open_database

    monkeypatch.setenv("TVMOPT_CACHE", str(kernel_cache))
    path, kernel, layer = _gemm_layer(tmp_path)
    tactic = layer.default_tactic().name
    db = tmp_path / "t.db"
    with open_database(db) as store:
        for name, sec in ((tactic, 4e-6), (MEASURED, 5e-6)):
            store.add_tactic_record(_neighbour(layer), "cutlass", name,
                                    targets.resolve(HOPPER).tvm_target(), [sec])
    lib = tmp_path / "m.so"
    with caplog.at_level(logging.INFO):
        result = build.build(path, targets.resolve(HOPPER), lib, db_path=db, options=FP16_NHWC)
    assert "2 layer(s): 0 measured tactic(s), 1 predicted from measured layers, 1 default" \
        in caplog.text
    built = result.manifest["library_kernels"][kernel.name]
    source = f"predicted from {_neighbour(layer)}"
    assert (built["tactic"], built["measured_sec"], built["tactic_source"]) == (tactic, None,
                                                                                 source)
    shown = invoke("inspect", lib)
    assert f"tactic {tactic}  ({source}, unmeasured)" in shown.output, shown.output


def test_a_tuned_record_keeps_its_layer_from_the_library(tmp_path, kernel_cache, monkeypatch):
    """Tuned records were measured on the target, the library's default tactic was not: a layer
    with a tuned record faster than its baseline keeps the tuned TVM kernel."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from tvmopt.database import open_database
    from tvmopt.database.metaschedule import TargetDatabase
    from tvmopt.kernels.defaults import baseline
    from tvmopt.tasks import extract_tasks

    monkeypatch.setenv("TVMOPT_CACHE", str(kernel_cache))
    preset = targets.resolve(HOPPER)
    path = models.library_layers(tmp_path / "m.onnx", epilogues="relu")
    mod = prepare.prepare(path, preset, FP16_NHWC).mod
    (gemm,) = [t for t in extract_tasks(mod, preset.tvm_target())
               if t.name in library.layers(mod) and "matmul" in t.name]
    sch, _ = baseline(gemm.mod, preset.tvm_target())
    output = sch.get_output_blocks(sch.get_sblock("root"))[0]
    sch.annotate(output, "tuned_variant", 1)  # any change: not the baseline's trace
    db = tmp_path / "tuned.db"
    with open_database(db) as store:
        TargetDatabase(store, preset.tvm_target()).commit_tuning_record(ms.database.TuningRecord(
            sch.trace, ms.database.Workload(gemm.mod), [tvm.runtime.convert(1e-6)],
            preset.tvm_target(), ms.arg_info.ArgInfo.from_prim_func(gemm.mod["main"])))
    result = build.build(path, preset, tmp_path / "m.so", db_path=db, options=FP16_NHWC)
    providers = result.manifest["kernel_providers"]
    assert providers[gemm.name] == "tuned"
    (conv,) = result.manifest["library_kernels"]
    assert providers[conv] == "cutlass" and "conv2d" in conv


def test_tactic_timer_links_and_finds_instances_by_name(tmp_path, kernel_cache, monkeypatch):
    """The CUDA-graph timer that `tune` links with the instances it measures (no GPU needed to
    link and load it): it looks its target up by name in its own library."""
    import numpy as np
    import tvm

    from tvmopt.kernels.library.instance import TIMER_SYMBOL, timer

    monkeypatch.setenv("TVMOPT_CACHE", str(kernel_cache))
    objects = nvcc.compile_all({TIMER_SYMBOL: timer().source}, "sm_90a")
    lib = tvm.runtime.load_module(str(nvcc.link_shared(list(objects.values()),
                                                       tmp_path / "tactics.so")))
    with pytest.raises(Exception, match="tvmopt_cutlass_gemm_row_plain_nothing is not in"):
        lib[TIMER_SYMBOL]("tvmopt_cutlass_gemm_row_plain_nothing", 3,
                          tvm.runtime.tensor(np.zeros(4, np.float16)))


def test_attention_is_offered_to_the_library_whole(tmp_path):
    """A BERT attention block, fp16: the Q, K and V projections become one GEMM layer and the
    output projection with its residual another; everything from the head split to the head
    merge is one attention layer that reads Q, K and V in place as column slices of the one
    projection, with the exporter's scale (a division by sqrt(head_dim)) and its
    [batch, 1, 1, seq] mask."""
    layers = _layers(models.attention_block(tmp_path / "a.onnx"),
                     options=ModelOptions(precision="fp16"))
    (attention,) = [l for l in layers.values() if l.op is attention_op.OP]
    g = attention.geometry
    assert (g.batch, g.heads, g.seq_q, g.seq_k, g.head_dim) == (2, 2, 32, 32, 64)
    assert g.scale == pytest.approx(0.125) and (g.mask_shape, g.mask_dtype) == ((2, 1, 1, 32),
                                                                              "float32")
    # batch, heads, K/V heads, head dim; Q, K, V and out as [b, s, h, d] (021); Q, K, V rows of
    # the packed projection (pitch 3 x 128) from their own columns; mask strides b, h, q; no
    # causal offset; scale
    params = attention.params
    assert params[:8] == (2, 2, 2, 64, 21, 21, 21, 21) and params[8:11] == (384,) * 3
    assert sorted(params[11:14]) == [0, 128, 256]
    assert params[14:] == (32, 0, 0, 0, pytest.approx(0.125))
    # as BERT's records hold it, read from a packed projection
    assert attention.key.startswith("attention_f16_2x2x32x32x64_mask_f32mask_2x1x1x32_packed")
    assert sorted(attention.args) == ["k", "mask", "q", "v"]
    assert attention.args["q"] == attention.args["k"] == attention.args["v"]
    assert registry.layer_from_json(attention.to_json()) == attention
    gemms = sorted((l.geometry.n, l.geometry.epilogue.name) for l in layers.values()
                   if l.op is gemm.OP)
    assert gemms == [(128, "bias_residual"), (384, "bias")]


def test_attention_tactics_are_checked_against_a_reference_that_matches_onnxruntime(tmp_path):
    """`tune` judges each attention tactic by the attention op's NumPy reference: it must be ONNX
    Runtime's head split, scaled and masked softmax attention and head merge."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from tvmopt.kernels.library.attention import AttentionGeometry

    g = AttentionGeometry(2, 3, 16, 24, 32, 0.125, (2, 1, 16, 24), "float16")
    split = numpy_helper.from_array(np.array([2, -1, 3, 32], np.int64), "split")
    merged = numpy_helper.from_array(np.array([2, 16, 96], np.int64), "merged")
    scale = numpy_helper.from_array(np.array(g.scale, np.float32), "scale")
    nodes = [helper.make_node("Reshape", [r, "split"], [f"{r}4"]) for r in "qkv"]
    nodes += [helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", ["qh", "kt"], ["s"]),
              helper.make_node("Mul", ["s", "scale"], ["scaled"]),
              helper.make_node("Add", ["scaled", "mask"], ["masked"]),
              helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["o"]),
              helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "merged"], ["y"])]
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [2, 16, 96]),
         *(helper.make_tensor_value_info(r, TensorProto.FLOAT, [2, 24, 96]) for r in "kv"),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, [2, 1, 16, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, 96])],
        [split, merged, scale])
    path = models._save(graph, tmp_path / "attention.onnx")
    op = attention_op.OP
    arrays = op.inputs(g, {}, np.random.default_rng(0))
    assert (arrays["mask"][..., -6:] < -6e4).all() and (arrays["mask"][..., :-6] == 0).all()
    expected, = ort.InferenceSession(str(path)).run(
        None, {r: a.astype(np.float32) for r, a in arrays.items()})
    np.testing.assert_allclose(op.reference(g, arrays), expected, rtol=1e-4,
                               atol=1e-4)


def test_the_attention_instance_compiles_for_hopper(tmp_path, monkeypatch):
    """Each tactic of the fused attention is one small nvcc compile (no CUTLASS templates): the
    object exports the TVM FFI symbol the build calls."""
    from tvmopt.kernels.library.attention import CATALOGUE, AttentionGeometry

    monkeypatch.setenv("TVMOPT_CACHE", str(tmp_path))
    g = AttentionGeometry(2, 2, 32, 32, 64, 0.125, (2, 1, 1, 32), "float16")
    spec = attention_op.OP.instance(g, CATALOGUE[0], "sm_90a")
    assert instances.exports_its_symbol(spec)
