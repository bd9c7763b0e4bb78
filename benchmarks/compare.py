"""One model, the same inputs, every runtime in one process: tvmopt against its peers.

    python -m benchmarks compare MODEL.onnx [--device cpu|cuda] [--db PATH]
    python -m benchmarks compare --torch torchvision.models:resnet18 --input-shape 1x3x224x224 \\
        --device cuda --precision fp16 --layout NHWC --db gpu.db
    python -m benchmarks compare --torch benchmarks.models:bert_base --device cuda --precision fp16
    python -m benchmarks compare --torch benchmarks.models:resnet50 --export resnet50.onnx

Rows: tvmopt untuned (an empty database) and tuned (records from --db; `--tune-trials N` runs
`tvmopt tune` into it first), ONNX Runtime (CUDA when onnxruntime-gpu is installed, else CPU)
and, with `--torch MODULE:FACTORY` (or FILE.py:FACTORY), PyTorch eager and `torch.compile` on the
very module the ONNX file is exported from. A peer is only a fair baseline in the same process on
the same inputs, each timed per call after warmup with its inputs already on the device: tvmopt
by TVM's time evaluator (`tvmopt.bench`, CUDA events on a GPU), PyTorch on a GPU by CUDA events,
everything else by a steady clock after synchronising. Every row's outputs are checked against
ONNX Runtime fp32, so a fast wrong answer shows as one.
"""

from __future__ import annotations

# tvmopt is imported where it is used, so that `--help` answers at once.

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import models, record
from .render import markdown_table

SUITE = "compare"


def time_calls(fn, *, sync=lambda: None, warmup: int, iterations: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return samples


def time_cuda_events(fn, *, warmup: int, iterations: int) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return samples


def _row(label: str, samples_s: list[float], outputs: dict, reference: dict, detail: str) -> dict:
    return {"runtime": label, "p50_ms": statistics.median(samples_s) * 1e3,
            "p90_ms": float(np.percentile(samples_s, 90)) * 1e3,
            "max_rel_err": worst_error(outputs, reference), "detail": detail}


def worst_error(outputs: dict, reference: dict) -> float:
    """The largest relative error over the outputs, as `tvmopt build --check` measures it."""
    from tvmopt import runtime

    return max(m.max_rel for m in runtime.compare(outputs, reference))


def tune(args, model_path: Path, preset: str) -> None:
    """`tvmopt tune` into --db, as a user would run it (the tuner's own process and defaults)."""
    shapes = [f"--input-shape={n}={'x'.join(map(str, d))}" for n, d in args.shapes.items()]
    subprocess.run([sys.executable, "-m", "tvmopt", "tune", str(model_path), "--target", preset,
                    "--db", str(args.db), "--trials", str(args.tune_trials), "--precision",
                    args.precision, "--layout", args.layout, "--kernels", args.kernels[0],
                    *shapes], check=True)


def tvmopt_builds(args, model_path: Path, tmp: Path) -> list[tuple]:
    """(label, BuildResult, seconds) untuned (an empty database) and, with --db, tuned; per
    --kernels."""
    from tvmopt import build, targets
    from tvmopt.prepare import ModelOptions

    preset = targets.resolve("cuda" if args.device == "cuda" else "host")
    if args.tune_trials:
        tune(args, model_path, preset.name)
    empty = tmp / "empty.db"
    empty.touch()  # a zero-byte file is SQLite's empty database: no records
    sources = [("tvmopt untuned", empty)] + ([("tvmopt tuned", args.db)] if args.db else [])
    options = ModelOptions(input_shapes=args.shapes, precision=args.precision, layout=args.layout)
    builds = []
    for label, db in sources:
        for kernels in args.kernels:
            start = time.perf_counter()
            result = build.build(model_path, preset, tmp / f"{label.split()[1]}_{kernels}.so",
                                 db_path=db, options=replace(options, kernels=kernels))
            builds.append((label + ("" if kernels == "all" else " (TVM kernels only)"), result,
                           time.perf_counter() - start))
    return builds


def tvmopt_row(args, label: str, result, build_s: float, inputs: dict, reference: dict) -> dict:
    from tvmopt import bench, runtime

    report = bench.bench(result.path, bench.BenchOptions(warmup=args.warmup,
                                                         iterations=args.iterations))
    library = result.manifest["library_kernels"]
    return {"runtime": label, "p50_ms": report.latency_ms.p50, "p90_ms": report.latency_ms.p90,
            "max_rel_err": worst_error(runtime.load(result.path)(inputs), reference),
            "detail": f"{result.manifest['preset']}, {args.precision}, {len(result.tuned)}/"
                      f"{len(result.tasks)} tasks tuned, CV {report.latency_ms.cv:.1%}, "
                      f"{len(library)} library layers, built in {build_s:.0f} s",
            "library_tactics": {k: v["tactic"] for k, v in library.items()}}


def onnxruntime_row(args, model_path: Path, inputs: dict, reference: dict) -> dict:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if args.device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(model_path), providers=providers)
    used = session.get_providers()[0]
    if used == "CUDAExecutionProvider":  # inputs on the GPU, as the other GPU rows have them
        binding = session.io_binding()
        for name, value in inputs.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda")
        run = lambda: session.run_with_iobinding(binding)  # noqa: E731
    else:
        run = lambda: session.run(None, inputs)  # noqa: E731
    samples = time_calls(run, warmup=args.warmup, iterations=args.iterations)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    return _row(f"ONNX Runtime ({used.replace('ExecutionProvider', '')})", samples, outputs,
                reference, f"onnxruntime {ort.__version__}")


