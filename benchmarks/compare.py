"""One model, the same inputs, every runtime in one process: tvmopt against its peers.

    python -m benchmarks compare MODEL.onnx [--device cpu|cuda] [--db PATH]
    python -m benchmarks compare --torch torchvision.models:resnet18 --input-shape 1x3x224x224 \\
        --device cuda --precision fp16 --layout NHWC --db gpu.db
    python -m benchmarks compare --torch benchmarks.models:gpt2_small --device cuda --precision fp16
    python -m benchmarks compare --torch benchmarks.models:resnet50 --export resnet50.onnx

Rows: tvmopt untuned (an empty database) and tuned (records from --db; `--tune-trials N` runs
`tvmopt tune` into it first), ONNX Runtime and, with `--torch MODULE:FACTORY` (or
FILE.py:FACTORY), PyTorch eager and `torch.compile` on the very module the ONNX file is exported
from (a transformer of benchmarks.models runs SDPA attention there, and is exported with eager
attention). On CUDA, ONNX Runtime runs as its users run it: the file through
onnxruntime.transformers' optimize_model where the factory names its model type, converted to
fp16 with keep_io_types under --precision fp16, on the CUDA provider with I/O bound on the device
once, with a CUDA graph and without; where a step fails the row falls back past it and says so.

A peer is only a fair baseline in the same process on the same inputs, already on the device,
after --warmup calls. Every row is timed two ways: call + sync, the host's wall clock of one call
and a device synchronisation (what a caller waits, launch overhead included), median and p90 of
--iterations; and pipelined, --pipelined calls back to back and one synchronisation (the device's
own time per call once the host runs ahead), the median of 3 such runs. Every row's outputs are
checked against ONNX Runtime fp32 on the CPU: within --tolerance (relative to the output's
largest magnitude), finite, and not degenerate (all zero, constant, or the same for every batch
item), so a fast wrong answer shows as one.
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
PIPELINED_RUNS = 3
TIMES = ("call_sync_p50_ms", "call_sync_p90_ms", "pipelined_ms")
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def time_calls(fn, *, sync, warmup: int, iterations: int) -> list[float]:
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


def time_pipelined(fn, *, sync, calls: int) -> float:
    """Seconds per call of `calls` calls issued back to back with one synchronisation at the end,
    the median of PIPELINED_RUNS runs."""
    runs = []
    for _ in range(PIPELINED_RUNS):
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        runs.append((time.perf_counter() - start) / calls)
    return statistics.median(runs)


def timings(args, call, sync, pipelined_call=None) -> dict:
    """Both timings of a row; `pipelined_call` where issuing without waiting needs another call."""
    samples = time_calls(call, sync=sync, warmup=args.warmup, iterations=args.iterations)
    return {"call_sync_p50_ms": statistics.median(samples) * 1e3,
            "call_sync_p90_ms": float(np.percentile(samples, 90)) * 1e3,
            "pipelined_ms": time_pipelined(pipelined_call or call, sync=sync,
                                           calls=args.pipelined) * 1e3}


def degenerate(value) -> str | None:
    """Why an output cannot tell a right model from a wrong one (all zero, one value everywhere,
    the same for every batch item: a head never initialised, inputs ignored), or None."""
    a = np.asarray(value, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return None  # NaN or inf everywhere: reported as such
    scale = float(np.max(np.abs(finite)))
    if scale == 0:
        return "all zero"
    if float(np.ptp(finite)) <= 1e-6 * scale:
        return "constant"
    if a.ndim > 1 and len(a) > 1 and np.all(np.abs(a - a[:1]) <= 1e-6 * scale):
        return "the same for every batch item"
    return None


def output_problems(outputs: dict, reference: dict, tolerance: float) -> list[str]:
    problems = []
    for name, value in outputs.items():
        if not np.all(np.isfinite(value)):
            problems.append(f"{name}: NaN or inf")
        why = degenerate(value)
        if why:
            problems.append(f"{name}: degenerate ({why})")
    error = worst_error(outputs, reference)
    if error > tolerance:
        problems.append(f"max rel err {error:.1e} > {tolerance:g}")
    return problems


def checked_row(args, label: str, timing: dict, outputs: dict, reference: dict,
                detail: str) -> dict:
    problems = output_problems(outputs, reference, args.tolerance)
    return {"runtime": label, **timing, "max_rel_err": worst_error(outputs, reference),
            "output_check": "; ".join(problems) or "ok", "detail": detail}


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def failed_row(label: str, error: BaseException) -> dict:
    print(f"{label}: failed: {first_line(error)}", file=sys.stderr)
    return {"runtime": label, **dict.fromkeys(TIMES), "max_rel_err": None,
            "output_check": "failed", "detail": f"failed: {first_line(error)}"}


def guarded(label: str, make) -> list[dict]:
    """`make()`'s rows, or one row saying how it failed: one runtime's failure is a row."""
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - any runtime's error, reported in its row
        return [failed_row(label, e)]


def worst_error(outputs: dict, reference: dict) -> float:
    """The largest relative error over the outputs, as `tvmopt build --check` measures it."""
    from tvmopt import runtime

    return max(m.max_rel for m in runtime.compare(outputs, reference))


def tune(args, model_path: Path, preset: str) -> float:
    """`tvmopt tune` into --db, as a user would run it (the tuner's own process and defaults):
    its wall-clock seconds."""
    start = time.perf_counter()
    shapes = [f"--input-shape={n}={'x'.join(map(str, d))}" for n, d in args.shapes.items()]
    subprocess.run([sys.executable, "-m", "tvmopt", "tune", str(model_path), "--target", preset,
                    "--db", str(args.db), "--trials", str(args.tune_trials), "--precision",
                    args.precision, "--layout", args.layout, "--kernels", args.kernels[0],
                    *shapes], check=True)
    return time.perf_counter() - start


def tvmopt_builds(args, model_path: Path, tmp: Path) -> list[tuple]:
    """(label, BuildResult or the exception that stopped it, seconds) untuned (an empty
    database) and, with --db, tuned; per --kernels."""
    from tvmopt import build, targets
    from tvmopt.prepare import ModelOptions

    preset = targets.resolve("cuda" if args.device == "cuda" else "host")
    if args.tune_trials is not None:
        args.tune_s = tune(args, model_path, preset.name)
    empty = tmp / "empty.db"
    empty.touch()  # a zero-byte file is SQLite's empty database: no records
    sources = [("tvmopt untuned", empty)] + ([("tvmopt tuned", args.db)] if args.db else [])
    options = ModelOptions(input_shapes=args.shapes, precision=args.precision, layout=args.layout)
    builds = []
    for label, db in sources:
        for kernels in args.kernels:
            start = time.perf_counter()
            try:
                result = build.build(model_path, preset, tmp / f"{label.split()[1]}_{kernels}.so",
                                     db_path=db, options=replace(options, kernels=kernels))
            except Exception as e:  # noqa: BLE001 - a failed build is its row
                result = e
            builds.append((label + ("" if kernels == "all" else " (TVM kernels only)"), result,
                           time.perf_counter() - start))
    return builds


def tvmopt_row(args, label: str, result, build_s: float, inputs: dict, reference: dict) -> dict:
    """The artifact through tvmopt's runtime, as an application calls it: the VM's inputs set on
    the device once, then `invoke_stateful` per call."""
    import tvm
    from tvmopt import runtime

    if isinstance(result, Exception):
        return failed_row(label, result)
    model = runtime.load(result.path)
    outputs = model(inputs)
    model.vm.set_input("main", *(tvm.runtime.tensor(np.ascontiguousarray(inputs[s.name]),
                                                    model.device) for s in model.inputs))
    timing = timings(args, lambda: model.vm.invoke_stateful("main"), model.device.sync)
    library = result.manifest["library_kernels"]
    graph = ", CUDA graph" if result.manifest.get("cuda_graph") else ""
    tuned = (f" after `tune --trials {args.tune_trials}` ({args.tune_s:.0f} s)"
             if label.startswith("tvmopt tuned") and args.tune_trials is not None else "")
    return {**checked_row(args, label, timing, outputs, reference,
                          f"{result.manifest['preset']}, {args.precision}{graph}, "
                          f"{len(result.tuned)}/{len(result.tasks)} tasks tuned, {len(library)} "
                          f"library layers{tuned}, built in {build_s:.0f} s"),
            "library_tactics": {k: v["tactic"] for k, v in library.items()}}


def onnxruntime_rows(args, net, model_path: Path, tmp: Path, inputs: dict,
                     reference: dict) -> list[dict]:
    import onnxruntime as ort

    version = f"onnxruntime {ort.__version__}"
    if args.device != "cuda" or "CUDAExecutionProvider" not in ort.get_available_providers():
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        run = lambda: session.run(None, inputs)  # noqa: E731
        timing = timings(args, run, lambda: None)
        outputs = dict(zip([o.name for o in session.get_outputs()], run()))
        if args.device == "cuda":
            version += " (no CUDA provider installed: pip install onnxruntime-gpu)"
        return [checked_row(args, "ONNX Runtime (CPU)", timing, outputs, reference, version)]
    notes: list[str] = []
    for path, name, how in onnxruntime_models(args, net, model_path, tmp, notes):
        rows = []
        for graph in (True, False):
            label = "ONNX Runtime (CUDA" + (", CUDA graph)" if graph else ")")
            try:
                rows.append(onnxruntime_cuda_row(args, label, path, graph, inputs, reference))
            except Exception as e:  # noqa: BLE001 - the next step down is tried
                notes.append(f"the {name} model{' with a CUDA graph' if graph else ''} failed "
                             f"({first_line(e)})")
        if rows:
            for row in rows:
                row["detail"] = "; ".join([version, how, row["detail"], *notes])
            return rows
    raise RuntimeError("; ".join(notes))


def onnxruntime_models(args, net, model_path: Path, tmp: Path, notes: list[str]):
    """(path, name, how it was made) for ONNX Runtime's CUDA rows, as its users prepare a model,
    best first: fused by optimize_model (where the model type is known) and converted to fp16
    under --precision fp16, then unfused, then the file as exported. A step that fails adds to
    `notes`."""
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    fusion = getattr(net, "onnxruntime_fusion", None)
    fp16 = args.precision == "fp16"
    steps = ([("fused", fusion)] if fusion else []) + ([("unfused", None)] if fp16 else [])
    if not fusion:
        notes.append("no fusions: the model type is unknown (a --torch factory names it)")
    for name, how in steps:
        try:
            if how is None:
                model, made = OnnxModel(onnx.load(str(model_path))), "no fusions"
            else:
                model, how = fused_model(model_path, how)
                made = (f"optimize_model({', '.join(f'{k}={v}' for k, v in how.items())}) fused "
                        f"{fused_ops(model.model)}")
            if fp16:
                model.convert_float_to_float16(keep_io_types=True)
                made += ", fp16 (keep_io_types)"
            path = tmp / f"ort_{name}" / "model.onnx"
            path.parent.mkdir()
            model.save_model_to_file(str(path), use_external_data_format=True)
        except Exception as e:  # noqa: BLE001 - the next step down is tried
            notes.append(f"the {name} model failed ({first_line(e)})")
            continue
        yield path, name, made
    yield model_path, "exported", "the file as exported"


def fused_model(model_path: Path, how: dict):
    """(model, the arguments that made it): optimize_model with the factory's arguments; where that
    fuses no attention and the factory left opt_level to the model type's default, again with
    opt_level=0. The default (1) first runs ONNX Runtime's own basic passes on the CUDA provider,
    and on transformers 5.x BERT exports those rewrite the mask subgraph so that the attention
    fusion no longer matches; its users would pass opt_level=0 (as its Llama export script does)."""
    from onnxruntime.transformers import optimizer

    model = optimizer.optimize_model(str(model_path), use_gpu=True, **how)
    if "opt_level" in how or has_attention(model.model):
        return model, how
    retry = {**how, "opt_level": 0}
    second = optimizer.optimize_model(str(model_path), use_gpu=True, **retry)
    return (second, retry) if has_attention(second.model) else (model, how)


def has_attention(model) -> bool:
    return any(n.domain == "com.microsoft" and "Attention" in n.op_type for n in model.graph.node)


def fused_ops(model) -> str:
    """What the fusions left in the graph: its com.microsoft ops by count."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain == "com.microsoft":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        return "nothing"
    attention = "" if has_attention(model) else " (no attention)"
    return ", ".join(f"{op} x{n}" for op, n in sorted(counts.items())) + attention


def onnxruntime_cuda_row(args, label: str, path: Path, graph: bool, inputs: dict,
                         reference: dict) -> dict:
    """A CUDA session with its inputs and outputs bound on the device once (a CUDA graph replays
    into fixed buffers)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    cuda = {"enable_cuda_graph": "1"} if graph else {}
    session = ort.InferenceSession(str(path), options,
                                   providers=[("CUDAExecutionProvider", cuda),
                                              "CPUExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":  # ORT falls back without a word
        raise RuntimeError("the CUDA provider did not load (its CUDA or cuDNN libraries are "
                           "missing; ONNX Runtime's log says which)")
    binding = session.io_binding()
    # In the types the session takes (a fusion may want int32 token ids).
    bound = {i.name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(
                 inputs[i.name], ORT_TYPES.get(i.type, inputs[i.name].dtype)), "cuda", 0)
             for i in session.get_inputs()}
    for name, value in bound.items():
        binding.bind_ortvalue_input(name, value)
    outputs = {o.name: ort.OrtValue.ortvalue_from_shape_and_type(
                   reference[o.name].shape, ORT_TYPES.get(o.type, reference[o.name].dtype),
                   "cuda", 0) for o in session.get_outputs()}
    for name, value in outputs.items():
        binding.bind_ortvalue_output(name, value)
    no_wait = ort.RunOptions()  # pipelined: the provider's end-of-run synchronisation off
    no_wait.add_run_config_entry("disable_synchronize_execution_providers", "1")
    timing = timings(args, lambda: session.run_with_iobinding(binding),
                     binding.synchronize_outputs,
                     lambda: session.run_with_iobinding(binding, no_wait))
    return checked_row(args, label, timing, {k: v.numpy() for k, v in outputs.items()},
                       reference, "I/O bound on the device")


def torch_rows(args, net, inputs: dict, reference: dict) -> list[dict]:
    import torch

    device = torch.device(args.device)
    dtype = torch.float16 if args.precision == "fp16" else torch.float32
    memory_format = torch.channels_last if args.layout == "NHWC" else torch.contiguous_format
    # Buffers computed rather than loaded (RoPE's inverse frequencies) stay in their own dtype,
    # as transformers' from_pretrained(torch_dtype=...) leaves them: in fp16 they cost Llama's
    # outputs 1e-2 of relative error.
    loaded = net.state_dict()
    computed = {name: b for name, b in net.named_buffers() if name not in loaded}
    net = net.to(device=device, dtype=dtype).to(memory_format=memory_format)
    for name, buffer in computed.items():
        module, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(module), leaf, buffer.to(device))

    def tensor(value):
        t = torch.from_numpy(value).to(device)
        if t.is_floating_point():
            t = t.to(dtype)
        return t.contiguous(memory_format=memory_format) if t.dim() == 4 else t

    xs = [tensor(v) for v in inputs.values()]
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    (output_name,) = reference
    detail = f"torch {torch.__version__}, {args.precision}, {args.layout}"
    if hasattr(net, "attention"):
        detail += f", attention {net.attention}"

    def row(label: str, compile_mode: str | None) -> list[dict]:
        with torch.inference_mode():
            fn, extra = net, ""
            if compile_mode is not None:
                torch._dynamo.reset()
                fn = torch.compile(net, mode=compile_mode)
                start = time.perf_counter()
                fn(*xs)
                sync()
                extra = (f", mode={compile_mode}, first call (compile) "
                         f"{time.perf_counter() - start:.1f} s")
            timing = timings(args, lambda: fn(*xs), sync)
            out = fn(*xs).float().cpu().numpy()
        return [checked_row(args, label, timing, {output_name: out}, reference, detail + extra)]

    modes = args.torch_compile_modes or (["reduce-overhead"] if args.device == "cuda"
                                         else ["default"])
    return [r for label, mode in (("PyTorch eager", None),
                                  *((f"torch.compile {m}", m) for m in modes))
            for r in guarded(label, lambda: row(label, mode))]


def rows_table(rows: list[dict]) -> dict:
    def ms(value) -> str:
        return "-" if value is None else f"{value:.4f}"

    def ratio(value) -> str:
        return "-" if value is None else f"{value:.2f}x"

    return record.table(
        ["runtime", "call+sync p50 ms", "call+sync p90 ms", "pipelined ms/call",
         "vs ORT call+sync", "vs ORT pipelined", "max rel err vs fp32", "outputs", "detail"],
        [[r["runtime"], ms(r["call_sync_p50_ms"]), ms(r["call_sync_p90_ms"]),
          ms(r["pipelined_ms"]), ratio(r["vs_onnxruntime_call_sync"]),
          ratio(r["vs_onnxruntime_pipelined"]),
          "-" if r["max_rel_err"] is None else f"{r['max_rel_err']:.1e}", r["output_check"],
          r["detail"]] for r in rows])


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
                   help="batch size, for a --torch factory that takes `batch` (every one of "
                        "benchmarks.models' but small_resnet) [default: the factory's]")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--db", type=Path, default=None,
                   help="tuning database for a tuned row [default: no tuned row]")
    p.add_argument("--tune-trials", type=int, default=None, metavar="N",
                   help="`tvmopt tune --trials N` into --db first (0: measure the kernel-library "
                        "shortlist only); the tuned row says how long it took")
    p.add_argument("--torch-compile-modes", nargs="*", metavar="MODE",
                   help="torch.compile modes to measure [default: reduce-overhead (CUDA graphs, "
                        "the batch-1 peer) on cuda, default on cpu]")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW")
    p.add_argument("--kernels", nargs="+", choices=["all", "tvm"], default=["all"],
                   help="tvmopt rows per kernel choice (all: with the kernel library)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iterations", type=int, default=200, help="calls timed call + sync")
    p.add_argument("--pipelined", type=int, default=300, metavar="CALLS",
                   help="calls per pipelined run (%(default)s)")
    p.add_argument("--tolerance", type=float, default=1e-2,
                   help="largest relative error against fp32 that passes (%(default)s)")
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
    if args.tune_trials is not None and args.db is None:
        p.error("--tune-trials tunes into --db: name the database")
    try:
        args.shapes = {name: tuple(int(d) for d in dims.split("x"))
                       for name, dims in (s.split("=", 1) for s in args.shape)}
    except ValueError:
        p.error("--shape takes NAME=DIMS, e.g. input_ids=1x128")
    from tvmopt import runtime

    if args.device == "cuda":
        preload_cuda_libraries()
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
            built = [b for _, b, _ in builds if not isinstance(b, Exception)]
            if not built:
                raise builds[0][1]
            inputs = runtime.random_inputs(runtime.load(built[0].path).inputs, seed=0)
        reference = runtime.onnxruntime_outputs(args.model, inputs)
        rows = [tvmopt_row(args, *b, inputs, reference) for b in builds]
        rows += guarded("ONNX Runtime", lambda: onnxruntime_rows(args, net, args.model, tmp,
                                                                 inputs, reference))
        if net is not None:
            rows += torch_rows(args, net, inputs, reference)
    return report(args, argv, rows, reference)


def preload_cuda_libraries() -> None:
    """onnxruntime-gpu finds its CUDA and cuDNN libraries only when asked to before its first
    CUDA session (its optimizer opens one too)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    if "CUDAExecutionProvider" in ort.get_available_providers():
        ort.preload_dlls()


def report(args, argv: list[str], rows: list[dict], reference: dict) -> dict:
    for mode in ("call_sync", "pipelined"):
        key = "call_sync_p50_ms" if mode == "call_sync" else "pipelined_ms"
        peer = [r[key] for r in rows if r["runtime"].startswith("ONNX Runtime") and r[key]]
        for row in rows:  # against ONNX Runtime's best row in that mode
            row[f"vs_onnxruntime_{mode}"] = min(peer) / row[key] if peer and row[key] else None
    model = args.torch_factory or args.model.name
    doc = record.new(SUITE, argv, device="gpu" if args.device == "cuda" else "cpu",
                     title=f"{model}: tvmopt against its peers ({args.precision}, {args.layout}, "
                           f"batch {args.batch or 1}, {args.device})")
    odd = [f"{name}: {why}" for name, value in reference.items() if (why := degenerate(value))]
    doc["results"] = {"model": model, "precision": args.precision, "layout": args.layout,
                      "batch": args.batch or 1, "warmup": args.warmup,
                      "iterations": args.iterations, "pipelined_calls": args.pipelined,
                      "pipelined_runs": PIPELINED_RUNS, "tolerance": args.tolerance,
                      "reference_degenerate": odd, "rows": rows}
    notes = (f"Inputs on the device, {args.warmup} warmup calls. Call + sync: the host's wall "
             f"clock of one call and a device synchronisation, p50 and p90 of {args.iterations} "
             f"calls. Pipelined: {args.pipelined} calls back to back and one synchronisation, "
             f"per call, the median of {PIPELINED_RUNS} runs. vs ORT: ONNX Runtime's best row "
             f"in that mode over the row's (above 1.00x is faster). Outputs: against ONNX "
             f"Runtime fp32 on the CPU, within {args.tolerance:g} relative to the output's "
             f"largest magnitude, finite and not degenerate. One run.")
    if odd:
        notes += f" The fp32 reference itself is degenerate ({'; '.join(odd)}): a match means "\
                 "nothing."
    doc["sections"] = [{"notes": notes, "table": rows_table(rows)}]
    print("\n".join(markdown_table(doc["sections"][0]["table"])))
    name = (args.torch_factory.rpartition(":")[2] if args.torch_factory else args.model.stem)
    name += f"_b{args.batch}" if args.batch else ""
    record.write(doc, args.output or record.default_path(SUITE, name, args.device, args.precision))
    return doc
