"""The import coverage table: every model of the zoo (tests/zoo.py) through prepare -> build for
`host` -> compare with ONNX Runtime, in fp32 and fp16, with and without normalisation.

    python -m benchmarks coverage [--models resnet bert_encoder ...] [-o RESULT.json]

Each stage is tried on its own so the table says where a model stops: `prepare` is `tvmopt
inspect --target host` (normalise, import, graph passes), `build` the whole `tvmopt build`, `match`
fp32 within 1e-4 relative. Every build is untuned (an empty database): the table is about what
imports and computes correctly, not speed.
"""

from __future__ import annotations

# tvmopt is imported where it is used, so that `--help` answers at once. The zoo too (it imports
# PyTorch).

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from . import record

SUITE = "coverage"

COLUMNS = ["model", "family", "exporter", "dynamic", "prepare (host)", "build (host)",
           "fp32 match (max rel err)", "fp16 max rel err", "normalisation applied",
           "without it: fp32 / fp16"]


def first_line(text: str) -> str:
    return next((line for line in str(text).splitlines() if line.strip()), "").strip()


def prepare(path: Path, meta: dict) -> list[str]:
    """The normalisation steps `tvmopt inspect --target host` reports; raises with its error."""
    shapes = [f"--input-shape={n}={'x'.join(map(str, d))}" for n, d in meta["input_shapes"].items()]
    done = subprocess.run([sys.executable, "-m", "tvmopt", "inspect", str(path), "--target", "host",
                           *shapes, "--json"], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(first_line(done.stderr.splitlines()[-1] if done.stderr else "failed"))
    return [c["step"] for c in json.loads(done.stdout)["normalization"]]


def max_error(path: Path, meta: dict, tmp: Path, precision: str, normalized: bool):
    """Max relative error against ONNX Runtime, or the failure as text."""
    import tvmopt
    from tvmopt import build, runtime, targets
    from tvmopt.prepare import ModelOptions

    try:
        options = ModelOptions(input_shapes=meta["input_shapes"], precision=precision,
                               normalize=normalized)
        lib = build.build(path, targets.resolve("host"), tmp / f"{path.stem}_{precision}.so",
                          db_path=tmp / "empty.db", options=options).path
        compiled = tvmopt.load(lib)
        x = runtime.random_inputs(compiled.inputs, seed=7)
        reference = runtime.onnxruntime_outputs(path, x)
        return max(m.max_rel for m in runtime.compare(compiled(x), reference))
    except Exception as e:  # noqa: BLE001 - the table records any failure
        return f"fails: {first_line(e)[:60]}"


def row(name: str, path: Path, meta: dict, tmp: Path) -> dict:
    out = {"model": name, "family": meta["family"],
           "exporter": f"{meta['exporter']}, opset {meta['opset']}",
           "dynamic": ", ".join(meta["dynamic"]) + (" + external data" if meta["external_data"]
                                                    else "")}
    try:
        out["normalization"] = prepare(path, meta)
    except Exception as e:  # noqa: BLE001 - the table records any failure
        return {**out, "prepare": f"fails: {first_line(e)[:80]}"}
    out["prepare"] = "ok"
    out["fp32"], out["fp16"], out["raw_fp32"], out["raw_fp16"] = (
        max_error(path, meta, tmp, precision, normalized)
        for normalized in (True, False) for precision in ("fp32", "fp16"))
    return out


def cells(r: dict) -> list[str]:
    head = [r["model"], r["family"], r["exporter"], r["dynamic"]]
    if r["prepare"] != "ok":
        return head + [r["prepare"], "-", "-", "-", "-", "-"]
    failed = lambda e: isinstance(e, str)  # noqa: E731
    fmt = lambda e: e if failed(e) else f"{e:.1e}"  # noqa: E731
    raw = lambda e: "fails" if failed(e) else "ok" if e <= 1e-4 else "mismatch"  # noqa: E731
    match = "-" if failed(r["fp32"]) else ("yes" if r["fp32"] <= 1e-4 else "no")
    return head + ["ok", r["fp32"] if failed(r["fp32"]) else "ok", f"{match} ({fmt(r['fp32'])})",
                   fmt(r["fp16"]), "; ".join(r["normalization"]),
                   f"{raw(r['raw_fp32'])} / {'fails' if failed(r['raw_fp16']) else 'ok'}"]


def zoo():
    """tests/zoo.py, the test suite's model builder."""
    sys.path.insert(0, str(record.ROOT / "tests"))
    import zoo as module

    return module


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="zoo models to run [default: all of tests/zoo.py]")
    p.add_argument("-o", "--output", type=Path, default=record.RESULTS / "coverage.json",
                   help="result JSON [default: %(default)s]; the Markdown is written beside it")
    args = p.parse_args(argv)
    models = zoo().ZOO
    unknown = sorted(set(args.models or ()) - set(models))
    if unknown:
        p.error(f"not in tests/zoo.py: {', '.join(unknown)}; it has {', '.join(models)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tvmopt-coverage-") as tmp:
        tmp = Path(tmp)
        (tmp / "empty.db").touch()  # SQLite's empty database: every build untuned
        for name, path in zoo().build_all(tmp / "models", args.models).items():
            rows.append(row(name, path, models[name][1], tmp))
            print("| " + " | ".join(map(str, cells(rows[-1]))) + " |", flush=True)
    doc = record.new(SUITE, argv, device="cpu", title="Import coverage: the zoo models on `host`")
    doc["results"] = {"models": rows}
    doc["sections"] = [{"notes": __doc__.split("\n\n", 2)[2].strip(),
                        "table": record.table(COLUMNS, [cells(r) for r in rows])}]
    record.write(doc, args.output)
    return doc
