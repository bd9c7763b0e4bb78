"""Stage 1: a model made ready to compile, the same way for `build`, `tune` and `inspect`.

load (read and hash the file once) -> normalise the ONNX graph -> import into Relax (stage 1a,
`tvmopt.frontend`) -> the graph pipeline (stage 1b, `tvmopt.graph`). Tuning extracts its tasks
from the result and the build compiles it; a record stored for a task is only found again if both
prepared the model identically, so both come through here with the same `ModelOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import frontend
from .errors import TvmoptError
from .graph import pipeline
from .targets import Preset


@dataclass(frozen=True)
class ModelOptions:
    """Everything about how a model is prepared that decides which kernels it compiles to."""

    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    precision: str = "fp32"
    layout: str = "NCHW"
    normalize: bool = True  # clean the ONNX graph up before import (tvmopt.frontend.normalization)
    kernels: str = "all"  # "tvm": no kernel library, TVM kernels for every layer

    def __post_init__(self):
        if self.precision not in pipeline.PRECISIONS:
            raise TvmoptError(f"precision {self.precision!r}: use one of {', '.join(pipeline.PRECISIONS)}")
        if self.layout not in pipeline.LAYOUTS:
            raise TvmoptError(f"layout {self.layout!r}: use one of {', '.join(pipeline.LAYOUTS)}")
        if self.kernels not in pipeline.KERNELS:
            raise TvmoptError(f"kernels {self.kernels!r}: use one of {', '.join(pipeline.KERNELS)}")


@dataclass
class Prepared:
    """The ONNX model as imported (after normalisation), its fixed inputs, the fused Relax module."""

    model: frontend.LoadedModel
    inputs: list[frontend.TensorSpec]
    mod: object
    normalization: list[frontend.Change]
    imported: frontend.Imported

    @property
    def outputs(self) -> list[frontend.TensorSpec]:
        """Output names from ONNX; shapes and dtypes as compiled (ONNX may leave them symbolic)."""
        specs = []
        for onnx_spec, ty in zip(frontend.graph_outputs(self.model.proto),
                                 _flatten_types(self.mod["main"].ret_ty)):
            try:
                shape = tuple(int(d) for d in ty.shape.values)
                dtype = str(ty.dtype)
            except (AttributeError, TypeError):
                shape, dtype = onnx_spec.shape, onnx_spec.dtype
            specs.append(frontend.TensorSpec(onnx_spec.name, shape, dtype))
        return specs


def _flatten_types(ty) -> list:
    from tvm import relax

    if isinstance(ty, relax.TupleType):
        return [leaf for field_ty in ty.fields for leaf in _flatten_types(field_ty)]
    return [ty]


def prepare(model: str | Path | frontend.LoadedModel, preset: Preset,
            options: ModelOptions = ModelOptions()) -> Prepared:
    """Load (unless given a loaded model, which normalisation then modifies), normalise, import and
    run the graph pipeline."""
    loaded = model if isinstance(model, frontend.LoadedModel) else frontend.load(model)
    inputs = frontend.resolve_inputs(loaded.proto, options.input_shapes)
    changes = [frontend.Change("repair", r) for r in loaded.repairs]
    if options.normalize:
        loaded.proto, normalized = frontend.normalize(loaded.proto, inputs)
        changes += normalized
    imported = frontend.import_model(loaded.proto, inputs)
    target = preset.tvm_target()
    skipped: list[str] = []
    with imported.explain_failures("the graph passes"):
        mod = pipeline.run_pipeline(imported.mod, target,
                                    pipeline.PipelineOptions(options.precision, options.layout,
                                                             options.kernels),
                                    skipped=skipped)
    changes += [frontend.Change("skipped", line) for line in skipped]
    return Prepared(loaded, inputs, mod, changes, imported)
