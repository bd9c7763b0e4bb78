"""The suites, as data: `python -m benchmarks --help` lists this table and `python -m benchmarks
NAME ARGS` runs `main(ARGS)` of its module (with `defaults` when no ARGS are given).

Every suite module has an argparse `main(argv)` (so `--help` works without running anything) and
writes its JSON through `benchmarks.record`. A module that reaches past tvmopt's public API (the
`tvmopt` CLI, tvmopt.build, bench, runtime, targets and the ModelOptions that build takes) names
the modules in its `INTERNAL_API`, with why: those are the benchmarks to revisit when tvmopt's
internals move (tests/test_benchmarks.py checks each imported name still exists).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Suite:
    name: str
    module: str
    device: str  # "cpu", "gpu", or "cpu|gpu" (chosen by an argument)
    description: str
    defaults: tuple[str, ...] = ()  # the arguments when none are given

    def load(self):
        return importlib.import_module(self.module)


SUITES = (
    Suite("compare", "benchmarks.compare", "cpu|gpu",
          "one model through tvmopt (untuned, tuned), ONNX Runtime, PyTorch eager and "
          "torch.compile, same inputs, same process, timed call + sync and pipelined",
          ("--torch", "benchmarks.models:small_resnet", "--input-shape", "1x3x64x64")),
    Suite("transformers", "benchmarks.transformers_table", "gpu",
          "the transformer table: BERT-base, GPT-2, ViT-B/16, CLIP text, a Llama-style decoder "
          "through compare, fp16, one process per model, call + sync and pipelined"),
    Suite("cpu", "benchmarks.cpu", "cpu",
          "the CPU figures: export light ResNet-50, a small ResNet and a BERT-style encoder, "
          "optionally tune each, compare each against ONNX Runtime",
          ("--work", "/tmp/tvmopt-bench-cpu")),
    Suite("gpu", "benchmarks.gpu.session", "gpu",
          "the GPU figures: export ResNet-50 and BERT-base (batch 1 and large), measure library "
          "tactics, compare against torch.compile, profile",
          ("--work", "/tmp/tvmopt-bench-gpu")),
    Suite("coverage", "benchmarks.coverage", "cpu",
          "the import coverage table: every zoo model through import, build, fp32/fp16 match, "
          "with and without normalisation"),
    Suite("db-lookup", "benchmarks.db_lookup", "cpu",
          "how fast a build's lookups are in a tuning database of 100,000 records"),
    Suite("tuning-speed", "benchmarks.tuning_speed", "cpu",
          "trials per minute and where tuning time goes: tvmopt's tuner against plain "
          "MetaSchedule on one conv task"),
    Suite("warm-start", "benchmarks.warm_start", "cpu",
          "whether another model's records make a new tune converge in fewer trials"),
    Suite("tune-shortlist", "benchmarks.tune_shortlist", "cpu",
          "how long `tune --trials 0` compiles its kernel-library shortlist on this machine from "
          "a cold kernel cache (nvcc, no GPU)",
          ("--torch", "benchmarks.models:gpt2_small")),
    Suite("tactic-model", "benchmarks.tactic_model", "cpu",
          "how well untuned kernel-library layers' tactics are predicted: leave-one-out regret "
          "over the team database, against the fixed default tactics"),
    Suite("winograd-layers", "benchmarks.winograd_layers", "cpu",
          "Winograd against the direct packed conv per layer shape, and what the rule picks"),
    Suite("gemm-defaults", "benchmarks.gpu.gemm_defaults", "gpu",
          "DLight's default tensor-core GEMM schedules against tvmopt's, untuned, per model"),
    Suite("gpu-tune-report", "benchmarks.gpu.tune_report", "gpu",
          "what a tune bought on a GPU: tuned against untuned, and per task its trials, best "
          "latency and whether tensor cores won"),
    Suite("attention-kernel", "benchmarks.gpu.attention_kernel", "gpu",
          "every attention tactic (tvmopt's mma.sync kernel, CUTLASS's FMHA where it fits) at "
          "the transformer models' attention shapes, measured and checked as tune does"),
    Suite("gemm-tactics", "benchmarks.gpu.gemm_tactics", "gpu",
          "every GEMM tactic at BERT-base b32's and ViT-B/16 b64's GEMM layers, measured and "
          "checked as tune does"),
    Suite("gpu-host", "benchmarks.gpu_host.session", "gpu",
          "a GPU host with a per-call time limit: carried database and kernel cache, a tune that "
          "outlives the call, waiting for it"),
    Suite("against-commit", "benchmarks.gpu_host.against_commit", "gpu",
          "this checkout against another tvmopt (an older commit): the same models built with "
          "the same database and timed by each, interleaved"),
    Suite("warm-kernels", "benchmarks.gpu_host.warm_kernels", "gpu",
          "compile every kernel-library instance the peer models can use into the kernel cache "
          "ahead of a tactic tune"),
)

BY_NAME = {s.name: s for s in SUITES}
