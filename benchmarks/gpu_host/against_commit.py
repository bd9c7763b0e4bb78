"""The same models built and timed by this checkout and by another tvmopt (an older commit):
whether a change left the artifacts' speed where it was.

    git worktree add /tmp/base COMMIT && cp -r /tmp/base/tvmopt .gpu/base/   # here
    python -m benchmarks against-commit --baseline .gpu/base --db tuning_logs/h100-sm90a.db

--baseline is a folder holding the other `tvmopt` package (it goes first on PYTHONPATH for that
side's builds and timings; everything else, TVM included, is shared). Each model is exported
once, built by each side with the same options and database, then timed by each side's own
`tvmopt bench` in interleaved rounds, so drift on a shared GPU hits both alike. Reports each
side's median p50 (device-timed per call) and the ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from .. import record
from ..gpu.session import FP16, MODELS, export

SUITE = "against-commit"


def _side_env(baseline: Path | None) -> dict:
    env = dict(os.environ)
    if baseline is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(baseline.resolve()), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _tvmopt(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tvmopt", *args], text=True, env=env,
                          capture_output=True, check=True)


def run(args) -> dict:
    sides = {"baseline": _side_env(args.baseline), "this checkout": _side_env(None)}
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.models:
        export(args.work, name)
        layout = MODELS[name][2]
        built = {}
        for side, env in sides.items():
            out = args.work / f"{name}_{side.split()[0]}.so"
            _tvmopt(env, "build", str(args.work / f"{name}.onnx"), *FP16, "--layout", layout,
                    "--db", str(args.db), "-o", str(out))
            built[side] = out
        p50 = {side: [] for side in sides}
        for _ in range(args.rounds):
            for side, env in sides.items():
                done = _tvmopt(env, "bench", str(built[side]), "--iterations",
                               str(args.iterations), "--json")
                p50[side].append(json.loads(done.stdout)["latency_ms"]["p50"])
        medians = {side: statistics.median(v) for side, v in p50.items()}
        results[name] = {"p50_ms": p50, "median_p50_ms": medians,
                         "ratio": medians["this checkout"] / medians["baseline"]}
        print(f"{name}: baseline {medians['baseline']:.4f} ms, this checkout "
              f"{medians['this checkout']:.4f} ms ({results[name]['ratio']:.3f}x)", flush=True)
    return results


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--baseline", type=Path, required=True,
                   help="folder holding the other tvmopt package (its `tvmopt/` inside)")
    p.add_argument("--db", type=Path, required=True, help="tuning database both sides build with")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["resnet50", "bert_base"])
    p.add_argument("--work", type=Path, default=Path("/tmp/tvmopt-against-commit"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="result JSON [default: benchmarks/results/against_commit_DATE.json]")
    args = p.parse_args(argv)
    if not (args.baseline / "tvmopt" / "__init__.py").is_file():
        p.error(f"--baseline {args.baseline} holds no tvmopt package")
    results = run(args)
    doc = record.new(SUITE, argv, device="gpu",
                     title="This checkout against another tvmopt, same models and database")
    doc["results"] = results
    doc["sections"] = [{"table": record.table(
        ["model", "baseline p50 ms", "this checkout p50 ms", "ratio"],
        [[name, f"{r['median_p50_ms']['baseline']:.4f}",
          f"{r['median_p50_ms']['this checkout']:.4f}", f"{r['ratio']:.3f}"]
         for name, r in results.items()])}]
    record.write(doc, args.output or record.default_path(SUITE))
    return doc
