"""Real MetaSchedule workloads and records for database tests (no tuning needed to make them)."""

from __future__ import annotations

import json
import sys

X86 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}
ARM = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}


def workload(n: int):
    """A distinct one-kernel module per n: B = A + n over 16 elements, with a real schedule."""
    import tvm
    from tvm import te

    a = te.placeholder((16,), name="A")
    b = te.compute((16,), lambda i: a[i] + float(n), name="B")
    return tvm.IRModule({"main": te.create_prim_func([a, b])})


def record(mod, run_secs, target: dict, split: int = 4):
    """A TuningRecord whose trace splits the loop by `split` (so traces differ by split)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    sch = tvm.s_tir.Schedule(mod)
    loop, = sch.get_loops(sch.get_sblock("B"))
    sch.split(loop, [None, split])
    return ms.database.TuningRecord(
        sch.trace, ms.database.Workload(mod), list(run_secs), tvm.target.Target(target),
        ms.arg_info.ArgInfo.from_prim_func(mod["main"]))


def commit_schedule(store, task, target, sec: float, *, tuned: bool) -> None:
    """A record of `task` measured at `sec` on `target`: its baseline schedule (what the build
    gives it untuned), or (tuned) another schedule, the baseline with an annotation."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from tvmopt.database.metaschedule import TargetDatabase
    from tvmopt.kernels.defaults import baseline

    sch, _ = baseline(task.mod, target)
    if tuned:
        sch.annotate(sch.get_output_blocks(sch.get_sblock("root"))[0], "tuned_variant", 1)
    TargetDatabase(store, target).commit_tuning_record(ms.database.TuningRecord(
        sch.trace, ms.database.Workload(task.mod), [tvm.runtime.convert(sec)], target,
        ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])))


def write_records(db_path: str, count: int, seed: int) -> None:
    """Commit `count` records one transaction each, printing the running total after each commit."""
    import random

    import tvm

    from tvmopt.database import open_database

    rng = random.Random(seed)
    mods = [workload(i) for i in range(4)]
    with open_database(db_path) as store:
        db = store.for_target(tvm.target.Target(X86), device=f"writer-{seed}", run_uid=f"run-{seed}")
        for i in range(count):
            db.commit_tuning_record(record(mods[i % 4], [rng.uniform(1e-6, 1e-3)], X86,
                                           split=2 ** (1 + i % 3)))
            print(i + 1, flush=True)


if __name__ == "__main__":
    write_records(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    json.dump({"ok": True}, sys.stdout)
