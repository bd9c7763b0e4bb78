"""The `tvmopt` command: argument parsing and printing only; the work is in the stage modules."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import TvmoptError, first_line

log = logging.getLogger("tvmopt")


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if verbose == 0 else
                                           "%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("tvmopt").setLevel(level)
    # The ONNX importer warns about every dynamic dim; tvmopt reports those itself.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def _table(rows: list[list], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def db_option(f):
    return click.option(
        "--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), envvar="TVMOPT_DB",
        show_envvar=True, default=None,
        help="Tuning database (SQLite) [default: tuning_logs/tvmopt.db].")(f)


def input_shape_option(f):
    return click.option(
        "--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
        help="Fix an input's shape, e.g. data=1x3x224x224 (repeatable). Needed for dynamic dims.",
    )(f)


def _parse_shapes(values) -> dict[str, tuple[int, ...]]:
    from .frontend import parse_input_shape

    return dict(parse_input_shape(v) for v in values)


class _Group(click.Group):
    """Turns every TvmoptError into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TvmoptError as e:
            raise click.ClickException(str(e)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as e:  # a bug in tvmopt or TVM: still one line unless asked
            if os.environ.get("TVMOPT_DEBUG"):
                raise
            raise click.ClickException(
                f"internal error: {type(e).__name__}: {first_line(e)} "
                "(set TVMOPT_DEBUG=1 for the traceback and report it)") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tvmopt")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose):
    """tvmopt: compile ONNX models with TVM for CUDA, ROCm, x86 and ARM.

    Typical use: `tvmopt build model.onnx --target host -o model.so`, then
    `tvmopt run model.so --inputs in.npz`.
    """
    _setup_logging(verbose)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--target", "target_spec", help="Also list the tuning tasks for this target.")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(path, target_spec, input_shapes, as_json):
    """Describe an ONNX model (or the manifest of a built .so).

    For a model: inputs and outputs (symbolic dims by name), opset, op histogram, ops the
    importer does not support (all of them, with node names), external data files, what tvmopt
    changes in the graph before import (with --input-shape: as the build would) and, with
    --target, the tuning tasks with their FLOPs and weights.
    """
    from . import frontend

    if path.suffix == ".so":
        from .runtime import read_manifest

        manifest = read_manifest(path)
        if as_json:
            _echo_json(manifest)
            return
        _print_manifest(path, manifest)
        return
    model, data_files = frontend.load_model_and_data(path)
    info = frontend.describe(model, path, data_files).as_dict()
    if target_spec:  # the build's own preparation also says what normalisation changed
        info["target"], info["tasks"], info["normalization"] = _inspect_tasks(
            path, target_spec, input_shapes)
    else:
        info["normalization"] = _normalization(model, _parse_shapes(input_shapes))
    if as_json:
        _echo_json(info)
        return
    click.echo(f"model     {path}  (opset {info['opset']}, {info['producer'] or 'unknown producer'})")
    click.echo(f"sha256    {info['sha256']}")
    _echo_tensors(info)
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
        click.echo(_table(rows, ["task", "weight", "MFLOP/call"]))


def _normalization(model, shapes: dict) -> list[dict]:
    """What `build` would change in the graph before import (dynamic dims stay symbolic here
    unless --input-shape fixes them)."""
    from . import frontend, normalize

    specs = frontend.graph_inputs(model)
    if shapes or all(s.is_static for s in specs):
        specs = frontend.resolve_inputs(model, shapes)
    try:
        return [c.as_dict() for c in normalize.normalize(model, specs)[1]]
    except TvmoptError as e:  # inspect still reports everything else about the model
        return [{"step": "fails", "detail": str(e)}]


def _echo_tensors(described: dict) -> None:
    """The inputs and outputs of a model description or an artifact manifest."""
    for kind in ("inputs", "outputs"):
        click.echo(f"{kind}:")
        for t in described[kind]:
            click.echo(f"  {t['name']}: {_shape(t['shape'])} {t['dtype']}")


def _inspect_tasks(path, target_spec, input_shapes):
    from . import build, targets, tuning

    preset = targets.resolve(target_spec)
    prepared = build.prepare(path, preset, build.BuildOptions(_parse_shapes(input_shapes)))
    tasks = tuning.extract_tasks(prepared.mod, preset.tvm_target())
    return (preset.key, [t.as_dict() for t in tasks],
            [c.as_dict() for c in prepared.normalization])


def _print_manifest(path, m):
    click.echo(f"artifact  {path}  (tvmopt {m['tvmopt_version']}, TVM {m['tvm_version']})")
    click.echo(f"model     {m['model']}  sha256 {m['model_sha256']}")
    click.echo(f"target    {m['target_key']}  (preset {m['preset']}, {m['elf_machine']} ELF)")
    click.echo(f"precision {m['precision']}  layout {m['layout']}")
    if "amdgpu_code_objects" in m:
        click.echo(f"device    AMDGPU code object(s) for {', '.join(m['amdgpu_code_objects']) or 'none'}")
    _echo_tensors(m)
    click.echo(f"tuned     {len(m['tuned_tasks'])} of {m['tasks']} tasks "
               f"(database digest {m['database_digest']})")


def _build_help() -> str:
    from .passes import describe_pipeline

    return (
        "Compile MODEL for a target into one deployable .so (manifest included).\n\n"
        "Tuned schedules for this exact target are taken from the database; untuned tasks use "
        "TVM's default schedules.\n\n\b\nGraph pipeline:\n" + describe_pipeline()
    )


@cli.command(help=_build_help())
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "target_spec", required=True,
              help="Preset name (see targets/, e.g. host) or a TVM target JSON object.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the .so.")
