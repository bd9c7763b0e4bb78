"""The import coverage table in the README: every model of the zoo (tests/zoo.py) through
normalise -> import -> build for `host` -> compare with ONNX Runtime, in fp32 and fp16.

    python benchmarks/coverage.py [-o benchmarks/results/coverage.md]

Each stage is tried on its own so the table says where a model stops: `import` is TVM's importer
on the normalised graph, `build` the whole `tvmopt build`, `match` fp32 within 1e-4 relative.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import zoo  # noqa: E402

import tvmopt  # noqa: E402
from tvmopt import build, frontend, normalize, runtime, targets  # noqa: E402
from tvmopt.database import open_database  # noqa: E402
from tvmopt.prepare import ModelOptions  # noqa: E402
from tvmopt.errors import first_line  # noqa: E402


def row(name: str, path: Path, meta: dict, tmp: Path) -> list[str]:
    cells = [name, meta["family"], f"{meta['exporter']}, opset {meta['opset']}",
             ", ".join(meta["dynamic"]) + (" + external data" if meta["external_data"] else "")]
    try:
        model = frontend.load_model(path)
        inputs = frontend.resolve_inputs(model, meta["input_shapes"])
        normalized, changes = normalize.normalize(model, inputs)
        frontend.import_model(normalized, inputs)
        cells.append("ok")
    except Exception as e:  # noqa: BLE001 - the table records any failure
        return cells + [f"fails: {first_line(e)[:80]}", "-", "-", "-", "-", "-"]
    fp32, fp16, raw32, raw16 = (
        _max_error(path, meta, tmp, precision, normalized)
        for normalized in (True, False) for precision in ("fp32", "fp16"))
    built = "ok" if not isinstance(fp32, str) else fp32
    match = "-" if isinstance(fp32, str) else ("yes" if fp32 <= 1e-4 else "no")
    fmt = lambda e: e if isinstance(e, str) else f"{e:.1e}"  # noqa: E731
    raw = lambda e: "fails" if isinstance(e, str) else "ok" if e <= 1e-4 else "mismatch"  # noqa: E731
    return cells + [built, f"{match} ({fmt(fp32)})", fmt(fp16), "; ".join(c.step for c in changes),
                    f"{raw(raw32)} / {'fails' if isinstance(raw16, str) else 'ok'}"]


def _max_error(path: Path, meta: dict, tmp: Path, precision: str, normalized: bool):
    """Max relative error against ONNX Runtime, or the failure as text."""
    try:
        options = ModelOptions(input_shapes=meta["input_shapes"], precision=precision,
                                     normalize=normalized)
        lib = build.build(path, targets.resolve("host"), tmp / f"{path.stem}_{precision}.so",
                          db_path=tmp / "empty.db", options=options).path
        compiled = tvmopt.load(lib)
        x = runtime.random_inputs(compiled.inputs, seed=7)
        return max(m.max_rel for m in runtime.compare(compiled(x), runtime.onnxruntime_outputs(path, x)))
    except Exception as e:  # noqa: BLE001 - the table records any failure
        return f"fails: {first_line(e)[:60]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks/results/coverage.md")
    args = parser.parse_args()
    headers = ["model", "family", "exporter", "dynamic", "import", "build (host)",
               "fp32 match (max rel err)", "fp16 max rel err", "normalisation applied",
               "without it: fp32 / fp16"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    with tempfile.TemporaryDirectory(prefix="tvmopt-coverage-") as tmp:
        tmp = Path(tmp)
        open_database(tmp / "empty.db").close()  # every build untuned
        paths = zoo.build_all(tmp / "models")
        for name, path in paths.items():
            cells = row(name, path, zoo.ZOO[name][1], tmp)
            lines.append("| " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    header = (f"Produced by `python benchmarks/coverage.py` on {datetime.date.today()} "
              f"(TVM {__import__('tvm').__version__}, tvmopt {tvmopt.__version__}).\n\n")
    args.output.write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
