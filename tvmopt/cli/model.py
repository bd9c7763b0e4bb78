"""Commands along the pipeline: inspect, tune, build, run, and the target presets."""

from __future__ import annotations

import collections
import json
import signal
import sys
from pathlib import Path

import click

from ..errors import TvmoptError
from ..formatting import seconds as _fmt_sec
from ..formatting import shape as _shape
from ..outputs import check_output, written_whole
from .app import (cli, db_option, echo_json, echo_tensors, log, model_options, sha256_option,
                  table)

@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@model_options(target_required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(path, target_spec, model_options, as_json):
    """Describe an ONNX model (or the manifest of a built .so).

    For a model: inputs and outputs (symbolic dims by name), opset, op histogram, ops the
    importer does not support (all of them, with node names), external data files, what tvmopt
    changes in the graph before import (with --input-shape: as the build would) and, with
    --target, the tuning tasks with their FLOPs and weights. For a library: its manifest, with
    the kernel provider of each kernel.
    """
    if path.suffix == ".so":
        from .. import manifest as artifact_manifest

        manifest = artifact_manifest.read(path)
        manifest["integrity"] = artifact_manifest.integrity(path)
        if as_json:
            echo_json(manifest)
            return
        _print_manifest(path, manifest)
        return
    from .. import frontend

    loaded = frontend.load(path)
    info = frontend.describe(loaded).as_dict()
    if target_spec:  # the build's own preparation also says what normalisation changed
        info["target"], info["tasks"], info["normalization"] = _inspect_tasks(
            loaded, target_spec, model_options)
    else:
        info["normalization"] = [{"step": "repair", "detail": r} for r in loaded.repairs]
        info["normalization"] += _normalization(loaded.proto, model_options)
    if as_json:
        echo_json(info)
        return
    click.echo(f"model     {path}  (opset {info['opset']}, {info['producer'] or 'unknown producer'})")
    click.echo(f"sha256    {info['sha256']}")
    echo_tensors(info)
    if info["dynamic_dims"]:
        click.echo("dynamic dims: " + ", ".join(info["dynamic_dims"])
                   + "  (fix them with --input-shape NAME=DIMS)")
    click.echo("ops: " + ", ".join(f"{op}×{n}" for op, n in info["op_histogram"].items()))
    if info["unsupported_ops"]:
        click.echo(f"unsupported ops ({len(info['unsupported_ops'])}):")
        for u in info["unsupported_ops"]:
            click.echo(f"  {u['op_type']} (node {u['node']})")
    else:
        click.echo("unsupported ops: none")
    if info["external_data"]:
        click.echo("external data: " + ", ".join(info["external_data"]))
    click.echo("before import: " + ("no changes needed" if not info["normalization"] else
                                    f"{len(info['normalization'])} changes"))
    for change in info["normalization"]:
        click.echo(f"  {change['step']}: {change['detail']}")
    if target_spec:
        click.echo(f"tuning tasks for {info['target']} ({len(info['tasks'])}):")
        rows = [[t["name"], t["weight"], f"{t['flops'] / 1e6:.2f}"] for t in info["tasks"]]
        click.echo(table(rows, ["task", "weight", "MFLOP/call"]))


def _normalization(model, model_options) -> list[dict]:
    """What `build` would change in the graph before import (dynamic dims stay symbolic here
    unless --input-shape fixes them)."""
    from .. import frontend

    if not model_options.normalize:
        return []
    specs = frontend.graph_inputs(model)
    try:
        if model_options.input_shapes or all(s.is_static for s in specs):
            specs = frontend.resolve_inputs(model, model_options.input_shapes)
        return [c.as_dict() for c in frontend.normalize(model, specs)[1]]
    except TvmoptError as e:  # inspect still reports everything else about the model
        return [{"step": "fails", "detail": str(e)}]


def _inspect_tasks(loaded, target_spec, model_options):
    from .. import targets
    from ..prepare import prepare
    from ..tasks import extract_tasks

    preset = targets.resolve(target_spec)
    prepared = prepare(loaded, preset, model_options)
    tasks = extract_tasks(prepared.mod, preset.tvm_target())
    return (preset.key, [t.as_dict() for t in tasks],
            [c.as_dict() for c in prepared.normalization])


def _print_manifest(path, m):
    click.echo(f"artifact  {path}  (tvmopt {m['tvmopt_version']}, TVM {m['tvm_version']})")
    click.echo(f"model     {m['model']}  sha256 {m['model_sha256']}")
    click.echo(f"target    {m['target_key']}  (preset {m['preset']}, {m['elf_machine']} ELF)")
    click.echo("bytes     " + {"intact": "intact (match the digest recorded at build time)",
                               "damaged": "DAMAGED: they differ from the digest recorded at "
                                          "build time; do not load this file",
                               "unrecorded": "not verifiable (no digest: an older tvmopt)"}
               [m["integrity"]])
    click.echo(f"precision {m['precision']}  layout {m['layout']}")
    if "amdgpu_code_objects" in m:
        click.echo(f"device    AMDGPU code object(s) for {', '.join(m['amdgpu_code_objects']) or 'none'}")
    echo_tensors(m)
    click.echo(f"tuned     {len(m['tuned_tasks'])} of {m['tasks']} tasks "
               f"(database digest {m['database_digest']})")
    if "kernel_providers" in m:  # artifacts from before providers were recorded lack it
        counts = collections.Counter(m["kernel_providers"].values())
        click.echo(f"kernels   {len(m['kernel_providers'])}: "
                   + ", ".join(f"{n} {p}" for p, n in sorted(counts.items())))
    for name, lib in sorted(m.get("library_kernels", {}).items()):
        measured = lib.get("measured_sec")
        what = lib.get("layer") or f"GEMM {lib['gemm']}"  # "gemm": artifacts before convs
        source = lib.get("tactic_source", "default")  # artifacts before predicted tactics
        click.echo(f"  {name}  {what}  tactic {lib['tactic']}  "
                   + (f"(measured {_fmt_sec(measured)})" if measured else
                      f"({source}, unmeasured)"))


def _build_help() -> str:
    from ..graph.pipeline import describe_pipeline

    return (
        "Compile MODEL for a target into one deployable .so (manifest included).\n\n"
        "Tuned schedules for this exact target are taken from the database; untuned tasks use "
        "TVM's default schedules.\n\n\b\nGraph pipeline:\n" + describe_pipeline()
    )


@cli.command(help=_build_help())
@click.argument("model", type=click.Path(path_type=Path))
@model_options(target_required=True)
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="Where to write the .so.")
@db_option
@click.option("--check", is_flag=True,
              help="Run the result and ONNX Runtime on the same random inputs; fail above tolerance.")
