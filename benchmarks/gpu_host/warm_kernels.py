"""Compile every kernel-library instance the peer models' layers can run into the kernel cache,
16 at a time, so that a tactic tune afterwards only measures (a cold cache costs ~50 s of one core
per instance, more than a time-limited call has). Needs nvcc and CUTLASS's headers, not a GPU:
a cache filled on another machine with the same versions can be carried (`gpu-host setup`).

    python -m benchmarks gpu --work WORK --steps export
    python -m benchmarks warm-kernels --work WORK [--models resnet50 bert_base ...]

Each layer's op lists its catalogue tactics and writes their instances.
"""

from __future__ import annotations

from pathlib import Path

from .. import record
from ..gpu.session import MODELS

SUITE = "warm-kernels"
INTERNAL_API = ("tvmopt.prepare", "tvmopt.kernels")


def run(work: Path, models: list[str]) -> tuple[int, dict]:
    """(instances compiled or found in the cache, {symbol: why nvcc rejected it})."""
    import logging
    from tvmopt import prepare, targets
    from tvmopt.kernels import library
    from tvmopt.kernels.library import nvcc
    from tvmopt.kernels.library.instance import timer
    logging.basicConfig(level=logging.INFO)
    specs = set()
    for m in models:
        options = prepare.ModelOptions(precision="fp16", layout="NHWC" if "resnet" in m else "NCHW")
        mod = prepare.prepare(f"{work}/{m}.onnx", targets.resolve("cuda"), options).mod
        specs |= {l.instance(t, "sm_90a") for l in library.layers(mod).values() for t in l.tactics}
    print("instances:", len(specs))
    nvcc.compile_all({i.symbol: i.source for i in (*specs, timer())},
                     "sm_90a", failed=(failed := {}))
    print("nvcc rejected:", failed or "none")
    return len(specs), failed


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--work", type=Path, required=True, help="directory holding MODEL.onnx files")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="result JSON [default: benchmarks/results/warm_kernels_DATE.json]")
    args = p.parse_args(argv)
    instances, failed = run(args.work, args.models)
    doc = record.new(SUITE, argv, device="gpu", title="Kernel cache filled for the peer models")
    doc["results"] = {"models": args.models, "instances": instances, "nvcc_rejected": failed}
    doc["sections"] = [{"table": record.table(["models", "instances", "rejected by nvcc"],
                                              [[", ".join(args.models), instances,
                                                ", ".join(failed) or "none"]])}]
    record.write(doc, args.output or record.default_path(SUITE))
    return doc
