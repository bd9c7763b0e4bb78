"""Every tactic of a kernel-library op on this GPU, at the layer shapes of the transformer
table's models: each measured the way `tune` measures tactics (a CUDA graph of calls, each result
checked against the op's NumPy reference, a wrong one stored as a failure).

    python -m benchmarks attention-kernel [--shapes bert_b1,gpt2] [--db FILE]
    python -m benchmarks gemm-tactics [--shapes bert_b32_qkv] [--tactics NAME,...] [--db FILE]

attention-kernel: the attention layers (and head dims 80 and 96 at long sequences), tvmopt's
mma.sync kernel and, where it fits, CUTLASS's FMHA. gemm-tactics: the GEMM layers of the
throughput rows (BERT-base at batch 32, ViT-B/16 at batch 64), with each epilogue they use.
With `--db` the records go into that tuning database (the team's: `tuning_logs/h100-sm90a.db`),
as a tune would store them; a layer the database has a measured tactic of its own is measured
again only on the tactics `--tactics` names (tune measures a layer once). Under Nsight Compute,
`--shapes` and `--tactics` narrow the launches:
    ncu --kernel-name regex:Attention --section SpeedOfLight python -m benchmarks \\
        attention-kernel --shapes bert_b32 --tactics 64x64x16_c1x1_mma_online
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

from .. import record

# What is measured is the ops' instances alone, through the tune's own measurement: neither is
# reachable through the public API.
INTERNAL_API = ("tvmopt.kernels.library", "tvmopt.tuning.library_tactics", "tvmopt.tuning.options",
                "tvmopt.database")


def attention_shapes() -> dict:
    """{name: (op, geometry)} of the models' attention layers, as the forms are read."""
    from tvmopt.kernels.library.attention import OP
    from tvmopt.kernels.library.attention import AttentionGeometry as G

    packed_gpt2 = (2304, 0, 2304, 768, 2304, 1536)
    return {name: (OP, g) for name, g in {
        "bert_b1": G(1, 12, 128, 128, 64, 0.125, (1, 1, 128, 128), "float16"),
        "bert_b32": G(32, 12, 128, 128, 64, 0.125, (32, 1, 128, 128), "float16"),
        "gpt2": G(1, 12, 128, 128, 64, 0.125, None, None, causal=0, packed=packed_gpt2),
        "clip_text": G(1, 8, 77, 77, 64, 0.125, None, None, causal=0),
        "vit_b16": G(1, 12, 197, 197, 64, 0.125, None, None, packed=packed_gpt2),
        "vit_b16_b64": G(64, 12, 197, 197, 64, 0.125, None, None, packed=packed_gpt2),
        "llama_s512": G(1, 16, 512, 512, 128, 128 ** -0.5, None, None, kv_heads=4, causal=0),
        "d80_s1024": G(1, 32, 1024, 1024, 80, 80 ** -0.5, (1, 1, 1, 1024), "float32"),
        "d96_s384": G(4, 16, 384, 384, 96, 96 ** -0.5, None, None, causal=0),
    }.items()}


def gemm_shapes() -> dict:
    """{name: (op, geometry)} of BERT-base b32's and ViT-B/16 b64's GEMM layers (rows: batch x
    sequence): the packed Q/K/V projection, the output projection and the FFN's two GEMMs."""
    from tvmopt.kernels.library.cutlass import Epilogue
    from tvmopt.kernels.library.gemm import OP, GemmGeometry

    kinds = {"qkv": (2304, 768, Epilogue(bias=True)),
             "out": (768, 768, Epilogue(bias=True, residual=True)),
             "fc1": (3072, 768, Epilogue(bias=True, activation="gelu")),
             "fc2": (768, 3072, Epilogue(bias=True, residual=True))}
    return {f"{model}_{kind}": (OP, GemmGeometry(rows, n, k, 1, "row", epilogue))
            for model, rows in (("bert_b32", 32 * 128), ("vit_b16_b64", 64 * 197))
            for kind, (n, k, epilogue) in kinds.items()}