@click.option("--tolerance", type=float, default=None,
              help="Max relative error for --check [default: 1e-4 for fp32, 1e-2 for fp16].")
@click.option("--cuda-graph/--no-cuda-graph", default=None,
              help="CUDA: replay the model's static regions as CUDA graphs, one launch per region "
                   "[default: on for CUDA targets].")
def build(model, target_spec, model_options, out, db_path, check, tolerance, cuda_graph):
    from .. import build as build_stage
    from .. import targets

    preset = targets.resolve(target_spec)
    result = build_stage.build(model, preset, out, db_path=db_path, options=model_options,
                               cuda_graph=cuda_graph)
    total = sum(result.seconds.values())
    click.echo(f"built {result.path} for {preset.key} ({model_options.precision}) in {total:.1f} s: "
               f"{len(result.tuned)} of {len(result.tasks)} tasks tuned")
    if check:
        _check(model, result.path, tolerance if tolerance is not None
               else (1e-4 if model_options.precision == "fp32" else 1e-2))


def _check(model_path, lib_path, tolerance):
    from .. import frontend, runtime

    compiled = runtime.load(lib_path)
    inputs = runtime.random_inputs(compiled.inputs)
    reference = model_path
    if any(c.startswith("repair:") for c in compiled.manifest["normalization"]):
        # Checked as mended (ONNX Runtime refuses the original), read again for that case only.
        reference = frontend.load(model_path).proto.SerializeToString()
    mismatches = runtime.compare(compiled(inputs), runtime.onnxruntime_outputs(reference, inputs))
    worst = max(m.max_rel for m in mismatches)
    for m in mismatches:
        click.echo(f"check {m.output}: max abs error {m.max_abs:.3g}, max rel error {m.max_rel:.3g}")
    if not worst <= tolerance:  # inf: NaN or inf where ONNX Runtime has none
        raise TvmoptError(f"--check failed: max relative error {worst:.3g} exceeds {tolerance:g} "
                          "versus ONNX Runtime")
    click.echo(f"check passed: max relative error {worst:.3g} <= {tolerance:g} versus ONNX Runtime")