@db_option
@input_shape_option
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True,
              help="Convolution layout; NHWC runs the layout-nhwc pass.")
@click.option("--check", is_flag=True,
              help="Run the result and ONNX Runtime on the same random inputs; fail above tolerance.")
@click.option("--tolerance", type=float, default=None,
              help="Max relative error for --check [default: 1e-4 for fp32, 1e-2 for fp16].")
@click.option("--cuda-graph", is_flag=True,
              help="CUDA only: replay the model's static regions as CUDA graphs (fewer launches).")
@click.option("--no-normalize", "raw", is_flag=True,
              help="Import the ONNX graph as it is, without tvmopt's clean-up (see inspect).")
def build(model, target_spec, out, db_path, input_shapes, precision, layout, check, tolerance,
          cuda_graph, raw):
    from . import build as build_stage
    from . import targets

    preset = targets.resolve(target_spec)
    options = build_stage.BuildOptions(_parse_shapes(input_shapes), precision, layout, cuda_graph,
                                       normalize=not raw)
    result = build_stage.build(model, preset, out, db_path=db_path, options=options)
    total = sum(result.seconds.values())
    click.echo(f"built {result.path} for {preset.key} ({precision}) in {total:.1f} s: "
               f"{len(result.tuned)} of {len(result.tasks)} tasks tuned")
    if check:
        _check(model, result.path, tolerance if tolerance is not None
               else (1e-4 if precision == "fp32" else 1e-2))


def _check(model_path, lib_path, tolerance):
    from . import runtime

    compiled = runtime.load(lib_path)
    inputs = runtime.random_inputs(compiled.inputs)
    mismatches = runtime.compare(compiled(inputs), runtime.onnxruntime_outputs(model_path, inputs))
    worst = max(m.max_rel for m in mismatches)
    for m in mismatches:
        click.echo(f"check {m.output}: max abs error {m.max_abs:.3g}, max rel error {m.max_rel:.3g}")
    if worst > tolerance:
        raise TvmoptError(f"--check failed: max relative error {worst:.3g} exceeds {tolerance:g} "
                          "versus ONNX Runtime")
    click.echo(f"check passed: max relative error {worst:.3g} <= {tolerance:g} versus ONNX Runtime")


@cli.command()
@click.argument("library", type=click.Path(path_type=Path))
@click.option("--batch", type=int, default=None,
              help="Samples per inference; must match the artifact [default: its batch].")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed calls first.")
@click.option("--iterations", type=int, default=None,
              help="Timed calls [default: 200, unless --duration].")
@click.option("--duration", "duration_s", type=float, default=None, metavar="SECONDS",
              help="Time calls for this long instead of a fixed count.")
