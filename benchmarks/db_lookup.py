"""How fast the tuning database answers a build: open the file, find the best record for 30 workloads.

Fills a database with N records (default 100,000) over 300 workloads and 2 targets, then, in fresh
processes' worth of work (open -> 30 lookups -> close), times the lookups a build makes. Goal: < 1 s.

    python benchmarks/db_lookup.py [--records 100000] [--repeat 5] [--db PATH]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

N_WORKLOADS = 300
TARGETS = [{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"},
           {"kind": "cuda", "arch": "sm_90a"}]


def fill(path: Path, n_records: int) -> list:
    """Real workloads and traces; records inserted through the store's own insert path."""
    import random

    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    from tvmopt.database import open_database

    rng = random.Random(0)
    mods = []
    with open_database(path) as store:
        for n in range(N_WORKLOADS):
            a = te.placeholder((64,), name="A")
            scale = float(n + 1)
            b = te.compute((64,), lambda i: a[i] * scale, name="B")  # noqa: B023
            mods.append(tvm.IRModule({"main": te.create_prim_func([a, b])}))
        ids = [store.add_workload(m, name=f"task{n}") for n, m in enumerate(mods)]
        sample = ms.database.TuningRecord(
            tvm.s_tir.Schedule(mods[0]).trace, ms.database.Workload(mods[0]), [1e-6],
            tvm.target.Target(TARGETS[0]), ms.arg_info.ArgInfo.from_prim_func(mods[0]["main"]),
        ).as_json()
        targets = [tvm.target.Target(t) for t in TARGETS]
        with store.write():  # one transaction: add_record joins it
            for i in range(n_records):
                target = targets[(i // N_WORKLOADS) % len(targets)]
                record = [sample[0], [rng.uniform(1e-6, 1e-3)], None, sample[3]]
                store.add_record(ids[i % N_WORKLOADS], target, record, device="bench",
                                 run_uid=f"bench-{i}")
    return mods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()

    import tvm

    from tvmopt.database import open_database, target_identity

    path = args.db or Path(tempfile.mkdtemp()) / "bench.db"
    start = time.perf_counter()
    mods = fill(path, args.records)
    print(f"filled {path} with {args.records} records over {N_WORKLOADS} workloads in "
          f"{time.perf_counter() - start:.1f} s ({path.stat().st_size / 2**20:.1f} MiB)")
    target = tvm.target.Target(TARGETS[0])
    queried = mods[:30]
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        with open_database(path, readonly=True) as store:  # as a build does: one lookup per task
            tsha = target_identity(target)[0]
            found = [store.best_records(store.find_workload(m), tsha, 1) for m in queried]
        times.append(time.perf_counter() - start)
        assert all(found)
    median = statistics.median(times)
    print(f"open + best record for 30 workloads: median {median * 1e3:.1f} ms over {args.repeat} "
          f"runs (min {min(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms); goal < 1000 ms: "
          f"{'met' if median < 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
