"""The CPU figures (issue 15): each model against ONNX Runtime on the same cores, untuned, and tuned
from a database tuned for at most --tune-budget per model.

    python -m benchmarks cpu --work /tmp/cpu                      # export, compare untuned
    python -m benchmarks cpu --work /tmp/cpu --tune-budget 12m    # tune each first (resumes)
    python -m benchmarks cpu --work /tmp/cpu --models small_resnet

Models (written into --work once, then reused, so tuned databases keep matching): the onnx
package's light_resnet50 (its weights are constant: a speed model only), the small ResNet of
benchmarks.models at 1x3x64x64, and the coverage zoo's BERT-style encoder at 1x128
(tests/zoo.py). A database WORK/MODEL.db, when there, gives each model its tuned row. The digits
MLP at batch 450 is not here: `python examples/digits/run.py` trains and measures it itself.
Writes one compare result per model and a summary (cpu_DATE.json) beside them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from . import compare, models, record

SUITE = "cpu"
MODELS = ("light_resnet50", "small_resnet", "bert_encoder")
SHAPES = {"bert_encoder": ["input_ids=1x128", "attention_mask=1x128"]}
ITERATIONS = {"light_resnet50": 30}  # 30 ms a call: 300 would take minutes for nothing


def export(work: Path, model: str) -> Path:
    path = work / f"{model}.onnx"
    if path.exists():
        return path
    if model == "light_resnet50":
        import onnx

        light = Path(onnx.__file__).parent / "backend/test/data/light"
        shutil.copy(light / "light_resnet50.onnx", path)
    elif model == "small_resnet":
        net, example = models.torch_model("benchmarks.models:small_resnet", "1x3x64x64")
        models.export_torch(net, example, path)
    else:
        sys.path.insert(0, str(record.ROOT / "tests"))
        import zoo

        zoo.build_all(work, [model])
    print(f"exported {path}")
    return path


def tune(work: Path, model: str, budget: str) -> None:
    """`tvmopt tune` into WORK/MODEL.db until every task converges or the budget runs out."""
    shapes = [f"--input-shape={s}" for s in SHAPES.get(model, [])]
    subprocess.run([sys.executable, "-m", "tvmopt", "tune", str(work / f"{model}.onnx"),
                    "--target", "host", "--db", str(work / f"{model}.db"), "--trials", "3000",
                    "--time-budget", budget, *shapes], check=True)


def compare_args(work: Path, model: str, out: Path) -> list[str]:
    db = work / f"{model}.db"
    return [str(work / f"{model}.onnx"), "--device", "cpu", "--iterations",
            str(ITERATIONS.get(model, 300)), "--warmup", "10",
            *(["--db", str(db)] if db.exists() else []),
            *(f"--shape={s}" for s in SHAPES.get(model, [])),
            "-o", str(out)]


def summary_row(model: str, result: dict) -> list[str]:
    p50 = {r["runtime"]: r["call_sync_p50_ms"] for r in result["results"]["rows"]}
    ort = next(v for k, v in p50.items() if k.startswith("ONNX Runtime"))
    untuned, tuned = p50.get("tvmopt untuned"), p50.get("tvmopt tuned")
    ms = lambda v: "-" if v is None else f"{v:.4f} ms"  # noqa: E731
    ratio = lambda v: "-" if v is None or ort is None else f"{v / ort:.2f}x"  # noqa: E731
    return [model, ms(untuned), ms(tuned), ms(ort), ratio(untuned), ratio(tuned)]


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--work", type=Path, required=True,
                   help="directory for the exported models and their databases (kept between "
                        "runs)")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--tune-budget", default=None, metavar="DURATION",
                   help="tune each model for at most this long first (`tvmopt tune "
                        "--time-budget`, e.g. 12m) [default: no tuning]")
    p.add_argument("--output-dir", type=Path, default=record.RESULTS,
                   help="where the compare results and the summary go [default: %(default)s]")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    rows, files = [], {}
    for model in args.models:
        export(args.work, model)
        if args.tune_budget:
            tune(args.work, model, args.tune_budget)
        out = args.output_dir / record.default_path("compare", model, "cpu").name
        rows.append(summary_row(model, compare.main(compare_args(args.work, model, out))))
        files[model] = out.name
    doc = record.new(SUITE, argv, device="cpu", title="CPU: tvmopt against ONNX Runtime on the "
                                                      "same cores")
    doc["results"] = {"compare_results": files, "tune_budget": args.tune_budget}
    doc["sections"] = [{
        "notes": "One compare run per model (its JSON beside this file has every row); ratios "
                 "are tvmopt's latency over ONNX Runtime's, below 1.0x is faster.",
        "table": record.table(["model", "tvmopt untuned", "tvmopt tuned", "ONNX Runtime",
                               "untuned / ORT", "tuned / ORT"], rows)}]
    record.write(doc, args.output_dir / record.default_path(SUITE).name)
    return doc