class _LiveProgress:
    """One self-rewriting status line with a bar on a terminal; plain log lines otherwise."""

    def __init__(self):
        self.tty = sys.stderr.isatty()

    def __call__(self, report, current):
        from ..tuning import format_progress

        line = format_progress(report, current)
        if not self.tty:
            log.info(line)
            return
        done = min(report.trials_total / report.budget, 1.0) if report.budget else 1.0
        bar = "#" * int(done * 24) + "-" * (24 - int(done * 24))
        click.echo(f"\r\x1b[2K[{bar}] {line}", err=True, nl=False)

    def close(self):
        if self.tty:
            click.echo("", err=True)


def _tune_table(report) -> str:
    rows = []
    for t in report.tasks:
        rows.append([
            t.task.name, f"{t.task.flops / 1e6:.2f}", t.task.weight, t.total_trials,
            _fmt_sec(t.best_sec) if t.best_sec else "-",
            f"{t.gflops:.1f}" if t.gflops else "-",
            f"{t.baseline_sec / t.best_sec:.1f}x" if t.baseline_sec and t.best_sec else "-",
            "yes" if t.tensor_core else "no", t.finished or "",
            _fmt_sec(t.library_sec) if t.library_sec else "-",
        ])
    return table(rows, ["task", "MFLOP", "weight", "trials", "best", "GFLOP/s", "vs untuned",
                        "tensor core", "stopped", "library"])


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@model_options(target_required=True)
@db_option
@click.option("--trials", type=int, default=1000, show_default=True,
              help="Total trials over all tasks, counting those already in the database; "
                   "0 measures only the kernel library's tactics.")
@click.option("--trials-per-task", type=int, default=None, help="Cap per task.")
@click.option("--time-budget", default=None, metavar="DURATION",
              help="Wall-clock budget, e.g. 90s, 30m, 1h30m.")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Candidates built and measured per round.")
@click.option("--rpc-tracker", default=None, metavar="HOST:PORT",
              help="Measure on RPC servers registered at this tracker (builds stay local).")
