"""Warm start: does a database of another model's records make a new tune converge sooner?

Tunes conv model A (cold) into a database, then tunes a different conv model B twice with the same
budget: once from an empty database (cold) and once from a copy of A's database (warm: the cost
model is trained on A's records before B's search starts). Prints how many trials each B run
needed to come within 5% of the cold run's final best latency.

    python benchmarks/warm_start.py [--trials 128]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sqlite3
import tempfile
from pathlib import Path

from tuning_speed import conv_model


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=128)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp())
    model_a = conv_model(tmp / "a.onnx", channels=32, size=28)
    model_b = conv_model(tmp / "b.onnx", channels=48, size=20)

    tune(model_a, tmp / "a.db", args.trials)
    shutil.copy(tmp / "a.db", tmp / "warm.db")
    cold = best_so_far(tmp / "cold.db", tune(model_b, tmp / "cold.db", args.trials))
    warm = best_so_far(tmp / "warm.db", tune(model_b, tmp / "warm.db", args.trials))
    goal = cold[-1] * 1.05

    def reached(curve):
        return next((i + 1 for i, b in enumerate(curve) if b <= goal), None)

    print(f"model B (conv 48->48 on 20x20), {args.trials} trials each, host CPU")
    print(f"cold: final best {cold[-1] * 1e6:.1f} µs, within 5% after {reached(cold)} trials")
    print(f"warm: final best {warm[-1] * 1e6:.1f} µs, within 5% of cold's final after "
          f"{reached(warm)} trials")
    for n in (16, 32, 64, 96, 128):
        if n <= min(len(cold), len(warm)):
            print(f"  after {n:>3} trials: cold {cold[n - 1] * 1e6:8.1f} µs   warm "
                  f"{warm[n - 1] * 1e6:8.1f} µs")


if __name__ == "__main__":
    main()
