"""On an NVIDIA GPU (marked `gpu`, skipped elsewhere): the `cuda` family resolves to this GPU's
preset and its artifacts run and match ONNX Runtime."""

import json

import numpy as np
import pytest

import attention_forms
import models
import zoo
from conftest import assert_one_line_error
import tvmopt
from tvmopt import build, runtime, targets
from tvmopt import manifest as artifact_manifest
from tvmopt.kernels import library
from tvmopt.kernels.library import Layer, attention, conv2d, gemm
from tvmopt.kernels.library.tactic_model import DEFAULT, Choice, TacticModel
from tvmopt.prepare import ModelOptions

pytestmark = pytest.mark.gpu


def test_cuda_family_is_this_gpus_preset():
    arch = targets.local_cuda_arch()
    preset = targets.resolve("cuda")
    assert arch is not None and preset.target["arch"] in (arch, arch + "a")


@pytest.mark.parametrize("name", models.LIGHT_MODELS)
def test_cuda_artifact_matches_onnxruntime(tmp_path, name):
    path = models.LIGHT_DIR / f"light_{name}.onnx"
    lib = build.build(path, targets.resolve("cuda"), tmp_path / "m.so").path
    model = tvmopt.load(lib)
    assert model.device.dlpack_device_type() == 2  # kDLCUDA
    inputs = runtime.random_inputs(model.inputs, seed=5)
    mismatches = runtime.compare(model(inputs), runtime.onnxruntime_outputs(path, inputs))
    assert mismatches and all(m.max_rel <= 1e-4 for m in mismatches), mismatches


def test_cuda_fp16_artifact_is_close_to_onnxruntime(tmp_path, conv_model):
    options = ModelOptions(precision="fp16")
    lib = build.build(conv_model, targets.resolve("cuda"), tmp_path / "m.so", options=options).path
    model = tvmopt.load(lib)
    inputs = runtime.random_inputs(model.inputs, seed=6)
    mismatches = runtime.compare(model(inputs), runtime.onnxruntime_outputs(conv_model, inputs))
    assert mismatches and all(m.max_rel <= 2e-2 for m in mismatches), mismatches


@pytest.fixture(scope="module")
def cuda_lib(tmp_path_factory, conv_model):
    return build.build(conv_model, targets.resolve("cuda"),
                       tmp_path_factory.mktemp("gpu") / "conv.so").path


def test_bench_on_the_gpu_times_copies_and_memory(invoke, cuda_lib):
    result = invoke("bench", cuda_lib, "--json", "--iterations", "50")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "CUDA events" in report["timer"] and report["device"]
    assert report["h2d_ms"] > 0 and report["d2h_ms"] > 0
    assert report["end_to_end_ms"] == pytest.approx(
        report["latency_ms"]["p50"] + report["h2d_ms"] + report["d2h_ms"])
    # cudaMemGetInfo moves in pages of 2 MiB: a model this small may fit in pages already mapped.
    assert isinstance(report["peak_memory_bytes"], int) and "cudaMemGetInfo" in report["memory_measure"]


def test_profile_on_the_gpu_times_each_kernel(invoke, cuda_lib):
    result = invoke("profile", cuda_lib, "--json", "--repeat", "5")
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.output)["kernels"] if r["tuned"] is not None]
    assert rows and all(r["task"] and r["mean_us"] > 0 for r in rows)


def test_profile_counts_a_cuda_graph_artifacts_kernels_once_per_inference(invoke, tmp_path):
    """Built with and without a CUDA graph, one model's profile has the same kernel calls."""
    path = zoo.gpt_decoder(tmp_path / "gpt.onnx", external_data=False)
    counts = []
    for flag in ("--cuda-graph", "--no-cuda-graph"):
        lib = tmp_path / f"gpt{flag}.so"
        built = invoke("build", path, "--target", "cuda", "-o", lib, flag,
                       "--input-shape", "input_ids=2x24")
        assert built.exit_code == 0, built.output
        result = invoke("profile", lib, "--json", "--repeat", "3")
        assert result.exit_code == 0, result.output
        counts.append(sorted(r["calls"] for r in json.loads(result.output)["kernels"]
                             if r["tuned"] is not None))
    assert counts[0] == counts[1] and counts[0]