@click.option("--cuda-graph/--no-cuda-graph", default=None,
              help="Require that the artifact was built with (or without) CUDA graphs "
                   "[default: as built].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench(library, batch, warmup, iterations, duration_s, cuda_graph, as_json):
    """Latency percentiles, throughput, copy times and memory of a built .so, like trtexec.

    Compute is timed per call on the device (CUDA events on a GPU) with inputs already there;
    host-to-device and device-to-host copies are timed apart. A warning is printed when the
    run is unstable (coefficient of variation above 10%) or too short for tail percentiles.
    """
    from . import bench as bench_stage

    report = bench_stage.bench(library, bench_stage.BenchOptions(
        batch, warmup, iterations, duration_s, cuda_graph))
    for warning in report.warnings:
        log.warning("warning: %s", warning)
    if as_json:
        _echo_json(report.as_dict())
        return
    lat = report.latency_ms
    click.echo(f"artifact   {report.artifact}  ({report.target_key} on {report.device})")
    click.echo(f"runs       {report.iterations} timed after {report.warmup} warmup, batch "
               f"{report.batch}, CUDA graph {'on' if report.cuda_graph else 'off'}")
    click.echo(f"latency    min {lat.min:.4f}  mean {lat.mean:.4f}  p50 {lat.p50:.4f}  p90 "
               f"{lat.p90:.4f}  p95 {lat.p95:.4f}  p99 {lat.p99:.4f}  max {lat.max:.4f} ms "
               f"(CV {lat.cv:.1%})")
    click.echo(f"throughput {report.inferences_per_s:.1f} inferences/s, "
               f"{report.samples_per_s:.1f} samples/s")
    if report.h2d_ms is not None:
        click.echo(f"copies     host->device {report.h2d_ms:.4f} ms, device->host "
                   f"{report.d2h_ms:.4f} ms; end to end (p50) {report.end_to_end_ms:.4f} ms")
    if report.peak_memory_bytes is not None:
        click.echo(f"memory     {report.peak_memory_bytes / 2**20:.1f} MiB ({report.memory_measure})")


@cli.command()
@click.argument("library", type=click.Path(path_type=Path))
@click.option("--repeat", type=int, default=20, show_default=True, help="Timed repeats.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profile(library, repeat, as_json):
    """Time per kernel of a built .so, slowest first, with its tuning task and whether it was tuned."""
    from . import bench as bench_stage

    if repeat < 1:
        raise TvmoptError("--repeat must be at least 1")
    latency_us, rows = bench_stage.profile(library, repeat=repeat)
    if as_json:
        _echo_json({"latency_us": latency_us, "kernels": [r.as_dict() for r in rows]})
        return
    table = [[r.kernel, r.task or "-", {True: "yes", False: "no", None: "-"}[r.tuned], r.calls,
              f"{r.mean_us:.2f}", f"{r.total_us:.2f}", f"{r.share:.1%}"] for r in rows]
    click.echo(_table(table, ["kernel", "task", "tuned", "calls", "us/call", "us total", "share"]))
    click.echo(f"model latency {latency_us:.2f} us (median of {repeat})")


class _LiveProgress:
    """One self-rewriting status line with a bar on a terminal; plain log lines otherwise."""

    def __init__(self):
        self.tty = sys.stderr.isatty()

    def __call__(self, report, current):
        from .tuning import format_progress

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
    from .tuning import _fmt_sec

    rows = []
    for t in report.tasks:
        rows.append([
            t.task.name, f"{t.task.flops / 1e6:.2f}", t.task.weight, t.total_trials,
            _fmt_sec(t.best_sec) if t.best_sec else "-",
            f"{t.gflops:.1f}" if t.gflops else "-",
            "yes" if t.tensor_core else "no", t.finished or "",
        ])
    return _table(rows, ["task", "MFLOP", "weight", "trials", "best", "GFLOP/s", "tensor core",
                         "stopped"])


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "target_spec", required=True,
              help="Preset name (see targets/, e.g. host) or a TVM target JSON object.")
@db_option
@click.option("--trials", type=int, default=1000, show_default=True,
              help="Total trials over all tasks, counting those already in the database.")
@click.option("--trials-per-task", type=int, default=None, help="Cap per task.")
@click.option("--time-budget", default=None, metavar="DURATION",
              help="Wall-clock budget, e.g. 90s, 30m, 1h30m.")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Candidates built and measured per round.")
@input_shape_option
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True)
@click.option("--rpc-tracker", default=None, metavar="HOST:PORT",
              help="Measure on RPC servers registered at this tracker (builds stay local).")
@click.option("--rpc-key", default=None, help="Device key the RPC servers registered with.")
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
@click.option("--no-normalize", "raw", is_flag=True,
              help="Import the ONNX graph as it is (use the same choice for build).")