def torch_rows(args, net, inputs: dict, reference: dict) -> list[dict]:
    import torch

    device = torch.device(args.device)
    dtype = torch.float16 if args.precision == "fp16" else torch.float32
    memory_format = torch.channels_last if args.layout == "NHWC" else torch.contiguous_format
    net = net.to(device=device, dtype=dtype).to(memory_format=memory_format)

    def tensor(value):
        t = torch.from_numpy(value).to(device)
        if t.is_floating_point():
            t = t.to(dtype)
        return t.contiguous(memory_format=memory_format) if t.dim() == 4 else t

    xs = [tensor(v) for v in inputs.values()]
    (output_name,) = reference
    rows = []
    modes = args.torch_compile_modes or (["reduce-overhead"] if args.device == "cuda"
                                         else ["default"])
    for label, fn, compile_mode in (("PyTorch eager", net, None),
                                    *((f"torch.compile {m}", None, m) for m in modes)):
        compile_s = None
        if fn is None:
            torch._dynamo.reset()
            fn = torch.compile(net, mode=compile_mode)
            start = time.perf_counter()
            with torch.inference_mode():
                fn(*xs)
            compile_s = time.perf_counter() - start
        with torch.inference_mode():
            call = lambda: fn(*xs)  # noqa: E731
            timer = time_cuda_events if args.device == "cuda" else time_calls
            samples = timer(call, warmup=args.warmup, iterations=args.iterations)
            out = fn(*xs).float().cpu().numpy()
        detail = f"torch {torch.__version__}, {args.precision}, {args.layout}"
        if compile_mode is not None:
            detail += f", mode={compile_mode}, first call (compile) {compile_s:.1f} s"
        rows.append(_row(label, samples, {output_name: out}, reference, detail))
    return rows


def rows_table(rows: list[dict]) -> dict:
    """The table a reader compares runtimes by; also used for converted older results."""
    return record.table(
        ["runtime", "p50 ms", "p90 ms", "vs ONNX Runtime", "max rel err vs ORT fp32", "detail"],
        [[r["runtime"], f"{r['p50_ms']:.4f}", f"{r['p90_ms']:.4f}",
          f"{r['speedup_vs_onnxruntime']:.2f}x", f"{r['max_rel_err']:.1e}", r["detail"]]
         for r in rows])


