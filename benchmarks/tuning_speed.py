"""Tuning speed: trials per minute and where the time goes, tvmopt vs plain MetaSchedule.

One fixed conv task, the same trial budget, the same machine and run: first
`ms.relax_integration.tune_relax` with its defaults (JSON database, LocalBuilder/LocalRunner,
64 candidates per round), then tvmopt's tuner with its defaults, on the very same task. What
tvmopt adds to MetaSchedule's loop is only worth keeping if it buys trials per minute without a
worse best latency, so both are reported.

    python -m benchmarks tuning-speed [--trials 128] [--channels 32] [--size 28]
"""

from __future__ import annotations

# tvmopt is imported where it is used, so that `--help` answers at once.

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from . import models, record

SUITE = "tuning-speed"
# Both tuners must get the identical task and target, so this reaches below `tvmopt tune`.
INTERNAL_API = ("tvmopt.tuning", "tvmopt.database", "tvmopt.prepare", "tvmopt.tasks")


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
    # TVM 0.27's profiler scopes nest by '/': search is every EvoSearch stage not inside another.
    search = sum(v for k, v in stages.items()
                 if k.startswith("EvoSearch/") and k.rpartition("/")[0] not in stages)
    return {"trials": len(records), "elapsed_s": elapsed, "best_sec": best, "search_s": search,
            "build_s": stages.get("SendToBuilder", 0.0),
            "measure_s": stages.get("SendToRunner", 0.0) + stages.get("JoinRunnerFutures", 0.0),
            "profiler": stages}


def tvmopt_tuner(mod, target, trials: int, db: Path) -> dict:
    from tvmopt import tuning
    from tvmopt.database import open_database
    from tvmopt.tasks import extract_tasks

    start = time.perf_counter()
    with open_database(db) as store:
        tuner = tuning.Tuner(extract_tasks(mod, target), target, "fp32", store,
                             tuning.TuneOptions(trials=trials), on_progress=lambda *a: None)
        report = tuner.run()
    return {"trials": report.trials_this_run, "elapsed_s": time.perf_counter() - start,
            "best_sec": report.tasks[0].best_sec if len(report.tasks) == 1
            else report.estimated_latency(),
            **{f"{k}_s": v for k, v in report.seconds.items()}}


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--trials", type=int, default=128)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="result JSON [default: benchmarks/results/tuning_speed_DATE.json]")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from tvmopt import targets
    from tvmopt.prepare import prepare
    from tvmopt.tuning.space import search_target

    tmp = Path(tempfile.mkdtemp())
    model = models.conv_chain(tmp / "conv.onnx", args.channels, args.size)
    preset = targets.resolve("host")
    mod = prepare(model, preset).mod
    target = search_target(preset.tvm_target())
    task = f"conv2d 3x3 {args.channels}->{args.channels} on {args.size}x{args.size}"
    print(f"task: {task}, {args.trials} trials, target {preset.key}")
    runs = {"plain tune_relax": plain_metaschedule(mod, target, args.trials, str(tmp / "plain")),
            "tvmopt": tvmopt_tuner(mod, target, args.trials, tmp / "tvmopt.db")}
    for r in runs.values():
        r["trials_per_minute"] = 60 * r["trials"] / r["elapsed_s"]
    plain, ours = runs["plain tune_relax"], runs["tvmopt"]
    doc = record.new(SUITE, argv, device="cpu",
                     title=f"Tuning speed: tvmopt against plain MetaSchedule, one {task} task")
    doc["results"] = {"task": task, "target": preset.key, "trials": args.trials, "runs": runs}
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    best = (f"{plain['best_sec'] / ours['best_sec']:.2f}" if plain["best_sec"] and ours["best_sec"]
            else "- (a tuner found no valid schedule)")
    doc["sections"] = [{
        "notes": f"tvmopt / plain: {ours['trials_per_minute'] / plain['trials_per_minute']:.2f}x "
                 f"trials per minute; best latency ratio (plain / tvmopt) {best}. One run each, "
                 "same process.",
        "table": record.table(
            ["", "trials", "seconds", "trials/min", "search s", "build s", "measure s", "best µs"],
            [[name, r["trials"], fmt(r["elapsed_s"]), fmt(r["trials_per_minute"]),
              fmt(r.get("search_s")), fmt(r.get("build_s")), fmt(r.get("measure_s")),
              fmt(r["best_sec"] and r["best_sec"] * 1e6)] for name, r in runs.items()])}]
    print(doc["sections"][0]["notes"])
    record.write(doc, args.output or record.default_path(SUITE))
    return doc