def tune(model, target_spec, db_path, trials, trials_per_task, time_budget, batch_size,
         input_shapes, precision, layout, rpc_tracker, rpc_key, as_json, raw):
    """Search kernel schedules for MODEL with MetaSchedule + XGBoost; store them in the database.

    Trials go to the tasks where a faster kernel saves the most time; a task stops when it stops
    improving. Re-running the same command resumes: trials already in the database count toward
    --trials. Ctrl-C stops after the current batch. `tvmopt build` then uses the results.
    """
    from . import build as build_stage
    from . import targets, tuning

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
            model, preset, db_path=db_path, options=options, command=command,
            build_options=build_stage.BuildOptions(_parse_shapes(input_shapes), precision, layout,
                                                   normalize=not raw),
            on_progress=progress)
    finally:
        progress.close()
    if as_json:
        _echo_json(report.as_dict())
    else:
        click.echo(_tune_table(report))
        est = report.estimated_latency()
        click.echo(
            f"{report.trials_this_run} trials in {report.elapsed_s:.0f} s "
            f"({report.trials_per_minute():.1f}/min; search {report.seconds['search']:.0f} s, "
            f"build {report.seconds['build']:.0f} s, measure {report.seconds['measure']:.0f} s); "
            f"{report.trials_total} of {report.budget} trials in the database for "
            f"{report.target_key}" + (f"; estimated latency {tuning._fmt_sec(est)}" if est else ""))
        click.echo(f"stopped: {report.stop_reason}")
    if report.interrupted or (report.trials_total < report.budget and not all(
            t.finished for t in report.tasks)):
        click.echo(f"resume with: {command}", err=True)
    if report.interrupted:
        sys.exit(130)  # the shell's code for "stopped by Ctrl-C", after a clean stop


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


@cli.command()
@click.argument("library", type=click.Path(path_type=Path))
@click.option("--inputs", "inputs_npz", type=click.Path(path_type=Path),
              help=".npz file holding every input under its ONNX name.")
@click.option("--input", "input_files", multiple=True, metavar="NAME=FILE.npy",
              help="One input from a .npy file (repeatable).")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Save the outputs (by ONNX output name) to this .npz.")
def run(library, inputs_npz, input_files, out):
    """Run a built .so on inputs from .npz/.npy files; outputs keep their ONNX names."""
    from . import runtime

    if not inputs_npz and not input_files:
        raise TvmoptError("give the inputs with --inputs FILE.npz or --input NAME=FILE.npy")
    model = runtime.load(library)
    inputs = {}
    if inputs_npz:
        inputs.update(_load_npz(inputs_npz))
    for item in input_files:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise TvmoptError(f"--input {item!r}: expected NAME=FILE.npy")
        inputs[name] = _load_npy(Path(file))
    outputs = model(inputs)
    for name, arr in outputs.items():
        click.echo(f"{name}: {_shape(arr.shape)} {arr.dtype}  "
                   f"min {arr.min():.6g} max {arr.max():.6g} mean {arr.mean():.6g}"
                   if arr.size and arr.dtype.kind in "fiu" else f"{name}: {_shape(arr.shape)} {arr.dtype}")
    if out:
        import numpy as np

        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, **outputs)
        click.echo(f"saved {len(outputs)} output(s) to {out}")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def targets(ctx, as_json):
    """List the target presets (targets/*.json and $TVMOPT_TARGETS_PATH)."""
    if ctx.invoked_subcommand is not None:
        return
    from . import targets as presets

    rows = presets.listing()
    if as_json:
        _echo_json(rows)
        return
    click.echo(_table([[r["name"], r["family"], r["target"], r["description"]] for r in rows],
                      ["preset", "family", "target", "description"]))


@targets.command("show")
@click.argument("name")
def targets_show(name):
    """Print one preset as tvmopt resolves it here (family names pick this machine's device)."""
    from . import targets as presets

    preset = presets.resolve(name)
    data = preset.as_dict()
    if preset.name != name:
        data["resolved_from"] = name
    data["tvm_target"] = json.loads(str(preset.tvm_target()))
    _echo_json(data)


@cli.group()
def db():
    """Inspect and share the tuning database (SQLite; see --db / TVMOPT_DB).

    Many processes on one host can tune into one file at once. Across hosts, copy files and
    `tvmopt db merge` them: SQLite's WAL mode is not safe on a network filesystem.
    """


def _open_db(db_path, readonly=False):
    from .database import open_database

    return open_database(db_path, readonly=readonly)


def _us(seconds) -> str:
    return f"{seconds * 1e6:.1f}"


@db.command("stats")
@db_option
@click.option("--json", "as_json", is_flag=True)
def db_stats(db_path, as_json):
    """Per target: workloads, records, failures and the best latency of each workload."""
    with _open_db(db_path, readonly=True) as store:
        stats = store.stats()
        path = store.path
    if as_json:
        _echo_json({"path": str(path), "targets": stats})
        return
    if not stats:
        click.echo(f"{path}: no tuning records yet")
        return
    for t in stats:
        click.echo(f"{t['target_key']}: {t['workloads']} workloads, {t['records']} records, "
                   f"{t['failures']} failed candidates")
        rows = [[b["workload_id"], b["name"] or "", b["ir_sha256"][:12], b["records"],
                 _us(b["best_sec"])] for b in t["best"]]
        click.echo(_table(rows, ["id", "task", "ir sha256", "records", "best µs"]) + "\n")


