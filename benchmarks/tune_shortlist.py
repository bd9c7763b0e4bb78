"""How long `tvmopt tune --trials 0` spends compiling its kernel-library shortlist on this
machine from a cold kernel cache: the part of a first tune on a new model that needs no GPU and
takes most of its time (measuring the shortlist on the device takes seconds). No GPU needed.

    python -m benchmarks tune-shortlist --torch benchmarks.models:gpt2_small
    python -m benchmarks tune-shortlist MODEL.onnx --input-shape input_ids=1x128 [--db TEAM.db]

The model is prepared as `tune --target cuda-sm90a --precision fp16` prepares it, the shortlist
is what that tune would compile given --db (default: an empty database, as for a new team), and
the instances are compiled into a new, empty kernel cache (`TVMOPT_CACHE` is pointed at a
temporary directory), as many at once as this machine's cores and memory allow.
"""

from __future__ import annotations

# tvmopt is imported where it is used, so that `--help` answers at once.

import os
import tempfile
import time
from pathlib import Path

from . import models, record

SUITE = "tune-shortlist"
# The shortlist is tune's own plan (tuning.library_tactics) over tune's own tasks and target
# (tvmopt.tasks, tuning.space); none of it is public API.
INTERNAL_API = ("tvmopt.tuning.library_tactics", "tvmopt.tuning.space", "tvmopt.tasks",
                "tvmopt.prepare", "tvmopt.database", "tvmopt.kernels.library")


def shortlist(model: Path, shapes: dict, db: Path | None):
    """(the TacticPlan tune would compile and measure, its target)."""
    from tvmopt import targets
    from tvmopt.database import open_database
    from tvmopt.prepare import ModelOptions, prepare
    from tvmopt.tasks import extract_tasks
    from tvmopt.tuning import library_tactics
    from tvmopt.tuning.space import search_target

    preset = targets.resolve("cuda-sm90a")
    prepared = prepare(model, preset, ModelOptions(input_shapes=shapes, precision="fp16"))
    target = search_target(preset.tvm_target())
    tasks = extract_tasks(prepared.mod, target)
    weights = {t.name: t.weight for t in tasks}
    layers = {name: (layer, weights.get(name, 1))
              for name, layer in library_tactics.task_layers(prepared.mod, tasks).items()}
    with tempfile.TemporaryDirectory(prefix="tvmopt-shortlist-") as tmp:
        path = db or Path(tmp) / "empty.db"
        with open_database(path, readonly=db is not None) as store:
            return library_tactics.plan_tactics(layers, target, store), target


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("model", nargs="?", type=Path, help="ONNX model (or give --torch)")
    p.add_argument("--torch", dest="torch_factory", metavar="MODULE:FACTORY",
                   help="export this factory's model first (benchmarks.models:gpt2_small)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS")
    p.add_argument("--db", type=Path, default=None,
                   help="the tuning database the tune would read [default: an empty one]")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="result JSON [default: benchmarks/results/tune_shortlist_MODEL_DATE.json]")
    args = p.parse_args(argv)
    if (args.model is None) == (args.torch_factory is None):
        p.error("give MODEL.onnx or --torch MODULE:FACTORY")
    try:
        shapes = {name: tuple(int(d) for d in dims.split("x"))
                  for name, dims in (s.split("=", 1) for s in args.input_shape)}
    except ValueError:
        p.error("--input-shape takes NAME=DIMS, e.g. input_ids=1x128")
    from tvmopt.kernels.library import nvcc, resources
    from tvmopt.kernels.library.instance import TIMER_SYMBOL, timer

    with tempfile.TemporaryDirectory(prefix="tvmopt-shortlist-") as tmp:
        model = args.model
        if model is None:
            net, example = models.torch_model(args.torch_factory, None)
            model = Path(tmp) / "model.onnx"
            models.export_torch(net, example, model)
            shapes = shapes or {name: tuple(t.shape) for name, t in example.items()}
        plan, target = shortlist(model, shapes, args.db)
        sources = {**plan.sources, TIMER_SYMBOL: timer().source}
        os.environ["TVMOPT_CACHE"] = str(Path(tmp) / "cache")  # cold: nothing compiled yet
        start = time.perf_counter()
        failed: dict[str, str] = {}
        nvcc.compile_all(sources, str(target.attrs["arch"]), failed=failed)
        seconds = time.perf_counter() - start
    name = args.torch_factory.split(":")[-1] if args.torch_factory else args.model.stem
    ops = {p.layer.key: p.layer.op.name for p in plan.measuring}
    op_of = {spec.symbol: ops[key] for (key, _), spec in plan.specs.items()}
    by_op: dict[str, int] = {}
    for op in op_of.values():
        by_op[op] = by_op.get(op, 0) + 1
    row = [name, len(plan.sources), ", ".join(f"{op} {n}" for op, n in sorted(by_op.items())),
           len(plan.measuring), plan.left, os.cpu_count(), resources.slot_count(),
           round(seconds, 1), ", ".join(failed) or "none"]
    columns = ["model", "instances", "by op", "layers measured", "layers left to the next tune",
               "cores", "nvcc at once", "compile s (cold cache)", "rejected by nvcc"]
    print(" | ".join(f"{c}: {v}" for c, v in zip(columns, row)))
    doc = record.new(SUITE, argv, device="cpu",
                     title="The shortlist `tune --trials 0` compiles, from a cold kernel cache")
    doc["results"] = dict(zip(columns, row))
    doc["sections"] = [{"notes": "Compile only (nvcc, no GPU): the tune then measures each "
                                 "instance on the device. The timer instance tune links with "
                                 "the shortlist is compiled with it.",
                        "table": record.table(columns, [row])}]
    record.write(doc, args.output or record.default_path(SUITE, name))
    return doc
