"""Import a normalised ONNX model into a TVM Relax module, with weights bound as constants.

Relax is the successor of Relay (which upstream TVM removed); `tvm.relax.frontend.onnx` does the
node-by-node conversion, and this module owns everything around it: refusing ops it has no
converter for by name, renaming inputs TVM cannot use as kernel parameter names, and naming the
ONNX node where conversion failed or a shape first became unknown. TVM keeps no link from Relax
back to ONNX, so the last two wrap (monkeypatch) the importer's per-node conversion while it runs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import onnx

from ..errors import TvmoptError, first_line
from .specs import TensorSpec, model_opset
from .support import unsupported_nodes

log = logging.getLogger(__name__)

# Ops without a converter whose work depends on the data (what post-processing is made of).
_DATA_DEPENDENT = {
    "Loop": "runs its body graph a number of times that may depend on the data",
    "Scan": "iterates a body graph over its inputs",
}

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
    # The importer prints its own error lines to stdout before raising, and warns (Python
    # warnings) about what tvmopt reports itself (the ONNX checker's complaints, for a model past
    # 2 GiB that it cannot serialise): they go to the debug log, not the caller's terminal.
    with _identifier_input_names(model) as names, _NodeTracker() as tracker, \
            contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
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
    for warning in caught:
        log.debug("TVM's ONNX importer warned: %s", warning.message)
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