def test_cuda_graph_artifact_matches_and_bench_checks_the_mode(invoke, tmp_path, conv_model):
    lib = tmp_path / "graph.so"
    result = invoke("build", conv_model, "--target", "cuda", "-o", lib, "--cuda-graph", "--check")
    assert result.exit_code == 0, result.output
    assert artifact_manifest.read(lib)["cuda_graph"] is True
    report = invoke("bench", lib, "--cuda-graph", "--iterations", "30")
    assert report.exit_code == 0 and "CUDA graph on" in report.output
    assert_one_line_error(invoke("bench", lib, "--no-cuda-graph"), "built with CUDA graphs")


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_zoo_models_run_on_the_gpu_in_fp16(tmp_path, name):
    """The quality bar for fp16: every zoo model (float32-min masks, relative and windowed
    attention, TopK/Einsum routing among them) is finite and within 2e-2 of fp32 ONNX Runtime."""
    builder, meta = zoo.ZOO[name]
    path = builder(tmp_path / f"{name}.onnx")
    options = ModelOptions(input_shapes=meta["input_shapes"], precision="fp16")
    model = tvmopt.load(build.build(path, targets.resolve("cuda"), tmp_path / "m.so",
                                    options=options).path)
    inputs = runtime.random_inputs(model.inputs, seed=8)
    outputs = model(inputs)
    assert all(np.isfinite(v).all() for v in outputs.values())
    mismatches = runtime.compare(outputs, runtime.onnxruntime_outputs(path, inputs))
    assert mismatches and all(m.max_rel <= 2e-2 for m in mismatches), mismatches


def test_kernel_library_layers_match_onnxruntime(tmp_path):
    """Every op class and epilogue the CUTLASS library takes, at its default tactics."""
    path = models.library_layers(tmp_path / "m.onnx")
    result = build.build(path, targets.resolve("cuda"), tmp_path / "m.so",
                         options=ModelOptions(precision="fp16", layout="NHWC"))
    assert len(result.manifest["library_kernels"]) == 8
    model = tvmopt.load(result.path)
    inputs = runtime.random_inputs(model.inputs, seed=3)
    mismatches = runtime.compare(model(inputs), runtime.onnxruntime_outputs(path, inputs))
    assert mismatches and all(m.max_rel <= 1e-2 for m in mismatches), mismatches


@pytest.mark.parametrize("tactic", [t.name for t in gemm.CATALOGUE + conv2d.CATALOGUE])
def test_every_catalogue_tactic_computes_the_same(tmp_path, monkeypatch, tactic):
    """The GEMM (seq 200: partial tiles) or the 3x3 conv runs `tactic`, the other its default."""
    default = Layer.default_tactic
    monkeypatch.setattr(Layer, "default_tactic", lambda layer: next(
        (t for t in layer.tactics if t.name == tactic), None) or default(layer))
    path = models.library_layers(tmp_path / "m.onnx", epilogues="relu", seq=200)
    result = build.build(path, targets.resolve("cuda"), tmp_path / "m.so",
                         options=ModelOptions(precision="fp16", layout="NHWC"))
    assert tactic in {k["tactic"] for k in result.manifest["library_kernels"].values()}
    model = tvmopt.load(result.path)
    inputs = runtime.random_inputs(model.inputs, seed=4)
    mismatches = runtime.compare(model(inputs), runtime.onnxruntime_outputs(path, inputs))
    assert mismatches and all(m.max_rel <= 1e-2 for m in mismatches), mismatches


def test_a_registered_toy_op_runs_and_matches_onnxruntime(tmp_path, monkeypatch):
    """The toy op of tests/ops/, registered with one line, runs its kernel in the artifact."""
    from ops import bias_relu
    from test_library_ops import _bias_relu_model

    from tvmopt.kernels.library import registry

    monkeypatch.setattr(registry, "OPS", [*registry.OPS, bias_relu.OP])
    path = _bias_relu_model(tmp_path / "m.onnx")
    result = build.build(path, targets.resolve("cuda"), tmp_path / "m.so",
                         options=ModelOptions(precision="fp16"))
    assert [k["symbol"] for k in result.manifest["library_kernels"].values()] == [
        "toy_bias_relu_threads256"]
    model = tvmopt.load(result.path)
    inputs = runtime.random_inputs(model.inputs, seed=5)
    mismatches = runtime.compare(model(inputs), runtime.onnxruntime_outputs(path, inputs))
    assert mismatches and all(m.max_rel <= 1e-2 for m in mismatches), mismatches


