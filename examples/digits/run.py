"""End to end on a classifier whose outputs mean something: handwritten digits.

1. Train a small MLP on scikit-learn's digits data set (it ships with scikit-learn: no download).
2. Export it to ONNX with a dynamic batch axis.
3. `tvmopt tune` it for this CPU (a small budget: a few minutes on 2 cores; re-running resumes,
   and once the budget is spent it is skipped) into the team database in tuning_logs/.
4. `tvmopt build` it in fp32 (tuned, and untuned for comparison) and fp16.
5. Run the test set through ONNX Runtime and every build: accuracy and latency.

Exits non-zero if the fp32 builds' accuracy differs from ONNX Runtime's.

    python examples/digits/run.py [--target host] [--db tuning_logs/tvmopt.db] [--trials 256]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

import tvmopt
from tvmopt import build, targets, tuning
from tvmopt.database import open_database
from tvmopt.prepare import ModelOptions

HERE = Path(__file__).resolve().parent
TEST_SIZE = 450


def train():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=TEST_SIZE, random_state=0, stratify=digits.target)
    clf = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=400, random_state=0)
    clf.fit(x_train, y_train)
    return clf, x_test, y_test


def export_onnx(clf: MLPClassifier, path: Path) -> None:
    """The MLP as Gemm/Relu layers and a Softmax; the batch axis is symbolic."""
    nodes, inits, prev = [], [], "pixels"
    layers = list(zip(clf.coefs_, clf.intercepts_))
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w.T.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(b.astype(np.float32), f"b{i}")]
        out = f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], name=f"dense{i}",
                                      transB=1))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"{out}_relu"], name=f"relu{i}"))
            out = f"{out}_relu"
        prev = out
    nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], name="softmax", axis=1))
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="tvmopt-digits-example")
    model.ir_version = 9  # what current ONNX Runtime releases read (onnx writes a newer one)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def median_ms(fn, repeat: int = 50) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="host")
    parser.add_argument("--db", default=None, help="tuning database [default: tuning_logs/tvmopt.db]")
    parser.add_argument("--trials", type=int, default=256, help="tuning budget (0: skip tuning)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="  %(message)s")
    sys.stdout.reconfigure(line_buffering=True)  # keep prints in order with the build's log lines

    clf, x_test, y_test = train()
    model_path = HERE / "digits_mlp.onnx"
    export_onnx(clf, model_path)
    print(f"trained MLP on sklearn digits, exported {model_path.relative_to(Path.cwd())}")

    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    runs = {"onnxruntime": lambda x: session.run(None, {"pixels": x})[0]}
    preset = targets.resolve(args.target)
    shapes = {"pixels": x_test.shape}
    if args.trials:
        report = tuning.tune(model_path, preset, db_path=args.db,
                             model_options=ModelOptions(input_shapes=shapes),
                             options=tuning.TuneOptions(trials=args.trials))
        print(f"tvmopt tune --trials {args.trials}: {report.trials_this_run} trials this run, "
              f"{report.trials_total} in the database ({report.stop_reason})")
    with tempfile.TemporaryDirectory() as empty:
        open_database(Path(empty) / "empty.db").close()
        builds = [("untuned fp32", "fp32", Path(empty) / "empty.db"), ("fp32", "fp32", args.db),
                  ("fp16", "fp16", args.db)]
        for label, precision, db in builds:
            out = HERE / f"digits_mlp_{label.replace(' ', '_')}.so"
            result = build.build(model_path, preset, out, db_path=db, options=ModelOptions(
                input_shapes=shapes, precision=precision))
            print(f"tvmopt build --target {args.target} --precision {precision} -> {out.name}: "
                  f"{len(result.tuned)} of {len(result.tasks)} tasks tuned")
            compiled = tvmopt.load(out)
            runs[f"tvmopt {label}"] = lambda x, m=compiled: m({"pixels": x})["probabilities"]

    print(f"\n{'runtime':<22}{'accuracy':>10}{'latency (ms, batch ' + str(len(x_test)) + ')':>28}")
    accuracy, latency = {}, {}
    for name, fn in runs.items():
        predictions = fn(x_test).argmax(axis=1)
        accuracy[name] = float((predictions == y_test).mean())
        latency[name] = median_ms(lambda: fn(x_test))
        print(f"{name:<22}{accuracy[name]:>10.4f}{latency[name]:>28.3f}")
    if {accuracy["tvmopt fp32"], accuracy["tvmopt untuned fp32"]} != {accuracy["onnxruntime"]}:
        print("FAIL: tvmopt fp32 accuracy differs from ONNX Runtime", file=sys.stderr)
        return 1
    print(f"\ntuned vs untuned fp32: {latency['tvmopt untuned fp32']:.3f} ms -> "
          f"{latency['tvmopt fp32']:.3f} ms ({latency['tvmopt untuned fp32'] / latency['tvmopt fp32']:.1f}x)")
    print("tvmopt fp32 accuracy equals ONNX Runtime's; fp16 differs by "
          f"{accuracy['tvmopt fp16'] - accuracy['onnxruntime']:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
