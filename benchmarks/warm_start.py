"""Warm start: does a database of another model's records make a new tune converge sooner?

Tunes conv model A (cold) into a database, then tunes a different conv model B twice with the same
budget: once from an empty database (cold) and once from a copy of A's database (warm: the cost
model is trained on A's records before B's search starts). Reports how many trials each B run
needed to come within 5% of the cold run's final best latency: the case for sharing a team
database even across models.

    python -m benchmarks warm-start [--trials 128]
"""

from __future__ import annotations

# tvmopt is imported where it is used, so that `--help` answers at once.

import logging
import shutil
import sqlite3
import tempfile
from pathlib import Path

from . import models, record

SUITE = "warm-start"
# The curve needs each trial of one run in order, which only the records table holds.
INTERNAL_API = ("tvmopt.tuning",)
MARKS = (16, 32, 64, 96, 128)


def tune(model: Path, db: Path, trials: int) -> str:
    from tvmopt import targets, tuning

    report = tuning.tune(model, targets.resolve("host"), db_path=db,
                         options=tuning.TuneOptions(trials=trials), on_progress=lambda *a: None)
    return report.run_uid


def best_so_far(db: Path, run_uid: str) -> list[float]:
    """Best latency after each successful trial of one run, in the order they were measured."""
    with sqlite3.connect(db) as conn:
        secs = [r[0] for r in conn.execute(
            "SELECT mean_sec FROM records WHERE run_uid = ? ORDER BY id", [run_uid])]
    out, best = [], float("inf")
    for s in secs:
        best = min(best, s)
        out.append(best)
    return out


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--trials", type=int, default=128)
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="result JSON [default: benchmarks/results/warm_start_DATE.json]")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp())
    model_a = models.conv_chain(tmp / "a.onnx", channels=32, size=28)
    model_b = models.conv_chain(tmp / "b.onnx", channels=48, size=20)

    tune(model_a, tmp / "a.db", args.trials)
    shutil.copy(tmp / "a.db", tmp / "warm.db")
    curves = {"cold": best_so_far(tmp / "cold.db", tune(model_b, tmp / "cold.db", args.trials)),
              "warm": best_so_far(tmp / "warm.db", tune(model_b, tmp / "warm.db", args.trials))}
    goal = curves["cold"][-1] * 1.05

    def reached(curve):
        return next((i + 1 for i, b in enumerate(curve) if b <= goal), None)

    marks = [n for n in MARKS if n <= min(map(len, curves.values()))]
    doc = record.new(SUITE, argv, device="cpu",
                     title="Warm start: model B (conv 48->48 on 20x20) tuned cold and from model "
                           "A's records")
    doc["results"] = {"trials": args.trials, "best_so_far_sec": curves,
                      "trials_to_within_5pct_of_cold": {k: reached(c) for k, c in curves.items()}}
    us = lambda s: f"{s * 1e6:.1f} µs"  # noqa: E731
    doc["sections"] = [
        {"notes": f"Model A (conv 32->32 on 28x28) tuned cold for {args.trials} trials; model B "
                  f"tuned for {args.trials} trials from an empty database (cold) and from a copy "
                  "of A's database (warm). One run each: search is random, so treat the figures "
                  "as one sample.",
         "table": record.table(["", "final best", "trials to come within 5% of cold's final best"],
                               [[k, us(c[-1]), reached(c)] for k, c in curves.items()])},
        {"heading": "Best so far",
         "table": record.table(["after trials", "cold", "warm"],
                               [[n, us(curves["cold"][n - 1]), us(curves["warm"][n - 1])]
                                for n in marks])}]
    record.write(doc, args.output or record.default_path(SUITE))
    return doc
