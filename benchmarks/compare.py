"""One model, the same inputs, every runtime in one process: tvmopt against its peers.

    python benchmarks/compare.py MODEL.onnx [--device cpu|cuda] [--db PATH]
    python benchmarks/compare.py --torch torchvision.models:resnet18 --input-shape 1x3x224x224 \\
        --device cuda --precision fp16 --layout NHWC --db gpu.db
    python benchmarks/compare.py --torch torchvision.models:resnet18 --input-shape 1x3x224x224 \\
        --export resnet18.onnx     # the same model as a file, e.g. to tune it first
    python benchmarks/compare.py --torch benchmarks/peer_models.py:bert_base --device cuda \\
        --precision fp16           # a factory that brings its own inputs (ids and mask)

Rows: tvmopt untuned (TVM's default schedules) and tuned (records from --db; `--tune-trials N`
tunes into it first), ONNX Runtime (CUDA when onnxruntime-gpu is installed, else CPU) and, with
`--torch MODULE:FACTORY` (or FILE.py:FACTORY), PyTorch eager and `torch.compile` on the very module
the ONNX file is exported from. Each row is timed per call after warmup, with its inputs already
on the device: tvmopt by TVM's time evaluator (CUDA events on a GPU), PyTorch on a GPU by CUDA
events, everything else by a steady clock after synchronising. Every row's outputs are checked
against ONNX Runtime fp32. Prints a table of p50 latency and ratios and writes JSON (device,
versions, date) to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def load_factory(spec: str):
    """`package.module:fn` or `path/to/file.py:fn` -> fn."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        sys.exit(f"--torch {spec!r}: expected MODULE:FACTORY or FILE.py:FACTORY")
    if where.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def export_torch(net, example: dict, path: Path) -> None:
    import torch

    with warnings.catch_warnings():  # the TorchScript exporter warns that it is the legacy one
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, tuple(example.values()), str(path), input_names=list(example),
                          output_names=["output"], opset_version=17, dynamo=False)


def torch_model(spec: str, input_shape: str | None, batch: int | None = None):
    """(module in eval mode, {input name: example tensor}) from a factory that returns a module
    (its one input shaped by --input-shape) or a (module, example inputs) pair; `batch` goes to
    a factory that takes it."""
    import torch

    torch.manual_seed(0)
    made = load_factory(spec)(**({"batch": batch} if batch else {}))
    if isinstance(made, tuple):
        net, example = made
    else:
        if not input_shape:
            sys.exit(f"--torch {spec}: this factory returns a bare module; give --input-shape")
        net, example = made, {"input": torch.randn(*(int(d) for d in input_shape.split("x")))}
    return net.eval(), example


def p50_ms(samples_s: list[float]) -> float:
    return statistics.median(samples_s) * 1e3


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


def worst_error(outputs: dict, reference: dict) -> float:
    """The largest relative error over the outputs, as `tvmopt build --check` measures it."""
    from tvmopt import runtime

    return max(m.max_rel for m in runtime.compare(outputs, reference))


def tvmopt_rows(args, model_path: Path, inputs: dict, reference: dict, tmp: Path) -> list[dict]:
    from tvmopt import bench, build, runtime, targets, tuning
    from tvmopt.database import default_path, open_database
    from tvmopt.prepare import ModelOptions

    preset = targets.resolve("cuda" if args.device == "cuda" else "host")
    options = ModelOptions(input_shapes=args.shapes, precision=args.precision, layout=args.layout,
                           kernels=args.kernels[0])
    tuned_db = args.db or (default_path()[0] if args.tune_trials else None)
    if args.tune_trials:
        tuning.tune(model_path, preset, db_path=tuned_db, model_options=options,
                    options=tuning.TuneOptions(trials=args.tune_trials))
    rows = []
    open_database(tmp / "empty.db").close()
    builds = [("tvmopt untuned", tmp / "empty.db", "an empty database")]
    if tuned_db is not None:
        builds.append(("tvmopt tuned", tuned_db, tuned_db))
    builds = [(label + ("" if kernels == "all" else " (TVM kernels only)"), db, source, kernels)
              for label, db, source in builds for kernels in args.kernels]
    for label, db, source, kernels in builds:
        start = time.perf_counter()
        result = build.build(model_path, preset, tmp / f"{label.split()[1]}_{kernels}.so",
                             db_path=db, options=replace(options, kernels=kernels))
        build_s = time.perf_counter() - start
        report = bench.bench(result.path, bench.BenchOptions(warmup=args.warmup,
                                                             iterations=args.iterations))
        model = runtime.load(result.path)
        outputs = model(inputs)
        rows.append({
            "runtime": label, "p50_ms": report.latency_ms.p50, "p90_ms": report.latency_ms.p90,
            "max_rel_err": worst_error(outputs, reference),
            "detail": f"{preset.name}, {args.precision}, {len(result.tuned)}/{len(result.tasks)} "
                      f"tasks tuned from {source}, CV {report.latency_ms.cv:.1%}, "
                      f"{len(result.manifest['library_kernels'])} library layers, "
                      f"built in {build_s:.0f} s",
            "library_tactics": {k: v["tactic"] for k, v in result.manifest["library_kernels"].items()},
        })
    return rows


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
    return {"runtime": f"ONNX Runtime ({used.replace('ExecutionProvider', '')})",
            "p50_ms": p50_ms(samples), "p90_ms": float(np.percentile(samples, 90)) * 1e3,
            "max_rel_err": worst_error(outputs, reference),
            "detail": f"onnxruntime {ort.__version__}"}


