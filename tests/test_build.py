import json

import numpy as np
import pytest

import models
import tvmopt
from tvmopt import build, runtime, targets
from tvmopt import manifest as artifact_manifest
from tvmopt.prepare import ModelOptions, prepare
from tvmopt.tasks import extract_tasks


# Slow to build on 2 cores (20-75 s each) and covered by a smaller model, so they run with
# `-m slow`: plain conv stacks with big dense layers (alexnet) and DenseNet-121 (the zoo's
# densenet, tests/test_coverage.py, has its dense blocks and concatenations).
_PLAIN_AND_BIG = {"vgg19", "zfnet512", "densenet121"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _PLAIN_AND_BIG
                                  else n for n in models.LIGHT_MODELS])
def test_light_models_match_onnxruntime(name, tmp_path):
    path = models.LIGHT_DIR / f"light_{name}.onnx"
    result = build.build(path, targets.resolve("host"), tmp_path / f"{name}.so")
    compiled = tvmopt.load(result.path)
    inputs = runtime.random_inputs(compiled.inputs, seed=1)
    mismatches = runtime.compare(compiled(inputs), runtime.onnxruntime_outputs(path, inputs))
    assert mismatches and all(m.max_rel <= 1e-4 for m in mismatches), mismatches


def test_manifest_describes_the_artifact(tmp_path, conv_model):
    preset = targets.resolve("host")
    result = build.build(conv_model, preset, tmp_path / "m.so")
    manifest = artifact_manifest.read(result.path)
    assert manifest["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert manifest["target"]["kind"] == "llvm"
    assert manifest["target"]["mcpu"] == preset.target["mcpu"] != "native"
    assert manifest["target_key"] == preset.key
    assert manifest["precision"] == "fp32"
    assert manifest["tvm_version"].startswith("0.27")
    assert manifest["model_sha256"] == tvmopt.frontend.file_sha256(conv_model)
    assert manifest["tasks"] == len(result.tasks) > 0
    assert manifest["tuned_tasks"] == []
    assert manifest["elf_machine"] == "x86_64"
    assert not list(tmp_path.glob("*.partial"))


def test_fp16_build_runs_close_to_reference(tmp_path, conv_model):
    result = build.build(conv_model, targets.resolve("host"), tmp_path / "h.so",
                         options=ModelOptions(precision="fp16"))
    compiled = tvmopt.load(result.path)
    assert compiled.manifest["precision"] == "fp16"
    inputs = runtime.random_inputs(compiled.inputs)
    (m,) = runtime.compare(compiled(inputs), runtime.onnxruntime_outputs(conv_model, inputs))
    assert 0 < m.max_rel < 1e-2  # fp16 is close but, unlike fp32, not exact


def test_nhwc_build_matches(tmp_path, conv_model):
    result = build.build(conv_model, targets.resolve("host"), tmp_path / "n.so",
                         options=ModelOptions(layout="NHWC"))
    compiled = tvmopt.load(result.path)
    inputs = runtime.random_inputs(compiled.inputs)
    (m,) = runtime.compare(compiled(inputs), runtime.onnxruntime_outputs(conv_model, inputs))
    assert m.max_rel < 1e-4


def test_dynamic_batch_fixed_by_input_shape(tmp_path, dynamic_model):
    result = build.build(dynamic_model, targets.resolve("host"), tmp_path / "d.so",
                         options=ModelOptions(input_shapes={"x": (3, 3, 16, 16)}))
    compiled = tvmopt.load(result.path)
    out = compiled(x=np.ones((3, 3, 16, 16), np.float32))
    assert out["logits"].shape == (3, 10)


def test_tuned_records_are_applied_for_their_target_only(tmp_path, conv_model):
    """A record in the database for this target is used (and reported); another target's is not."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from tvmopt.database import open_database

    host = targets.resolve("host")
    other = targets.resolve("x86-generic")
    mod = prepare(conv_model, host).mod
    task = extract_tasks(mod, host.tvm_target())[0]
    db_path = tmp_path / "team.db"
    with open_database(db_path) as store:
        # A real schedule: parallelise the outermost loop of the kernel's main block.
        sch = tvm.s_tir.Schedule(task.mod)
        (output_block,) = sch.get_output_blocks(sch.get_sblock("root"))
        sch.parallel(sch.get_loops(output_block)[0])
        record = ms.database.TuningRecord(
            sch.trace, ms.database.Workload(task.mod), [1e-4], other.tvm_target(),
            ms.arg_info.ArgInfo.from_prim_func(task.mod["main"]))
        store.for_target(other.tvm_target()).commit_tuning_record(record)

    untuned = build.build(conv_model, host, tmp_path / "a.so", db_path=db_path)
    assert untuned.tuned == []
    tuned_other = build.build(conv_model, other, tmp_path / "b.so", db_path=db_path)
    assert tuned_other.tuned == [task.name]
    assert artifact_manifest.read(tmp_path / "b.so")["tuned_tasks"] == [task.name]
    compiled = tvmopt.load(tuned_other.path)
    inputs = runtime.random_inputs(compiled.inputs)
    (m,) = runtime.compare(compiled(inputs), runtime.onnxruntime_outputs(conv_model, inputs))
    assert m.max_rel < 1e-4


def test_inspect_lists_tasks_for_target(invoke, conv_model):
    result = invoke("inspect", conv_model, "--target", "host", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["target"] == targets.resolve("host").key
    assert info["tasks"] and all(t["weight"] >= 1 for t in info["tasks"])
    assert max(t["flops"] for t in info["tasks"]) > 1e5  # the convolutions


def test_a_rebuilt_artifact_loads_as_rebuilt_in_the_same_process(tmp_path, conv_model):
    """dlopen caches by path: loading a file rebuilt at the same path must not run the old one."""
    lib = tmp_path / "model.so"
    first = tvmopt.load(build.build(conv_model, targets.resolve("host"), lib).path)
    tiny = models.tiny_conv(tmp_path / "tiny.onnx")
    build.build(tiny, targets.resolve("host"), lib)
    second = tvmopt.load(lib)
    inputs = runtime.random_inputs(second.inputs, seed=2)
    mismatches = runtime.compare(second(inputs), runtime.onnxruntime_outputs(tiny, inputs))
    assert mismatches and all(m.max_rel <= 1e-4 for m in mismatches), mismatches
    # the model loaded first still runs its own code
    x = runtime.random_inputs(first.inputs, seed=3)
    assert all(m.max_rel <= 1e-4 for m in runtime.compare(
        first(x), runtime.onnxruntime_outputs(conv_model, x)))
