"""Attention in every form the exporters write becomes one kernel-library layer (Hopper, fp16):
the pattern test per form and exporter, and the rewrite into the canonical form checked on the
CPU, where both the exported graph and its canonical form run as TVM kernels. The kernel's own
numerics per form, mask kind and head dim are gpu tests (tests/test_gpu.py)."""

import numpy as np
import pytest

import attention_forms as forms
import instances
import zoo
from tvmopt import frontend, prepare, targets
from tvmopt.graph import pipeline
from tvmopt.kernels import library
from tvmopt.kernels.library import attention, attention_forms
from tvmopt.prepare import ModelOptions

BATCH, SEQ, HIDDEN = 2, 32, 128


def _shapes(form: str) -> dict:
    shapes = {"x": (BATCH, SEQ, HIDDEN)}
    if form in forms.PADDED:
        shapes["attention_mask"] = (BATCH, SEQ)
    return shapes


def _sizes(form: str) -> dict:
    return {"heads": 4, "kv_heads": 2} if form.startswith("llama") else {}


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("form", forms.FORMS)
def test_every_exported_attention_form_is_one_library_layer(tmp_path, form, exporter):
    path = forms.export(form, tmp_path / f"{form}.onnx", exporter=exporter,
                        opset=18 if exporter == "dynamo" else 17, batch=BATCH, seq=SEQ,
                        **_sizes(form))
    mod = prepare.prepare(path, targets.resolve("cuda-sm90a"),
                          ModelOptions(precision="fp16", input_shapes=_shapes(form))).mod
    (layer,) = [l for l in library.layers(mod).values() if l.op is attention.OP]
    g = layer.geometry
    heads = _sizes(form).get("heads", 2)
    assert (g.batch, g.heads, g.seq_q, g.seq_k, g.head_dim) == (BATCH, heads, SEQ, SEQ,
                                                                HIDDEN // heads)
    assert g.scale == pytest.approx(1.0 if form == "t5_bias" else (HIDDEN // heads) ** -0.5)
    assert g.causal == (0 if form in forms.CAUSAL else None)  # generated, not read
    assert (g.mask_shape is not None) == (form in forms.PADDED)
    # a padding mask is read once per key, also where the export expanded it to every query
    assert (g.mask_strides[2] == 0) == (form != "t5_bias")
    assert sorted(layer.args) == sorted(["q", "k", "v"] + (["mask"] if form in forms.PADDED else []))
    # grouped K/V heads are indexed, not repeated
    assert g.kv_heads == _sizes(form).get("kv_heads", 0)
    # each tensor is read where its producer wrote it: rotated Q and K are [b, h, s, d],
    # nn.MultiheadAttention's tensors are sequence-first
    expected = {"multihead": ("sbh",) * 4}.get(form, ("bsh",) * 4)
    if form.startswith("llama"):
        expected = ("bhs", "bhs", "bsh", "bsh")
    assert g.layouts == expected
    # GPT-2's packed projection, and the Q, K and V projections the library combines into one
    # GEMM, are read in place: Q, K and V are column slices of one tensor (rotated Q and K and
    # nn.MultiheadAttention's sequence-first heads are tensors of their own; Llama's V is still
    # read from the combined projection)
    if form in ("bert_eager", "gpt2_eager", "t5_bias", "sdpa_padding", "sdpa_causal"):
        width = 3 * HIDDEN
        assert g.packed[0::2] == (width,) * 3 and sorted(g.packed[1::2]) == [0, HIDDEN, 2 * HIDDEN]
        assert layer.args["q"] == layer.args["k"] == layer.args["v"]
    elif form.startswith("llama"):
        kv_width = HIDDEN // _sizes(form)["heads"] * _sizes(form)["kv_heads"]
        assert g.packed == (0, 0, 0, 0, HIDDEN + 2 * kv_width, HIDDEN + kv_width)
        assert len({layer.args["q"], layer.args["k"], layer.args["v"]}) == 3
    else:
        assert g.packed == ()


def _pre_library(path, shapes):
    """The fp16 module as the kernel library's partition pass receives it."""
    loaded = frontend.load(path)
    inputs = frontend.resolve_inputs(loaded.proto, shapes)
    loaded.proto, _ = frontend.normalize(loaded.proto, inputs)
    mod = frontend.import_model(loaded.proto, inputs).mod
    names = pipeline.PASS_NAMES[:pipeline.PASS_NAMES.index("partition-kernel-library")]
    return pipeline.run_pipeline(mod, targets.resolve("host").tvm_target(),
                                 pipeline.PipelineOptions(precision="fp16"), only=names)


def _run_on_cpu(mod, arrays):
    import tvm
    from tvm import relax

    target = targets.resolve("host").tvm_target()
    mod = pipeline.run_pipeline(mod, target, pipeline.PipelineOptions(precision="fp16"),
                                only=("legalize", "fuse"))
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


@pytest.mark.parametrize("form", ["bert_eager", "gpt2_eager", "t5_bias", "sdpa_padding",
                                  "multihead", "llama_sdpa", "llama_masked"])
def test_the_canonical_form_computes_what_the_export_computes(tmp_path, form):
    """The rewrite is exact where it must be: the canonical form, run as TVM kernels, gives the
    exported graph's outputs (fp16 rounding apart), with padded keys."""
    import tvm

    path = forms.export(form, tmp_path / f"{form}.onnx", batch=BATCH, seq=SEQ, **_sizes(form))
    mod = _pre_library(path, _shapes(form))
    canonical = attention_forms.canonicalize(tvm.relax.transform.FoldConstant()(mod))
    assert canonical["main"].script() != mod["main"].script()
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((BATCH, SEQ, HIDDEN)).astype(np.float32)]
    if form in forms.PADDED:
        mask = np.ones((BATCH, SEQ), np.int64)
        mask[:, -SEQ // 4:] = 0
        arrays.append(mask)
    expected, found = _run_on_cpu(mod, arrays), _run_on_cpu(canonical, arrays)
    assert np.isfinite(found).all() and np.abs(expected).max() > 0.1
    np.testing.assert_allclose(found, expected, atol=2e-2, rtol=2e-2)


def test_a_constant_mask_is_causal_only_where_it_hides_exactly_the_future():
    rows, cols = np.indices((4, 6))
    causal = np.where(cols > rows + 2, -65504.0, 0.0)
    assert attention_forms.causal_offset(causal[None, None], 4, 6) == 2
    assert attention_forms.causal_offset(np.where(cols > rows + 2, -np.inf, 0.0), 4, 6) == 2
    leaky = causal.copy()
    leaky[0, 5] = 0.0
    assert attention_forms.causal_offset(leaky, 4, 6) is None
    assert attention_forms.causal_offset(np.where(cols > rows, -1.0, 0.0), 4, 6) is None  # a bias
    assert attention_forms.causal_offset(np.zeros((4, 6)), 4, 6) is None  # hides nothing
    per_batch = np.stack([causal, causal])[:, None]
    assert attention_forms.causal_offset(per_batch, 4, 6) is None  # the kernel's is one for all


def test_attention_that_the_kernel_cannot_run_is_left_as_it_is(tmp_path):
    """A head dimension the kernel does not instantiate (48): the exported graph stays as it
    was, on TVM kernels."""
    path = forms.export("sdpa_causal", tmp_path / "a.onnx", hidden=96, heads=2, batch=BATCH,
                        seq=SEQ)
    mod = prepare.prepare(path, targets.resolve("cuda-sm90a"), ModelOptions(
        precision="fp16", input_shapes={"x": (BATCH, SEQ, 96)})).mod
    assert [l.op.name for l in library.layers(mod).values()].count("attention") == 0


def test_cutlass_fmha_tactics_are_offered_only_for_what_its_mainloop_computes():
    """CUTLASS's Hopper FMHA (with csrc/fmha_mask.cuh's scale and additive mask of keys) takes no
    grouped K/V heads, no mask with a query extent, and generates only the causal mask of offset
    0, not with an additive one: a layer
    outside that keeps the mma.sync kernel's tactics alone; one inside gets the FMHA tactics of
    its head dimension."""
    G = attention.AttentionGeometry
    packed = (2304, 0, 2304, 768, 2304, 1536)

    def fmha(g):
        found = [t for t in attention.OP.catalogue(g) if isinstance(t, attention.FmhaTactic)]
        assert all(attention.OP.parse_tactic(t.name) == t for t in found)
        return {(t.head_dim, t.schedule) for t in found}

    both_64 = {(64, "cooperative"), (64, "pingpong")}
    assert fmha(G(64, 12, 197, 197, 64, 0.125, None, None, packed=packed)) == both_64  # ViT
    assert fmha(G(1, 12, 128, 128, 64, 0.125, None, None, causal=0)) == both_64  # GPT-2
    assert fmha(G(32, 12, 128, 128, 64, 0.125, (32, 1, 1, 128), "float16")) == both_64  # BERT
    assert fmha(G(2, 8, 64, 64, 64, 1.0, (2, 1, 1, 64), "float32")) == both_64  # unscaled
    assert fmha(G(1, 16, 512, 512, 128, 128 ** -0.5, None, None)) == {(128, "cooperative"),
                                                                       (128, "pingpong")}
    for outside in (G(1, 16, 512, 512, 128, 128 ** -0.5, None, None, kv_heads=4),  # grouped
                    G(1, 8, 64, 96, 64, 0.125, None, None, causal=32),  # a causal offset
                    G(1, 8, 64, 64, 64, 0.125, (1, 64), "float16", causal=0),  # both masks
                    G(2, 8, 64, 64, 64, 1.0, (2, 8, 64, 64), "float32"),  # T5: one per query
                    G(1, 8, 64, 64, 80, 80 ** -0.5, None, None)):  # no FMHA tile for 80
        assert fmha(outside) == set()
        assert attention.OP.catalogue(outside) == attention.CATALOGUE


@pytest.mark.parametrize("mask", [None, "float32"])
def test_a_cutlass_fmha_instance_compiles_for_hopper(tmp_path, monkeypatch, mask):
    """The ping-pong FMHA instance, causal or with an fp32 additive mask (CUTLASS's mainloop and
    kernel from its example headers, csrc/fmha_mask.cuh's extension, tvmopt's output-only
    epilogue), compiles with nvcc, no GPU, and exports its symbol."""
    monkeypatch.setenv("TVMOPT_CACHE", str(tmp_path / "cache"))
    g = attention.AttentionGeometry(1, 12, 128, 128, 64, 0.125, mask and (1, 12, 1, 128), mask,
                                    causal=None if mask else 0)
    spec = attention.OP.instance(g, attention.FmhaTactic(128, 64, 64, "pingpong"), "sm_90a")
    assert "fmha_sm90.cuh" in spec.source
    assert ("Pingpong, float, false>" if mask else "Pingpong, void, true>") in spec.source
    assert instances.exports_its_symbol(spec)


def test_every_causal_and_grouped_instance_compiles_for_hopper(tmp_path, monkeypatch):
    """A causal instance with an fp32 mask, grouped heads and rotated Q and K compiles (nvcc,
    no GPU) with every head dimension the kernel takes."""
    monkeypatch.setenv("TVMOPT_CACHE", str(tmp_path / "cache"))
    g = attention.AttentionGeometry(1, 4, 16, 16, 64, 0.125, (1, 16), "float32", kv_heads=2,
                                    causal=0, layouts=("bhs", "bhs", "bsh", "bsh"))
    spec = attention.OP.instance(g, attention.CATALOGUE[0], "sm_90a")
    assert "true>" in spec.source and "80, 96" in spec.source
    assert instances.exports_its_symbol(spec)


def test_a_packed_layers_reference_reads_q_k_and_v_from_their_columns():
    """What `tune` checks a packed layer's tactics against: the reference on the packed rows
    equals the reference on Q, K and V cut out of them."""
    import dataclasses

    packed = attention.AttentionGeometry(1, 2, 8, 8, 32, 0.2, None, None, causal=0,
                                         packed=(192, 0, 192, 64, 192, 128))
    arrays = attention.OP.inputs(packed, {"q": 0, "k": 0, "v": 0}, np.random.default_rng(1))
    assert arrays["q"] is arrays["k"] is arrays["v"] and arrays["q"].shape == (1, 8, 192)
    dense = dataclasses.replace(packed, packed=())
    cut = {r: arrays["q"][..., 64 * i:64 * (i + 1)] for i, r in enumerate("qkv")}
    np.testing.assert_allclose(attention.OP.reference(packed, arrays),
                               attention.OP.reference(dense, cut), rtol=1e-6)


def test_a_layer_reading_only_v_in_place_takes_q_and_k_as_tensors_of_their_own():
    """Llama's rotated Q and K are tensors of their own while V stays a column slice of the
    combined projection: the reference reads each as the layer says."""
    import dataclasses

    only_v = attention.AttentionGeometry(1, 2, 8, 8, 32, 0.2, None, None, causal=0,
                                         layouts=("bhs", "bhs", "bsh", "bsh"),
                                         packed=(0, 0, 0, 0, 192, 128))
    arrays = attention.OP.inputs(only_v, {"q": 0, "k": 1, "v": 2}, np.random.default_rng(2))
    assert [arrays[r].shape for r in "qkv"] == [(1, 2, 8, 32), (1, 2, 8, 32), (1, 8, 192)]
    dense = dataclasses.replace(only_v, packed=())
    cut = {**arrays, "v": arrays["v"][..., 128:]}
    np.testing.assert_allclose(attention.OP.reference(only_v, arrays),
                               attention.OP.reference(dense, cut), rtol=1e-6)
    assert "V read from packed projections" in attention.OP.describe(only_v)


def test_layers_sharing_a_padding_mask_compute_it_once(tmp_path):
    """transformers 5.x builds one causal-and-padding mask for every layer; split into the
    generated causal part and the padding, the padding's where() is computed once, not per
    layer."""
    import tvm

    torch = zoo._torch()
    first, second = (forms.block("llama_masked", heads=4, kv_heads=2) for _ in range(2))

    class TwoLayers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = first, second

        def forward(self, x, mask):
            return self.second(self.first(x, mask), mask)

    args = (torch.randn(BATCH, SEQ, HIDDEN), torch.ones(BATCH, SEQ, dtype=torch.long))
    path = tmp_path / "two.onnx"
    zoo._save(zoo._export(TwoLayers(), args, path, input_names=["x", "attention_mask"],
                          output_names=["y"], dynamic_axes={}, opset=17, exporter="legacy"), path)
    mod = tvm.relax.transform.FoldConstant()(_pre_library(path, _shapes("llama_masked")))
    canonical = attention_forms.canonicalize(mod)["main"].script()
    assert canonical.count("R.nn.softmax(") == 2 and canonical.count("R.where(") == 1
