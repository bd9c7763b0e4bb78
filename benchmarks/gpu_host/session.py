"""A GPU host whose calls end after a time limit and which starts bare: bring carried files in,
run a tune that outlives the call, and collect it in later calls.

    python -m benchmarks gpu-host setup                      # carried database and kernel cache
    python -m benchmarks gpu-host start-tune resnet50 30m    # returns at once; the tune runs on
    python -m benchmarks gpu-host wait-tune 540              # up to 540 s; again until "done"

Carried in (from --carry, which travels with the working tree): db/gpu.db, a database to resume
from (for example a copy of tuning_logs/h100-sm90a.db), and kcache.tar.gz, a kernel cache made
elsewhere with `tar czf kcache.tar.gz -C "$TVMOPT_CACHE" kernels` on a machine with the same
versions (its keys hold versions, not paths). `start-tune` runs `tvmopt tune` in its own session
(so the call's end does not kill it) on a model that `python -m benchmarks gpu --work WORK
--steps export` wrote. `wait-tune` writes a consistent, compressed copy of the database (files
come back at 16 MiB at most) to --out and, once the tune has ended, its report as a result JSON
with its log (without TVM's per-candidate warnings, which drown it).
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from .. import record
from ..gpu.session import MODELS

SUITE = "gpu-host"
NOISE = "Trace replay failed"  # TVM's warning per rejected candidate: thousands per tune
DEFAULTS = {"BENCH_GPU_WORK": "/tmp/tvmopt-gpu-work", "BENCH_GPU_CARRY": ".gpu",
            "BENCH_GPU_OUT": None}


def kernel_cache() -> Path:
    """$TVMOPT_CACHE, else $XDG_CACHE_HOME/tvmopt, else ~/.cache/tvmopt (as tvmopt resolves it)."""
    root = os.environ.get("TVMOPT_CACHE")
    return Path(root) if root else Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tvmopt"


def setup(args) -> None:
    carried_db = args.carry / "db" / "gpu.db"
    if carried_db.exists() and not args.db.exists():
        args.db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(carried_db, args.db)
        print(f"resuming from {carried_db} (copied to {args.db})")
    carried_cache = args.carry / "kcache.tar.gz"
    if carried_cache.exists():
        cache = kernel_cache()
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(carried_cache) as tar:  # members already there are kept
            members = [m for m in tar.getmembers() if not (cache / m.name).exists()]
            tar.extractall(cache, members=members, filter="data")
        print(f"kernel cache: {len(members)} entries from {carried_cache} into {cache}")
    gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                           "--format=csv"], capture_output=True, text=True)
    print(gpus.stdout or gpus.stderr)


def tune_command(args) -> list[str]:
    layout = MODELS[args.model][2]
    return [sys.executable, "-m", "tvmopt", "tune", str(args.work / f"{args.model}.onnx"),
            "--target", "cuda", "--precision", "fp16", "--layout", layout, "--db", str(args.db),
            "--trials", "100000", "--time-budget", args.budget, "--json"]


def start_tune(args) -> None:
    command = tune_command(args)
    stem = args.work / f"tune_{args.model}"
    with open(f"{stem}.json", "w") as out, open(f"{stem}.log", "w") as log:
        proc = subprocess.Popen(command, stdout=out, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # outlives this call and its group
    (args.work / "tune.json").write_text(json.dumps(
        {"pid": proc.pid, "model": args.model, "command": command[2:]}))
    print(f"tune started (pid {proc.pid}): {' '.join(command[2:])}")


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_tune(args) -> None:
    started = json.loads((args.work / "tune.json").read_text())
    deadline = time.monotonic() + args.seconds
    while running(started["pid"]) and time.monotonic() < deadline:
        time.sleep(5)
    done = not running(started["pid"])
    print("tune done" if done else "tune still running")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.work / f"tune_{started['model']}"
    lines = Path(f"{stem}.log").read_text(errors="replace").splitlines()
    kept = [line for line in lines if NOISE not in line]
    print(f"{len(lines) - len(kept)} '{NOISE}' warnings left out; last lines:",
          *kept[-3:], sep="\n")
    copy = args.work / "backup.db"  # a consistent copy while the tuner writes
    with sqlite3.connect(args.db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with open(copy, "rb") as f, gzip.open(args.out / "gpu.db.gz", "wb") as z:
        shutil.copyfileobj(f, z)
    if done:
        name = record.default_path("tune", started["model"], "cuda_fp16").name
        log = (args.out / name).with_suffix(".log")
        log.write_text("\n".join(kept) + "\n")
        report = json.loads(Path(f"{stem}.json").read_text())
        doc = record.new(SUITE, [], device="gpu",
                         title=f"tvmopt tune {started['model']} for {report['target']}")
        doc["command"] = shlex.join(started["command"])  # the tune's, not this call's
        doc["results"], doc["sections"] = report, tune_sections(report)
        doc["files"] = [log.name]
        record.write(doc, args.out / name)


def tune_sections(report: dict) -> list[dict]:
    """A `tvmopt tune --json` report as tables (also used for converted older reports)."""
    est = report.get("estimated_latency_sec")
    summary = [["trials this run", report["trials_this_run"]],
               ["trials in the database", report["trials_total"]],
               ["elapsed", f"{report['elapsed_s']:.1f} s"],
               ["trials per minute", f"{report['trials_per_minute']:.1f}"],
               *([f"{k} s", f"{v:.1f}"] for k, v in report["seconds"].items()),
               ["estimated latency", "-" if est is None else f"{est * 1e3:.3f} ms"],
               ["stopped", report["stop_reason"]]]
    if "tactics_measured" in report:
        summary.append(["library tactics measured", report["tactics_measured"]])
    tasks = [[t["name"], t["weight"], f"{t['flops'] / 1e6:.1f}", t["trials"],
              "-" if t["best_sec"] is None else f"{t['best_sec'] * 1e6:.1f}",
              t.get("tensor_core"), t.get("library_tactic") or "-"] for t in report["tasks"]]
    return [{"table": record.table(["", "value"], summary)},
            {"heading": "Per task", "table": record.table(
                ["task", "weight", "MFLOP", "trials", "best µs", "tensor core", "library tactic"],
                tasks)}]


def main(argv: list[str]) -> None:
    env = {k: os.environ.get(k, v) for k, v in DEFAULTS.items()}
    p = record.parser(SUITE, __doc__)
    p.add_argument("--work", type=Path, default=Path(env["BENCH_GPU_WORK"]),
                   help="the host's working directory (models, the database, tune logs) "
                        f"[$BENCH_GPU_WORK, default {DEFAULTS['BENCH_GPU_WORK']}]")
    p.add_argument("--carry", type=Path, default=Path(env["BENCH_GPU_CARRY"]),
                   help="files carried onto the host: db/gpu.db, kcache.tar.gz "
                        f"[$BENCH_GPU_CARRY, default {DEFAULTS['BENCH_GPU_CARRY']}]")
    p.add_argument("--out", type=Path, default=env["BENCH_GPU_OUT"],
                   help="what to bring back from the host: the compressed database, the tune's "
                        "result JSON and its log (copy those into benchmarks/results/ to keep "
                        "them) [$BENCH_GPU_OUT, default WORK/out]")
    p.add_argument("--db", type=Path, default=None, help="[default: WORK/gpu.db]")
    sub = p.add_subparsers(dest="step", required=True)
    sub.add_parser("setup", help="copy the carried database, unpack the carried kernel cache")
    start = sub.add_parser("start-tune", help="start a TIR tune in the background")
    start.add_argument("model", choices=list(MODELS))
    start.add_argument("budget", help="--time-budget, e.g. 30m")
    wait = sub.add_parser("wait-tune", help="wait for the tune, collect its log and database")
    wait.add_argument("seconds", type=float, help="how long to wait at most")
    args = p.parse_args(argv)
    args.db = args.db or args.work / "gpu.db"
    args.out = Path(args.out) if args.out else args.work / "out"
    args.work.mkdir(parents=True, exist_ok=True)
    {"setup": setup, "start-tune": start_tune, "wait-tune": wait_tune}[args.step](args)
