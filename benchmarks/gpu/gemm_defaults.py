"""DLight's default tensor-core GEMM schedules against tvmopt's, untuned, timed back to back.

    python -m benchmarks gpu --work WORK --steps export --models resnet50 bert_base
    python -m benchmarks gemm-defaults --work WORK

DLight tiles every tensor-core GEMM 128x128 and leaves those with a dimension <= 64 on CUDA cores;
tvmopt's default (`tvmopt/kernels/tensorcore_gemm.py`) tiles each GEMM to give every SM a block.
This is the evidence for that rule: both builds untuned (an empty database), without CUDA graphs
so that launches do not hide the kernels, on WORK/resnet50.onnx (NHWC) and WORK/bert_base.onnx.
"""

from __future__ import annotations

# tvmopt is imported where it is used, so that `--help` answers at once.

import tempfile
from pathlib import Path

from .. import record

SUITE = "gemm-defaults"
# Switching tvmopt's default schedule off is not a build option.
INTERNAL_API = ("tvmopt.kernels.tensorcore_gemm",)
LAYOUTS = {"resnet50": "NHWC", "bert_base": "NCHW"}


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--work", type=Path, required=True,
                   help="directory holding resnet50.onnx and bert_base.onnx")
    p.add_argument("--models", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS))
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="result JSON [default: benchmarks/results/gemm_defaults_DATE.json]")
    args = p.parse_args(argv)
    from tvmopt import bench, build, targets
    from tvmopt.kernels.tensorcore_gemm import TensorCoreGemm
    from tvmopt.prepare import ModelOptions

    keep = TensorCoreGemm.apply
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.db"
        empty.touch()  # SQLite's empty database: untuned
        for name in args.models:
            p50 = {}
            for label, rule in (("DLight", lambda *a: None), ("tvmopt", keep)):
                TensorCoreGemm.apply = rule
                try:
                    lib = build.build(args.work / f"{name}.onnx", targets.resolve("cuda"),
                                      Path(tmp) / f"{name}_{label}.so", db_path=empty,
                                      cuda_graph=False, options=ModelOptions(
                                          precision="fp16", layout=LAYOUTS[name]))
                finally:
                    TensorCoreGemm.apply = keep
                report = bench.bench(lib.path, bench.BenchOptions(warmup=20, iterations=200))
                p50[label] = report.latency_ms.p50
            rows.append({"model": name, "layout": LAYOUTS[name], "dlight_p50_ms": p50["DLight"],
                         "tvmopt_p50_ms": p50["tvmopt"]})
            print(rows[-1], flush=True)
    doc = record.new(SUITE, argv, device="gpu",
                     title="Default tensor-core schedules: DLight against tvmopt, untuned, fp16")
    doc["results"] = {"rows": rows}
    doc["sections"] = [{
        "notes": "p50 of 200 calls after 20 warmup calls, no CUDA graph, no tuned records.",
        "table": record.table(["model", "DLight default schedules", "tvmopt default schedules"],
                              [[r["model"], f"{r['dlight_p50_ms']:.3f} ms",
                                f"{r['tvmopt_p50_ms']:.3f} ms "
                                f"({r['dlight_p50_ms'] / r['tvmopt_p50_ms']:.1f}x)"]
                               for r in rows])}]
    record.write(doc, args.output or record.default_path(SUITE))
    return doc
