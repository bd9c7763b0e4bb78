"""Stage 5: compile a prepared model for a target and export one deployable `.so` with its manifest.

Each kernel gets its implementation from the kernel providers in order (`tvmopt.kernels`: tuned
records for this exact target, then TVM's default schedules); the rest of TVM's pipeline then
lowers the module to a VM executable, which is linked with the manifest (`tvmopt.manifest`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import manifest as artifact_manifest
from .database import open_database, target_identity
from .errors import TvmoptError, compiler_cause
from .frontend import LoadedModel, load
from .kernels import BuildContext, Kernel, apply_providers, library
from .outputs import check_output, written_whole
from .prepare import ModelOptions, prepare
from .targets import Preset
from .tasks import Task, extract_tasks, kernel_tasks, kernels
from .toolchain import gpu_pass_config, linker, toolchain

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    path: Path
    manifest: dict
    tasks: list[Task]
    tuned: list[str]  # names of the tasks whose kernels came from tuned records
    seconds: dict[str, float]


@contextmanager
def _stage(seconds: dict, name: str, step: int, total: int):
    log.info("[%d/%d] %s ...", step, total, name)
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start
    log.info("[%d/%d] %s done in %.1f s", step, total, name, seconds[name])


def build(model: str | Path | LoadedModel, preset: Preset, out_path, *, db_path=None,
          options: ModelOptions = ModelOptions(), cuda_graph: bool | None = None) -> BuildResult:
    """ONNX model in, deployable `.so` out, using the database's tuned schedules for this target.

    `cuda_graph` replays the model's static regions as CUDA graphs: one launch for a region of
    kernels, where launch overhead dominates small batches. None (the default) turns it on for
    CUDA targets (every tvmopt build has static shapes); True on another target is an error. The
    database is only read, and a missing default database means no tuned records.
    """
    if cuda_graph and preset.family != "cuda":
        raise TvmoptError(f"--cuda-graph needs a CUDA target; {preset.name} is {preset.family}")
    cuda_graph = preset.family == "cuda" if cuda_graph is None else cuda_graph
    fcompile = linker(preset.cc)  # a missing compiler fails now, not after minutes of compiling
    loaded = model if isinstance(model, LoadedModel) else load(model)
    with open_database(db_path, readonly=True) as store:
        out_path = check_output(
            out_path, flag="-o", kind="tvmopt library", replaceable=artifact_manifest.is_artifact, protected=[
                (loaded.path, "the model being built"),
                *((f, "the model's external weights") for f in loaded.data_files),
                *((f"{store.path}{end}", "the tuning database in use") for end in ("", "-wal", "-shm"))])
        with toolchain(preset):
            return _build(loaded, preset, out_path, store, options, cuda_graph, fcompile)


def _build(model, preset, out_path, store, options, cuda_graph, fcompile) -> BuildResult:
    import tvm

    seconds: dict[str, float] = {}
    target = preset.tvm_target()
    with _stage(seconds, "import + graph passes", 1, 3):
        prepared = prepare(model, preset, options)
        tasks = extract_tasks(prepared.mod, target)
        task_of = kernel_tasks(prepared.mod, tasks)
    with _stage(seconds, "compile", 2, 3):
        found = [Kernel(name, func, task_of.get(name)) for name, func in kernels(prepared.mod).items()]
        provided = apply_providers(prepared.mod, found, BuildContext(
            target, store, library_layers=library.layers(prepared.mod)))
        providers = provided.providers
        tuned_names = {task_of[k].name for k, p in providers.items() if p == "tuned"}
        tuned = [t.name for t in tasks if t.name in tuned_names]  # heaviest first, as tasks are
        log.info("%d of %d tasks tuned (database %s); the rest use the kernel library or "
                 "default schedules", len(tuned), len(tasks), store.path)
        with prepared.imported.explain_failures("compilation"):
            executable = _compile(provided.mod, target, cuda_graph=cuda_graph)
    tsha, tkey, _ = target_identity(target)
    manifest = {
        "format": artifact_manifest.FORMAT,
        "tvmopt_version": _version(),
        "tvm_version": tvm.__version__,
        "model": prepared.model.path.name,
        "model_sha256": prepared.model.sha256,
        "normalization": [str(c) for c in prepared.normalization],
        "target": json.loads(str(target)),
        "target_key": tkey,
        "target_sha256": tsha,
        "preset": preset.name,
        "family": preset.family,
        "precision": options.precision,
        "layout": options.layout,
        "inputs": [t.as_dict() for t in prepared.inputs],
        "outputs": [t.as_dict() for t in prepared.outputs],
        "database_digest": store.digest(),
        "tasks": len(tasks),
        "tuned_tasks": tuned,
        "kernels": {name: task.name for name, task in task_of.items()},
        "kernel_providers": providers,
        "library_kernels": {name: {"symbol": e.symbol, "tactic": e.tactic, "layer": e.layer,
                                   "measured_sec": e.measured_sec,
                                   "tactic_source": e.tactic_source}
                            for name, e in provided.externs.items()},
        "cuda_graph": cuda_graph,
    }
    with _stage(seconds, "link", 3, 3):
        _export(executable, manifest, out_path, fcompile, preset.cc, provided.link_objects)
    return BuildResult(out_path, manifest, tasks, tuned, seconds)


def _compile(mod, target, *, cuda_graph: bool):
    """Lower a module whose kernels are scheduled (or left as they are) to a VM executable."""
    import importlib

    import tvm

    # relax.pipeline.dataflow_lower_passes is broken in 0.27 (the backend packages do not export
    # it), so take the lists from the backend's pipeline module directly.
    backend = {"llvm": "cpu_generic", "cuda": "cuda", "rocm": "rocm"}.get(
        target.kind.name, "gpu_generic")
    backend_pipeline = importlib.import_module(f"tvm.relax.backend.{backend}.pipeline")
    pipeline = tvm.transform.Sequential(
        backend_pipeline.dataflow_lower_passes(target) + backend_pipeline.finalize_passes(target),
        name="tvmopt_lower")
    # RewriteCUDAGraph (in the CUDA finalize passes) acts only when this is set.
    config = {**gpu_pass_config(target), "relax.backend.use_cuda_graph": cuda_graph}
    with target, tvm.transform.PassContext(opt_level=3, config=config):
        return tvm.compile(mod, target, relax_pipeline=pipeline)


def _export(executable, manifest: dict, out_path: Path, fcompile, cc: str,
            link_objects: list[Path]) -> None:
    """Link the library with its manifest and kernel-library objects; OUT.so appears whole or
    not at all."""
    with tempfile.TemporaryDirectory(prefix="tvmopt-") as tmp, written_whole(out_path) as partial:
        src = Path(tmp) / "tvmopt_manifest.cc"
        src.write_text(artifact_manifest.source(manifest))
        try:
            # The CUDA runtime (static) after the objects that need it: TVM's link puts `options`
            # first, where the linker would skip the archive and leave its symbols to whatever
            # process loads the library (Python's happens to have them; a C++ program has not).
            libraries = library.cuda_toolchain().link_options() if link_objects else []
            executable.export_library(str(partial), fcompile=fcompile, workspace_dir=tmp,
                                      addons=[str(src), *map(str, link_objects), *libraries])
        except Exception as e:  # the compiler driver reports through assorted exceptions
            raise TvmoptError(f"linking with {cc} failed: {compiler_cause(e)}") from e
        artifact_manifest.seal(partial)



def _version() -> str:
    from . import __version__

    return __version__
