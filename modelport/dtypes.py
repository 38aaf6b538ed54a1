"""KServe v2 / Triton datatype names <-> numpy dtypes <-> ONNX element types (numpy only)."""

from __future__ import annotations

import numpy as np

# KServe v2 datatype string -> numpy dtype. BYTES is an object array of bytes.
KSERVE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}

NUMPY_TO_KSERVE: dict[np.dtype, str] = {v: k for k, v in KSERVE_TO_NUMPY.items()}

# ONNX TensorProto element type (int) -> KServe datatype.
ONNX_TO_KSERVE: dict[int, str] = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
    8: "BYTES", 9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64",
}

# onnxruntime type strings ("tensor(float)") -> KServe datatype.
ORT_TO_KSERVE: dict[str, str] = {
    "tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL", "tensor(string)": "BYTES",
}


def to_numpy_dtype(datatype: str) -> np.dtype:
    """numpy dtype of a KServe datatype name; KeyError for unknown names."""
    return KSERVE_TO_NUMPY[datatype.upper()]


def to_kserve(dtype) -> str:
    """KServe datatype name of a numpy dtype (str/bytes/object arrays are BYTES)."""
    dt = np.dtype(dtype)
    if dt.kind in ("U", "S", "O"):
        return "BYTES"
    return NUMPY_TO_KSERVE[dt]
