"""Winograd against the direct packed conv, per layer shape, on this CPU (issue 15).

For each shape a chain of four 3x3 convs (C -> C, bias + ReLU, HxH) is built twice for the host:
as tvmopt builds it, and with Winograd turned off (the direct packed conv). Both run in one
process, alternately, and the medians and their ratio are printed with what the rule in
`tvmopt/kernels/winograd.py` chooses. A chain, not one conv, so that the layout conversions at
the model's edges and the weights' cache state are those of a network.

    python benchmarks/winograd_layers.py [--iterations 300] [--shapes 16x64,128x8,...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

DEFAULT_SHAPES = "16x64,32x32,64x16,128x8,64x56,128x28,256x14,512x7"


def chain(path: Path, channels: int, size: int, depth: int = 4) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        scale = np.sqrt(2 / (9 * channels))
        inits += [numpy_helper.from_array(
            (rng.standard_normal((channels, channels, 3, 3)) * scale).astype(np.float32), f"w{i}"),
            numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32) * 0.1,
                                    f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, "winograd_chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, shape)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


def build(path: Path, out: Path, *, winograd: bool):
    from tvmopt import build as build_stage
    from tvmopt import runtime, targets
    from tvmopt.kernels import winograd as rule

    applies = rule.applies
    if not winograd:
        rule.applies = lambda call, weight: False  # the direct packed conv
    try:
        result = build_stage.build(path, targets.resolve("host"), out)
    finally:
        rule.applies = applies
    chosen = any("winograd" in k for k in result.manifest["kernels"])
    return runtime.load(result.path), chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES,
                        help="CHANNELSxSIZE,... (default: %(default)s)")
    args = parser.parse_args()

    from tvmopt import runtime

    print(f"{'channels x size':>16}  {'direct ms':>10}  {'winograd ms':>11}  "
          f"{'direct/winograd':>15}  rule")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            channels, size = (int(v) for v in shape.split("x"))
            path = chain(Path(tmp) / f"{shape}.onnx", channels, size)
            direct, _ = build(path, Path(tmp) / f"{shape}_direct.so", winograd=False)
            forced = _forced(path, Path(tmp) / f"{shape}_winograd.so")
            _, chosen = build(path, Path(tmp) / f"{shape}_rule.so", winograd=True)
            inputs = runtime.random_inputs(direct.inputs, seed=0)
            times = {"direct": [], "winograd": []}
            for _ in range(3):  # alternate, so both see the same machine
                for name, model in (("direct", direct), ("winograd", forced)):
                    times[name] += model.time(inputs, number=1, repeat=args.iterations // 3)
            d, w = (statistics.median(times[k]) * 1e3 for k in ("direct", "winograd"))
            print(f"{shape:>16}  {d:>10.4f}  {w:>11.4f}  {d / w:>14.2f}x  "
                  f"{'winograd' if chosen else 'direct'}", flush=True)
    return 0


def _forced(path: Path, out: Path):
    """The chain with Winograd wherever its layout and kernel shape allow, whatever the rule's
    cost test says."""
    from tvmopt.kernels import winograd as rule

    saved = rule.MIN_TILES, rule.CACHED_WEIGHT_BYTES
    rule.MIN_TILES, rule.CACHED_WEIGHT_BYTES = 0, float("inf")
    try:
        model, _ = build(path, out, winograd=True)
    finally:
        rule.MIN_TILES, rule.CACHED_WEIGHT_BYTES = saved
    return model


if __name__ == "__main__":
    sys.exit(main())