SUITES = {"attention-kernel": (attention_shapes, "Attention kernels per tactic at the "
                                                 "transformer models' shapes"),
          "gemm-tactics": (gemm_shapes, "GEMM tactics at the throughput rows' GEMM layers")}


def measure(shapes: dict, tactics: list[str] | None, db: Path | None) -> list[dict]:
    """Rows per shape: each tactic's seconds (None: failed) and the fastest."""
    from tvmopt import targets
    from tvmopt.database import open_database, target_identity
    from tvmopt.kernels.library import KernelLibrary
    from tvmopt.kernels.library.op import Layer
    from tvmopt.tuning.library_tactics import measure_tactics
    from tvmopt.tuning.options import TuneOptions

    target = targets.resolve("cuda-sm90a").tvm_target()
    tsha = target_identity(target)[0]
    layers = {}
    for name, (op, geometry) in shapes.items():
        layer = Layer(op, geometry, {})
        if tactics:  # only the named tactics: a catalogue of those
            layer = _Narrowed(layer, tuple(t for t in layer.tactics if t.name in tactics))
        layers[name] = (layer, 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = db or Path(tmp) / "tactics.db"
        with open_database(path) as store:
            measure_tactics(layers, target, store, TuneOptions(trials=0), device="cuda",
                            run_uid=uuid.uuid4().hex,
                            limit=sum(len(layer.tactics) for layer, _ in layers.values()))
            times = store.tactic_times(tsha, KernelLibrary.name)
    rows = []
    for name, (layer, _) in layers.items():
        own = times.get(layer.key, {})
        ran = [(sec, t) for t, sec in own.items() if sec is not None]
        rows.append({"shape": name, "layer": layer.key, "describe": layer.describe(),
                     "tactics": own, "best": min(ran) if ran else None,
                     "default": layer.default_tactic().name})
    return rows


class _Narrowed:
    """A layer whose catalogue is a subset of its op's."""

    def __init__(self, layer, tactics):
        self._layer, self.tactics = layer, tactics

    def __getattr__(self, name):
        return getattr(self._layer, name)


def run_suite(argv: list[str], suite: str) -> dict:
    shapes_of, title = SUITES[suite]
    p = record.parser(suite, __doc__)
    p.add_argument("--shapes", default=None,
                   help="comma-separated shape names [default: all]")
    p.add_argument("--tactics", default=None,
                   help="comma-separated tactic names [default: the whole catalogue]")
    p.add_argument("--db", type=Path, default=None,
                   help="also store the records in this tuning database")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help=f"result JSON [default: benchmarks/results/{suite.replace('-', '_')}"
                        "_DATE.json]")
    args = p.parse_args(argv)
    known = shapes_of()
    names = args.shapes.split(",") if args.shapes else list(known)
    unknown = sorted(set(names) - set(known))
    if unknown:
        sys.exit(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(known)}")
    rows = measure({n: known[n] for n in names},
                   args.tactics.split(",") if args.tactics else None, args.db)
    tactics = sorted({t for r in rows for t in r["tactics"]})
    table = []
    for r in rows:
        times = [r["tactics"].get(t, "-") for t in tactics]
        table.append([r["shape"], r["describe"], *("failed" if sec is None else "-" if sec == "-"
                                                   else f"{sec * 1e6:.2f}" for sec in times)])
        print(" | ".join(map(str, table[-1])))
    doc = record.new(suite, argv, device="gpu", title=title)
    doc["results"] = {"rows": rows}
    doc["sections"] = [{
        "notes": "Microseconds per call from CUDA-graph replays (tune's measurement); a tactic "
                 "whose result is more than 1e-2 off the NumPy reference is a failure.",
        "table": record.table(["shape", "layer", *tactics], table)}]
    record.write(doc, args.output or record.default_path(suite))
    return doc
