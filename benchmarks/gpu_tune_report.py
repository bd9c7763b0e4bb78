"""Tuned vs untuned on a GPU: export a conv net, and report what a tune bought.

Run on the GPU host (see benchmarks/results/ for what it printed there):

    python benchmarks/gpu_tune_report.py export --model /root/work/resnet18.onnx
    tvmopt tune /root/work/resnet18.onnx --target cuda-sm90a --precision fp16 --layout NHWC \\
        --db /root/work/gpu.db --trials 2000 --time-budget 7m        # repeat: it resumes
    python benchmarks/gpu_tune_report.py report --model /root/work/resnet18.onnx \\
        --db /root/work/gpu.db --target cuda-sm90a --precision fp16 --layout NHWC -o result.json

`report` builds the model twice (with the database, and with an empty one), times both on the
device (median of repeats), checks the tuned build against ONNX Runtime, and lists per task the
trials, best latency and whether a tensor-core schedule won.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path


def export(model_path: Path) -> None:
    """ResNet-18 with random weights (torchvision ships the architecture; no download)."""
    import torch
    import torchvision

    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, (x,), str(model_path), input_names=["image"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    print(f"exported {model_path} (torch {torch.__version__}, torchvision {torchvision.__version__})")


def report(args) -> dict:
    import tvm

    import tvmopt
    from tvmopt import build, runtime, targets
    from tvmopt.database import open_database, target_identity
    from tvmopt.prepare import ModelOptions, prepare
    from tvmopt.tasks import extract_tasks
    from tvmopt.tuning.space import uses_tensor_cores

    preset = targets.resolve(args.target)
    options = ModelOptions(precision=args.precision, layout=args.layout)
    out = {"model": args.model.name, "target": preset.key, "precision": args.precision,
           "layout": args.layout, "date": datetime.date.today().isoformat(),
           "tvm": tvm.__version__, "device": tvm.cuda(0).device_name if tvm.cuda(0).exist else "cpu"}
    latencies = {}
    with tempfile.TemporaryDirectory() as tmp:
        open_database(Path(tmp) / "empty.db").close()
        for label, db in (("untuned", Path(tmp) / "empty.db"), ("tuned", args.db)):
            result = build.build(args.model, preset, Path(tmp) / f"{label}.so", db_path=db,
                                 options=options)
            model = tvmopt.load(result.path)
            inputs = runtime.random_inputs(model.inputs)
            times = model.time(inputs, number=20, repeat=30)
            latencies[label] = statistics.median(times)
            out[f"{label}_tasks_tuned"] = f"{len(result.tuned)} of {len(result.tasks)}"
            if label == "tuned":
                (m,) = runtime.compare(model(inputs), runtime.onnxruntime_outputs(args.model, inputs))
                out["max_rel_error_vs_onnxruntime"] = m.max_rel
    out["untuned_ms"] = latencies["untuned"] * 1e3
    out["tuned_ms"] = latencies["tuned"] * 1e3
    out["speedup"] = latencies["untuned"] / latencies["tuned"]

    mod = prepare(args.model, preset, options).mod
    target = preset.tvm_target()
    tsha = target_identity(target)[0]
    with open_database(args.db, readonly=True) as store:
        runs = list(store.db["runs"].rows)
        trials = sum(r["trials"] or 0 for r in runs)
        seconds = sum((datetime.datetime.fromisoformat(r["ended_at"]) -
                       datetime.datetime.fromisoformat(r["started_at"])).total_seconds()
                      for r in runs if r["ended_at"])
        out["tune_runs"] = [{"command": r["command"], "trials": r["trials"],
                             "started_at": r["started_at"], "ended_at": r["ended_at"]} for r in runs]
        out["trials"] = trials
        out["trials_per_minute"] = 60 * trials / seconds if seconds else None
        tasks = []
        for task in extract_tasks(mod, target):
            wid = store.find_workload(task.mod)
            best = store.best_records(wid, tsha, 1) if wid else []
            tasks.append({
                "task": task.name, "weight": task.weight, "mflop": task.flops / 1e6,
                "trials": store.count_trials(wid, tsha) if wid else 0,
                "best_us": best[0].mean_sec * 1e6 if best else None,
                "tensor_core": bool(best) and uses_tensor_cores(best[0].trace_json),
            })
        out["tasks"] = tasks
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--model", type=Path, required=True)
    r = sub.add_parser("report")
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--db", type=Path, required=True)
    r.add_argument("--target", default="cuda-sm90a")
    r.add_argument("--precision", default="fp16")
    r.add_argument("--layout", default="NHWC")
    r.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    if args.cmd == "export":
        export(args.model)
        return 0
    result = report(args)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "tasks"}, indent=2))
    for t in result["tasks"]:
        print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
