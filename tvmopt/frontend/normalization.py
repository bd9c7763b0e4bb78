"""Make an exported ONNX graph importable by TVM, and say what was changed.

TVM's ONNX importer does well on a clean static graph and stumbles on what exporters emit:
- shape arithmetic (Shape -> Gather -> Range / Concat -> Reshape) that it turns into run-time shape
  values even when every input size is known, after which it fails ("shape_of expects a tensor")
  or leaves an operator it cannot lower;
- ops at opsets older than its oldest converter for them (it then silently applies the newer
  semantics, e.g. Clip's bounds as inputs rather than attributes);
- Clip / HardSigmoid / HardSwish, which it imports in forms its fp16 pass cannot rewrite;
- ONNX's opset-23 Attention, which it sends to its converter for com.microsoft's Attention
  (`functions`);
- recurrent layers (LSTM, GRU, RNN), for which it has no converter (`recurrent`);
- Col2Im (opset 18; torch's `F.fold`), for which it has no converter either (`col2im`).

Each step rewrites the graph in ONNX with ONNX's and ONNX Runtime's own tools: fix the input dims
the user gave, convert the opset where needed, write out ops by the standard's function bodies,
fold constant shape arithmetic (ONNX Runtime's
basic, standard-ops-only graph optimizer), infer shapes, unroll recurrent layers, write Col2Im as a
ConvTranspose, and spell out the clamps. Every change is reported, and `tvmopt inspect` shows the
list.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import TvmoptError, first_line, onnxruntime_cause
from . import col2im
from .functions import expand_functions
from .loading import fits_protobuf
from .recurrent import unroll_recurrent
from .specs import TensorSpec, model_opset

log = logging.getLogger(__name__)

# Protobuf cannot serialise a message over 2 GiB: bigger models go through files.
INLINE_LIMIT = 2**31 - 2**24


@dataclass(frozen=True)
class Change:
    step: str
    detail: str

    def as_dict(self) -> dict:
        return {"step": self.step, "detail": self.detail}

    def __str__(self) -> str:
        return f"{self.step}: {self.detail}"


def normalize(model: onnx.ModelProto, inputs: list[TensorSpec]) -> tuple[onnx.ModelProto, list[Change]]:
    """The model made ready for TVM's importer (the argument may be modified) and what changed."""
    changes: list[Change] = []
    _fix_input_dims(model, inputs, changes)
    model = _convert_opset(model, changes)
    expanded = expand_functions(model)
    if expanded:
        changes.append(Change("expand-functions", ", ".join(
            f"{op} x{n}" for op, n in sorted(expanded.items())) + " as the ONNX standard's "
            "function body"))
    model = _fold_constants(model, {t.name for t in inputs}, changes)
    model = _infer_shapes(model, changes)
    model, unrolled = unroll_recurrent(model)
    if unrolled:
        changes.append(Change("unroll-recurrent", unrolled))
        # Not folded by ONNX Runtime a second time: its MatMul+Add fusion names what it adds
        # (e.g. "gemm_input_shape") the same on every pass, and then refuses its own output.
        # TVM's FoldConstant slices the weights instead.
        model = _infer_shapes(model, [])
    rewritten = col2im.as_conv_transpose(model)
    if rewritten:
        changes.append(Change("col2im", f"Col2Im x{rewritten} as Reshape + grouped "
                              "ConvTranspose by a one-hot kernel"))
    _drop_empty_resize_scales(model, changes)
    _spell_out_clamps(model, changes)
    for change in changes:
        log.info("normalise: %s", change)
    return model, changes


def _fix_input_dims(model, inputs: list[TensorSpec], changes: list[Change]) -> None:
    fixed = {}
    by_name = {t.name: t for t in inputs}
    for vi in model.graph.input:
        spec = by_name.get(vi.name)
        if spec is None:
            continue
        for dim, size in zip(vi.type.tensor_type.shape.dim, spec.shape):
            if isinstance(size, int) and not (dim.HasField("dim_value") and dim.dim_value == size):
                fixed[dim.dim_param or f"{vi.name}[?]"] = size
                dim.Clear()
                dim.dim_value = int(size)
    if fixed:
        changes.append(Change("fix-input-dims", ", ".join(f"{k}={v}" for k, v in fixed.items())))


