"""What MetaSchedule searches: the target as its search needs it, the schedule rules per target
and precision, and the evolutionary search's settings."""

from __future__ import annotations

import os
import re


def search_target(target):
    """MetaSchedule's CPU search needs the core count as a target attribute."""
    import json

    import tvm

    if target.kind.name != "llvm" or "num-cores" in target.attrs:
        return target
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    return tvm.target.Target({**json.loads(str(target)), "num-cores": cores})


def space_generator(target, precision: str):
    """Tensor-core rules for fp16 on CUDA; TVM's per-target defaults (vectorize/parallel on CPU)."""
    import tvm.s_tir.tensor_intrin  # noqa: F401 - registers the wmma/mma intrinsics the rules name
    from tvm.s_tir import meta_schedule as ms

    if target.kind.name == "cuda" and precision == "fp16":
        return ms.space_generator.PostOrderApply(
            sch_rules="cuda-tensorcore", postprocs="cuda-tensorcore", mutator_probs="cuda-tensorcore")
    return ms.space_generator.PostOrderApply()


_TENSOR_CORE_RE = re.compile(r"wmma|mma_sync|mma_f16|mma_bf16|tensor_core", re.IGNORECASE)


def uses_tensor_cores(trace_json: str) -> bool:
    return bool(_TENSOR_CORE_RE.search(trace_json))


# MetaSchedule's defaults (population 512, 4 genetic iterations) spend most of a small-batch round
# in search; `python -m benchmarks tuning-speed` compares these settings with them at equal trials.
SEARCH_SETTINGS = {"population_size": 512, "genetic_num_iters": 4}
