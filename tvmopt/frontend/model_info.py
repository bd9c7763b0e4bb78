"""What `tvmopt inspect` reports about an ONNX model before anything is compiled: identity, opset,
inputs and outputs (dynamic dims named), an op histogram, the ops tvmopt cannot import, and the
external weight files. It reads the loaded model and changes nothing.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from .loading import LoadedModel
from .specs import TensorSpec, all_nodes, graph_inputs, graph_outputs, model_opset
from .support import UnsupportedNode, unsupported_nodes


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


def describe(loaded: LoadedModel) -> ModelInfo:
    model = loaded.proto
    hist = collections.Counter(n.op_type for n in all_nodes(model.graph))
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
