"""Fix every input's shape before import: the model's own static dims, or those the user gives
with `--input-shape NAME=DIMS`. TVM compiles static shapes only, so a dynamic or empty dim with no
override is refused here, with the option that fixes it spelled out.
"""

from __future__ import annotations

import re

import onnx

from ..errors import TvmoptError
from ..formatting import shape as _shape
from .dtypes import NUMERIC_DTYPES
from .specs import Dim, TensorSpec, graph_inputs

_SHAPE_RE = re.compile(r"^\s*(?P<name>.+?)\s*=\s*(?P<dims>\d+(\s*[x,]\s*\d+)*)\s*$")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse `NAME=1x3x224x224` (a comma also separates dims)."""
    m = _SHAPE_RE.match(text)
    if not m:
        raise TvmoptError(
            f"--input-shape {text!r}: expected NAME=DIMS such as data=1x3x224x224"
        )
    dims = tuple(int(d) for d in re.split(r"[x,]", m["dims"].replace(" ", "")))
    if any(d <= 0 for d in dims):
        raise TvmoptError(f"--input-shape {text!r}: every dimension must be a positive integer")
    if any(d >= 2**63 for d in dims):
        raise TvmoptError(f"--input-shape {text!r}: a dimension of {max(dims)} does not fit in "
                          "the 64-bit sizes tensors have; give the real size")
    return m["name"], dims


def resolve_inputs(
    model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None
) -> list[TensorSpec]:
    """Fix every input's shape: the model's own static dims, or the user's `--input-shape`."""
    overrides = dict(overrides or {})
    inputs = graph_inputs(model)
    names = [t.name for t in inputs]
    unknown = [n for n in overrides if n not in names]
    if unknown:
        raise TvmoptError(
            f"--input-shape names unknown input {unknown[0]!r}; the model's inputs are: "
            + ", ".join(names)
        )
    resolved = []
    for spec in inputs:
        if spec.dtype not in NUMERIC_DTYPES:
            raise TvmoptError(
                f"input {spec.name!r} is a {spec.dtype} tensor; tvmopt compiles numeric tensors "
                "only: do that processing (e.g. tokenisation) before the model, and cut the "
                "graph to start at the numeric values"
            )
        if spec.name in overrides:
            shape = overrides[spec.name]
            if len(shape) != len(spec.shape):
                raise TvmoptError(
                    f"--input-shape {spec.name}: the model says rank {len(spec.shape)} "
                    f"({_shape(spec.shape)}), got {len(shape)} dims"
                )
            for want, got in zip(spec.shape, shape):
                if isinstance(want, int) and want not in (0, got):
                    raise TvmoptError(
                        f"--input-shape {spec.name}={_shape(shape)} contradicts the model's "
                        f"fixed shape {_shape(spec.shape)}"
                    )
            resolved.append(TensorSpec(spec.name, tuple(shape), spec.dtype))
        elif 0 in spec.shape:
            raise TvmoptError(
                f"input {spec.name!r} declares a dimension of size 0 ({_shape(spec.shape)}), an "
                "empty tensor; if the exporter meant any size, give the real one with "
                f"--input-shape {spec.name}={_shape(_example_dims(spec.shape))}"
            )
        elif not spec.is_static:
            raise TvmoptError(
                f"input {spec.name!r} has dynamic shape {_shape(spec.shape)}; fix it with "
                f"--input-shape {spec.name}={_shape(_example_dims(spec.shape))}"
            )
        else:
            resolved.append(spec)
    return resolved


def _example_dims(shape: tuple[Dim, ...]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)
