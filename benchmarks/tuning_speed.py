"""Tuning speed: trials per minute and where the time goes, tvmopt vs plain MetaSchedule.

One fixed conv task, the same trial budget, the same machine and run: first
`ms.relax_integration.tune_relax` with its defaults (JSON database, LocalBuilder/LocalRunner,
64 candidates per round), then `tvmopt.tuning` with its defaults. Prints trials/min, the search /
build / measure split, and the best latency each found for the task.

    python benchmarks/tuning_speed.py [--trials 128] [--channels 32] [--size 28]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_model(path: Path, channels: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((channels, channels, 3, 3)) * 0.1)
                                .astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def plain_metaschedule(mod, target, trials: int, work_dir: str) -> dict:
    from tvm.s_tir import meta_schedule as ms

    start = time.perf_counter()
    with ms.Profiler() as profiler:
        database = ms.relax_integration.tune_relax(
            mod, params={}, target=target, work_dir=work_dir, max_trials_global=trials)
    elapsed = time.perf_counter() - start
    stages = {k: float(v) for k, v in profiler.get().items()}
    records = database.get_all_tuning_records()
    ok = [r for r in records if r.run_secs and float(r.run_secs[0]) < 1e9]
    best = min(float(np.mean([float(s) for s in r.run_secs])) for r in ok) if ok else None
    return {"trials": len(records), "elapsed_s": elapsed, "best_sec": best,
            "search_s": stages.get("EvoSearch/Evolve", 0.0) + stages.get(
                "EvoSearch/SampleInitPopulation", 0.0),
            "build_s": stages.get("LocalBuilder", 0.0) + stages.get("TaskScheduler/BuildRun", 0.0) * 0,
            "measure_s": stages.get("LocalRunner", 0.0), "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=128)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=28)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from tvmopt import targets, tuning
    from tvmopt.database import open_database
    from tvmopt.prepare import prepare
    from tvmopt.tasks import extract_tasks
    from tvmopt.tuning.space import search_target

    tmp = Path(tempfile.mkdtemp())
    model = conv_model(tmp / "conv.onnx", args.channels, args.size)
    preset = targets.resolve("host")
    mod = prepare(model, preset).mod
    target = search_target(preset.tvm_target())
    print(f"task: conv2d 3x3 {args.channels}->{args.channels} on {args.size}x{args.size}, "
          f"{args.trials} trials, target {preset.key}")

    plain = plain_metaschedule(mod, target, args.trials, str(tmp / "plain"))

    start = time.perf_counter()
    with open_database(tmp / "tvmopt.db") as store:
        tuner = tuning.Tuner(extract_tasks(mod, target), target, "fp32", store,
                             tuning.TuneOptions(trials=args.trials), on_progress=lambda *a: None)
        report = tuner.run()
    ours = {"trials": report.trials_this_run, "elapsed_s": time.perf_counter() - start,
            "best_sec": report.tasks[0].best_sec if len(report.tasks) == 1 else
            report.estimated_latency(), **{f"{k}_s": v for k, v in report.seconds.items()}}

    print(f"\n{'':<22}{'trials':>8}{'seconds':>9}{'trials/min':>12}{'search s':>10}"
          f"{'build s':>9}{'measure s':>11}{'best µs':>9}")
    for name, r in (("plain tune_relax", plain), ("tvmopt", ours)):
        rate = 60 * r["trials"] / r["elapsed_s"]
        r["trials_per_minute"] = rate
        print(f"{name:<22}{r['trials']:>8}{r['elapsed_s']:>9.1f}{rate:>12.1f}{r['search_s']:>10.1f}"
              f"{r['build_s']:>9.1f}{r['measure_s']:>11.1f}{(r['best_sec'] or 0) * 1e6:>9.1f}")
    print(f"\ntvmopt / plain: {ours['trials_per_minute'] / plain['trials_per_minute']:.2f}x trials "
          f"per minute; best latency ratio (plain / tvmopt) "
          f"{plain['best_sec'] / ours['best_sec']:.2f}")
    print(json.dumps({"plain": {k: v for k, v in plain.items() if k != "stages"},
                      "plain_profiler": plain["stages"], "tvmopt": ours}, indent=1))


if __name__ == "__main__":
    main()
