"""Untuned CPU kernels: convolutions and matmuls get the parallel, vectorised register tile of
tvmopt/kernels/cpu_gemm.py, every other kernel the parallel, vectorised rows of
tvmopt/kernels/cpu_rows.py, and the models still match ONNX Runtime."""

import time

import pytest

import models
from tvmopt import build, prepare, runtime, targets
from tvmopt.kernels import cpu_simd
from tvmopt.kernels.defaults import default_schedule, hand_scheduled
from tvmopt.prepare import ModelOptions
from tvmopt.tasks import kernels


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_untuned_convs_and_matmuls_are_scheduled_and_match_onnxruntime(tmp_path, layout):
    """3x3, strided 3x3 and 1x1 convs, matmuls (plain, batched, with epilogues), fp32."""
    path = models.library_layers(tmp_path / "m.onnx")
    result = build.build(path, targets.resolve("host"), tmp_path / "m.so",
                         options=ModelOptions(layout=layout))
    providers = result.manifest["kernel_providers"]
    anchors = [k for k in providers if "conv2d" in k or "matmul" in k]
    assert len(anchors) >= 6 and all(providers[k] == "default" for k in anchors), providers
    model = runtime.load(result.path)
    inputs = runtime.random_inputs(model.inputs, seed=2)
    mismatches = runtime.compare(model(inputs), runtime.onnxruntime_outputs(path, inputs))
    assert mismatches and all(m.max_rel <= 1e-4 for m in mismatches), mismatches


