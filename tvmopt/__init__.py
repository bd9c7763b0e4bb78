"""tvmopt: compile ONNX models with TVM (Relax + MetaSchedule) for CUDA, ROCm, x86 and ARM.

The pipeline, one module or package per stage, every import pointing down it:
prepare (frontend, graph) -> tasks -> tuning -> database -> build (kernel providers in
kernels/, toolchain) -> runtime (manifest) -> bench.
"""

__version__ = "0.1.0"

from .errors import TvmoptError  # noqa: E402
from .threads import use_physical_cores

use_physical_cores()  # before any TVM kernel starts TVM's thread pool (tvmopt.threads says why)

__all__ = ["TvmoptError", "load", "__version__"]


def __getattr__(name):
    # `tvmopt.load` without importing numpy and the runtime for every `import tvmopt` (the CLI).
    if name == "load":
        from .runtime import load

        return load
    raise AttributeError(f"module 'tvmopt' has no attribute {name!r}")