def parser() -> argparse.ArgumentParser:
    p = record.parser(SUITE, __doc__)
    p.add_argument("model", nargs="?", type=Path, help="ONNX model (or give --torch)")
    p.add_argument("--torch", dest="torch_factory", metavar="MODULE:FACTORY",
                   help="PyTorch module factory (e.g. benchmarks.models:small_resnet); the ONNX "
                        "file is exported from it unless MODEL is given")
    p.add_argument("--input-shape", default=None, metavar="DIMS",
                   help="input shape for a --torch factory that returns a bare module, "
                        "e.g. 1x3x224x224")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS",
                   help="fix a dynamic input of an ONNX model, e.g. input_ids=1x128 (repeat)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size, for a --torch factory that takes `batch` (benchmarks.models' "
                        "resnet50 and bert_base do) [default: the factory's]")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--db", type=Path, default=None,
                   help="tuning database for a tuned row [default: no tuned row]")
    p.add_argument("--tune-trials", type=int, default=0, help="`tvmopt tune` into --db first")
    p.add_argument("--torch-compile-modes", nargs="*", metavar="MODE",
                   help="torch.compile modes to measure [default: reduce-overhead (CUDA graphs, "
                        "the batch-1 peer) on cuda, default on cpu]")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW")
    p.add_argument("--kernels", nargs="+", choices=["all", "tvm"], default=["all"],
                   help="tvmopt rows per kernel choice (all: with the kernel library)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--export", type=Path, default=None, metavar="PATH",
                   help="only export the --torch module (seeded: a later run with the same "
                        "factory has the same weights) to PATH and exit")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="result JSON [default: benchmarks/results/compare_MODEL_DEVICE_"
                        "PRECISION_DATE.json]; the Markdown is written beside it")
    return p


def main(argv: list[str]) -> dict:
    p = parser()
    args = p.parse_args(argv)
    if args.model is None and args.torch_factory is None:
        p.error("give MODEL.onnx or --torch MODULE:FACTORY")
    if args.tune_trials and args.db is None:
        p.error("--tune-trials tunes into --db: name the database")
    try:
        args.shapes = {name: tuple(int(d) for d in dims.split("x"))
                       for name, dims in (s.split("=", 1) for s in args.shape)}
    except ValueError:
        p.error("--shape takes NAME=DIMS, e.g. input_ids=1x128")
    from tvmopt import runtime

    with tempfile.TemporaryDirectory(prefix="tvmopt-compare-") as tmp:
        tmp = Path(tmp)
        net = example = None
        if args.torch_factory:
            net, example = models.torch_model(args.torch_factory, args.input_shape, args.batch)
            if args.export is not None:
                models.export_torch(net, example, args.export)
                print(f"exported {args.export}")
                return {}
            if args.model is None:
                args.model = tmp / "model.onnx"
                models.export_torch(net, example, args.model)
        builds = tvmopt_builds(args, args.model, tmp)
        if example is not None:  # the factory's own inputs: token ids in range, a real mask
            inputs = {name: t.numpy() for name, t in example.items()}
        else:  # the built model's input specs: the ONNX inputs with --shape applied
            inputs = runtime.random_inputs(runtime.load(builds[0][1].path).inputs, seed=0)
        reference = runtime.onnxruntime_outputs(args.model, inputs)
        rows = [tvmopt_row(args, *b, inputs, reference) for b in builds]
        rows.append(onnxruntime_row(args, args.model, inputs, reference))
        if net is not None:
            rows += torch_rows(args, net, inputs, reference)
    return report(args, argv, rows)


def report(args, argv: list[str], rows: list[dict]) -> dict:
    baseline = next(r for r in rows if r["runtime"].startswith("ONNX Runtime"))["p50_ms"]
    for row in rows:
        row["speedup_vs_onnxruntime"] = baseline / row["p50_ms"]
    model = args.torch_factory or args.model.name
    doc = record.new(SUITE, argv, device="gpu" if args.device == "cuda" else "cpu",
                     title=f"{model}: tvmopt against its peers ({args.precision}, {args.layout}, "
                           f"batch {args.batch or 1}, {args.device})")
    doc["results"] = {"model": model, "precision": args.precision, "layout": args.layout,
                      "batch": args.batch or 1, "warmup": args.warmup,
                      "iterations": args.iterations, "rows": rows}
    doc["sections"] = [{"notes": f"p50 and p90 of {args.iterations} timed calls after "
                                 f"{args.warmup} warmup calls, inputs on the device; one run.",
                        "table": rows_table(rows)}]
    print("\n".join(markdown_table(doc["sections"][0]["table"])))
    name = (args.torch_factory.rpartition(":")[2] if args.torch_factory else args.model.stem)
    name += f"_b{args.batch}" if args.batch else ""
    record.write(doc, args.output or record.default_path(SUITE, name, args.device, args.precision))
    return doc