def _attention_matches_onnxruntime(tmp_path, seq: int) -> dict:
    """Build the BERT attention block (fp16, sequence `seq`, the last quarter padded), compare it
    with ONNX Runtime; the manifest's library kernels."""
    path = models.attention_block(tmp_path / "a.onnx", seq=seq)
    result = build.build(path, targets.resolve("cuda"), tmp_path / "a.so",
                         options=ModelOptions(precision="fp16"))
    mask = np.ones((2, seq), np.int64)
    mask[:, seq - seq // 4:] = 0
    inputs = {"x": np.random.default_rng(2).standard_normal((2, seq, 128)).astype(np.float32),
              "attention_mask": mask}
    (mismatch,) = runtime.compare(tvmopt.load(result.path)(inputs),
                                  runtime.onnxruntime_outputs(path, inputs))
    assert mismatch.max_rel <= 1e-2, mismatch
    return result.manifest["library_kernels"]


@pytest.mark.parametrize("form, hidden, heads, kv_heads", [
    *[(f, 128, 2, None) for f in attention_forms.FORMS if not f.startswith("llama")],
    ("llama_sdpa", 128, 4, 2), ("llama_eager", 128, 4, 2),  # grouped heads, rotated Q and K
    ("llama_masked", 128, 4, 2),  # causal and padding in one mask: the causal part generated
    ("sdpa_causal", 160, 2, None), ("sdpa_causal", 192, 2, None),  # head dims 80, 96
    ("bert_eager", 256, 2, None), ("llama_sdpa", 512, 4, 1),  # 128; one K/V head for four
])
def test_every_attention_form_runs_the_library_kernel_and_matches_onnxruntime(
        tmp_path, form, hidden, heads, kv_heads):
    """Each exported form on the fused kernel (causal masks generated, grouped heads indexed,
    tensors read in their own layouts), sequence 72 (partial blocks), padded keys where the form
    takes a mask: within 1e-2 of fp32 ONNX Runtime."""
    seq = 72
    path = attention_forms.export(form, tmp_path / "a.onnx", hidden=hidden, heads=heads,
                                  **({"kv_heads": kv_heads} if kv_heads else {}), seq=seq)
    inputs = {"x": np.random.default_rng(3).standard_normal((2, seq, hidden)).astype(np.float32)}
    if form in attention_forms.PADDED:
        inputs["attention_mask"] = np.ones((2, seq), np.int64)
        inputs["attention_mask"][1, seq - seq // 4:] = 0
    result = build.build(path, targets.resolve("cuda"), tmp_path / "a.so",
                         options=ModelOptions(precision="fp16", input_shapes={
                             name: value.shape for name, value in inputs.items()}))
    assert any("attention" in k["symbol"] for k in result.manifest["library_kernels"].values())
    (mismatch,) = runtime.compare(tvmopt.load(result.path)(inputs),
                                  runtime.onnxruntime_outputs(path, inputs))
    assert mismatch.max_rel <= 1e-2, mismatch


def test_layer_norms_and_padded_gemms_run_the_library_and_match_onnxruntime(tmp_path):
    """A GPT-style decoder whose vocabulary (1001) is not a multiple of 8: its layer norms and
    its padded LM head run library kernels; fp16 within 1e-2 of fp32 ONNX Runtime."""
    path = zoo.gpt_decoder(tmp_path / "gpt.onnx", external_data=False, vocab=1001)
    inputs = {"input_ids": np.random.default_rng(5).integers(0, 1001, (2, 24)).astype(np.int64)}
    result = build.build(path, targets.resolve("cuda"), tmp_path / "gpt.so", options=ModelOptions(
        precision="fp16", input_shapes={"input_ids": (2, 24)}))
    symbols = [k["symbol"] for k in result.manifest["library_kernels"].values()]
    assert any("layer_norm" in s for s in symbols) and any("plain" in s for s in symbols)
    (mismatch,) = runtime.compare(tvmopt.load(result.path)(inputs),
                                  runtime.onnxruntime_outputs(path, inputs))
    assert mismatch.max_rel <= 1e-2, mismatch


def test_rms_norms_and_bias_free_residual_gemms_run_the_library_and_match_onnxruntime(tmp_path):
    """A T5-style encoder: its RMS norms (folded into nn.rms_norm) and its bias-free projections
    with the residual add in the GEMM epilogue run library kernels; fp16 within 1e-2 of fp32."""
    path = zoo.t5_encoder(tmp_path / "t5.onnx")
    shapes = {"input_ids": (2, 24), "attention_mask": (2, 24)}
    result = build.build(path, targets.resolve("cuda"), tmp_path / "t5.so",
                         options=ModelOptions(precision="fp16", input_shapes=shapes))
    symbols = [k["symbol"] for k in result.manifest["library_kernels"].values()]
    assert any("rms_norm" in s for s in symbols) and any("gemm_row_residual" in s for s in symbols)
    rng = np.random.default_rng(6)
    mask = np.ones((2, 24), np.int64)
    mask[1, 18:] = 0
    inputs = {"input_ids": rng.integers(0, zoo.VOCAB, (2, 24)).astype(np.int64),
              "attention_mask": mask}
    (mismatch,) = runtime.compare(tvmopt.load(result.path)(inputs),
                                  runtime.onnxruntime_outputs(path, inputs))
    assert mismatch.max_rel <= 1e-2, mismatch


@pytest.mark.parametrize("gelu", ["torch", "gelu_new"])
def test_the_tanh_gelu_epilogue_matches_onnxruntime(tmp_path, gelu):
    """Linear, tanh GELU, Linear: the GELU runs in the first GEMM's epilogue (GELU_taylor)."""
    from test_transformer_fusions import _mlp

    path = _mlp(tmp_path / "mlp.onnx", gelu, "legacy")
    result = build.build(path, targets.resolve("cuda"), tmp_path / "mlp.so",
                         options=ModelOptions(precision="fp16"))
    assert any("gelu_tanh" in k["symbol"] for k in result.manifest["library_kernels"].values())
    inputs = {"x": np.random.default_rng(4).standard_normal((2, 16, 64)).astype(np.float32) * 3}
    (mismatch,) = runtime.compare(tvmopt.load(result.path)(inputs),
                                  runtime.onnxruntime_outputs(path, inputs))
    assert mismatch.max_rel <= 1e-2, mismatch


def test_the_gated_mlps_epilogues_match_onnxruntime(tmp_path):
    """silu(x W_gate) * (x W_up) W_down: SiLU in the gate GEMM's epilogue, the product in the up
    GEMM's (acc * gate), fp16 within 1e-2 of fp32 ONNX Runtime."""
    from test_transformer_fusions import _gated_mlp

    path = _gated_mlp(tmp_path / "mlp.onnx")
    result = build.build(path, targets.resolve("cuda"), tmp_path / "mlp.so",
                         options=ModelOptions(precision="fp16"))
    assert any("_gated_" in k["symbol"] for k in result.manifest["library_kernels"].values())
    inputs = {"x": np.random.default_rng(7).standard_normal((2, 16, 64)).astype(np.float32)}
    (mismatch,) = runtime.compare(tvmopt.load(result.path)(inputs),
                                  runtime.onnxruntime_outputs(path, inputs))
    assert mismatch.max_rel <= 1e-2, mismatch


@pytest.mark.parametrize("tactic", [t.name for t in attention.CATALOGUE])
def test_every_attention_tactic_matches_onnxruntime(tmp_path, monkeypatch, tactic):
    """The fused attention at `tactic`, on a sequence of 72: partial query and key blocks."""
    default = Layer.default_tactic
    monkeypatch.setattr(Layer, "default_tactic", lambda layer: attention.OP.parse_tactic(tactic)
                        if layer.op is attention.OP else default(layer))
    kernels = _attention_matches_onnxruntime(tmp_path, seq=72)
    assert [k["tactic"] for k in kernels.values() if "attention" in k["symbol"]] == [tactic]


@pytest.mark.parametrize("tactic, form, seq", [
    *[(t, "multihead", 77) for t in attention.FMHA_CATALOGUE],  # a query length not a multiple of 8
    *[(t, "sdpa_causal", 136) for t in attention.FMHA_CATALOGUE],
    *[(t, "bert_eager", 72) for t in attention.FMHA_CATALOGUE[:2]],
    *[(t, "sdpa_padding", 72) for t in attention.FMHA_CATALOGUE[:2]]],
    ids=lambda v: getattr(v, "name", str(v)))
def test_every_fmha_tactic_matches_onnxruntime(tmp_path, monkeypatch, tactic, form, seq):
    """CUTLASS's Hopper FMHA at `tactic` on the forms it fits (no mask: ViT's and CLIP's
    torch.nn.MultiheadAttention with its packed in-projection; causal; the padding masks of BERT's
    eager attention and of SDPA), partial query and key tiles, the last keys of one sequence
    padded: within 1e-2 of fp32 ONNX Runtime."""
    choose = TacticModel.choose
    monkeypatch.setattr(TacticModel, "choose", lambda model, layer: Choice(tactic, DEFAULT)
                        if layer.op is attention.OP else choose(model, layer))
    heads = 2
    path = attention_forms.export(form, tmp_path / "a.onnx", hidden=heads * tactic.head_dim,
                                  heads=heads, seq=seq)
    inputs = {"x": np.random.default_rng(4).standard_normal(
        (2, seq, heads * tactic.head_dim)).astype(np.float32)}
    if form in attention_forms.PADDED:
        inputs["attention_mask"] = np.ones((2, seq), np.int64)
        inputs["attention_mask"][1, -seq // 4:] = 0
    result = build.build(path, targets.resolve("cuda"), tmp_path / "a.so", options=ModelOptions(
        precision="fp16", input_shapes={n: a.shape for n, a in inputs.items()}))
    assert [k["tactic"] for k in result.manifest["library_kernels"].values()
            if "attention" in k["symbol"]] == [tactic.name]
    (mismatch,) = runtime.compare(tvmopt.load(result.path)(inputs),
                                  runtime.onnxruntime_outputs(path, inputs))
    assert mismatch.max_rel <= 1e-2, mismatch


def test_the_attention_layers_tvm_kernel_matches_onnxruntime(tmp_path, monkeypatch):
    """What runs where a TIR record beats the library: the attention layer's own TVM kernel."""
    monkeypatch.setattr(library, "_choose", lambda *args: None)
    assert _attention_matches_onnxruntime(tmp_path, seq=32) == {}


@pytest.mark.parametrize("through", ["this GPU", "RPC"])
def test_tune_measures_a_shortlist_and_the_build_runs_the_fastest(tmp_path, invoke, request,
                                                                   through):
    """A shortlist of tactics (nothing measured yet: each layer's default, then its catalogue,
    up to the limit) is timed on its layers (locally, or on an RPC server on 127.0.0.1), stored
    with a time or a reason, not measured twice; the build runs each layer's fastest measured
    kernel, library tactic or TIR record, and still matches ONNX Runtime."""
    from tvmopt.database import open_database
    from tvmopt.tuning.library_tactics import MAX_INSTANCES

    path = models.library_layers(tmp_path / "m.onnx", epilogues="relu")
    db = tmp_path / "t.db"
    tune = ["tune", path, "--target", "cuda", "--precision", "fp16", "--layout", "NHWC",
            "--db", db, "--trials", "8", "--json"]
    if through == "RPC":
        tune += ["--rpc-tracker", request.getfixturevalue("rpc_tracker"), "--rpc-key",
                 "tvmopt-test"]
    result = invoke(*tune)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tactics_measured"] == MAX_INSTANCES  # one GEMM, one conv: one layer each
    with open_database(db, readonly=True) as store:
        rows = list(store.db["tactic_records"].rows)
    assert all((r["mean_sec"] is None) != (r["error"] is None) for r in rows), rows
    best = {}
    for r in rows:
        if r["mean_sec"] and r["mean_sec"] < best.get(r["layer_key"], float("inf")):
            best[r["layer_key"]] = r["mean_sec"]
    assert len(best) == 2  # both layers have a tactic that ran
    library_tasks = [t for t in report["tasks"] if t["library_sec"]]
    assert sorted(t["library_sec"] for t in library_tasks) == pytest.approx(sorted(best.values()))
    assert json.loads(invoke(*tune).stdout)["tactics_measured"] == 0

    lib = tmp_path / "m.so"
    built = build.build(path, targets.resolve("cuda"), lib, db_path=db,
                        options=ModelOptions(precision="fp16", layout="NHWC"))
    for task in library_tasks:
        kernel = built.manifest["library_kernels"].get(task["name"])
        if kernel is not None:
            assert kernel["measured_sec"] == pytest.approx(task["library_sec"])
        else:  # the layer kept a TIR kernel: its best record beat the library's
            assert task["best_sec"] < task["library_sec"]
    model = tvmopt.load(lib)
    inputs = runtime.random_inputs(model.inputs, seed=9)
    mismatches = runtime.compare(model(inputs), runtime.onnxruntime_outputs(path, inputs))
    assert mismatches and all(m.max_rel <= 1e-2 for m in mismatches), mismatches
