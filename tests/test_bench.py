"""`tvmopt bench` and `tvmopt profile` on CPU artifacts: the figures' fields and their relations,
the instability warning, kernel rows mapped to tasks, and bad options."""

import json

import pytest

from conftest import assert_one_line_error
from tvmopt import bench, build, targets
from tvmopt import manifest as artifact_manifest


@pytest.fixture(scope="module")
def conv_lib(tmp_path_factory, conv_model):
    return build.build(conv_model, targets.resolve("host"),
                       tmp_path_factory.mktemp("bench") / "conv.so").path


def _bench_json(invoke, lib, *args) -> dict:
    result = invoke("bench", lib, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # warnings and logs go to stderr


def test_bench_json_reports_percentiles_throughput_and_memory(invoke, conv_lib):
    report = _bench_json(invoke, conv_lib, "--iterations", "40", "--warmup", "5")
    lat = report["latency_ms"]
    assert report["iterations"] == 40 and report["warmup"] == 5 and report["batch"] == 1
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert report["inferences_per_s"] == pytest.approx(1e3 / lat["mean"])
    assert report["samples_per_s"] == pytest.approx(report["batch"] * report["inferences_per_s"])
    assert report["h2d_ms"] is None and report["d2h_ms"] is None  # a CPU artifact copies nothing
    assert report["end_to_end_ms"] == pytest.approx(lat["p50"])
    assert isinstance(report["peak_memory_bytes"], int) and "peak RSS" in report["memory_measure"]
    assert report["device"] and report["target_key"] == targets.resolve("host").key
    assert report["cuda_graph"] is False


def test_tiny_iteration_count_triggers_the_warning(invoke, conv_lib):
    result = invoke("bench", conv_lib, "--iterations", "3", "--warmup", "0")
    assert result.exit_code == 0, result.output
    assert "warning: only 3 iterations" in result.output
    report = _bench_json(invoke, conv_lib, "--iterations", "3", "--warmup", "0")
    assert any("only 3 iterations" in w for w in report["warnings"])


def test_high_variation_is_flagged_and_steady_runs_are_not():
    steady = bench.summarize([1e-3] * 50)
    assert bench.stability_warnings(steady, 50) == []
    noisy = bench.summarize([1e-3] * 45 + [4e-3] * 5)
    assert noisy.cv > bench.NOISY_CV
    (warning,) = bench.stability_warnings(noisy, 50)
    assert "unstable" in warning and f"{noisy.cv:.0%}" in warning


def test_percentiles_interpolate_like_numpy():
    stats = bench.summarize([i * 1e-3 for i in range(1, 101)])  # 1..100 ms
    assert (stats.min, stats.max) == (1.0, 100.0)
    assert stats.p50 == pytest.approx(50.5) and stats.p99 == pytest.approx(99.01)


def test_bench_for_a_duration(invoke, conv_lib):
    report = _bench_json(invoke, conv_lib, "--duration", "0.3")
    # Batches of timed calls until the time is up: well over one batch of a sub-ms model.
    assert report["iterations"] > bench._CHUNK and report["iterations"] % bench._CHUNK == 0


@pytest.mark.parametrize("args,fragment", [
    (["--iterations", "5", "--duration", "1"], "not both"),
    (["--batch", "4"], "rebuild with --input-shape x=4x3x16x16"),
    (["--cuda-graph"], "CUDA artifacts only"),
    (["--iterations", "0"], "must be positive"),
])
def test_bad_bench_options(invoke, conv_lib, args, fragment):
    assert_one_line_error(invoke("bench", conv_lib, *args), fragment)


def test_bench_of_a_missing_or_foreign_file(invoke, tmp_path):
    assert_one_line_error(invoke("bench", tmp_path / "nope.so"), "no such file")
    (tmp_path / "text.so").write_text("not a library")
    assert_one_line_error(invoke("bench", tmp_path / "text.so"), "not a 64-bit ELF")


def test_cuda_graph_build_needs_a_cuda_target(invoke, conv_model, tmp_path):
    result = invoke("build", conv_model, "--target", "host", "-o", tmp_path / "m.so", "--cuda-graph")
    assert_one_line_error(result, "--cuda-graph needs a CUDA target")


def test_cuda_graph_build_captures_through_the_vm_builtin(invoke, conv_model, tmp_path):
    capture = b"vm.builtin.cuda_graph.run_or_capture"  # what RewriteCUDAGraph makes the VM call
    # `--cuda-graph` is the default (its parsing: test_cuda_graph_build_needs_a_cuda_target)
    for flag, expected in (([], True), (["--no-cuda-graph"], False)):
        lib = tmp_path / f"graph{''.join(flag)}.so"
        assert invoke("build", conv_model, "--target", "cuda-sm90a", "-o", lib, *flag).exit_code == 0
        assert (capture in lib.read_bytes()) is expected
        assert artifact_manifest.read(lib)["cuda_graph"] is expected


def test_profile_counts_each_kernel_of_a_cuda_graph_once():
    """A CUDA graph's first call runs its captured function twice (a warm-up, then under
    capture): the profile counts those calls once, and the calls outside the graph as they come."""
    def call(symbol, *args):
        return [(symbol, True, list(args)), (symbol, False, list(args))]

    graph = call("matmul", 1) + call("add", 2) + call("vm.builtin.alloc_tensor")
    events = [*call("embed", 0), (bench.CUDA_GRAPH_CAPTURE, True, []), *graph, *graph,
              (bench.CUDA_GRAPH_CAPTURE, False, []), *call("head", 3)]
    assert bench.kernel_calls(events) == [("embed", [0]), ("matmul", [1]), ("add", [2]),
                                          ("head", [3])]
    # Without a CUDA graph every call counts, the same kernel twice included.
    assert [s for s, _ in bench.kernel_calls(graph + graph)] == ["matmul", "add"] * 2


def test_profile_rows_name_kernels_tasks_and_shares(invoke, conv_lib):
    result = invoke("profile", conv_lib, "--json", "--repeat", "5")
    assert result.exit_code == 0, result.output
    profile = json.loads(result.output)
    rows = profile["kernels"]
    kernel_rows = [r for r in rows if r["tuned"] is not None]
    assert kernel_rows and all(r["task"] for r in kernel_rows)  # every kernel maps to a task
    assert not any(r["tuned"] for r in kernel_rows)  # built without a database
    totals = [r["total_us"] for r in kernel_rows]
    assert totals == sorted(totals, reverse=True)
    assert all(r["total_us"] == pytest.approx(r["mean_us"] * r["calls"]) for r in rows)
    assert sum(r["share"] for r in kernel_rows) <= 1.5  # kernels timed alone, model timed whole
    conv = next(r for r in kernel_rows if "conv2d" in r["kernel"])
    assert conv["share"] > 0
    table = invoke("profile", conv_lib, "--repeat", "5").output
    assert "share" in table.splitlines()[0] and conv["kernel"] in table
