"""Stage 1: read an ONNX file, describe it, and import it into a TVM Relax module.

Relax is the successor of Relay (which upstream TVM removed); `tvm.relax.frontend.onnx` does the
node-by-node conversion, and this module owns everything around it: validation with errors a user
can act on, the input shapes, and a description of the model for `tvmopt inspect`.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .errors import TvmoptError, first_line
from .formatting import shape as _shape

log = logging.getLogger(__name__)

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.UINT32: "uint32",
    onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool",
}

NUMERIC_DTYPES = frozenset(_ONNX_DTYPES.values())

Dim = int | str  # a fixed size, or the name of a symbolic (dynamic) dimension


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


@dataclass(frozen=True)
class UnsupportedNode:
    node: str
    op_type: str


@dataclass
class ModelInfo:
    """What `tvmopt inspect` reports about an ONNX model."""

    path: str
    sha256: str
    opset: int
    producer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_histogram: dict[str, int]
    unsupported: list[UnsupportedNode] = field(default_factory=list)
    external_data: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "opset": self.opset,
            "producer": self.producer,
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
            "dynamic_dims": sorted(
                {d for t in self.inputs for d in t.shape if isinstance(d, str)}
            ),
            "op_histogram": self.op_histogram,
            "unsupported_ops": [{"node": u.node, "op_type": u.op_type} for u in self.unsupported],
            "external_data": self.external_data,
        }


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_sha256(onnx_sha256: str, data_files: list[Path]) -> str:
    """The .onnx file's hash, extended by its external data files: weights are part of a model."""
    if not data_files:
        return onnx_sha256
    h = hashlib.sha256(onnx_sha256.encode())
    for f in data_files:
        h.update(f"{f.name}:{file_sha256(f)}".encode())
    return h.hexdigest()


def external_data_files(model: onnx.ModelProto, path: Path) -> list[Path]:
    """The files, beside the model, that hold its external tensors (in first-use order)."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    locations = [ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)]
    return [path.parent / loc for loc in dict.fromkeys(locations)]


def _check_data_file(model_path: Path, data: Path) -> None:
    """External weights are read only from a regular file in the model's own directory: a
    location that is absolute, climbs out with .., or is a link is refused (a crafted model
    could otherwise read any file into the artifact)."""
    import stat

    from .outputs import file_kind

    location = os.path.relpath(data, model_path.parent)
    fix = "save its weights file beside it (onnx.save(..., save_as_external_data=True))"
    if ".." in Path(location).parts:
        raise TvmoptError(f"{model_path}: its weights location {location!r} is outside the model's "
                          f"directory; tvmopt reads weights only from beside the model: {fix}")
    part = model_path.parent / location
    while part != model_path.parent:
        if part.is_symlink():
            raise TvmoptError(f"{model_path}: its weights location {location} goes through a "
                              f"symbolic link ({part.name}); tvmopt reads weights only from real "
                              f"files beside the model: {fix}")
        part = part.parent
    try:
        mode = data.stat().st_mode
    except FileNotFoundError:
        raise TvmoptError(f"{model_path}: its weights are in {location}, which is not beside it in "
                          f"{model_path.parent}; copy that file next to the model") from None
    if not stat.S_ISREG(mode):
        raise TvmoptError(f"{model_path}: its weights location {location} is not a regular file "
                          f"(a {file_kind(mode)}); {fix}")


@dataclass
class LoadedModel:
    """An ONNX file read once: the parsed model (external data loaded), and what identifies it."""

    path: Path
    proto: onnx.ModelProto
    data_files: list[Path]  # its external data, read from beside it (loading drops their names)
    sha256: str  # of the .onnx bytes, extended by the data files
    repairs: tuple[str, ...] = ()  # exporter bugs mended in memory so that the model validates


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read and validate an ONNX file, with its external data from beside it; every way it can be
    unusable becomes a TvmoptError."""
    return load(path).proto


