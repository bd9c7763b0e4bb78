"""The `tvmopt` command group and what its commands share: logging, errors as one line, option
bundles, JSON and table output. Imports no TVM: `tvmopt --help` starts in a fraction of a second."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import click

from .. import __version__
from ..errors import TvmoptError, first_line
from ..formatting import shape as _shape

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
    # TVM's C++ log lines (tvmopt.cli.process), at debug level: shown from -v on.
    logging.getLogger("tvmopt.native").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # The ONNX importer warns about every dynamic dim; tvmopt reports those itself.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def table(rows: list[list], headers: list[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def sha256_option(f):
    return click.option(
        "--sha256", "sha256", default=None, metavar="HEX",
        help="Load the library only if its sha256 is this (loading runs its code: pin the file "
             "you trust).")(f)


def db_option(f):
    return click.option(
        "--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), envvar="TVMOPT_DB",
        show_envvar=True, default=None,
        help="Tuning database (SQLite) [default: tuning_logs/tvmopt.db].")(f)


def model_options(*, target_required: bool):
    """--target, --input-shape, --precision, --layout, --no-normalize: declared once for build, tune
    and inspect, which must prepare a model identically for tuned records to match. The command
    receives `target_spec` and `model_options` (a prepare.ModelOptions)."""
    def decorate(f):
        @functools.wraps(f)
        def with_options(*args, input_shapes, precision, layout, raw, kernels, **kwargs):
            from ..frontend import parse_input_shape
            from ..prepare import ModelOptions

            shapes = {}
            for name, dims in map(parse_input_shape, input_shapes):
                if name in shapes and shapes[name] != dims:
                    raise TvmoptError(f"--input-shape {name} is given twice ("
                                      f"{_shape(shapes[name])} and {_shape(dims)}); give it once")
                shapes[name] = dims
            return f(*args, model_options=ModelOptions(shapes, precision, layout, normalize=not raw,
                                                  kernels=kernels),
                     **kwargs)

        for option in reversed([
            click.option("--target", "target_spec", required=target_required,
                         help="Preset name (see `tvmopt targets`, e.g. host) or a TVM target JSON "
                              "object." + ("" if target_required else
                                           " With it, also list the tuning tasks.")),
            click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=DIMS",
                         help="Fix an input's shape, e.g. data=1x3x224x224 (repeatable). Needed "
                              "for dynamic dims."),
            click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32",
                         show_default=True),
            click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW",
                         show_default=True,
                         help="Convolution layout; NHWC runs the layout-nhwc pass, NCHW on CPUs "
                         "the layout-nchwc pass (channel blocks of the SIMD width)."),
            click.option("--kernels", type=click.Choice(["all", "tvm"]), default="all",
                         show_default=True,
                         help="all: kernel libraries (CUTLASS on Hopper, fp16) where they apply, "
                              "TVM kernels elsewhere; tvm: TVM kernels for every layer."),
            click.option("--no-normalize", "raw", is_flag=True,
                         help="Import the ONNX graph as it is, without tvmopt's clean-up (see "
                              "inspect); use the same choice for tune and build."),
        ]):
            with_options = option(with_options)
        return with_options
    return decorate


class _Group(click.Group):
    """Turns every TvmoptError into one line on stderr and a non-zero exit, never a traceback;
    Ctrl-C outside `tune` (which stops cleanly itself) exits 130 with one line."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TvmoptError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted: nothing was written", err=True)
            ctx.exit(130)  # the shell's code for Ctrl-C
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:  # `tvmopt ... | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)  # the shell's code for SIGPIPE
        except MemoryError as e:
            raise click.ClickException(f"out of memory ({first_line(e) or 'no detail'}); use "
                                       "smaller input shapes, or a machine with more memory") from None
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


def echo_tensors(described: dict) -> None:
    """The inputs and outputs of a model description or an artifact manifest."""
    for kind in ("inputs", "outputs"):
        click.echo(f"{kind}:")
        for t in described[kind]:
            click.echo(f"  {t['name']}: {_shape(t['shape'])} {t['dtype']}")


def main() -> None:
    from .process import run

    run(lambda: cli(prog_name="tvmopt"))
