"""What a tune bought on a GPU: the model built with the database and with an empty one, both
timed on the device, and per task the trials, best latency and whether a tensor-core schedule won.

    python -m benchmarks compare --torch torchvision.models:resnet18 --input-shape 1x3x224x224 \\
        --export WORK/resnet18.onnx
    tvmopt tune WORK/resnet18.onnx --target cuda-sm90a --precision fp16 --layout NHWC \\
        --db WORK/gpu.db --trials 2000 --time-budget 7m      # repeat: it resumes
    python -m benchmarks gpu-tune-report --model WORK/resnet18.onnx --db WORK/gpu.db \\
        --target cuda-sm90a --precision fp16 --layout NHWC

Latency is the median of 30 repeats of 20 runs (TVM's time evaluator, inputs on the device);
the tuned build is checked against ONNX Runtime. The tune runs recorded in the database give the
trials per minute over every slice of the tune.
"""

from __future__ import annotations

# tvmopt is imported where it is used, so that `--help` answers at once.

import datetime
import statistics
import tempfile
from pathlib import Path

from .. import record

SUITE = "gpu-tune-report"
# Per-task trials and winners are in the database only; the tasks must be those tune extracted.
INTERNAL_API = ("tvmopt.database", "tvmopt.prepare", "tvmopt.tasks", "tvmopt.tuning")


def latencies(args, preset, options, tmp: Path) -> dict:
    import tvmopt
    from tvmopt import build, runtime

    out = {}
    (tmp / "empty.db").touch()  # SQLite's empty database
    for label, db in (("untuned", tmp / "empty.db"), ("tuned", args.db)):
        result = build.build(args.model, preset, tmp / f"{label}.so", db_path=db, options=options)
        model = tvmopt.load(result.path)
        inputs = runtime.random_inputs(model.inputs)
        out[f"{label}_ms"] = statistics.median(model.time(inputs, number=20, repeat=30)) * 1e3
        out[f"{label}_tasks_tuned"] = f"{len(result.tuned)} of {len(result.tasks)}"
        if label == "tuned":
            reference = runtime.onnxruntime_outputs(args.model, inputs)
            out["max_rel_error_vs_onnxruntime"] = max(
                m.max_rel for m in runtime.compare(model(inputs), reference))
    out["speedup"] = out["untuned_ms"] / out["tuned_ms"]
    return out


def tune_history(args, preset, options) -> dict:
    from tvmopt.database import open_database, target_identity
    from tvmopt.prepare import prepare
    from tvmopt.tasks import extract_tasks
    from tvmopt.tuning.space import uses_tensor_cores

    mod = prepare(args.model, preset, options).mod
    target = preset.tvm_target()
    tsha = target_identity(target)[0]
    with open_database(args.db, readonly=True) as store:
        runs = list(store.db["runs"].rows)
        trials = sum(r["trials"] or 0 for r in runs)
        seconds = sum((datetime.datetime.fromisoformat(r["ended_at"]) -
                       datetime.datetime.fromisoformat(r["started_at"])).total_seconds()
                      for r in runs if r["ended_at"])
        tasks = []
        for task in extract_tasks(mod, target):
            wid = store.find_workload(task.mod)
            best = store.best_records(wid, tsha, 1) if wid else []
            tasks.append({"task": task.name, "weight": task.weight, "mflop": task.flops / 1e6,
                          "trials": store.count_trials(wid, tsha) if wid else 0,
                          "best_us": best[0].mean_sec * 1e6 if best else None,
                          "tensor_core": bool(best) and uses_tensor_cores(best[0].trace_json)})
    return {"tune_runs": [{k: r[k] for k in ("command", "trials", "started_at", "ended_at")}
                          for r in runs],
            "trials": trials, "trials_per_minute": 60 * trials / seconds if seconds else None,
            "tasks": tasks}


def sections(results: dict) -> list[dict]:
    """The summary and per-task tables; also used for converted older reports."""
    r = results
    rate = r["trials_per_minute"]
    summary = [["untuned (an empty database)", f"{r['untuned_ms']:.3f} ms"],
               ["tuned", f"{r['tuned_ms']:.3f} ms"], ["speedup", f"{r['speedup']:.2f}x"],
               ["tasks tuned", r["tuned_tasks_tuned"]],
               ["trials", f"{r['trials']} in {len(r['tune_runs'])} runs"
                          + (f", {rate:.1f} trials/min" if rate else "")],
               ["max relative error vs ONNX Runtime", f"{r['max_rel_error_vs_onnxruntime']:.2e}"]]
    tasks = [[t["task"], t["weight"], f"{t['mflop']:.1f}", t["trials"],
              "-" if t["best_us"] is None else f"{t['best_us']:.1f}", t["tensor_core"]]
             for t in r["tasks"]]
    return [{"table": record.table(["", "value"], summary)},
            {"heading": "Per task (best of the trials so far)",
             "table": record.table(["task", "weight", "MFLOP", "trials", "best µs", "tensor core"],
                                   tasks)}]


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--db", type=Path, required=True, help="the database the model was tuned into")
    p.add_argument("--target", default="cuda-sm90a")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--layout", default="NHWC")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="result JSON [default: benchmarks/results/gpu_tune_report_MODEL_DATE.json]")
    args = p.parse_args(argv)
    from tvmopt import targets
    from tvmopt.prepare import ModelOptions

    preset = targets.resolve(args.target)
    options = ModelOptions(precision=args.precision, layout=args.layout)
    with tempfile.TemporaryDirectory() as tmp:
        results = {"model": args.model.name, "target": preset.key, "precision": args.precision,
                   "layout": args.layout, **latencies(args, preset, options, Path(tmp)),
                   **tune_history(args, preset, options)}
    doc = record.new(SUITE, argv, device="gpu",
                     title=f"{args.model.stem}, {args.precision}, {args.layout}, tuned for "
                           f"{preset.key}: what the tune bought")
    doc["results"] = results
    doc["sections"] = sections(results)
    record.write(doc, args.output or record.default_path(SUITE, args.model.stem))
    return doc