def load(path: str | Path) -> LoadedModel:
    """Read an ONNX file once: its bytes are hashed and parsed, its external data loaded, and the
    whole model checked; every way it can be unusable becomes a TvmoptError."""
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    if not path.exists():
        raise TvmoptError(f"{path}: no such file; pass the path of an .onnx model")
    if not path.is_file():
        raise TvmoptError(f"{path}: is not a file; pass the path of an .onnx model")
    raw = path.read_bytes()
    try:
        model = onnx.load_model_from_string(raw)
    except (DecodeError, UnicodeDecodeError, ValueError, RuntimeError) as e:
        raise TvmoptError(
            f"{path}: not a readable ONNX model ({first_line(e)}); the file may be truncated "
            "or not ONNX at all: re-export it"
        ) from None
    onnx_sha256 = hashlib.sha256(raw).hexdigest()
    del raw
    # protobuf happily parses many non-ONNX byte strings into an empty message.
    if not model.graph.node or model.ir_version == 0:
        raise TvmoptError(
            f"{path}: not an ONNX model (no graph found); re-export it with torch.onnx.export "
            "or a similar exporter"
        )
    if not model.graph.output:
        raise TvmoptError(f"{path}: the graph declares no outputs, so it computes nothing; "
                          "re-export it naming its outputs (torch.onnx.export(output_names=...))")
    data_files = external_data_files(model, path)
    for f in data_files:
        _check_data_file(path, f)
    if data_files:
        try:
            load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as e:
            raise TvmoptError(f"{path}: cannot read its external data ({first_line(e)}); "
                              "re-export the model") from None
        log.info("loaded external data from %s", ", ".join(f.name for f in data_files))
    repairs = tuple(_repair_split_num_outputs(model))
    for repair in repairs:
        log.warning("%s: repaired an exporter bug: %s", path.name, repair)
    try:
        # In memory where protobuf can hold the model; past 2 GiB the checker reads the files.
        onnx.checker.check_model(model if model.ByteSize() < _PROTOBUF_LIMIT else str(path))
    except onnx.checker.ValidationError as e:
        raise TvmoptError(
            f"{path}: the ONNX checker rejects this model ({first_line(e)}); re-export it"
        ) from None
    return LoadedModel(path, model, data_files, _model_sha256(onnx_sha256, data_files), repairs)