@db.command("show")
@click.argument("workload")
@db_option
@click.option("--top", default=5, show_default=True, help="Records shown per target.")
@click.option("--ir", "show_ir", is_flag=True, help="Also print the workload's TIR.")
def db_show(workload, db_path, top, show_ir):
    """One workload (by id, IR-hash prefix or task name): its best records per target."""
    with _open_db(db_path, readonly=True) as store:
        matches = store.find_workloads(workload)
        if not matches:
            raise TvmoptError(f"no workload matches {workload!r}; `tvmopt db stats` lists them")
        if len(matches) > 1:
            raise TvmoptError(f"{workload!r} matches {len(matches)} workloads (ids "
                              f"{', '.join(str(m['id']) for m in matches[:10])}); give an id")
        w = matches[0]
        records = store.workload_records(w["id"], top)
        ir_text = store.load_workload_mod(w["id"]).script() if show_ir else None
    click.echo(f"workload {w['id']}  {w['name'] or ''}\n  ir sha256  {w['ir_sha256']}\n"
               f"  shash      {w['shash']}\n  first seen {w['created_at']}")
    rows = [[r["target_key"], _us(r["mean_sec"]), r["device"] or "", r["tvm_version"],
             (r["run_uid"] or "")[:12], r["created_at"]] for r in records]
    click.echo(_table(rows, ["target", "µs", "device", "tvm", "run", "measured at"])
               if rows else "  no successful records")
    if ir_text:
        click.echo(ir_text)


@db.command("merge")
@click.argument("other", type=click.Path(dir_okay=False, path_type=Path))
@db_option
def db_merge(other, db_path):
    """Add another tvmopt database's records (idempotent; provenance kept)."""
    with _open_db(db_path) as store:
        added = store.merge_from(other)
    click.echo(f"merged {other}: " + ", ".join(f"{n} {k}" for k, n in added.items()) + " added")


@db.command("prune")
@click.option("--keep", type=int, required=True, help="Records kept per workload and target.")
@db_option
def db_prune(keep, db_path):
    """Delete all but the best N records of each workload on each target."""
    with _open_db(db_path) as store:
        deleted = store.prune(keep)
    click.echo(f"deleted {deleted} records, kept the best {keep} per workload and target")


@db.command("export")
@click.option("--format", "fmt", type=click.Choice(["json"]), default="json", show_default=True,
              help="json: TVM's JSONDatabase files, usable by plain MetaSchedule.")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
@db_option
def db_export(fmt, out, db_path):
    """Write database_workload.json and database_tuning_record.json into a directory."""
    with _open_db(db_path, readonly=True) as store:
        n_workloads, n_records = store.export_json(out)
    click.echo(f"exported {n_workloads} workloads and {n_records} records to {out}")


@db.command("import")
@click.argument("directory", type=click.Path(path_type=Path))
@db_option
def db_import(directory, db_path):
    """Read TVM JSONDatabase files (database_workload.json, database_tuning_record.json)."""
    with _open_db(db_path) as store:
        counts = store.import_json(directory)
    click.echo(f"imported from {directory}: {counts['added']} records added, "
               f"{counts['duplicate']} already present, {counts['failure']} failed candidates, "
               f"{counts['no_target']} without a target skipped")


@db.command("plot")
@db_option
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Image to write (PNG, SVG or PDF, from the suffix).")
@click.option("--target", "target", default=None,
              help="Target key (as `db stats` shows) or preset [default: the only one].")
def db_plot(db_path, out, target):
    """Best latency against trials, per task and for the model (needs matplotlib)."""
    from .plot import choose_target, plot_tuning

    with _open_db(db_path, readonly=True) as store:
        key = choose_target(store, target)
        n = plot_tuning(store, key, out)
    click.echo(f"wrote {out}: {n} task curves and the model estimate for {key}")


def _load_npz(path: Path) -> dict:
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise TvmoptError(f"--inputs {path}: not a readable .npz file ({e})") from None


def _load_npy(path: Path):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise TvmoptError(f"--input {path}: not a readable .npy file ({e})") from None


def main() -> None:
    cli(prog_name="tvmopt")
