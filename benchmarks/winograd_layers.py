"""Winograd against the direct packed conv, per layer shape, on this CPU (issue 15).

For each shape a chain of four 3x3 convs (C -> C, bias + ReLU, HxH) is built twice for the host:
with Winograd wherever it applies, and with it turned off (the direct packed conv). Both run in
one process, alternately, and the medians and their ratio are reported with what the rule in
`tvmopt/kernels/winograd.py` chooses: the rule's thresholds are only as good as this table. A
chain, not one conv, so that the layout conversions at the model's edges and the weights' cache
state are those of a network.

    python -m benchmarks winograd-layers [--iterations 300] [--shapes 16x64,128x8,...]
"""

from __future__ import annotations

# tvmopt is imported where it is used, so that `--help` answers at once.

import statistics
import tempfile
from contextlib import contextmanager
from pathlib import Path

from . import models, record

SUITE = "winograd-layers"
# The A/B needs the rule switched off and forced on, which no build option does.
INTERNAL_API = ("tvmopt.kernels.winograd",)
DEFAULT_SHAPES = "16x64,32x32,64x16,128x8,64x56,128x28,256x14,512x7"


@contextmanager
def winograd(mode: str):
    """`off`: the direct packed conv everywhere; `forced`: Winograd wherever its layout and
    kernel shape allow, whatever the rule's cost test says; `rule`: as tvmopt builds."""
    from tvmopt.kernels import winograd as rule

    saved = rule.applies, rule.MIN_TILES, rule.CACHED_WEIGHT_BYTES
    if mode == "off":
        rule.applies = lambda call, weight: False
    elif mode == "forced":
        rule.MIN_TILES, rule.CACHED_WEIGHT_BYTES = 0, float("inf")
    try:
        yield
    finally:
        rule.applies, rule.MIN_TILES, rule.CACHED_WEIGHT_BYTES = saved


def build(path: Path, out: Path, mode: str):
    from tvmopt import build as build_stage
    from tvmopt import runtime, targets

    with winograd(mode):
        result = build_stage.build(path, targets.resolve("host"), out)
    return runtime.load(result.path), any("winograd" in k for k in result.manifest["kernels"])


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--shapes", default=DEFAULT_SHAPES,
                   help="CHANNELSxSIZE,... (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="result JSON [default: benchmarks/results/winograd_layers_DATE.json]")
    args = p.parse_args(argv)
    from tvmopt import runtime

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            channels, size = (int(v) for v in shape.split("x"))
            path = models.conv_chain(Path(tmp) / f"{shape}.onnx", channels, size, depth=4,
                                     bias=True)
            built = {mode: build(path, Path(tmp) / f"{shape}_{mode}.so", mode)
                     for mode in ("off", "forced", "rule")}
            direct, forced = built["off"][0], built["forced"][0]
            inputs = runtime.random_inputs(direct.inputs, seed=0)
            times = {"direct": [], "winograd": []}
            for _ in range(3):  # alternate, so both see the same machine
                for name, model in (("direct", direct), ("winograd", forced)):
                    times[name] += model.time(inputs, number=1, repeat=args.iterations // 3)
            d, w = (statistics.median(times[k]) * 1e3 for k in ("direct", "winograd"))
            rows.append({"shape": shape, "direct_ms": d, "winograd_ms": w,
                         "rule_picks": "winograd" if built["rule"][1] else "direct"})
            print(f"{shape:>8}  direct {d:.4f} ms  winograd {w:.4f} ms  {d / w:.2f}x  "
                  f"rule: {rows[-1]['rule_picks']}", flush=True)
    doc = record.new(SUITE, argv, device="cpu",
                     title="Winograd against the direct packed conv, per layer shape")
    doc["results"] = {"iterations": args.iterations, "rows": rows}
    doc["sections"] = [{
        "notes": "A chain of four 3x3 convs (C -> C, bias + ReLU) per shape, built with Winograd "
                 f"forced and off, timed alternately (medians of {args.iterations} calls each); "
                 "the last column is what tvmopt's rule picks.",
        "table": record.table(
            ["channels x size", "direct ms", "Winograd ms", "direct / Winograd", "rule picks"],
            [[r["shape"], f"{r['direct_ms']:.4f}", f"{r['winograd_ms']:.4f}",
              f"{r['direct_ms'] / r['winograd_ms']:.2f}x", r["rule_picks"]] for r in rows])}]
    record.write(doc, args.output or record.default_path(SUITE))
    return doc
