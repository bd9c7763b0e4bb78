"""The transformer table: BERT-base (batch 1 and 32), GPT-2 small, ViT-B/16 (batch 1 and 64),
CLIP ViT-B/32's text encoder and a Llama-style decoder through `compare`, fp16 on CUDA: tvmopt,
ONNX Runtime's CUDA provider as its users run it, PyTorch eager and torch.compile with SDPA
attention, every row timed call + sync and pipelined, every output checked.

    python -m benchmarks transformers --device cuda --out DIR
    python -m benchmarks transformers --device cuda --out DIR --models gpt2_small,vit_b16
    python -m benchmarks transformers --collect --out DIR     # one table of what DIR holds
    python -m benchmarks transformers --out DIR --tune-trials 0  # and a row after a short tune

Each model is one `compare` run in its own process, so a crash or a CUDA error stays with its
model; its JSON and Markdown go to --out, and a model that fails is a row saying how, its stderr
kept beside as a .log. The summary (transformers_DEVICE_PRECISION_DATE.json and its Markdown)
has every row of every model. Where a call of the GPU host is time-limited, run one model or two
per call and `--collect` their results into one table afterwards, anywhere (it runs nothing).
The models are benchmarks.models' configs with random weights: nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from . import compare, record

SUITE = "transformers"
# name: (factory in benchmarks.models, batch); the large batches are the throughput rows
MODELS = {"bert_base": ("bert_base", 1), "bert_base_b32": ("bert_base", 32),
          "gpt2_small": ("gpt2_small", 1), "vit_b16": ("vit_b16", 1),
          "vit_b16_b64": ("vit_b16", 64), "clip_text_b32": ("clip_text_b32", 1),
          "llama_decoder": ("llama_decoder", 1)}


def compare_command(args, name: str, out: Path) -> list[str]:
    factory, batch = MODELS[name]
    db = args.db
    if args.tune_trials is not None and db is None:  # a tune starts from nothing: its own database
        db = args.out / f"tuned_{name}.db"
        db.unlink(missing_ok=True)
    return [sys.executable, "-m", "benchmarks", "compare", "--torch",
            f"benchmarks.models:{factory}", "--batch", str(batch), "--device", args.device,
            "--precision", args.precision, "--iterations", str(args.iterations),
            "--pipelined", str(args.pipelined), *(["--db", str(db)] if db else []),
            *(["--tune-trials", str(args.tune_trials)] if args.tune_trials is not None else []),
            "-o", str(out)]


def result_path(args, name: str) -> Path:
    return args.out / record.default_path("compare", name, args.device, args.precision).name


def run_model(args, name: str) -> tuple[Path, dict | str]:
    """One model's `compare` in its own process group (killed whole at --timeout), its stderr
    in a log kept only when it fails: (the file it left, its result or the failure line)."""
    out = result_path(args, name)
    log = out.with_suffix(".log")
    out.unlink(missing_ok=True)
    print(f"== {name}", flush=True)
    with open(log, "w") as stderr:
        proc = subprocess.Popen(compare_command(args, name, out), cwd=record.ROOT, stderr=stderr,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            stderr.write(f"\ntimed out after {args.timeout:g} s\n")
            code = None
    if code == 0 and out.exists():
        log.unlink()
        return out, json.loads(out.read_text())
    print(f"{name}: failed: {failure(log)} (log: {log})", file=sys.stderr)
    return log, failure(log)


def failure(log: Path) -> str:
    """The last line of a failed model's log: the exception, or the timeout."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "no output")


def collected(args, names) -> dict:
    """{model: (file, its compare result or failure line)}, the latest in --out of each."""
    found = {}
    for name in names:
        stem = result_path(args, name).stem.rsplit("_", 1)[0]  # less the date
        files = [*args.out.glob(f"{stem}_*.json"), *args.out.glob(f"{stem}_*.log")]
        if files:
            path = max(files, key=lambda f: f.stem)
            found[name] = (path, json.loads(path.read_text()) if path.suffix == ".json"
                           else failure(path))
    return found


def summary(args, argv: list[str], found: dict) -> dict:
    rows = []
    for name, (_, doc) in found.items():
        if isinstance(doc, dict):
            rows += [[name, *row] for row in compare.rows_table(doc["results"]["rows"])["rows"]]
        else:
            rows.append([name, "(every runtime)", *["-"] * 6, "failed", doc])
    docs = [doc for _, doc in found.values() if isinstance(doc, dict)]
    doc = record.new(SUITE, argv, device="gpu" if args.device == "cuda" and not args.collect
                     else "cpu", title=f"Transformers: tvmopt against its peers "
                                       f"({args.precision}, {args.device})")
    if args.collect and docs:  # measured elsewhere: the measuring machine's provenance
        doc["device"], doc["versions"] = docs[0]["device"], docs[0]["versions"]
    doc["results"] = {"models": {name: {"file": path.name, "command": d["command"]
                                        if isinstance(d, dict) else None}
                                 for name, (path, d) in found.items()}}
    doc["files"] = [path.name for path, _ in found.values()]
    doc["sections"] = [{"notes": "One `compare` run per model (its result beside this file has "
                                 f"the commands and versions). {_method(found)}",
                        "table": record.table(["model", *compare.rows_table([])["columns"]],
                                              rows)}]
    record.write(doc, args.out / record.default_path(SUITE, args.device, args.precision).name)
    return doc


def _method(found: dict) -> str:
    """How the models were timed: the one method they share, else each model's."""
    notes = {name: doc["sections"][0]["notes"] for name, (_, doc) in found.items()
             if isinstance(doc, dict)}
    if len(set(notes.values())) <= 1:
        return next(iter(notes.values()), "")
    return " ".join(f"{name}: {text}" for name, text in notes.items())


def main(argv: list[str]) -> dict:
    p = record.parser(SUITE, __doc__)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--out", type=Path, default=record.RESULTS,
                   help="where each model's result and the summary go [default: %(default)s]")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated, of: {', '.join(MODELS)} [default: all]")
    p.add_argument("--precision", choices=["fp32", "fp16"], default=None,
                   help="[default: fp16 on cuda, fp32 on cpu]")
    p.add_argument("--db", type=Path, default=None,
                   help="tuning database for tvmopt's tuned rows [default: untuned rows only]")
    p.add_argument("--tune-trials", type=int, default=None, metavar="N",
                   help="compare's --tune-trials: `tvmopt tune --trials N` first, into --db or "
                        "else a new database per model in --out, and a tuned row")
    p.add_argument("--iterations", type=int, default=200, help="compare's --iterations")
    p.add_argument("--pipelined", type=int, default=300, help="compare's --pipelined")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="per model: past it the model is killed and recorded as timed out")
    p.add_argument("--collect", action="store_true",
                   help="run nothing: the summary of the results already in --out")
    args = p.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        p.error(f"--models: no model {', '.join(unknown)}; one of: {', '.join(MODELS)}")
    args.precision = args.precision or ("fp16" if args.device == "cuda" else "fp32")
    args.out.mkdir(parents=True, exist_ok=True)
    found = (collected(args, names) if args.collect
             else {name: run_model(args, name) for name in names})
    if not found:
        p.error(f"no results in {args.out} for {', '.join(names)}")
    return summary(args, argv, found)