def _converter_min_versions() -> dict[str, int]:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    out = {}
    for op, converter in _get_convert_map().items():
        versions = [int(a.removeprefix("_impl_v")) for a in dir(converter) if a.startswith("_impl_v")]
        if versions:
            out[op] = min(versions)
    return out


def _convert_opset(model, changes: list[Change]):
    """Raise the opset when TVM has no converter as old as the model's for one of its ops."""
    opset = model_opset(model)
    oldest = _converter_min_versions()
    needs = {n.op_type: oldest[n.op_type] for n in model.graph.node
             if n.domain in ("", "ai.onnx") and oldest.get(n.op_type, 0) > opset}
    if not needs:
        return model
    target = max(needs.values())
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, target)
    except Exception as e:  # noqa: BLE001 - the converter raises assorted C++ errors
        ops = ", ".join(f"{op} (needs {v})" for op, v in sorted(needs.items()))
        raise TvmoptError(f"the model's opset {opset} is older than TVM's converters for {ops}, and "
                          f"ONNX's version converter could not raise it to {target} "
                          f"({first_line(e)}); re-export at opset {target} or newer") from None
    changes.append(Change("convert-opset", f"{opset} -> {target} (TVM's converters for "
                          f"{', '.join(sorted(needs))} start at opset {target})"))
    return converted


