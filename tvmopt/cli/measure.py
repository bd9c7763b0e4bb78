"""Commands that measure a built artifact: bench and profile."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import TvmoptError
from .app import cli, echo_json, log, sha256_option, table

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
@sha256_option
def bench(library, batch, warmup, iterations, duration_s, cuda_graph, as_json, sha256):
    """Latency percentiles, throughput, copy times and memory of a built .so, like trtexec.

    Compute is timed per call on the device (CUDA events on a GPU) with inputs already there;
    host-to-device and device-to-host copies are timed apart. A warning is printed when the
    run is unstable (coefficient of variation above 10%) or too short for tail percentiles.
    """
    from .. import bench as bench_stage

    report = bench_stage.bench(library, bench_stage.BenchOptions(
        batch, warmup, iterations, duration_s, cuda_graph), sha256=sha256)
    for warning in report.warnings:
        log.warning("warning: %s", warning)
    if as_json:
        echo_json(report.as_dict())
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
@sha256_option
def profile(library, repeat, as_json, sha256):
    """Time per kernel of a built .so, slowest first, with its tuning task, whether it was tuned
    and which kernel provider implemented it."""
    from .. import bench as bench_stage

    if repeat < 1:
        raise TvmoptError("--repeat must be at least 1")
    latency_us, rows = bench_stage.profile(library, repeat=repeat, sha256=sha256)
    if as_json:
        echo_json({"latency_us": latency_us, "kernels": [r.as_dict() for r in rows]})
        return
    rows = [[r.kernel, r.task or "-", {True: "yes", False: "no", None: "-"}[r.tuned],
             r.provider or "-", r.calls, f"{r.mean_us:.2f}", f"{r.total_us:.2f}", f"{r.share:.1%}"]
            for r in rows]
    click.echo(table(rows, ["kernel", "task", "tuned", "provider", "calls", "us/call", "us total",
                              "share"]))
    click.echo(f"model latency {latency_us:.2f} us (median of {repeat})")