def torch_rows(args, net, inputs: dict, reference: dict) -> list[dict]:
    import torch

    device = torch.device(args.device)
    dtype = torch.float16 if args.precision == "fp16" else torch.float32
    net = net.to(device=device, dtype=dtype)
    memory_format = torch.channels_last if args.layout == "NHWC" else torch.contiguous_format
    net = net.to(memory_format=memory_format)

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
            if args.device == "cuda":
                samples = time_cuda_events(call, warmup=args.warmup, iterations=args.iterations)
            else:
                samples = time_calls(call, warmup=args.warmup, iterations=args.iterations)
            out = fn(*xs).float().cpu().numpy()
        detail = f"torch {torch.__version__}, {args.precision}, {args.layout}"
        if compile_mode is not None:
            detail += f", mode={compile_mode}, first call (compile) {compile_s:.1f} s"
        rows.append({"runtime": label, "p50_ms": p50_ms(samples),
                     "p90_ms": float(np.percentile(samples, 90)) * 1e3,
                     "max_rel_err": worst_error({output_name: out}, reference), "detail": detail})
    return rows


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("tvmopt", "apache-tvm", "onnxruntime", "onnxruntime-gpu", "torch", "numpy"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path, help="ONNX model (or give --torch)")
    parser.add_argument("--torch", dest="torch_factory", metavar="MODULE:FACTORY",
                        help="PyTorch module factory; the ONNX file is exported from it")
    parser.add_argument("--input-shape", default=None, metavar="DIMS",
                        help="input shape for a --torch factory that returns a bare module, "
                             "e.g. 1x3x224x224")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS",
                        help="fix a dynamic input of an ONNX model, e.g. input_ids=1x128 "
                             "(repeat for each input)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size, for a --torch factory that takes `batch` "
                             "(benchmarks/peer_models.py's do) [default: the factory's]")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--db", type=Path, default=None,
                        help="tuning database for a tuned row [default: no tuned row]")
    parser.add_argument("--torch-compile-modes", nargs="*", metavar="MODE",
                        help="torch.compile modes to measure [default: reduce-overhead (CUDA "
                             "graphs, the batch-1 peer) on cuda, default on cpu]")
    parser.add_argument("--tune-trials", type=int, default=0, help="tune into --db first")
    parser.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    parser.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW")
    parser.add_argument("--kernels", nargs="+", choices=["all", "tvm"], default=["all"],
                        help="tvmopt rows per kernel choice (all: with the kernel library)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--export", type=Path, default=None, metavar="PATH",
                        help="only export the --torch module (seeded, so a later run with the "
                             "same factory has the same weights) to PATH and exit")
    parser.add_argument("-o", "--output", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)
    if args.model is None and args.torch_factory is None:
        parser.error("give MODEL.onnx or --torch MODULE:FACTORY")
    try:
        args.shapes = {name: tuple(int(d) for d in dims.split("x"))
                       for name, dims in (s.split("=", 1) for s in args.shape)}
    except ValueError:
        parser.error("--shape takes NAME=DIMS, e.g. input_ids=1x128")

    import tvm

    from tvmopt import runtime
    from tvmopt.bench import device_name
    from tvmopt.frontend import load_model, resolve_inputs

    with tempfile.TemporaryDirectory(prefix="tvmopt-compare-") as tmp:
        tmp = Path(tmp)
        net = example = None
        if args.torch_factory:
            net, example = torch_model(args.torch_factory, args.input_shape, args.batch)
            if args.export is not None:
                export_torch(net, example, args.export)
                print(f"exported {args.export}")
                return {}
            if args.model is None:
                args.model = tmp / "model.onnx"
                export_torch(net, example, args.model)
        if example is not None:  # the factory's own inputs: token ids in range, a real mask
            inputs = {name: t.numpy() for name, t in example.items()}
        else:
            inputs = runtime.random_inputs(resolve_inputs(load_model(args.model), args.shapes),
                                           seed=0)
        reference = runtime.onnxruntime_outputs(args.model, inputs)
        rows = tvmopt_rows(args, args.model, inputs, reference, tmp)
        rows.append(onnxruntime_row(args, args.model, inputs, reference))
        if net is not None:
            rows += torch_rows(args, net, inputs, reference)

    baseline = next(r for r in rows if r["runtime"].startswith("ONNX Runtime"))["p50_ms"]
    for row in rows:
        row["speedup_vs_onnxruntime"] = baseline / row["p50_ms"]
    result = {
        "model": args.torch_factory or args.model.name,
        "device": device_name(tvm.cuda(0) if args.device == "cuda" else tvm.cpu(0)),
        "precision": args.precision, "layout": args.layout, "iterations": args.iterations,
        "batch": args.batch or 1,
        "date": datetime.date.today().isoformat(), "versions": versions(),
        "command": "python benchmarks/compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "rows": rows,
    }
    name_w = max(len(r["runtime"]) for r in rows)
    print(f"{result['model']} on {result['device']} ({args.precision}, {args.layout})")
    print(f"{'runtime':<{name_w}}  {'p50 ms':>9}  {'p90 ms':>9}  {'vs ORT':>7}  {'max rel err':>11}  detail")
    for r in rows:
        print(f"{r['runtime']:<{name_w}}  {r['p50_ms']:9.4f}  {r['p90_ms']:9.4f}  "
              f"{r['speedup_vs_onnxruntime']:6.2f}x  {r['max_rel_err']:11.2e}  {r['detail']}")
    model_name = (args.torch_factory.rpartition(":")[2] if args.torch_factory
                  else args.model.stem) + (f"_b{args.batch}" if args.batch else "")
    out = args.output or RESULTS / (
        f"compare_{model_name}_{args.device}_{args.precision}_{result['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