def _fold_constants(model, real_inputs: set[str], changes: list[Change]):
    """ONNX Runtime's basic optimizer: constant folding (shape arithmetic included once the input
    dims are fixed) and redundant-node removal, producing only standard ONNX ops."""
    import onnxruntime as ort

    before = Counter(n.op_type for n in model.graph.node)
    with tempfile.TemporaryDirectory(prefix="tvmopt-fold-") as tmp:
        out = Path(tmp) / "folded.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(out)
        options.log_severity_level = 3
        try:
            if fits_protobuf(model, INLINE_LIMIT):
                ort.InferenceSession(model.SerializeToString(), options,
                                     providers=["CPUExecutionProvider"])
            else:
                _fold_through_files(model, Path(tmp), options)
            folded = onnx.load(str(out))
        except Exception as e:  # noqa: BLE001 - ORT reports through its own exception types
            # Folding is an aid; TVM may still import the model as it is.
            log.warning("constant folding with ONNX Runtime failed (%s); importing unfolded",
                        onnxruntime_cause(e))
            return model
    after = Counter(n.op_type for n in folded.graph.node)
    if after == before:
        return model
    removed = before - after
    detail = f"{sum(before.values())} -> {sum(after.values())} nodes"
    if removed:
        detail += " (removed " + ", ".join(f"{op} x{n}" for op, n in removed.most_common(6)) + ")"
    changes.append(Change("fold-constants", detail))
    # ORT declares its own operator domains; no node uses them, and they are not ONNX.
    used = {n.domain for n in folded.graph.node}
    keep = [o for o in folded.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del folded.opset_import[:]
    folded.opset_import.extend(keep)
    # Old exporters list weights as graph inputs too; ORT may fold a weight away but keep its input
    # entry, which TVM would then expect as an argument. Keep the real inputs only.
    consumed = {name for node in folded.graph.node for name in node.input}
    weights = {t.name for t in folded.graph.initializer}
    graph_inputs = [vi for vi in folded.graph.input
                    if vi.name in real_inputs or (vi.name in consumed and vi.name not in weights)]
    del folded.graph.input[:]
    folded.graph.input.extend(graph_inputs)
    folded.ir_version = max(folded.ir_version, 4)  # IR 4 lets weights be initializers only
    return folded


def _fold_through_files(model, tmp: Path, options) -> None:
    """ORT on a model too big for one protobuf message, via a file with external weights."""
    import onnxruntime as ort
    from onnx.external_data_helper import load_external_data_for_model

    source = tmp / "source.onnx"
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", "folded.data")
    # Saving moves the weights out of `model` into source.data: read them back before that
    # file goes, whatever ORT does, since the caller may import `model` as it is.
    onnx.save(model, str(source), save_as_external_data=True, location="source.data",
              size_threshold=1024)
    try:
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    finally:
        load_external_data_for_model(model, str(tmp))


def _infer_shapes(model, changes: list[Change]):
    if not fits_protobuf(model, INLINE_LIMIT):
        return model  # onnx's in-memory inference has the same 2 GiB limit; TVM infers its own
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # noqa: BLE001 - inference is advisory
        log.warning("ONNX shape inference failed (%s); continuing without it", first_line(e))
        return model
    gained = len(inferred.graph.value_info) - len(model.graph.value_info)
    if gained > 0:
        changes.append(Change("infer-shapes", f"shapes for {gained} intermediate values"))
    return inferred


def _drop_empty_resize_scales(model, changes: list[Change]) -> None:
    """Resize with an empty `scales` and a `sizes` input (every opset-11 `F.interpolate(size=)`
    export): ONNX means "use sizes"; TVM's importer sees two inputs and refuses."""
    empty = {t.name for t in model.graph.initializer if 0 in t.dims}
    empty |= {n.output[0] for n in model.graph.node if n.op_type == "Constant" and any(
        a.name == "value" and 0 in a.t.dims for a in n.attribute)}  # if folding did not run
    dropped = 0
    for node in model.graph.node:
        if (node.op_type == "Resize" and len(node.input) >= 4 and node.input[3]
                and node.input[2] in empty):
            node.input[2] = ""
            if node.input[1] in empty:  # an empty roi is no roi
                node.input[1] = ""
            dropped += 1
    if dropped:
        changes.append(Change("resize-sizes", f"Resize x{dropped}: an empty scales input "
                              "dropped in favour of sizes"))


def _spell_out_clamps(model, changes: list[Change]) -> None:
    """Clip -> Max/Min, HardSigmoid -> Mul/Add/Min/Max, HardSwish -> x * HardSigmoid(x).

    TVM imports Clip as a pre-scheduled kernel call and the hard activations with scalar bounds,
    and its fp16 pass (ToMixedPrecision) rejects both; elementwise Max/Min fuse just as well.
    """
    graph, opset = model.graph, model_opset(model)
    constants: dict[float, str] = {}
    counts: Counter = Counter()

    def const(value: float) -> str:
        if value not in constants:
            constants[value] = name = f"tvmopt_const_{len(constants)}"
            graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return constants[value]

    nodes = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in (
                "Clip", "HardSigmoid", "HardSwish") or not _is_float32(model, node.input[0]):
            nodes.append(node)
            continue
        counts[node.op_type] += 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, y, tag = node.input[0], node.output[0], (node.name or node.output[0])
        if node.op_type == "Clip":
            if opset < 11:
                low = const(attrs["min"]) if "min" in attrs else ""
                high = const(attrs["max"]) if "max" in attrs else ""
            else:
                low = node.input[1] if len(node.input) > 1 else ""
                high = node.input[2] if len(node.input) > 2 else ""
            current = x
            if low:
                current_out = y if not high else f"{tag}/clip_low"
                nodes.append(helper.make_node("Max", [current, low], [current_out], name=f"{tag}/max"))
                current = current_out
            if high:
                nodes.append(helper.make_node("Min", [current, high], [y], name=f"{tag}/min"))
            if not low and not high:
                nodes.append(helper.make_node("Identity", [x], [y], name=tag))
            continue
        hard_sigmoid = node.op_type == "HardSigmoid"
        alpha = attrs.get("alpha", 0.2) if hard_sigmoid else 1 / 6
        beta = attrs.get("beta", 0.5) if hard_sigmoid else 0.5
        gate = y if hard_sigmoid else f"{tag}/gate"
        nodes += [
            helper.make_node("Mul", [x, const(alpha)], [f"{tag}/scaled"], name=f"{tag}/mul"),
            helper.make_node("Add", [f"{tag}/scaled", const(beta)], [f"{tag}/shifted"], name=f"{tag}/add"),
            helper.make_node("Min", [f"{tag}/shifted", const(1.0)], [f"{tag}/capped"], name=f"{tag}/min"),
            helper.make_node("Max", [f"{tag}/capped", const(0.0)], [gate], name=f"{tag}/max"),
        ]
        if not hard_sigmoid:
            nodes.append(helper.make_node("Mul", [x, gate], [y], name=f"{tag}/gated"))
    if counts:
        del graph.node[:]
        graph.node.extend(nodes)
        changes.append(Change("spell-out-clamps", ", ".join(
            f"{op} x{n}" for op, n in sorted(counts.items())) + " as Max/Min arithmetic"))


def _is_float32(model, name: str) -> bool:
    """Whether a value is float32 (the constants written here are); unknown counts as no."""
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        if vi.name == name:
            return vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for init in model.graph.initializer:
        if init.name == name:
            return init.data_type == onnx.TensorProto.FLOAT
    return False
