"""Sample inputs for parity checks and evaluation: NPZ loading, validation, generation (numpy only).

A user NPZ holds one array per model input name (or ``x`` for a single input). ``validate_samples``
checks it against the model's input specs and names the array and the expected shape on any
mismatch. ``generate_inputs`` builds deterministic inputs from a signature (fixed seed; integer
inputs within a valid range such as embedding indices below ``input_dim``).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from modelport.dtypes import to_numpy_dtype
from modelport.errors import InvalidArgument

# Size used for dynamic non-batch dimensions when generating inputs.
DEFAULT_DYNAMIC_DIM = 4
DEFAULT_INT_HIGH = 10


def _spec_parts(spec: Any) -> tuple[str, np.dtype, list[int]]:
    """(name, numpy dtype, shape with -1 for dynamic) of a TensorSpec proto or lookalike."""
    name = spec.name
    dtype = getattr(spec, "datatype", None) or getattr(spec, "dtype", "FP32")
    try:
        np_dtype = to_numpy_dtype(dtype) if isinstance(dtype, str) and dtype.isupper() else np.dtype(dtype)
    except (KeyError, TypeError) as e:
        raise InvalidArgument(f"input {name!r} has an unsupported datatype {dtype!r}") from e
    shape = [-1 if d is None or int(d) < 0 else int(d) for d in spec.shape]
    return name, np_dtype, shape


def _shape_text(shape: list[int]) -> str:
    return "(" + ", ".join("?" if d < 0 else str(d) for d in shape) + ")"


def load_npz(path: str | os.PathLike | bytes) -> dict[str, np.ndarray]:
    """Arrays of an NPZ file (or its bytes); pickled object arrays are refused."""
    if isinstance(path, bytes):
        head = path[:4]
        src: Any = io.BytesIO(path)
    else:
        with open(path, "rb") as f:
            head = f.read(4)
        src = path
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise InvalidArgument(f"the samples artifact is not a readable NPZ file (it starts with {head!r}, "
                              "not a zip header); save it with numpy.savez(path, input_name=array, ...)")
    try:
        with np.load(src, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise InvalidArgument("the samples artifact is a single .npy array, not an NPZ archive; "
                                      "save with numpy.savez(path, input_name=array, ...)")
            return {k: z[k] for k in z.files}
    except InvalidArgument:
        raise
    except ValueError as e:
        raise InvalidArgument(f"the samples NPZ holds pickled objects, which are not accepted ({e}); "
                              "save plain numeric arrays with numpy.savez") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise InvalidArgument(f"the samples artifact is not a readable NPZ file ({e}); "
                              "save it with numpy.savez(path, input_name=array, ...)") from None


def save_npz(arrays: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write arrays as an uncompressed NPZ."""
    with open(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})


def validate_samples(arrays: Mapping[str, np.ndarray], specs: Iterable[Any]) -> dict[str, np.ndarray]:
    """Check NPZ arrays against input specs; returns them keyed by input name, in spec order.

    A single-input model also accepts the key ``x`` (or a lone array of any name). Widths are
    converted within a kind (float64 -> float32, int64 -> int32 when the values fit); a different
    kind, a missing key, a wrong rank/dimension or differing sample counts raise InvalidArgument.
    """
    specs = list(specs)
    out: dict[str, np.ndarray] = {}
    batch = None
    for spec in specs:
        name, dtype, shape = _spec_parts(spec)
        if name in arrays:
            arr = np.asarray(arrays[name])
        elif len(specs) == 1 and "x" in arrays:
            arr = np.asarray(arrays["x"])
        elif len(specs) == 1 and len(arrays) == 1:
            arr = np.asarray(next(iter(arrays.values())))
        else:
            raise InvalidArgument(
                f"the samples NPZ has no array {name!r} (found {sorted(arrays) or 'none'}); add an array "
                f"named {name!r} of shape {_shape_text(shape)} and dtype {dtype.name}"
            )
        if arr.ndim != len(shape) or any(d >= 0 and d != a for d, a in zip(shape, arr.shape, strict=True)):
            raise InvalidArgument(
                f"samples array {name!r} has shape {tuple(arr.shape)} but the model expects "
                f"{_shape_text(shape)} (? = any size)"
            )
        if arr.dtype != dtype:
            same_kind = (arr.dtype.kind == dtype.kind or (arr.dtype.kind in "iu" and dtype.kind in "iu"))
            if not same_kind:
                raise InvalidArgument(
                    f"samples array {name!r} has dtype {arr.dtype.name} but the model expects {dtype.name} "
                    f"of shape {_shape_text(shape)}; convert it with array.astype('{dtype.name}')"
                )
            if dtype.kind in "iu" and arr.size:
                info = np.iinfo(dtype)
                if arr.min() < info.min or arr.max() > info.max:
                    raise InvalidArgument(f"samples array {name!r} has values outside the {dtype.name} range")
            arr = arr.astype(dtype)
        if arr.ndim:
            if batch is not None and arr.shape[0] != batch:
                raise InvalidArgument(
                    f"samples array {name!r} has {arr.shape[0]} samples but the others have {batch}; "
                    "every input needs the same number of samples"
                )
            batch = arr.shape[0]
        out[name] = arr
    return out


def generate_inputs(specs: Iterable[Any], num_samples: int = 8, seed: int = 0,
                    int_ranges: Mapping[str, tuple[int, int]] | None = None,
                    dynamic_dim: int = DEFAULT_DYNAMIC_DIM) -> dict[str, np.ndarray]:
    """Deterministic inputs for a signature: floats uniform in [-1, 1), integers in ``int_ranges[name]``.

    Integer inputs without a known range use [0, 10). A dynamic batch dimension becomes
    ``num_samples``; other dynamic dimensions ``dynamic_dim``. A fixed batch dimension is kept.
    """
    rng = np.random.default_rng(seed)
    int_ranges = dict(int_ranges or {})
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        name, dtype, shape = _spec_parts(spec)
        dims = [(num_samples if i == 0 else dynamic_dim) if d < 0 else d for i, d in enumerate(shape)]
        if dtype.kind == "f":
            arr = rng.uniform(-1.0, 1.0, size=dims).astype(dtype)
        elif dtype.kind in "iu":
            low, high = int_ranges.get(name, (0, DEFAULT_INT_HIGH))
            arr = rng.integers(low, max(high, low + 1), size=dims).astype(dtype)
        elif dtype.kind == "b":
            arr = rng.integers(0, 2, size=dims).astype(bool)
        else:
            raise InvalidArgument(
                f"cannot generate samples for input {name!r} of dtype {dtype}; supply them as an NPZ artifact"
            )
        out[name] = arr
    return out
