"""How fast the tuning database answers a build: open it, find the best record of 30 workloads.

Fills a database with N records (default 100,000) over 300 workloads and 2 targets, then times
what a build does with it, `--repeat` times: open -> 30 lookups -> close. Goal: under 1 s, so a
database shared by a team never makes a build slow.

    python -m benchmarks db-lookup [--records 100000] [--repeat 5] [--db PATH]
"""

from __future__ import annotations

# tvmopt is imported where it is used, so that `--help` answers at once.

import random
import statistics
import tempfile
import time
from pathlib import Path

from . import record

SUITE = "db-lookup"
# The store's own API is what is measured here: nothing public fills a database this fast.
INTERNAL_API = ("tvmopt.database",)
N_WORKLOADS = 300
LOOKUPS = 30
GOAL_S = 1.0
TARGETS = [{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"},
           {"kind": "cuda", "arch": "sm_90a"}]


def fill(path: Path, n_records: int) -> list:
    """Real workloads and traces; records inserted through the store's own insert path."""
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
                record_json = [sample[0], [rng.uniform(1e-6, 1e-3)], None, sample[3]]
                store.add_record(ids[i % N_WORKLOADS], target, record_json, device="bench",
                                 run_uid=f"bench-{i}")
    return mods


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--db", type=Path, default=None,
                   help="where to create the database [default: a temporary directory]")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="result JSON [default: benchmarks/results/db_lookup_DATE.json]")
    args = p.parse_args(argv)

    import tvm

    from tvmopt.database import open_database, target_identity

    path = args.db or Path(tempfile.mkdtemp()) / "bench.db"
    start = time.perf_counter()
    mods = fill(path, args.records)
    fill_s = time.perf_counter() - start
    size_mib = path.stat().st_size / 2**20
    print(f"filled {path} with {args.records} records over {N_WORKLOADS} workloads in "
          f"{fill_s:.1f} s ({size_mib:.1f} MiB)")
    tsha = target_identity(tvm.target.Target(TARGETS[0]))[0]
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        with open_database(path, readonly=True) as store:  # as a build does: one lookup per task
            found = [store.best_records(store.find_workload(m), tsha, 1) for m in mods[:LOOKUPS]]
        times.append(time.perf_counter() - start)
        assert all(found), "a lookup found no record"
    median = statistics.median(times)
    verdict = "met" if median < GOAL_S else "MISSED"
    doc = record.new(SUITE, argv, device="cpu",
                     title=f"Tuning database lookups: {args.records} records, {LOOKUPS} lookups")
    doc["results"] = {"records": args.records, "workloads": N_WORKLOADS, "lookups": LOOKUPS,
                      "fill_s": fill_s, "size_mib": size_mib, "lookup_s": times,
                      "median_s": median, "goal_s": GOAL_S}
    doc["sections"] = [{"notes": f"Open the database read-only, find the best record of "
                                 f"{LOOKUPS} workloads, close: {args.repeat} runs.",
                        "table": record.table(
                            ["records", "size MiB", "median ms", "min ms", "max ms",
                             f"goal < {GOAL_S * 1e3:.0f} ms"],
                            [[args.records, f"{size_mib:.1f}", f"{median * 1e3:.1f}",
                              f"{min(times) * 1e3:.1f}", f"{max(times) * 1e3:.1f}", verdict]])}]
    print(f"open + best record for {LOOKUPS} workloads: median {median * 1e3:.1f} ms; goal "
          f"< {GOAL_S * 1e3:.0f} ms: {verdict}")
    record.write(doc, args.output or record.default_path(SUITE))
    return doc
