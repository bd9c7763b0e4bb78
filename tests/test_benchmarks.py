"""The benchmark harness stays runnable and its results stay readable: every module imports, every
tvmopt name it uses still exists, every suite answers --help, the renderer shows each result's
provenance, and every file in benchmarks/results/ is a valid result (or a file one of them names)
with its Markdown rendered from it. Nothing here runs a model or needs a GPU."""

import ast
import importlib
import importlib.util
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import record, render  # noqa: E402
from benchmarks.suites import BY_NAME, SUITES  # noqa: E402

BENCHMARKS = REPO / "benchmarks"
RESULTS = BENCHMARKS / "results"
MODULES = sorted(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                 for p in BENCHMARKS.rglob("*.py") if "results" not in p.parts)
MAX_LINES = 600
# What a benchmark may use of tvmopt without saying why: the CLI (through subprocesses) and these
# modules; None means any name, a set only those names. A module's INTERNAL_API names the
# modules (and packages, with everything in them) it uses beyond these.
PUBLIC = {"tvmopt": None, "tvmopt.build": None, "tvmopt.bench": None, "tvmopt.runtime": None,
          "tvmopt.targets": None, "tvmopt.prepare": {"ModelOptions"}}


def _path(module: str) -> Path:
    path = REPO / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # its parent is not a package, or no longer imports
        return False


def tvmopt_imports(module: str) -> dict[str, set[str]]:
    """{tvmopt module: names imported from it} anywhere in `module`, function bodies included
    (`from tvmopt import build` counts as the module tvmopt.build)."""
    path = _path(module)
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tvmopt":
                    found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom) and not node.level and \
                (node.module or "").split(".")[0] == "tvmopt":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if _is_module(sub):
                    found.setdefault(sub, set())
                else:
                    found.setdefault(node.module, set()).add(alias.name)
    return found


