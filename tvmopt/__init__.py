"""tvmopt: compile ONNX models with TVM (Relax + MetaSchedule) for CUDA, ROCm, x86 and ARM.

The pipeline, one module per stage: frontend -> passes -> tuning -> database -> build -> runtime.
"""

__version__ = "0.1.0"

from .errors import TvmoptError  # noqa: E402
from .runtime import load  # noqa: E402

__all__ = ["TvmoptError", "load", "__version__"]