def _repair_split_num_outputs(model: onnx.ModelProto) -> list[str]:
    """Split nodes carrying opset 18's `num_outputs` in an older-opset model (some torch 2.11
    exports): the attribute goes, and its meaning becomes the explicit `split` sizes."""
    opset = model_opset(model)
    broken = [n for n in model.graph.node if n.op_type == "Split" and n.domain in ("", "ai.onnx")
              and any(a.name == "num_outputs" for a in n.attribute)]
    if opset >= 18 or not broken:
        return []
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        shapes = {vi.name: vi.type.tensor_type.shape for vi in (
            *inferred.graph.input, *inferred.graph.value_info)}
    except Exception:  # noqa: BLE001 - shapes only make the repair exact; it works without
        shapes = {}
    shapes.update({t.name: onnx.TensorShapeProto(dim=[onnx.TensorShapeProto.Dimension(
        dim_value=d) for d in t.dims]) for t in model.graph.initializer})
    repaired = []
    for node in broken:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        parts, given = int(attrs["num_outputs"]), len(node.output)
        name = node.name or node.output[0]
        if parts != given:
            raise TvmoptError(f"Split node {name!r} says num_outputs={parts} but has {given} "
                              "outputs (and num_outputs needs opset 18); re-export the model")
        kept = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(kept)
        has_sizes = "split" in attrs or (len(node.input) > 1 and node.input[1])
        size = _dim(shapes.get(node.input[0]), int(attrs.get("axis", 0)))
        if has_sizes:
            how = "kept its split sizes"
        elif size is None or size % parts == 0:
            how = f"split into {parts} equal parts"  # what an opset-13 Split without sizes does
        else:  # opset 18: parts of ceil(size / parts), the last one smaller
            chunk = -(-size // parts)
            sizes = [min(chunk, size - i * chunk) for i in range(parts)]
            how = f"split {size} as {sizes}"
            if opset >= 13:
                const = f"{name}/split_sizes"
                model.graph.initializer.append(onnx.numpy_helper.from_array(
                    np.array(sizes, np.int64), const))
                del node.input[1:]
                node.input.append(const)
            else:
                node.attribute.append(onnx.helper.make_attribute("split", sizes))
        repaired.append(f"Split node {name!r}: opset-18 attribute num_outputs={parts} in an "
                        f"opset-{opset} model; {how}")
    return repaired


def _dim(shape, axis: int) -> int | None:
    if shape is None or not shape.dim:
        return None
    dim = shape.dim[axis]
    return dim.dim_value if dim.HasField("dim_value") else None


_PROTOBUF_LIMIT = 2**31 - 1


def _value_info_spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    tt = vi.type.tensor_type
    dims: list[Dim] = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))  # 0 too: an empty tensor, refused in resolve_inputs
        else:
            dims.append(d.dim_param or f"{vi.name}_dim{i}")
    dtype = _ONNX_DTYPES.get(tt.elem_type, onnx.TensorProto.DataType.Name(tt.elem_type).lower())
    return TensorSpec(vi.name, tuple(dims), dtype)


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The real inputs: old exports also list every initializer as a graph input."""
    initializers = {i.name for i in model.graph.initializer}
    return [_value_info_spec(vi) for vi in model.graph.input if vi.name not in initializers]


def graph_outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_value_info_spec(vi) for vi in model.graph.output]


def model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return onnx.defs.onnx_opset_version()


# Ops without a converter whose work depends on the data (what post-processing is made of).
_DATA_DEPENDENT = {
    "Loop": "runs its body graph a number of times that may depend on the data",
    "Scan": "iterates a body graph over its inputs",
}


def _supported_ops() -> set[str]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from .col2im import OPS as REWRITTEN_OPS
    from .recurrent import GATES

    # Constant and If are handled by the importer itself rather than through its converter map;
    # recurrent layers are unrolled, and Col2Im written as a ConvTranspose, before import.
    return set(_get_convert_map()) | {"Constant", "If"} | set(GATES) | REWRITTEN_OPS


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def unsupported_nodes(model: onnx.ModelProto) -> list[UnsupportedNode]:
    supported = _supported_ops()
    return [
        UnsupportedNode(node.name or f"#{i}", node.op_type)
        for i, node in enumerate(_all_nodes(model.graph))
        if node.op_type not in supported
    ]


def describe(loaded: LoadedModel) -> ModelInfo:
    model = loaded.proto
    hist = collections.Counter(n.op_type for n in _all_nodes(model.graph))
    return ModelInfo(
        path=str(loaded.path),
        sha256=loaded.sha256,
        opset=model_opset(model),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=graph_inputs(model),
        outputs=graph_outputs(model),
        op_histogram=dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
        unsupported=unsupported_nodes(model),
        external_data=[f.name for f in loaded.data_files],
    )


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


_C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@contextmanager
def _identifier_input_names(model: onnx.ModelProto):
    """Graph inputs renamed to C identifiers while importing: {original name: imported name}.

    TVM names kernel parameters after the Relax variables, hence after graph inputs, and its CUDA
    source then fails to compile for names such as `gpu_0/data_0`. Inputs are passed by position,
    so the artifact keeps the ONNX names. The model is restored afterwards.
    """
    graph = model.graph
    weights = {t.name for t in graph.initializer}  # old exporters list weights as inputs too
    used = {i.name for i in graph.input} | {o for n in graph.node for o in n.output} | weights
    names = {}
    for inp in graph.input:
        new = inp.name
        if new not in weights and not _C_IDENTIFIER.fullmatch(new):
            new = "input_" + re.sub(r"[^A-Za-z0-9_]", "_", new)
            while new in used:
                new += "_"
            used.add(new)
        names[inp.name] = new
    renamed = {old: new for old, new in names.items() if old != new}
    _rename_values(graph, renamed)
    try:
        yield names
    finally:
        _rename_values(graph, {new: old for old, new in renamed.items()})


def _rename_values(graph, renamed: dict[str, str]) -> None:
    if not renamed:
        return
    for inp in graph.input:
        inp.name = renamed.get(inp.name, inp.name)
    for out in graph.output:
        out.name = renamed.get(out.name, out.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]


@dataclass
class Imported:
    mod: object  # the Relax IRModule
    # "'/Add' (Add)": the first ONNX node whose output shape TVM could not work out statically;
    # where a later TVM stage fails, this is usually why.
    shape_lost_at: str | None = None

    @contextmanager
    def explain_failures(self, stage: str):
        """Turn a TVM failure in `stage` into one line that points at the ONNX graph."""
        try:
            yield
        except TvmoptError:
            raise
        except Exception as e:  # TVM raises assorted types from C++ and Python
            if "KeyboardInterrupt" in str(e):  # Ctrl-C while TVM's C++ was running
                raise KeyboardInterrupt from None
            hint = (f"a likely cause: the first ONNX node whose output shape TVM could not "
                    f"determine is {self.shape_lost_at}; check the shapes feeding it"
                    if self.shape_lost_at else "run with TVMOPT_DEBUG=1 and report it")
            raise TvmoptError(f"TVM failed in {stage} ({first_line(e)}); {hint}") from e


def import_model(model: onnx.ModelProto, inputs: list[TensorSpec]) -> Imported:
    """Import into Relax with weights bound as constants, so the built library is self-contained,
    naming the ONNX node where the import failed or a shape became unknown."""
    from tvm.relax.frontend.onnx import from_onnx

    missing = unsupported_nodes(model)
    dynamic = [u for u in missing if u.op_type in _DATA_DEPENDENT]
    if dynamic:
        u = dynamic[0]
        raise TvmoptError(
            f"{u.op_type} (node {u.node}) {_DATA_DEPENDENT[u.op_type]}, which a compiler of "
            "static graphs cannot build; cut the model before it (onnx.utils.extract_model) and "
            "run that part in your application"
        )
    if missing:
        listed = ", ".join(f"{u.op_type} (node {u.node})" for u in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise TvmoptError(
            f"the ONNX importer has no converter for: {listed}{more}; replace these ops before "
            "export, cut the model before them (onnx.utils.extract_model), or run "
            "`tvmopt inspect` for the full list"
        )
    # The importer prints its own error lines to stdout before raising; tvmopt reports them.
    with _identifier_input_names(model) as names, _NodeTracker() as tracker, \
            contextlib.redirect_stdout(io.StringIO()):
        try:
            mod = from_onnx(
                model,
                shape_dict={names[t.name]: list(t.shape) for t in inputs},
                dtype_dict={names[t.name]: t.dtype for t in inputs},
                opset=model_opset(model),
                keep_params_in_input=False,
            )
        except Exception as e:  # TVM raises many types; the user needs the node, not the stack
            where = f" at node {tracker.current}" if tracker.current else ""
            raise TvmoptError(
                f"TVM's ONNX importer failed{where}: {first_line(e)}; run `tvmopt inspect` on the "
                "model and report the op it names"
            ) from e
    log.debug("imported %d ONNX nodes into Relax", len(model.graph.node))
    return Imported(mod, tracker.shape_lost_at)


class _NodeTracker:
    """Wraps the importer's per-node conversion to know which ONNX node is being converted and
    the first whose result has no static shape. TVM keeps no link from Relax back to ONNX."""

    def __enter__(self):
        from tvm.relax.frontend.onnx import onnx_frontend

        self.current: str | None = None
        self.shape_lost_at: str | None = None
        self._cls = onnx_frontend.ONNXGraphImporter
        self._original = original = self._cls._convert_operator
        tracker = self

        def convert(importer, op_name, inputs, attrs, opset):
            tracker.current = f"{attrs.get('tvm_custom', {}).get('name') or '?'!r} ({op_name})"
            out = original(importer, op_name, inputs, attrs, opset)
            if tracker.shape_lost_at is None and _has_unknown_shape(out):
                tracker.shape_lost_at = tracker.current
            tracker.current = None  # a later failure is not this node's
            return out

        self._cls._convert_operator = convert
        return self

    def __exit__(self, *exc):
        self._cls._convert_operator = self._original
        return False


def _has_unknown_shape(value) -> bool:
    from tvm import relax

    for item in value if isinstance(value, (list, tuple)) else [value]:
        ty = getattr(item, "ty", None)
        if isinstance(ty, relax.TensorType) and ty.shape is None:
            return True
    return False
