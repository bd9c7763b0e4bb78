"""ONNX element types as the dtype names that numpy and TVM use, and which of them tvmopt compiles.

A tensor's dtype is carried as such a name from the ONNX file onward (`TensorSpec.dtype`, the
importer's `dtype_dict`, the manifest); this table is the one place that translates.
"""

from __future__ import annotations

import onnx

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


def dtype_name(elem_type: int) -> str:
    """The dtype name of an ONNX element type; for one tvmopt does not compile (a string), ONNX's
    own name in lower case, which error messages then show."""
    return _ONNX_DTYPES.get(elem_type, onnx.TensorProto.DataType.Name(elem_type).lower())