@click.option("--rpc-key", default=None, help="Device key the RPC servers registered with.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
def tune(model, target_spec, model_options, db_path, trials, trials_per_task, time_budget,
         batch_size, rpc_tracker, rpc_key, as_json):
    """Search kernel schedules for MODEL with MetaSchedule + XGBoost; store them in the database.

    Trials go to the tasks where a faster kernel saves the most time; a task stops when it stops
    improving. Re-running the same command resumes: trials already in the database count toward
    --trials. Ctrl-C stops after the current batch. `tvmopt build` then uses the results.
    """
    from .. import targets, tuning

    options = tuning.TuneOptions(
        trials=trials, trials_per_task=trials_per_task, batch_size=batch_size,
        time_budget_s=tuning.parse_duration(time_budget) if time_budget else None,
        rpc_tracker=rpc_tracker, rpc_key=rpc_key)
    options.validate()
    preset = targets.resolve(target_spec)
    command = " ".join(["tvmopt", *map(_quote, sys.argv[1:])])
    progress = _LiveProgress()
    try:
        report = tuning.tune(
            model, preset, db_path=db_path, model_options=model_options, options=options,
            command=command, on_progress=progress)
    finally:
        progress.close()
    if as_json:
        echo_json(report.as_dict())
    else:
        click.echo(_tune_table(report))
        est = report.estimated_latency()
        click.echo(
            f"{report.trials_this_run} trials in {report.elapsed_s:.0f} s "
            f"({report.trials_per_minute():.1f}/min; search {report.seconds['search']:.0f} s, "
            f"build {report.seconds['build']:.0f} s, measure {report.seconds['measure']:.0f} s); "
            f"{report.trials_total} of {report.budget} trials in the database for "
            f"{report.target_key}" + (f"; estimated latency {_fmt_sec(est)}" if est else ""))
        if report.tactics_measured or any(t.library_sec for t in report.tasks):
            click.echo(f"kernel library: {report.tactics_measured} tactics measured in "
                       f"{report.seconds['tactics']:.0f} s; the `library` column is each layer's "
                       "fastest tactic, which the build uses where it beats the best TIR record")
        click.echo(f"stopped: {report.stop_reason}")
    if report.interrupted or (report.trials_total < report.budget and not all(
            t.finished for t in report.tasks)):
        click.echo(f"resume with: {command}", err=True)
    if report.interrupted:  # the shell's code for "stopped by this signal", after a clean stop
        sys.exit(128 + signal.Signals[report.stop_signal or "SIGINT"].value)


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


@cli.command()
@click.argument("library", type=click.Path(path_type=Path))
@click.option("--inputs", "inputs_npz", type=click.Path(path_type=Path),
              help=".npz file holding every input under its ONNX name.")
@click.option("--input", "input_files", multiple=True, metavar="NAME=FILE.npy",
              help="One input from a .npy file (repeatable).")
@click.option("-o", "--output", "out", type=click.Path(),
              help="Save the outputs (by ONNX output name) to this .npz (numpy stores bfloat16 "
                   "as raw 2-byte values: read them with .view(ml_dtypes.bfloat16)).")
@sha256_option
def run(library, inputs_npz, input_files, out, sha256):
    """Run a built .so on inputs from .npz/.npy files; outputs keep their ONNX names."""
    from .. import runtime

    if not inputs_npz and not input_files:
        raise TvmoptError("give the inputs with --inputs FILE.npz or --input NAME=FILE.npy")
    if out is not None:
        out = check_output(out, flag="-o", kind=".npz file", replaceable=_is_npz, protected=[
            (library, "the library being run"), (inputs_npz, "the inputs"),
            *((item.partition("=")[2], "an input") for item in input_files)])
    model = runtime.load(library, sha256=sha256)
    inputs = {}
    if inputs_npz:
        inputs.update(_load_npz(inputs_npz, model.inputs))
    for item in input_files:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise TvmoptError(f"--input {item!r}: expected NAME=FILE.npy")
        inputs[name] = _load_npy(Path(file))
    outputs = model(inputs)
    for name, arr in outputs.items():
        values = arr.astype("float32") if arr.dtype.name == "bfloat16" else arr
        click.echo(f"{name}: {_shape(arr.shape)} {arr.dtype}  "
                   f"min {values.min():.6g} max {values.max():.6g} mean {values.mean():.6g}"
                   if arr.size and values.dtype.kind in "fiu"
                   else f"{name}: {_shape(arr.shape)} {arr.dtype}")
    if out is not None:
        import numpy as np

        with written_whole(out) as partial, open(partial, "wb") as f:
            np.savez(f, **outputs)
        click.echo(f"saved {len(outputs)} output(s) to {out}")


def _is_npz(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"  # a zip archive, as numpy writes .npz files


def _load_npz(path: Path, specs) -> dict:
    import zipfile

    import numpy as np

    _check_input_file(path, "--inputs")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            name = specs[0].name if specs else "NAME"
            raise TvmoptError(f"--inputs {path}: a .npy file (one unnamed array); pass it as "
                              f"--input {name}={path}, or save every input by name with np.savez")
        with loaded as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise TvmoptError(f"--inputs {path}: not a readable .npz file ({e})") from None


def _load_npy(path: Path):
    import numpy as np

    _check_input_file(path, "--input")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise TvmoptError(f"--input {path}: not a readable .npy file ({e})") from None


def _check_input_file(path: Path, flag: str) -> None:
    """Inputs are regular files: a pipe would block the run forever, a device never ends."""
    import stat

    from ..outputs import file_kind

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise TvmoptError(f"{flag} {path}: no such file") from None
    except OSError as e:
        raise TvmoptError(f"{flag} {path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise TvmoptError(f"{flag} {path}: a {file_kind(mode)}, not a file; save the arrays to a "
                          "file with numpy (np.save / np.savez) and pass that")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def targets(ctx, as_json):
    """List the target presets (targets/*.json and $TVMOPT_TARGETS_PATH)."""
    if ctx.invoked_subcommand is not None:
        return
    from .. import targets as presets

    rows = presets.listing()
    if as_json:
        echo_json(rows)
        return
    click.echo(table([[r["name"], r["family"], r["target"], r["description"]] for r in rows],
                      ["preset", "family", "target", "description"]))


@targets.command("show")
@click.argument("name")
def targets_show(name):
    """Print one preset as tvmopt resolves it here (family names pick this machine's device)."""
    from .. import targets as presets

    preset = presets.resolve(name)
    data = preset.as_dict()
    if preset.name != name:
        data["resolved_from"] = name
    data["tvm_target"] = json.loads(str(preset.tvm_target()))
    echo_json(data)
