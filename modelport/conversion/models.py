"""Loaded models of every source/target format behind one small interface (TensorFlow lazily).

``load_model(path, fmt, trust_remote_code)`` returns a ``LoadedModel``: its input/output
``TensorSpec``s, ``run(inputs) -> {output: array}`` for parity checks, ``info()`` as a
``ModelInfo``, and integer input ranges for generated samples. TensorFlow-backed models
(Keras, SavedModel) also expose ``tf_function(fixed_batch_size)`` — the callable every
TensorFlow-side target (ONNX through tf2onnx, TFLite, SavedModel) is produced from.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from modelport import formats
from modelport.conversion import hub_models
from modelport.dtypes import ONNX_TO_KSERVE, ORT_TO_KSERVE, to_kserve
from modelport.errors import FailedPrecondition, InvalidArgument
from modelport.job_records import ModelInfo, TensorSpec
from modelport.memory import release_freed_memory

log = logging.getLogger("modelport.conversion.models")

DEFAULT_INT_HIGH = 10


def tensor_spec(name: str, dtype: Any, shape) -> TensorSpec:
    """A TensorSpec from a numpy-compatible dtype and a shape (None/-1/str = dynamic)."""
    dims = []
    for d in shape:
        dims.append(int(d) if isinstance(d, (int, np.integer)) and int(d) >= 0 else -1)
    return TensorSpec(name=name, datatype=to_kserve(np.dtype(dtype)), shape=tuple(dims))


def _tf_dtype_np(dtype) -> np.dtype:
    import tensorflow as tf

    return np.dtype(tf.as_dtype(dtype).as_numpy_dtype)


class LoadedModel(abc.ABC):
    """A model ready to run in this process."""

    format = ""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def __init__(self, path: Path):
        self.path = Path(path)
        self.int_ranges: dict[str, tuple[int, int]] = {}

    @property
    def fixed_batch(self) -> int:
        """The batch size the model's inputs are pinned to (0 = dynamic)."""
        dims = [s.shape[0] for s in self.inputs if len(s.shape)]
        return int(dims[0]) if dims and dims[0] > 0 else 0

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on a batch of samples; a model with a pinned batch size runs chunk by chunk."""
        n = next(iter(inputs.values())).shape[0] if inputs else 0
        step = self.fixed_batch or n
        if step == n or n == 0:
            return self._run_batch(inputs)
        if n % step:
            raise InvalidArgument(f"the {self.format} model has a fixed batch size of {step}; "
                                  f"give a multiple of {step} samples (got {n})")
        parts = [self._run_batch({k: v[i:i + step] for k, v in inputs.items()}) for i in range(0, n, step)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    @abc.abstractmethod
    def _run_batch(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on one batch the model can take as is."""

    def release(self) -> None:  # noqa: B027 - optional hook: most formats hold nothing worth freeing early
        """Drop what holds the model's weights, so a converted twin can be loaded without two copies
        in memory (parity runs the source, frees it, then runs the result). Unusable afterwards."""

    @abc.abstractmethod
    def info(self) -> ModelInfo:
        """Format, size, inputs/outputs and format-specific details."""

    def _base_info(self) -> ModelInfo:
        size = self.path.stat().st_size if self.path.is_file() else sum(
            p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return ModelInfo(format=self.format, size_bytes=size, inputs=list(self.inputs), outputs=list(self.outputs))


# ---- TensorFlow-backed sources ----------------------------------------------------------------

class TFModel(LoadedModel):
    """Keras or SavedModel: exposes a tf.function with named inputs and a dict of named outputs."""

    trackable: Any = None

    @abc.abstractmethod
    def tf_function(self, fixed_batch_size: int = 0):
        """(tf.function with an input signature, signature, output names)."""

    def export_savedmodel(self, folder: Path, fixed_batch_size: int = 0) -> None:
        """Write a SavedModel whose ``serving_default`` signature is ``tf_function(fixed_batch_size)``."""
        import tensorflow as tf

        fn, _, _ = self.tf_function(fixed_batch_size)
        tf.saved_model.save(self.trackable, str(folder), signatures={"serving_default": fn.get_concrete_function()})

    def _run_batch(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        fn, signature, _ = self._dynamic
        args = [tf.constant(inputs[s.name]) for s in signature]
        out = fn(*args)
        return {k: np.asarray(v) for k, v in out.items()}

    def _outputs_from(self, fn, signature) -> list[TensorSpec]:
        structured = fn.get_concrete_function(*signature).structured_outputs
        return [tensor_spec(k, _tf_dtype_np(v.dtype), v.shape.as_list()) for k, v in structured.items()]


class KerasModel(TFModel):
    """A Keras 3 ``.keras`` or HDF5 model loaded with Keras 3 (safe mode unless trusted)."""

    def __init__(self, path: Path, fmt: str, trust_remote_code: bool):
        super().__init__(path)
        self.format = fmt

        from modelport.conversion.onnx_export import keras_input_infos, keras_tf_function
        from modelport.model_code import check_model_code

        check_model_code(path, fmt, trust_remote_code)  # before any loader: not all of them refuse code

        from modelport.memory import weight_bytes

        self.weight_bytes = weight_bytes(path, fmt)
        # Keras picks its loader by file extension; content-addressed blobs have none, so link one.
        tmp = Path(tempfile.mkdtemp(prefix="keras-load-"))
        link = tmp / ("model.keras" if fmt == formats.KERAS else "model.h5")
        try:
            os.symlink(Path(path).resolve(), link)
            self.model = _load_keras(str(link), fmt, self.weight_bytes, not trust_remote_code)
        except Exception as e:  # noqa: BLE001 - classified below
            raise _keras_load_error(e, fmt, trust_remote_code) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.trackable = self.model
        self._dynamic = keras_tf_function(self.model, 0)
        infos = keras_input_infos(self.model)
        self.inputs = [tensor_spec(i.name, i.dtype, i.shape) for i in infos]
        self.outputs = self._outputs_from(self._dynamic[0], self._dynamic[1])
        high = _embedding_high(self.model)
        self.int_ranges = {s.name: (0, high) for s in self.inputs if s.datatype.startswith(("INT", "UINT"))}
        hub_ranges = hub_models.input_ranges(self.model)  # token/segment ids, padding masks of keras_hub models
        self.int_ranges.update({k: v for k, v in hub_ranges.items() if k in self.int_ranges})

    def tf_function(self, fixed_batch_size: int = 0):
        from modelport.conversion.onnx_export import keras_tf_function

        return self._dynamic if not fixed_batch_size else keras_tf_function(self.model, fixed_batch_size)

    def release(self) -> None:
        import keras

        self.model = self.trackable = self._dynamic = None
        keras.backend.clear_session()
        release_freed_memory()

    def export_savedmodel(self, folder: Path, fixed_batch_size: int = 0) -> None:
        """SavedModel through Keras' ExportArchive (plain tf.saved_model.save of a Keras 3 model
        yields a SavedModel whose TFLite conversion reads garbage weights)."""
        import keras

        fn, _, _ = self.tf_function(fixed_batch_size)
        archive = keras.export.ExportArchive()
        archive.track(self.model)
        archive.add_endpoint("serving_default", fn)
        archive.write_out(str(folder), verbose=False)

    def info(self) -> ModelInfo:
        import keras

        info = self._base_info()
        info.parameter_count = int(self.model.count_params())
        version = _saved_keras_version(self.path, self.format)
        info.producer = f"keras {version}" if version else f"keras {keras.__version__}"
        info.details["model_class"] = type(self.model).__name__
        info.details["layers"] = str(len(self.model.layers))
        info.details["model_name"] = str(self.model.name)
        return info


# From this many weight bytes a .keras/.h5 file is loaded with one copy of its weights (keras_lean_load).
KERAS_LEAN_LOAD_MIN = 64 << 20


def _load_keras(path: str, fmt: str, weight_bytes: int, safe_mode: bool):
    """``keras.saving.load_model``; a large file through the lean loader, plain Keras if that fails."""
    import keras

    if fmt in (formats.KERAS, formats.H5) and weight_bytes >= KERAS_LEAN_LOAD_MIN:
        from modelport.conversion.keras_lean_load import load_keras_lean

        try:
            return load_keras_lean(path, safe_mode)
        except Exception as e:  # noqa: BLE001 - Keras' own loader decides (and names the error)
            log.warning("lean Keras load failed (%s: %s); loading with keras.saving.load_model",
                        type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            import gc

            keras.backend.clear_session()
            gc.collect()
    return keras.saving.load_model(path, compile=False, safe_mode=safe_mode)


def _keras_load_error(e: Exception, fmt: str, trusted: bool) -> Exception:
    text = str(e)
    missing = hub_models.missing_package_error(text)
    if missing is not None:  # a package (keras-hub, ...) the environment lacks: never "corrupted"
        return missing
    if not trusted and ("safe_mode" in text or "Lambda" in text or "arbitrary code" in text):
        return FailedPrecondition(
            "the model contains a Lambda layer or other Python code, and loading it would run that code; "
            "it was refused (Keras safe_mode). If you trust where the model comes from, send "
            "trust_remote_code=true to a service whose operator started it with --allow-remote-code",
            details={"reason": "unsafe_code"},
        )
    if "Could not locate" in text or "Unknown layer" in text or "custom_objects" in text or "Unrecognized" in text:
        return InvalidArgument(
            f"the model uses a custom Keras class the converter does not have ({text.splitlines()[0][:300]}); "
            "the class's Python code is not stored in the file. Export a SavedModel "
            "(model.export('dir')) and convert that instead",
            details={"reason": "custom_object"},
        )
    return InvalidArgument(
        f"the {fmt} model could not be loaded: {type(e).__name__}: {text.splitlines()[0][:400] if text else ''}; "
        "the file may be corrupted or written by an unsupported Keras version",
    )


def _embedding_high(model: Any) -> int:
    """Smallest Embedding input_dim in the model (valid index range for integer inputs)."""
    try:
        layers = list(model._flatten_layers(include_self=False, recursive=True))
    except Exception:  # noqa: BLE001 - older API
        layers = list(getattr(model, "layers", []))
    dims = [int(layer.input_dim) for layer in layers if type(layer).__name__ == "Embedding"]
    return min(dims) if dims else DEFAULT_INT_HIGH


def _saved_keras_version(path: Path, fmt: str) -> str:
    try:
        if fmt == formats.KERAS:
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("metadata.json")).get("keras_version", "")
        import h5py

        with h5py.File(path, "r") as f:
            v = f.attrs.get("keras_version", "")
            return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:  # noqa: BLE001 - informational only
        return ""


class SavedModelModel(TFModel):
    """A TensorFlow SavedModel folder, run through its serving signature."""

    format = formats.SAVEDMODEL

    def __init__(self, folder: Path, trust_remote_code: bool = False):
        super().__init__(folder)
        import tensorflow as tf

        from modelport.conversion.savedmodel_lean_load import default_signature_key, variable_bytes
        from modelport.memory import weight_bytes
        from modelport.model_code import check_model_code

        self.root = formats.savedmodel_root(folder)
        check_model_code(self.root, formats.SAVEDMODEL, trust_remote_code)  # graph ops that touch files/Python
        self.weight_bytes = weight_bytes(self.root, formats.SAVEDMODEL)
        lean = _load_savedmodel_lean(self.root, self.weight_bytes)
        self.lean = lean is not None
        if lean is not None:
            self.trackable, self.sig, self.signature_key = lean
        else:
            try:
                self.trackable = tf.saved_model.load(str(self.root))
            except Exception as e:  # noqa: BLE001
                raise InvalidArgument(f"the SavedModel could not be loaded: {type(e).__name__}: "
                                      f"{str(e).splitlines()[0][:400] if str(e) else ''}") from None
            sigs = dict(self.trackable.signatures)
            if not sigs:
                raise InvalidArgument("the SavedModel has no serving signature; export it with model.export(dir) "
                                      "or tf.saved_model.save(obj, dir, signatures=...)")
            self.signature_key = default_signature_key(sigs)
            self.sig = sigs[self.signature_key]
        # The weights the signature reads (a Keras 3 model.export() SavedModel stores each one twice on disk).
        self.weight_bytes = sum(variable_bytes(v) for v in self.sig.variables
                                if v.shape.is_fully_defined()) or self.weight_bytes
        args, kwargs = self.sig.structured_input_signature
        if args:
            raise InvalidArgument("the SavedModel signature takes positional inputs; export named inputs")
        self._in_specs = dict(kwargs)
        self._dynamic = self.tf_function(0)
        self.inputs = [tensor_spec(k, _tf_dtype_np(v.dtype), v.shape.as_list()) for k, v in self._in_specs.items()]
        self.outputs = [tensor_spec(k, _tf_dtype_np(v.dtype), v.shape.as_list())
                        for k, v in self.sig.structured_outputs.items()]
        emb = [int(v.shape[0]) for v in self.sig.variables if "embedding" in v.name.lower() and v.shape.rank]
        high = min(emb) if emb else DEFAULT_INT_HIGH
        self.int_ranges = {s.name: (0, high) for s in self.inputs if s.datatype.startswith(("INT", "UINT"))}

    def tf_function(self, fixed_batch_size: int = 0):
        import tensorflow as tf

        names = list(self._in_specs)
        signature = []
        for n in names:
            shape = self._in_specs[n].shape.as_list()
            if shape and fixed_batch_size:
                shape[0] = fixed_batch_size
            signature.append(tf.TensorSpec(shape, self._in_specs[n].dtype, name=n))
        sig = self.sig

        def call(*args):
            out = sig(**dict(zip(names, args, strict=True)))
            return {k: tf.identity(v, name=k) for k, v in out.items()}

        fn = tf.function(call, input_signature=signature)
        return fn, signature, list(self.sig.structured_outputs)

    def export_savedmodel(self, folder: Path, fixed_batch_size: int = 0) -> None:
        """As ``TFModel``'s; after a lean load, of a module holding only the signature's variables (the
        others were never restored: saving the loaded object would write them empty)."""
        if not self.lean:
            return super().export_savedmodel(folder, fixed_batch_size)
        import tensorflow as tf

        fn, _, _ = self.tf_function(fixed_batch_size)
        module = tf.Module()
        module.signature_variables = list(self.sig.variables)
        tf.saved_model.save(module, str(folder), signatures={"serving_default": fn.get_concrete_function()})

    def release(self) -> None:
        self.trackable = self.sig = self._dynamic = None
        release_freed_memory()

    def info(self) -> ModelInfo:
        info = self._base_info()
        info.parameter_count = int(sum(int(np.prod(v.shape)) for v in self.sig.variables))
        info.producer = _saved_model_producer(self.root)
        info.details["signature"] = self.signature_key
        return info


# From this many bytes of variables data a SavedModel is loaded with only its signature's variables restored
# (savedmodel_lean_load).
SAVEDMODEL_LEAN_LOAD_MIN = 64 << 20


def _load_savedmodel_lean(root: Path, weight_bytes: int):
    """(loaded object, signature, key) through the lean loader for a large SavedModel; None to load it plainly
    (a small one, or one the lean loader cannot restore: it says why in the log)."""
    if weight_bytes < SAVEDMODEL_LEAN_LOAD_MIN:
        return None

    from modelport.conversion.savedmodel_lean_load import load_savedmodel_lean

    try:
        return load_savedmodel_lean(str(root))
    except Exception as e:  # noqa: BLE001 - TensorFlow's own load decides (and names the error)
        log.warning("lean SavedModel load failed (%s: %s); loading with tf.saved_model.load",
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        release_freed_memory()
        return None


def _saved_model_producer(root: Path) -> str:
    try:
        from tensorflow.core.protobuf import saved_model_pb2

        sm = saved_model_pb2.SavedModel.FromString((root / "saved_model.pb").read_bytes())
        v = sm.meta_graphs[0].meta_info_def.tensorflow_version
        return f"tensorflow {v}" if v else "tensorflow"
    except Exception:  # noqa: BLE001 - informational only
        return "tensorflow"


# ---- TFLite ------------------------------------------------------------------------------------

class TFLiteModel(LoadedModel):
    """A TFLite flatbuffer run with the TensorFlow Lite interpreter (signature names when present)."""

    format = formats.TFLITE

    def __init__(self, path: Path):
        super().__init__(path)
        import warnings

        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.interp = tf.lite.Interpreter(model_path=str(path))
            except Exception as e:  # noqa: BLE001
                raise InvalidArgument(f"the TFLite model could not be read: {str(e)[:300]}; it may be "
                                      "truncated or corrupted") from None
        sigs = self.interp.get_signature_list()
        self.signature_key = next(iter(sigs), None)
        if self.signature_key is not None:
            runner = self.interp.get_signature_runner(self.signature_key)
            in_d = runner.get_input_details()
            out_d = runner.get_output_details()
            self._in = [(n, d) for n, d in in_d.items()]
            self._out = [(n, d) for n, d in out_d.items()]
        else:
            self._in = [(d["name"], d) for d in self.interp.get_input_details()]
            self._out = [(d["name"], d) for d in self.interp.get_output_details()]
        self.inputs = [tensor_spec(n, d["dtype"], d.get("shape_signature", d["shape"])) for n, d in self._in]
        self.outputs = [tensor_spec(n, d["dtype"], d.get("shape_signature", d["shape"])) for n, d in self._out]
        high = self._gather_rows() or DEFAULT_INT_HIGH
        self.int_ranges = {s.name: (0, high) for s in self.inputs if s.datatype.startswith(("INT", "UINT"))}

    def _gather_rows(self) -> int:
        """Smallest row count of a GATHER table (an embedding): the valid range of integer inputs."""
        try:
            shapes = {d["index"]: list(d["shape"]) for d in self.interp.get_tensor_details()}
            rows = [shapes[op["inputs"][0]][0] for op in self.interp._get_ops_details()
                    if op["op_name"] == "GATHER" and shapes.get(op["inputs"][0])]
        except Exception:  # noqa: BLE001 - private API; fall back to the default range
            return 0
        return int(min(rows)) if rows else 0

    def tensor_names(self) -> tuple[dict[str, str], dict[str, str]]:
        """Signature name -> TFLite tensor name, for inputs and outputs."""
        by_index = {d["index"]: d["name"] for d in self.interp.get_tensor_details()}
        return ({n: by_index.get(d["index"], n) for n, d in self._in},
                {n: by_index.get(d["index"], n) for n, d in self._out})

    def _run_batch(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = next(iter(inputs.values())).shape[0] if inputs else 0
        try:
            return self._invoke(inputs)
        except RuntimeError:
            if n <= 1:
                raise
            # Some delegates (XNNPACK) cannot resize every graph to a larger batch: one sample at a time.
            parts = [self._invoke({k: v[i:i + 1] for k, v in inputs.items()}) for i in range(n)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _invoke(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        it = self.interp
        for n, d in self._in:
            it.resize_tensor_input(d["index"], list(inputs[n].shape), strict=False)
        it.allocate_tensors()
        for n, d in self._in:
            it.set_tensor(d["index"], np.ascontiguousarray(inputs[n]))
        it.invoke()
        return {n: np.array(it.get_tensor(d["index"])) for n, d in self._out}

    def info(self) -> ModelInfo:
        info = self._base_info()
        count = 0
        for d in self.interp.get_tensor_details():
            try:
                count += int(np.asarray(self.interp.get_tensor(d["index"])).size)
            except ValueError:
                continue  # not a constant (activation or input)
        info.parameter_count = count
        info.producer = "tflite"
        if self.signature_key:
            info.details["signature"] = self.signature_key
        return info


# ---- ONNX ----------------------------------------------------------------------------------------

def onnx_model_file(path: Path) -> Path:
    """The ``.onnx`` file of an ONNX model: ``path`` itself, or the one ``.onnx`` file of a folder
    (``model.onnx`` + its external data file, as the converter writes large models)."""
    path = Path(path)
    if not path.is_dir():
        return path
    if (path / "model.onnx").is_file():
        return path / "model.onnx"
    hits = sorted(path.rglob("*.onnx"))
    if len(hits) != 1:
        raise InvalidArgument(f"an ONNX model folder must hold exactly one .onnx file (found {len(hits)}): "
                              "the model file plus its external data file(s)")
    return hits[0]


class OnnxModel(LoadedModel):
    """An ONNX model run with onnxruntime on the CPU: one file, or a folder with ``model.onnx`` and
    its external data (resolved beside the model file)."""

    format = formats.ONNX

    def __init__(self, path: Path):
        super().__init__(path)
        import onnx
        import onnxruntime as ort

        model_file = onnx_model_file(path)
        try:
            self.proto = onnx.load_model(str(model_file), load_external_data=False)
        except Exception as e:  # noqa: BLE001
            raise InvalidArgument(f"the ONNX model could not be parsed: {str(e)[:300]}") from None
        from modelport.onnx_files import check_data_files

        self.data_files = check_data_files(self.proto, path)  # onnxruntime reads them from beside the model
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            # A parity or inspection session runs once or a few times: onnxruntime's CPU arena (memory kept for
            # the next run) and weight prepacking (a packed copy of each MatMul/Gemm weight, made at load while
            # the whole external data file is mapped) buy nothing then. Measured on VGG-16 (0.55 GB, 8 samples):
            # peak 1.02 -> 0.71 GB; on a 0.73 GB transformer LM the peak drops too; load + one run took the
            # same time both ways, interleaved (BENCHMARKS.md, Large models).
            opts.enable_cpu_mem_arena = False
            opts.add_session_config_entry("session.disable_prepacking", "1")
            self.session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise InvalidArgument(f"onnxruntime cannot load the ONNX model: {str(e).splitlines()[0][:400]}") from None
        self.inputs = [TensorSpec(name=i.name, datatype=ORT_TO_KSERVE.get(i.type, "FP32"),
                                  shape=tuple(d if isinstance(d, int) and d >= 0 else -1 for d in i.shape))
                       for i in self.session.get_inputs()]
        self.outputs = [TensorSpec(name=o.name, datatype=ORT_TO_KSERVE.get(o.type, "FP32"),
                                   shape=tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (o.shape or [])))
                        for o in self.session.get_outputs()]
        self.int_ranges = _onnx_int_ranges(self.proto, self.inputs)

    def _run_batch(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        got = self.session.run(names, {s.name: inputs[s.name] for s in self.inputs})
        return dict(zip(names, got, strict=True))

    def release(self) -> None:
        self.session = None
        release_freed_memory()

    @property
    def opset(self) -> int:
        return next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), 0)

    def info(self) -> ModelInfo:
        info = self._base_info()
        info.size_bytes = sum((self.path.parent / f).stat().st_size for f in self.data_files) + info.size_bytes
        if self.data_files:
            info.details["external_data"] = ",".join(self.data_files)
        info.opset = self.opset
        version = self.proto.producer_version.removesuffix(" None")  # tf2onnx appends its git hash or None
        info.producer = f"{self.proto.producer_name} {version}".strip()
        info.parameter_count = int(sum(int(np.prod(t.dims)) for t in self.proto.graph.initializer))
        info.details["ir_version"] = str(self.proto.ir_version)
        info.details["nodes"] = str(len(self.proto.graph.node))
        external = sorted({e.value for t in self.proto.graph.initializer if t.data_location == t.EXTERNAL
                           for e in t.external_data if e.key == "location"})
        if external:
            info.details["external_data"] = ",".join(external)
        return info


# Ops an index tensor flows through on its way to an embedding Gather (casts, reshapes, the
# negative-index fix-up ``Where(x < 0, x + n, x)`` that Keras' take() emits).
_INDEX_PASS_THROUGH = {"Cast", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Where", "Add", "Less",
                       "Mul", "Not", "Sub", "Neg", "Equal", "Greater", "And", "Or",
                       "Clip", "Max", "Min", "Mod", "Expand", "Transpose"}


def _onnx_int_ranges(proto, inputs: list[TensorSpec]) -> dict[str, tuple[int, int]]:
    """Integer inputs feeding a Gather over an initializer (an embedding table) get its row count."""
    inits = {t.name: list(t.dims) for t in proto.graph.initializer}
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    ranges = {}
    for spec in inputs:
        if not spec.datatype.startswith(("INT", "UINT")):
            continue
        high = None
        frontier, seen = [spec.name], set()
        while frontier:
            name = frontier.pop()
            if name in seen:
                continue
            seen.add(name)
            for node in consumers.get(name, []):
                if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name and node.input[0] in inits:
                    rows = inits[node.input[0]][0] if inits[node.input[0]] else None
                    if rows:
                        high = rows if high is None else min(high, rows)
                elif node.op_type in _INDEX_PASS_THROUGH:
                    frontier.append(node.output[0])
        ranges[spec.name] = (0, high or DEFAULT_INT_HIGH)
    # a keras_hub export: 0/1 padding masks, masked LM positions inside the sequence
    ranges.update(hub_models.named_input_ranges({s.name: list(s.shape) for s in inputs if s.name in ranges}))
    return ranges


def onnx_int_ranges(proto, inputs: list) -> dict[str, tuple[int, int]]:
    """Valid ``[low, high)`` ranges for generated samples of the integer ``inputs`` (objects with ``name``, numpy
    ``dtype`` and ``shape``) of an ONNX ModelProto (its graph; external data need not be loaded): embedding rows,
    keras_hub's named inputs."""
    specs = [tensor_spec(i.name, i.dtype, i.shape) for i in inputs]
    return _onnx_int_ranges(proto, specs)


def load_model(path: str | os.PathLike, fmt: str, trust_remote_code: bool = False) -> LoadedModel:
    """Load a model of a detected format (a SavedModel ``path`` is the unpacked folder)."""
    path = Path(path)
    if fmt in (formats.KERAS, formats.H5):
        return KerasModel(path, fmt, trust_remote_code)
    if fmt == formats.SAVEDMODEL:
        return SavedModelModel(path, trust_remote_code)
    if fmt == formats.TFLITE:
        return TFLiteModel(path)
    if fmt == formats.ONNX:
        return OnnxModel(path)
    raise InvalidArgument(f"unknown model format {fmt!r}")


__all__ = ["LoadedModel", "TFModel", "KerasModel", "SavedModelModel", "TFLiteModel", "OnnxModel",
           "load_model", "onnx_model_file", "tensor_spec", "ONNX_TO_KSERVE"]
