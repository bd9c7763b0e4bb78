"""The GPU figures: ResNet-50 and BERT-base in fp16 at batch 1 and a large batch, tvmopt (untuned,
and with the kernel library's tactics and TIR records measured into --db) against torch.compile.

    python -m benchmarks gpu --work /tmp/gpu                              # every step, model
    python -m benchmarks gpu --work /tmp/gpu --steps export tactics       # one call's worth
    python -m benchmarks gpu --work /tmp/gpu --steps compare --models resnet50_b64 \\
        --torch-compile-modes reduce-overhead

Steps, in order: `export` the peer models of benchmarks.models into --work (once; seeded, so a
database stays valid for them), `tactics` measures each model's kernel-library tactics into --db
(`tvmopt tune --trials 0`: TIR records come from the database as it is), `compare` runs the
compare suite per model (its JSON goes to --output-dir), `profile` builds without CUDA graphs and
keeps `tvmopt profile` and `tvmopt inspect` beside the summary. A long TIR tune does not belong in
one call: see `python -m benchmarks gpu-host --help` for a tune that outlives a time-limited call.
The summary (gpu_DATE.json) lists what each step produced.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .. import compare, record

SUITE = "gpu"
# name: (factory in benchmarks.models, batch, tvmopt layout, timed calls)
MODELS = {"resnet50": ("resnet50", 1, "NHWC", 100), "bert_base": ("bert_base", 1, "NCHW", 100),
          "resnet50_b64": ("resnet50", 64, "NHWC", 30),
          "bert_base_b32": ("bert_base", 32, "NCHW", 30)}
STEPS = ("export", "tactics", "compare", "profile")
FP16 = ["--target", "cuda", "--precision", "fp16"]


def tvmopt_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tvmopt", *args], text=True, **kwargs)


def export(work: Path, name: str) -> None:
    factory, batch, _, _ = MODELS[name]
    path = work / f"{name}.onnx"
    if not path.exists():
        compare.main(["--torch", f"benchmarks.models:{factory}", "--batch", str(batch),
                      "--export", str(path)])


def tactics(work: Path, name: str, db: Path) -> dict:
    """The tune report of a tactics-only tune (the kernel library's layers, no TIR search)."""
    layout = MODELS[name][2]
    done = tvmopt_cli("tune", str(work / f"{name}.onnx"), *FP16, "--layout", layout, "--db",
                      str(db), "--trials", "0", "--json", capture_output=True, check=True)
    (work / f"tune_{name}.log").write_text(done.stderr)
    return json.loads(done.stdout)


def compare_args(args, name: str, out: Path) -> list[str]:
    factory, batch, layout, iterations = MODELS[name]
    modes = args.torch_compile_modes or (
        ["reduce-overhead"] + (["max-autotune-no-cudagraphs"] if batch > 1 else []))
    return [str(args.work / f"{name}.onnx"), "--torch", f"benchmarks.models:{factory}",
            "--batch", str(batch), "--device", "cuda", "--precision", "fp16", "--layout", layout,
            "--kernels", *args.kernels, "--iterations", str(iterations),
            *(["--db", str(args.db)] if args.db.exists() else []),
            "--torch-compile-modes", *modes, "-o", str(out)]


def profile(args, name: str) -> list[str]:
    """`tvmopt profile` and `tvmopt inspect` of a build without CUDA graphs (a graph replays its
    kernels as one launch, which profile cannot split), saved beside the summary."""
    lib = args.work / f"profiled_{name}.so"
    tvmopt_cli("build", str(args.work / f"{name}.onnx"), *FP16, "--layout", MODELS[name][2],
               "--db", str(args.db), "-o", str(lib), "--no-cuda-graph", check=True)
    files = []
    for command in ("profile", "inspect"):
        out = args.output_dir / record.default_path(command, name, "cuda_fp16").with_suffix(
            ".txt").name
        out.write_text(tvmopt_cli(command, str(lib), capture_output=True, check=True).stdout)
        files.append(out.name)
    return files


def compare_row(name: str, doc: dict) -> list[str]:
    rows = {r["runtime"]: r["call_sync_p50_ms"] for r in doc["results"]["rows"]
            if r["call_sync_p50_ms"] is not None}
    ours = [v for k, v in rows.items() if k.startswith("tvmopt")]
    torch = [v for k, v in rows.items() if k.startswith("torch.compile")]
    return [name, "; ".join(f"{k} {v:.4f} ms" for k, v in rows.items()),
            f"{min(ours) / min(torch):.2f}x" if ours and torch else "-"]


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--work", type=Path, required=True,
                   help="directory for the exported models, builds and logs (kept between calls)")
    p.add_argument("--db", type=Path, default=None,
                   help="tuning database the tactics go into and the tuned rows read "
                        "[default: WORK/gpu.db]")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--kernels", nargs="+", choices=["all", "tvm"], default=["all"],
                   help="compare's tvmopt rows per kernel choice [default: all]")
    p.add_argument("--torch-compile-modes", nargs="+", metavar="MODE", default=None,
                   help="[default: reduce-overhead, and max-autotune-no-cudagraphs at a large "
                        "batch (over 6 minutes of autotuning for ResNet-50 at batch 64)]")
    p.add_argument("--output-dir", type=Path, default=record.RESULTS,
                   help="where compare results, profiles and the summary go [default: %(default)s]")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="the summary JSON [default: OUTPUT_DIR/gpu_DATE.json]; none is written "
                        "when only `export` ran")
    args = p.parse_args(argv)
    args.db = args.db or args.work / "gpu.db"
    args.work.mkdir(parents=True, exist_ok=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    tactic_rows, compare_rows, files = [], [], []
    for name in args.models:
        if "export" in args.steps:
            export(args.work, name)
        if "tactics" in args.steps:
            report = tactics(args.work, name, args.db)
            tactic_rows.append([name, report.get("tactics_measured", 0),
                                f"{report['seconds'].get('tactics', 0):.1f}",
                                f"{report['elapsed_s']:.1f}"])
        if "compare" in args.steps:
            out = args.output_dir / record.default_path("compare", name, "cuda", "fp16").name
            compare_rows.append(compare_row(name, compare.main(compare_args(args, name, out))))
            files.append(out.name)
        if "profile" in args.steps:
            files += profile(args, name)
    if not (tactic_rows or files):
        print("exported only: nothing measured, no summary written")
        return {}
    doc = record.new(SUITE, argv, device="gpu",
                     title="GPU: tvmopt against torch.compile, fp16, with measured tactics")
    doc["results"] = {"database": str(args.db), "steps": args.steps, "models": args.models}
    doc["files"] = files
    if tactic_rows:
        doc["sections"].append({"heading": "Tactic measurement (`tvmopt tune --trials 0`)",
                                "table": record.table(["model", "tactics measured",
                                                       "measuring s", "tune s"], tactic_rows)})
    if compare_rows:
        doc["sections"].append({"heading": "Against torch.compile (one compare run per model)",
                                "table": record.table(["model", "call+sync p50 per runtime",
                                                       "best tvmopt / best torch.compile"],
                                                      compare_rows)})
    record.write(doc, args.output or args.output_dir / record.default_path(SUITE).name)
    return doc