def test_an_untuned_cpu_conv_is_packed_parallel_and_vectorised_with_weights_packed_at_build(
        tmp_path):
    """The conv runs in NCHW{b}c, b the host's SIMD lanes: its weights reach the kernel as a
    constant already packed to OIHW{b}i{b}o (no packing kernel runs per inference), its loops are
    parallel, unrolled and vectorised b wide, and the build matches ONNX Runtime."""
    host = targets.resolve("host")
    lanes = cpu_simd.vector_lanes(host.tvm_target())
    path = models.conv_bn_relu(tmp_path / "c.onnx", channels=32, kernel=1)  # conv2: 32 -> 32
    mod = prepare.prepare(path, host).mod
    (name, conv), = [(n, f) for n, f in kernels(mod).items() if "conv2d_NCHWc" in n]
    packed = (32 // lanes, 32 // lanes, 1, 1, lanes, lanes)
    assert tuple(int(d) for d in conv.params[1].ty.shape) == packed
    assert [w.shape for w in _constant_arguments(mod, name)][:1] == [packed]

    script = default_schedule(conv, host.tvm_target()).mod["main"].script()
    assert "T.parallel(" in script and "T.unroll(" in script
    assert f"T.vectorized(T.int64({lanes}))" in script
    _assert_matches_onnxruntime(path, host, tmp_path)


@pytest.mark.parametrize("batch, size", [(1, 16), (2, 14)])  # 14: tiles overhang the image
def test_an_untuned_3x3_conv_runs_as_winograd_with_weights_transformed_at_build(
        tmp_path, batch, size):
    """A 3x3 stride-1 packed conv becomes Winograd F(4x4, 3x3): an input transform, a GEMM
    whose weights are a constant already transformed (6 x 6 points, no transform per inference)
    and an output transform with the conv's epilogue; the transforms run in parallel, unrolled and
    vectorised; the build matches ONNX Runtime."""
    host = targets.resolve("host")
    lanes = cpu_simd.vector_lanes(host.tvm_target())
    path = models.conv_bn_relu(tmp_path / "c.onnx", batch=batch, channels=32, size=size)
    mod = prepare.prepare(path, host).mod
    found = kernels(mod)
    assert not [n for n in found if "conv2d_NCHWc" in n]  # conv1 reads 3 channels: direct
    (gemm,) = [n for n in found if n.startswith("winograd_gemm")]
    assert [w.shape for w in _constant_arguments(mod, gemm)] == [(6, 6, 32 // lanes, 32, lanes)]
    transforms = [f for n, f in found.items() if "winograd_input" in n or "winograd_output" in n]
    assert len(transforms) == 2
    # the transforms keep their hand-written schedule (the tuner skips them); the GEMM is tuned
    assert all(hand_scheduled(f) for f in transforms) and not hand_scheduled(found[gemm])
    for func in transforms:
        script = default_schedule(func, host.tvm_target()).mod["main"].script()
        assert "T.parallel(" in script and "T.unroll(" in script
        assert f"T.vectorized(T.int64({lanes}))" in script
    _assert_matches_onnxruntime(path, host, tmp_path)


def _constant_arguments(mod, kernel: str) -> list:
    """The constants the main function passes to `kernel`, as numpy arrays."""
    import tvm
    from tvm import relax

    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.extend(
        a.value.numpy() for a in e.args[1] if isinstance(a, tvm.ir.expr.Constant))
        if isinstance(e, relax.Call) and e.op == tvm.ir.Op.get("relax.call_tir")
        and e.args[0].name_hint == kernel else None)
    return found


def _assert_matches_onnxruntime(path, target, tmp_path):
    model = runtime.load(build.build(path, target, tmp_path / "c.so").path)
    inputs = runtime.random_inputs(model.inputs, seed=4)
    (mismatch,) = runtime.compare(model(inputs), runtime.onnxruntime_outputs(path, inputs))
    assert mismatch.max_rel <= 1e-4, mismatch


def test_neon_and_avx512_vector_widths():
    arm = targets.resolve("arm-cortex-a72").tvm_target()
    x86 = targets.resolve("x86-skylake-avx512").tvm_target()
    assert (cpu_simd.vector_lanes(arm), cpu_simd.vector_lanes(x86)) == (4, 16)


def test_elementwise_and_row_reduction_kernels_run_in_parallel_vectorised(tmp_path):
    """A BERT attention block, fp32: every kernel gets a default schedule (softmax and layer norm
    rows in parallel, transposes and elementwise kernels vectorised and parallel) and the model
    still matches ONNX Runtime."""
    import numpy as np

    host = targets.resolve("host")
    path = models.attention_block(tmp_path / "a.onnx", seq=128)
    result = build.build(path, host, tmp_path / "a.so")
    assert set(result.manifest["kernel_providers"].values()) == {"default"}
    mask = np.ones((2, 128), np.int64)
    mask[:, 96:] = 0
    inputs = {"x": np.random.default_rng(1).standard_normal((2, 128, 128)).astype(np.float32),
              "attention_mask": mask}
    (mismatch,) = runtime.compare(runtime.load(result.path)(inputs),
                                  runtime.onnxruntime_outputs(path, inputs))
    assert mismatch.max_rel <= 1e-4, mismatch

    found = kernels(prepare.prepare(path, host).mod)
    scripts = {name: default_schedule(f, host.tvm_target()).mod["main"].script()
               for name, f in found.items() if "softmax" in name or "layer_norm" in name
               or "transpose" in name}
    assert len(scripts) >= 3 and all("T.parallel(" in s for s in scripts.values()), scripts
    assert all("T.vectorized(" in s for name, s in scripts.items() if "transpose" in name)


def test_kernels_too_small_for_threads_stay_on_one_core(tmp_path):
    path = models.one_relu(tmp_path / "relu.onnx")
    (relu,) = kernels(prepare.prepare(path, targets.resolve("host")).mod).values()
    script = default_schedule(relu, targets.resolve("host").tvm_target()).mod["main"].script()
    assert "T.vectorized(T.int64(4))" in script and "T.parallel(" not in script


# Sequence lengths no vector width divides (every tokenised sentence has one): a prime length
# once left a matmul's register tile at one element, and the epilogue's vectorize then took the
# kernel's whole parallel loop, reduction inside: a 2x23 T5-style encoder was still compiling
# after 15 minutes, a 3x37 GPT-style one grew to 9 GB.
ODD_LENGTHS = [("masked_scores", 3, 37), ("t5_encoder", 2, 23), ("gpt_decoder", 3, 37)]


@pytest.mark.parametrize("name, batch, seq", ODD_LENGTHS)
def test_at_a_prime_sequence_length_every_vectorised_loop_is_an_innermost_vector(
        tmp_path, name, batch, seq):
    """Every default CPU schedule vectorises only loops with no loop inside them, a few vectors
    wide at most (checked without compiling, so a regression fails here instead of hanging)."""
    from tvm import tirx

    host = targets.resolve("host")
    target = host.tvm_target()
    lanes = cpu_simd.vector_lanes(target)
    path, options = _odd_length_model(tmp_path, name, batch, seq)
    scheduled = 0
    for kernel, func in kernels(prepare.prepare(path, host, options).mod).items():
        sch = default_schedule(func, target)
        if sch is None:
            continue
        scheduled += 1
        for loop in _loops(sch.mod["main"].body):
            if loop.kind == tirx.ForKind.VECTORIZED:
                assert not list(_loops(loop.body)), (kernel, sch.mod["main"].script())
                assert int(loop.extent) <= 32 * lanes, (kernel, sch.mod["main"].script())
    assert scheduled


@pytest.mark.parametrize("name, batch, seq", ODD_LENGTHS)
def test_a_prime_sequence_length_builds_about_as_fast_and_small_as_the_next_multiple_of_8(
        tmp_path, name, batch, seq):
    """Built for `host` at a prime sequence length and at the next multiple of 8: the prime
    build takes less than 3x as long (CPU time, plus a second), its kernels' machine code is less than 2x as large, and it
    matches ONNX Runtime."""
    host = targets.resolve("host")
    padded = -(-seq // 8) * 8
    seconds, code = {}, {}
    # CPU seconds of this process (the build's work, whatever else the machine runs), plus one
    # second for what is not proportional to it; the blow-up this guards against took minutes.
    bound = lambda: 3 * seconds[padded] + 1.0  # noqa: E731
    for _ in range(2):  # once more if the first timings were unfair (caches, page faults)
        for n in (padded, seq):
            path, options = _odd_length_model(tmp_path, name, batch, n)
            start = time.process_time()
            result = build.build(path, host, tmp_path / f"{name}_{n}.so", options=options)
            seconds[n] = min(seconds.get(n, float("inf")), time.process_time() - start)
            code[n] = _code_bytes(result.path)
        if seconds[seq] < bound():
            break
    assert seconds[seq] < bound(), seconds
    assert code[seq] < 2 * code[padded], code

    model = runtime.load(tmp_path / f"{name}_{seq}.so")
    inputs = runtime.random_inputs(model.inputs, seed=3)
    path, _ = _odd_length_model(tmp_path, name, batch, seq)
    mismatches = runtime.compare(model(inputs), runtime.onnxruntime_outputs(path, inputs))
    assert mismatches and all(m.max_rel <= 1e-4 for m in mismatches), mismatches


def _odd_length_model(tmp_path, name, batch, seq):
    """(the ONNX file, the ModelOptions fixing its shapes) of an ODD_LENGTHS model."""
    import zoo

    if name == "masked_scores":
        path = tmp_path / f"{name}_{seq}.onnx"
        return (path if path.exists() else models.masked_scores(path, batch=batch, seq=seq),
                ModelOptions())
    path = tmp_path / f"{name}.onnx"
    if not path.exists():
        getattr(zoo, name)(path)
    inputs = ("input_ids",) if name == "gpt_decoder" else ("input_ids", "attention_mask")
    return path, ModelOptions(input_shapes={i: (batch, seq) for i in inputs})


def _loops(stmt):
    """Every loop in a TIR statement, outer ones first."""
    from tvm import tirx

    if isinstance(stmt, tirx.For):
        yield stmt
        yield from _loops(stmt.body)
    elif isinstance(stmt, tirx.SeqStmt):
        for s in stmt.seq:
            yield from _loops(s)
    else:
        for name in ("block", "body", "init", "then_case", "else_case"):
            child = getattr(stmt, name, None)
            if isinstance(child, tirx.Stmt):
                yield from _loops(child)


def _code_bytes(path) -> int:
    """Bytes of machine code in an ELF64 shared library: its executable sections."""
    import struct

    data = path.read_bytes()
    assert data[:5] == b"\x7fELF\x02", path
    (section_headers,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count = struct.unpack_from("<HH", data, 0x3A)
    total = 0
    for i in range(count):
        _, _, flags, _, _, size = struct.unpack_from("<IIQQQQ", data,
                                                     section_headers + i * entry_size)
        if flags & 0x4:  # SHF_EXECINSTR
            total += size
    return total