@pytest.mark.parametrize("module", MODULES)
def test_every_benchmark_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("module", MODULES)
def test_every_tvmopt_name_a_benchmark_uses_exists(module):
    """Imports inside functions too: a renamed tvmopt module fails here, not on the GPU host."""
    missing = []
    for name, names in tvmopt_imports(module).items():
        try:
            imported = importlib.import_module(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
            continue
        missing += [f"{name}.{n}" for n in sorted(names) if not hasattr(imported, n)]
    assert not missing, f"{module} uses tvmopt names that no longer exist: {missing}"


@pytest.mark.parametrize("module", MODULES)
def test_benchmarks_use_the_public_api_or_say_why(module):
    declared = getattr(importlib.import_module(module), "INTERNAL_API", ())
    beyond = sorted(f"{name} ({', '.join(sorted(names))})" if names else name
                    for name, names in tvmopt_imports(module).items()
                    if not any(name == d or name.startswith(f"{d}.") for d in declared)
                    and not (name in PUBLIC and (PUBLIC[name] is None or names <= PUBLIC[name])))
    assert not beyond, (f"{module} reaches past tvmopt's public API ({beyond}): use the CLI or "
                        "the public modules, or name them in INTERNAL_API with the reason")


def test_no_module_is_too_long_to_read():
    long = {m: n for m in MODULES if (n := len(_path(m).read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_suite_module_is_in_the_table_and_the_table_names_real_modules():
    table = {s.module for s in SUITES}
    with_main = {m for m in MODULES if m not in {"benchmarks.__main__", "benchmarks.render"}
                 and hasattr(importlib.import_module(m), "main")}
    assert with_main == table, f"not in benchmarks/suites.py: {with_main - table}; " \
                               f"no such module: {table - with_main}"
    for suite in SUITES:
        assert suite.load().SUITE == suite.name
        assert suite.device in ("cpu", "gpu", "cpu|gpu") and suite.description


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    """Every `--help` at once: each is a Python start-up plus imports, not a measurement."""
    commands = {"": ["--help"], "render": ["render", "--help"],
                **{s.name: [s.name, "--help"] for s in SUITES}}
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(commands, pool.map(lambda argv: _run(*argv), commands.values())))


def test_the_entry_point_lists_every_suite_with_its_description(helps):
    done = helps[""]
    assert done.returncode == 0, done.stderr
    for suite in SUITES:
        line = next((l for l in done.stdout.splitlines() if l.split()[:1] == [suite.name]), "")
        assert suite.description in line, f"{suite.name} is not listed with its description"


@pytest.mark.parametrize("name", ["render", *BY_NAME], ids=lambda n: f"{n}-help")
def test_every_suite_answers_help(helps, name):  # ids: conftest skips items keyed "gpu"
    done = helps[name]
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: python -m benchmarks {name}"), done.stdout[:200]


def test_an_unknown_suite_is_refused_with_the_list():
    done = _run("no-such-suite")
    assert done.returncode == 2
    assert "no suite 'no-such-suite'" in done.stderr and "compare" in done.stderr


def _doc() -> dict:
    return {"format": record.FORMAT, "suite": "compare", "title": "A small model",
            "date": "2026-12-01",
            "command": "python -m benchmarks compare m.onnx --iterations 5",
            "device": {"kind": "cpu", "name": "Test CPU 9000", "isa": ["avx2", "fma"], "cores": 2},
            "versions": {"tvmopt": "abc123-dirty", "tvm": "0.27.0", "torch": "2.13.0",
                         "onnxruntime": "1.32.0", "python": "3.11.7"},
            "results": {"rows": [{"runtime": "tvmopt", "p50_ms": 1.5}]},
            "sections": [{"heading": "Latency", "notes": "One run.",
                          "table": record.table(["runtime", "p50 ms"], [["tvmopt", 1.5],
                                                                        ["a|b", None]])}],
            "notes": "Measured while idle.", "files": ["profile.txt"]}


def test_the_renderer_shows_provenance_tables_and_notes(tmp_path):
    path = record.write(_doc(), tmp_path / "r.json")
    md = path.with_suffix(".md").read_text()
    for expected in ("# A small model", "| date | 2026-12-01 |",
                     "| device | Test CPU 9000 (ISA avx2 fma; 2 cores) |",
                     "tvmopt abc123-dirty, tvm 0.27.0, torch 2.13.0, onnxruntime 1.32.0, "
                     "python 3.11.7", "| command | `python -m benchmarks compare m.onnx "
                     "--iterations 5` |", "## Latency", "One run.", "| runtime | p50 ms |",
                     "| tvmopt | 1.5 |", "| a\\|b | - |", "## Notes\n\nMeasured while idle.",
                     "[profile.txt](profile.txt)", "r.json"):
        assert expected in md, f"{expected!r} not in:\n{md}"
    assert json.loads(path.read_text()) == _doc()


def test_a_document_without_its_provenance_is_refused(tmp_path):
    doc = _doc()
    del doc["device"], doc["versions"]["tvm"]
    doc["sections"][0]["table"]["rows"].append(["short"])
    wrong = record.problems(doc)
    assert wrong == ["no 'device'", "no version of 'tvm'",
                     "section 0: a table row's width differs from its columns'"], wrong
    with pytest.raises(ValueError, match="no 'device'"):
        record.write(doc, tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_a_new_document_records_where_when_and_how_it_ran():
    doc = record.new("compare", ["m.onnx", "--shape", "x=1x 3"], title="t", device="cpu")
    assert record.problems(doc) == []
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", doc["date"])
    assert doc["command"] == "python -m benchmarks compare m.onnx --shape 'x=1x 3'"
    assert doc["device"]["kind"] == "cpu" and doc["device"]["name"]
    assert isinstance(doc["device"]["isa"], list)
    assert re.fullmatch(r"([0-9a-f]{40}(-dirty)?|unknown)", doc["versions"]["tvmopt"])


RESULT_JSONS = sorted(RESULTS.glob("*.json"))


@pytest.mark.parametrize("path", RESULT_JSONS, ids=lambda p: p.name)
def test_every_result_is_valid_and_its_markdown_is_rendered_from_it(path):
    doc = json.loads(path.read_text())
    assert record.problems(doc) == []
    assert doc["suite"] in BY_NAME or doc["suite"] == "manual"
    assert re.match(r"(\d{4}-\d{2}-\d{2}|unknown)", doc["date"]), doc["date"]
    missing = [f for f in doc.get("files", []) if not (RESULTS / f).is_file()]
    assert not missing, f"{path.name} names files that are not beside it: {missing}"
    md = path.with_suffix(".md")
    assert md.is_file() and md.read_text() == render.render(doc, path.name), (
        f"{md.name} is not what {path.name} renders to: edit the JSON and run "
        f"`python -m benchmarks render {path.relative_to(REPO)}`")


def test_every_file_in_results_is_a_result_or_named_by_one():
    named = {f for p in RESULT_JSONS for f in json.loads(p.read_text()).get("files", [])}
    stray = [p.name for p in RESULTS.iterdir()
             if not (p.suffix == ".json" or (p.suffix == ".md" and p.with_suffix(".json").exists())
                     or p.name in named)]
    assert not stray, f"neither a result JSON, its Markdown, nor named by one: {stray}"


def test_the_transformer_table_names_factories_that_take_a_batch():
    import inspect

    from benchmarks import models, transformers_table

    for name, (factory, batch) in transformers_table.MODELS.items():
        fn = getattr(models, factory, None)
        assert callable(fn), f"{name}: benchmarks.models has no factory {factory}"
        assert "batch" in inspect.signature(fn).parameters, f"{factory} takes no batch"
    assert transformers_table.MODELS["bert_base_b32"][1] == 32
    assert transformers_table.MODELS["vit_b16_b64"][1] == 64


def test_a_tuned_transformer_row_tunes_each_model_into_a_database_of_its_own(tmp_path):
    from argparse import Namespace

    from benchmarks import compare, transformers_table

    args = Namespace(device="cuda", precision="fp16", iterations=5, pipelined=5, db=None,
                     tune_trials=0, out=tmp_path)
    stale = tmp_path / "tuned_gpt2_small.db"
    stale.write_text("records of an earlier run")
    command = transformers_table.compare_command(args, "gpt2_small", tmp_path / "r.json")
    parsed = compare.parser().parse_args(command[command.index("compare") + 1:])
    assert (parsed.tune_trials, parsed.db) == (0, stale)
    assert not stale.exists(), "a tune that starts from nothing must not read an earlier one"
    args.tune_trials = None
    command = transformers_table.compare_command(args, "gpt2_small", tmp_path / "r.json")
    parsed = compare.parser().parse_args(command[command.index("compare") + 1:])
    assert (parsed.tune_trials, parsed.db) == (None, None)


def test_degenerate_outputs_are_flagged():
    import numpy as np

    from benchmarks import compare

    rng = np.random.default_rng(0)
    item = rng.standard_normal(8)
    assert compare.degenerate(rng.standard_normal((2, 8))) is None
    assert compare.degenerate(np.zeros((1, 1000), np.float16)) == "all zero"
    assert compare.degenerate(np.full((1, 8), 0.25)) == "constant"
    assert compare.degenerate(np.stack([item, item])) == "the same for every batch item"
    reference = {"output": rng.standard_normal((2, 8)).astype(np.float32)}
    assert compare.output_problems({"output": reference["output"] + 1e-4}, reference, 1e-2) == []
    zeros = compare.output_problems({"output": np.zeros((2, 8))}, reference, 1e-2)
    assert zeros[0] == "output: degenerate (all zero)" and zeros[1].startswith("max rel err")
    nan = reference["output"].copy()
    nan[0, 0] = np.nan
    assert "output: NaN or inf" in compare.output_problems({"output": nan}, reference, 1e-2)


def _compare_result(out_dir, model: str, iterations: int = 2) -> dict:
    """A compare result of made-up rows, as `compare` writes it."""
    import argparse

    from benchmarks import compare

    args = argparse.Namespace(
        torch_factory=f"benchmarks.models:{model}", model=None, precision="fp32", layout="NCHW",
        batch=None, device="cpu", warmup=1, iterations=iterations, pipelined=3, tolerance=1e-2,
        output=out_dir / record.default_path("compare", model, "cpu", "fp32").name)
    rows = [{"runtime": "tvmopt untuned", "call_sync_p50_ms": 1.0, "call_sync_p90_ms": 1.2,
             "pipelined_ms": 0.8, "max_rel_err": 1e-3, "output_check": "ok", "detail": "a"},
            {"runtime": "ONNX Runtime (CPU)", "call_sync_p50_ms": 2.0, "call_sync_p90_ms": 2.5,
             "pipelined_ms": 2.0, "max_rel_err": 0.0, "output_check": "ok", "detail": "b"},
            compare.failed_row("torch.compile default", RuntimeError("no compiler\ndetails"))]
    return compare.report(args, [], rows, {"output": [[0.0, 0.0]]})


def test_a_compare_result_has_both_timings_for_every_row(tmp_path):
    doc = _compare_result(tmp_path, "gpt2_small")
    assert record.problems(doc) == []
    ours, ort, failed = doc["results"]["rows"]
    assert (ours["vs_onnxruntime_call_sync"], ours["vs_onnxruntime_pipelined"]) == (2.0, 2.5)
    assert failed["call_sync_p50_ms"] is None and failed["vs_onnxruntime_pipelined"] is None
    assert doc["results"]["reference_degenerate"] == ["output: all zero"]
    md = next(tmp_path.glob("compare_gpt2_small_*.md")).read_text()
    for expected in ("| call+sync p50 ms | call+sync p90 ms | pipelined ms/call |",
                     "| tvmopt untuned | 1.0000 | 1.2000 | 0.8000 | 2.00x | 2.50x |",
                     "| torch.compile default | - | - | - | - | - | - | failed | failed: no "
                     "compiler |", "reference itself is degenerate"):
        assert expected in md, f"{expected!r} not in:\n{md}"


def test_the_transformer_summary_collects_results_and_failures(tmp_path):
    from benchmarks import transformers_table

    _compare_result(tmp_path, "gpt2_small")
    log = tmp_path / record.default_path("compare", "vit_b16", "cpu", "fp32").with_suffix(
        ".log").name
    log.write_text("Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n\n")
    doc = transformers_table.main(["--collect", "--device", "cpu", "--out", str(tmp_path),
                                   "--models", "gpt2_small,vit_b16,clip_text_b32"])
    rows = doc["sections"][0]["table"]["rows"]
    assert [r[:2] for r in rows] == [["gpt2_small", "tvmopt untuned"],
                                     ["gpt2_small", "ONNX Runtime (CPU)"],
                                     ["gpt2_small", "torch.compile default"],
                                     ["vit_b16", "(every runtime)"]]
    assert rows[-1][-2:] == ["failed", "RuntimeError: CUDA out of memory"]
    assert sorted(doc["files"]) == sorted(p.name for p in tmp_path.glob("compare_*")
                                          if p.suffix in (".json", ".log"))
    assert list(tmp_path.glob("transformers_cpu_fp32_*.md"))


def test_the_transformer_summary_states_each_models_method_where_they_differ(tmp_path):
    """Models timed with other call counts (one per device call) each keep their own method in
    the summary's notes, not the first model's for all."""
    from benchmarks import transformers_table

    _compare_result(tmp_path, "gpt2_small", iterations=2)
    _compare_result(tmp_path, "vit_b16", iterations=7)
    collect = ["--collect", "--device", "cpu", "--out", str(tmp_path)]
    notes = transformers_table.main([*collect, "--models", "gpt2_small,vit_b16"])["sections"][0]
    assert "gpt2_small: " in notes["notes"] and "of 2 calls" in notes["notes"]
    assert "vit_b16: " in notes["notes"] and "of 7 calls" in notes["notes"]
    alone = transformers_table.main([*collect, "--models", "vit_b16"])["sections"][0]["notes"]
    assert "vit_b16: " not in alone and "of 7 calls" in alone


def test_the_tune_shortlist_benchmark_plans_what_tune_compiles(tmp_path):
    """A BERT-style encoder for Hopper with an empty database: every layer the library runs is
    on the shortlist (it has room), each with its predicted tactic, within tune's instance cap."""
    import zoo
    from benchmarks import tune_shortlist
    from tvmopt.tuning.library_tactics import MAX_INSTANCES

    path = zoo.bert_encoder(tmp_path / "bert.onnx", hidden=64, heads=2)
    plan, target = tune_shortlist.shortlist(
        path, {"input_ids": (2, 16), "attention_mask": (2, 16)}, None)
    assert str(target.attrs["arch"]) == "sm_90a" and plan.left == 0
    assert 0 < len(plan.sources) <= MAX_INSTANCES
    ops = {p.layer.op.name for p in plan.measuring}
    assert {"gemm", "layer_norm"} <= ops and all(p.todo for p in plan.measuring)
