"""Stage 1a, the frontend: an ONNX file in, a Relax module with static input shapes out.

TVM's ONNX importer converts node by node; the frontend makes sure it is handed a model it can
convert, and turns every way a model can be unusable into one error a user can act on. Its
modules, in the order a build runs them:

- `loading`: read the file once, hash it (external weights included), load its external weights
  from beside it only, mend exporter bugs (`repairs`), run ONNX's checker;
- `repairs`: exporter bugs that make the checker reject a model whose meaning is clear;
- `shapes`: fix every input's shape from the model or `--input-shape`, refusing what stays dynamic;
- `normalization`: rewrite the graph in ONNX until TVM's importer takes it (opset conversion,
  constant folding, shape inference, clamps), calling `recurrent` (unroll LSTM/GRU/RNN) and
  `col2im` (Col2Im as a ConvTranspose), and say what changed;
- `importer`: call TVM's importer, refuse unconvertible ops by name, and name the ONNX node where
  it fails or a shape is lost.

Beside them: `specs` (what a graph declares: `TensorSpec`, its inputs, outputs and opset),
`dtypes` (ONNX element types as dtype names), `support` (which ops can be imported) and
`model_info` (what `tvmopt inspect` reports). The frontend knows nothing of the stages after it;
the names below are what the rest of tvmopt uses.
"""

from .importer import Imported, import_model
from .loading import LoadedModel, file_sha256, load, load_model
from .model_info import ModelInfo, describe
from .normalization import Change, normalize
from .shapes import parse_input_shape, resolve_inputs
from .specs import TensorSpec, graph_inputs, graph_outputs, model_opset
from .support import UnsupportedNode, unsupported_nodes

__all__ = [
    "Change", "Imported", "LoadedModel", "ModelInfo", "TensorSpec", "UnsupportedNode", "describe",
    "file_sha256", "graph_inputs", "graph_outputs", "import_model", "load", "load_model",
    "model_opset", "normalize", "parse_input_shape", "resolve_inputs", "unsupported_nodes",
]
