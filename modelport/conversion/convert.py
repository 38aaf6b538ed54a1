"""One conversion job: load, convert, verify parity, store (runs inside a converter worker).

``convert_model(store, job, progress)`` turns a ``ConvertJob`` into a ``ConvertResult`` (records of
``modelport.job_records``; the converter's worker entry translates the protobuf request and result):
the source format comes from the content, the target is produced in a temp folder, source and
target run on the same samples (a user NPZ or generated inputs), and only a result that passes
parity (or is allowed to mismatch) is published to the store. ``inspect_model`` answers Inspect.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modelport import formats, media, memory, parity
from modelport.conversion import quantization
from modelport.datasets import generate_inputs, load_npz, validate_samples
from modelport.errors import FailedPrecondition, InvalidArgument, ModelportError, Unimplemented
from modelport.job_records import ArtifactRef, ConvertJob, ConvertResult, ModelInfo, ParityOptions
from modelport.store import ArtifactStore

log = logging.getLogger("modelport.conversion")

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 18
DEFAULT_SAMPLES = 8

Progress = Callable[[str, float, str], None]


def _noop(stage: str, fraction: float, message: str = "") -> None:
    pass


def check_opset(opset: int) -> int:
    """The requested opset (0 = default 17), or InvalidArgument outside 13..18."""
    opset = int(opset or DEFAULT_OPSET)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InvalidArgument(f"ONNX opset {opset} is not supported: choose {MIN_OPSET}..{MAX_OPSET} "
                              f"(0 = default {DEFAULT_OPSET})")
    return opset


def source_path(store: ArtifactStore, digest: str, fmt: str) -> Path:
    """Local path of a source artifact: a SavedModel archive's folder, an ONNX folder archive's
    ``model.onnx`` (archives are unpacked safely, once), else the file itself."""
    if fmt == formats.SAVEDMODEL:
        return store.unpacked(digest)
    if fmt == formats.ONNX:
        return store.onnx_model(digest)
    return store.path(digest)


# ---- samples ---------------------------------------------------------------------------------

def _batch_free(specs):
    return [dataclasses.replace(s, shape=(-1, *s.shape[1:])) if len(s.shape) else s for s in specs]


def sample_inputs(store: ArtifactStore, options: ParityOptions, model, fixed_batch: int):
    """(inputs, description) for parity: the user's NPZ validated, or generated with a fixed seed."""
    specs = _batch_free(model.inputs)
    if options.samples_digest:
        arrays = load_npz(store.path(options.samples_digest))
        inputs = validate_samples(arrays, specs)
        n = next(iter(inputs.values())).shape[0] if inputs else 0
        if fixed_batch and n % fixed_batch:
            raise InvalidArgument(f"the samples NPZ has {n} samples; with fixed_batch_size={fixed_batch} give a "
                                  f"multiple of {fixed_batch}")
        return inputs, options.samples_digest
    n = options.num_samples or DEFAULT_SAMPLES
    if n < 0:
        raise InvalidArgument(f"num_samples must be >= 0, got {n}")
    if fixed_batch:
        n = fixed_batch * max(1, -(-n // fixed_batch))
    inputs = generate_inputs(specs, num_samples=n, seed=int(options.seed), int_ranges=model.int_ranges)
    return inputs, f"generated(seed={int(options.seed)}, n={n})"


def run_checked(model, inputs: dict[str, np.ndarray], role: str,
                explain: Callable[[str], str] | None = None) -> dict[str, np.ndarray]:
    """Run a model for parity; failures become errors that name the role and the fix (``explain`` turns
    the converted model's first error line into the whole message: the layer and op at fault)."""
    try:
        return model.run(inputs)
    except ModelportError:
        raise
    except Exception as e:  # noqa: BLE001 - the model rejected the inputs
        first = str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__
        if role == "source":
            raise InvalidArgument(
                f"the source model failed on the parity inputs: {first}; supply valid sample inputs as an NPZ "
                "artifact (ParityOptions.samples)") from None
        if explain is not None:
            raise FailedPrecondition(explain(first)) from None
        raise FailedPrecondition(f"the converted model failed to run on the parity inputs: {first}") from None


# ---- producing targets -------------------------------------------------------------------------

def _check_onnx(path: Path, layers: dict[str, str] | None = None, opset: int = DEFAULT_OPSET) -> None:
    """Fail clearly when tf2onnx left ops it could not convert (it continues on error, and writes them
    with ONNX's own domain): the error names each op and the Keras layer it belongs to (``layers``)."""
    import onnx

    from modelport.conversion import diagnose
    from modelport.conversion.models import onnx_model_file

    path = onnx_model_file(path)
    proto = onnx.load_model(str(path), load_external_data=False)
    unknown = diagnose.unsupported_nodes(proto)
    if unknown:
        layers = layers or {}
        raise FailedPrecondition(
            diagnose.unsupported_message(unknown, layers, opset),
            details={"unsupported_ops": ",".join(sorted({n.op_type for n in unknown})),
                     "layers": ",".join(sorted({diagnose.layer_of(n.name, layers) for n in unknown} - {""}))},
        )
    try:
        onnx.checker.check_model(str(path))  # by path: external data is checked beside the model file
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0][:400]
        node = diagnose.node_in_error(first, proto)
        at = f" at {diagnose.where(node.name, node.op_type, layers or {})}" if node is not None else ""
        raise FailedPrecondition(f"the converted ONNX model is invalid{at}: {first}; "
                                 f"{diagnose.advice(opset)}") from None


def _rename_onnx_io(path: Path, inputs: dict[str, str], outputs: dict[str, str]) -> None:
    """Rename graph inputs/outputs (old -> new) everywhere they are referenced."""
    import onnx

    from modelport.conversion.onnx_export import name_batch_dims, save_onnx

    proto = onnx.load_model(str(path))
    mapping = {old: new for old, new in {**inputs, **outputs}.items() if old != new}
    if mapping:
        g = proto.graph
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            vi.name = mapping.get(vi.name, vi.name)
        for node in g.node:
            for i, n in enumerate(node.input):
                node.input[i] = mapping.get(n, n)
            for i, n in enumerate(node.output):
                node.output[i] = mapping.get(n, n)
    name_batch_dims(proto)
    save_onnx(proto, path)


def tflite_from_model(src, fixed_batch: int, out: Path, workdir: Path) -> dict[str, str]:
    """Float32 TFLite of a TensorFlow-backed model; returns notes (batch pinned to 1, TF Select ops).

    Goes through a SavedModel of the model's serving function. Tries builtin ops with the
    requested batch first; recurrent layers whose tensor lists need a static batch fall back to
    batch 1, then to TF Select ops (which need the Flex delegate at run time).
    """
    import warnings

    import tensorflow as tf

    def attempt(batch: int, select_ops: bool) -> bytes:
        folder = Path(tempfile.mkdtemp(dir=workdir, prefix="tflite-src-"))
        src.export_savedmodel(folder, batch)
        conv = tf.lite.TFLiteConverter.from_saved_model(str(folder), signature_keys=["serving_default"])
        if select_ops:
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
            conv._experimental_lower_tensor_list_ops = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return conv.convert()

    notes: dict[str, str] = {}
    plans = [(fixed_batch, False)]
    if not fixed_batch:
        plans.append((1, False))
    plans.append((fixed_batch, True))
    errors = []
    for batch, select in plans:
        try:
            data = attempt(batch, select)
        except Exception as e:  # noqa: BLE001 - try the next plan
            lines = [ln for ln in str(e).strip().splitlines() if "error:" in ln] or str(e).strip().splitlines()
            errors.append(lines[0][:300] if lines else type(e).__name__)
            log.info("TFLite plan batch=%s select_ops=%s failed: %s", batch, select, errors[-1])
            continue
        if batch and not fixed_batch:
            notes["batch"] = ("pinned to 1: the model's recurrent layers need a static batch for TFLite "
                              "builtin ops (run samples one at a time)")
        if select:
            notes["select_tf_ops"] = "uses TensorFlow Select ops: the runtime needs the Flex delegate"
        out.write_bytes(data)
        return notes
    raise FailedPrecondition("TFLite conversion failed: " + " | ".join(errors))


def relabel_opset(proto, opset: int, why: str):
    """Set the default-domain opset when every op's inputs/attributes validate at ``opset``.

    onnx.version_converter lacks many down-conversion adapters, even for ops whose newer version
    only added types (Add 14 vs 13). The full checker (schema + shape inference) then decides
    whether the graph is valid at the target opset; parity verifies the numbers afterwards.
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for imp in out.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = opset
    try:
        onnx.checker.check_model(out, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise FailedPrecondition(
            f"cannot move this ONNX model to opset {opset}: onnx.version_converter failed ({why}) and the graph is "
            f"not valid at opset {opset} as is ({str(e).splitlines()[0][:300]}); choose an opset closer to the "
            "model's own or re-export it from its source at that opset") from None
    return out


def produce(src, target: str, workdir: Path, opset: int, fixed_batch: int,
            onnx2tf_python: str = "", onnx2torch_python: str = "") -> tuple[Path, dict[str, str]]:
    """Write the target model under ``workdir``; returns (file or folder, notes)."""
    from modelport.conversion.models import OnnxModel, TFLiteModel, TFModel

    if target == formats.PYTORCH:
        return _to_pytorch(src, workdir, opset, fixed_batch, onnx2torch_python)

    notes: dict[str, str] = {}
    if target == formats.ONNX:
        out = workdir / "model.onnx"
        if isinstance(src, TFModel):
            out = _tf_to_onnx(src, workdir, opset, fixed_batch, notes)
        elif isinstance(src, TFLiteModel):
            import tf2onnx

            from modelport.conversion.onnx_export import CUSTOM_OP_HANDLERS

            shape_override = None
            if fixed_batch:
                in_names, _ = src.tensor_names()
                shape_override = {in_names[s.name]: [fixed_batch, *s.shape[1:]] for s in src.inputs}
            tf2onnx.convert.from_tflite(str(src.path), opset=opset, output_path=str(out),
                                        custom_op_handlers=CUSTOM_OP_HANDLERS, shape_override=shape_override)
            in_names, out_names = src.tensor_names()
            _rename_onnx_io(out, {v: k for k, v in in_names.items()}, {v: k for k, v in out_names.items()})
        elif isinstance(src, OnnxModel):
            from onnx import version_converter

            from modelport.conversion.onnx_export import save_onnx
            from modelport.onnx_files import copy_data_beside

            if fixed_batch:
                raise InvalidArgument("fixed_batch_size is not supported for onnx -> onnx; it changes the opset only")
            proto = src.proto
            if src.opset != opset:
                try:
                    proto = version_converter.convert_version(proto, opset)
                    notes["opset_conversion"] = "onnx.version_converter"
                except Exception as e:  # noqa: BLE001 - try relabelling below
                    proto = relabel_opset(src.proto, opset, str(e).splitlines()[0][:300])
                    notes["opset_conversion"] = "relabelled (every op has the same signature at both opsets)"
            notes["from_opset"] = str(src.opset)
            save_onnx(proto, out)
            copy_data_beside(src.path, out)  # the graph still points at the source's external data
        else:  # pragma: no cover - guarded by formats.TARGETS
            raise InvalidArgument(f"cannot convert {src.format} to onnx")
        from modelport.conversion.diagnose import layer_index

        _check_onnx(out, layer_index(src), opset)
        return out, notes
    if isinstance(src, OnnxModel) and target in (formats.TFLITE, formats.SAVEDMODEL):
        from modelport.conversion import onnx2tf_bridge

        python = onnx2tf_bridge.onnx2tf_python(onnx2tf_python)
        if python is None:
            raise onnx2tf_bridge.unimplemented(target)
        out = onnx2tf_bridge.run_onnx2tf(python, src.path, [s.name for s in src.inputs], target, workdir, fixed_batch)
        notes["tool"] = f"onnx2tf {onnx2tf_bridge.onnx2tf_version(python)}"
        return out, notes
    if target == formats.TFLITE:
        if not isinstance(src, TFModel):
            raise _onnx_to_tf_unimplemented(target)
        out = workdir / "model.tflite"
        notes = tflite_from_model(src, fixed_batch, out, workdir)
        return out, notes
    if target == formats.SAVEDMODEL:
        if not isinstance(src, TFModel):
            raise _onnx_to_tf_unimplemented(target)
        out = workdir / "savedmodel"
        src.export_savedmodel(out, fixed_batch)
        return out, notes
    raise InvalidArgument(f"unknown target {target!r}")


def _to_pytorch(src, workdir: Path, opset: int, fixed_batch: int, onnx2torch_python: str) -> tuple[Path, dict]:
    """Any source to a torch.export program through its ONNX form (onnx2torch in its own venv)."""
    from modelport.conversion import onnx2torch_bridge
    from modelport.conversion.models import OnnxModel

    python = onnx2torch_bridge.onnx2torch_python(onnx2torch_python)
    if python is None:
        raise onnx2torch_bridge.unimplemented()
    notes: dict[str, str] = {}
    if isinstance(src, OnnxModel):
        onnx_file = src.path
    else:
        folder = workdir / "via-onnx"
        folder.mkdir()
        onnx_out, onnx_notes = produce(src, formats.ONNX, folder, opset, fixed_batch)
        onnx_file = onnx_out / "model.onnx" if onnx_out.is_dir() else onnx_out
        notes.update({f"onnx_{k}": v for k, v in onnx_notes.items()})
        notes["via"] = f"onnx (opset {opset})"
    out = workdir / "model.pt2"
    notes.update(onnx2torch_bridge.run_onnx2torch(python, onnx_file, out, fixed_batch))
    return out, notes


def _onnx_graph(out: Path):
    """The converted ONNX graph without its weights (for error messages), or None."""
    import onnx

    from modelport.conversion.models import onnx_model_file

    try:
        return onnx.load_model(str(onnx_model_file(out)), load_external_data=False)
    except Exception:  # noqa: BLE001 - the message then has no layer
        return None


def _load_result(out: Path, target: str, onnx2torch_python: str = ""):
    """The converted model, loaded for the parity check."""
    from modelport.conversion.models import load_model

    if target == formats.PYTORCH:
        from modelport.conversion.onnx2torch_bridge import TorchModel

        return TorchModel(out, onnx2torch_python)
    return load_model(out, target)


def _tf_to_onnx(src, workdir: Path, opset: int, fixed_batch: int, notes: dict[str, str]) -> Path:
    """A Keras or SavedModel source to ONNX: weights as inputs for Keras 3 models (bounded memory, external
    data from a size on), tf2onnx with frozen weights otherwise (see large_export). Returns the file or folder."""
    from modelport.conversion import large_export
    from modelport.conversion.onnx_export import function_to_onnx

    kind = large_export.source_kind(src)
    plan = large_export.plan_export(kind, int(getattr(src, "weight_bytes", 0) or 0))
    if plan.route == large_export.ROUTE_WEIGHTS:
        folder = workdir / "onnx"
        try:
            if kind == large_export.KIND_KERAS3:
                trace = large_export.keras_weights_trace(src.model, fixed_batch)
                how = "weights as inputs (Keras stateless_call), weight-only nodes folded"
            else:
                fn, signature, outputs = src.tf_function(fixed_batch)
                trace = large_export.savedmodel_weights_trace(fn, signature, outputs, src.sig.variables)
                how = "weights as inputs (SavedModel variable reads rewired), weight-only nodes folded"
            path = large_export.export_weights_as_inputs(trace, folder, opset, plan.external)
            del trace
        except ModelportError as e:
            if not isinstance(e, large_export.Unsupported):
                raise
            first = e.message
        except Exception as e:  # noqa: BLE001 - a small model may still take the classic route
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        else:
            first = ""
        if first:
            if plan.forced or plan.weight_bytes >= large_export.CLASSIC_FALLBACK_MAX_BYTES:
                raise FailedPrecondition(
                    f"exporting the model with its weights as inputs failed: {first}; the classic route needs "
                    f"about 18x the weights in memory (set {large_export.ROUTE_ENV}=classic to try it)") from None
            log.warning("weights-as-inputs export failed (%s); using the classic route", first)
            shutil.rmtree(folder, ignore_errors=True)
            notes["export"] = f"classic (weights-as-inputs export failed: {first})"
        else:
            notes["export"] = how
            if plan.external:
                notes["external_data"] = large_export.DATA_FILE
            return path  # the model file; its data file (if any) beside it
    out = workdir / "model.onnx"
    fn, signature, _ = src.tf_function(fixed_batch)
    try:
        function_to_onnx(fn, signature, out, opset)
    except ModelportError:
        raise
    except Exception as e:  # noqa: BLE001 - tf2onnx's own error names graph nodes: name the layer
        from modelport.conversion import diagnose

        first = str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__
        raise FailedPrecondition(diagnose.conversion_message(first, diagnose.layer_index(src), opset)) from None
    notes.setdefault("export", "classic (tf2onnx, frozen weights)")
    return out


def _onnx_to_tf_unimplemented(target: str) -> Unimplemented:
    from modelport.conversion import onnx2tf_bridge

    return onnx2tf_bridge.unimplemented(target)


# ---- admission -----------------------------------------------------------------------------------

# Peak memory a conversion adds to its worker, per byte of weights (measured: BENCHMARKS.md "Large
# models"), and a fixed part for TensorFlow's tracing, tf2onnx and onnxruntime whatever the model.
FACTOR_WEIGHTS_ROUTE = 2.0
FACTOR_CLASSIC_ROUTE = 25.0
FACTOR_OTHER = 4.0
CONVERT_OVERHEAD_BYTES = 512 << 20


def conversion_estimate(path: Path, fmt: str, target: str) -> memory.Estimate:
    """Memory the conversion of this model to ``target`` needs, from its weight bytes."""
    from modelport.conversion import large_export

    weights = memory.weight_bytes(path, fmt)
    if fmt == formats.SAVEDMODEL and Path(path).is_dir():
        # What the signature reads (the lean load restores that alone): a Keras 3 model.export() SavedModel
        # holds every weight twice in its variables data.
        from modelport.conversion.savedmodel_lean_load import signature_weight_bytes

        weights = signature_weight_bytes(formats.savedmodel_root(Path(path))) or weights
    if target == formats.ONNX and fmt in (formats.KERAS, formats.H5, formats.SAVEDMODEL) and \
            os.environ.get(large_export.ROUTE_ENV, "auto").strip().lower() != large_export.ROUTE_CLASSIC:
        factor, route = FACTOR_WEIGHTS_ROUTE, "weights as inputs"
    elif target == formats.ONNX and fmt in (formats.KERAS, formats.H5, formats.SAVEDMODEL):
        factor, route = FACTOR_CLASSIC_ROUTE, "tf2onnx with frozen weights"
    else:
        factor, route = FACTOR_OTHER, fmt
    return memory.Estimate(f"converting this {fmt} model to {target} ({route})", weights, factor,
                           CONVERT_OVERHEAD_BYTES)


def admit_conversion(path: Path, fmt: str, target: str) -> None:
    """Refuse (RESOURCE_EXHAUSTED, both figures) a conversion that cannot fit in the memory left."""
    est = conversion_estimate(path, fmt, target)
    advice = ("run it where more memory is free (another machine, a higher container memory limit, or fewer "
              f"concurrent jobs), or raise {memory.LIMIT_ENV} if it was set too low")
    memory.admit(est, advice)


# ---- the job -------------------------------------------------------------------------------------

def convert_model(store: ArtifactStore, job: ConvertJob, progress: Progress = _noop, onnx2tf_python: str = "",
                  onnx2torch_python: str = "") -> ConvertResult:
    """Run one conversion; returns the result (its artifact already published in ``store``)."""
    from modelport.conversion.models import load_model

    t0 = time.perf_counter()
    digest = job.source_digest
    art = store.stat(digest)
    fmt = formats.detect_format(art.path)
    target = formats.check_target(fmt, job.target_format)
    opset = check_opset(job.opset)
    fixed_batch = int(job.fixed_batch_size)
    if fixed_batch < 0:
        raise InvalidArgument(f"fixed_batch_size must be >= 0 (0 keeps the batch dynamic), got {fixed_batch}")
    opts = job.parity
    rtol = opts.rtol or parity.DEFAULT_RTOL
    atol = opts.atol or parity.DEFAULT_ATOL
    if rtol < 0 or atol < 0:
        raise InvalidArgument(f"parity tolerances must be >= 0 (rtol={rtol}, atol={atol})")
    quant_tolerances = parity.QuantTolerances.from_options(opts)

    path = source_path(store, digest, fmt)
    admit_conversion(path, fmt, target)
    progress("loading", 0.05, f"loading the {fmt} model")
    src = load_model(path, fmt, job.trust_remote_code)
    source_info = src.info()
    if target == formats.GENERATION:  # a causal LM's KV-cache step; parity is greedy decoding vs generate()
        from modelport.conversion.llm_export import convert_for_generation

        return convert_for_generation(store, src, source_info, opset, opts.allow_mismatch, progress, t0)
    src.int_ranges.update(quantization.input_ranges(src))
    quant = quantization.output_quantization(src, "source")
    inputs, inputs_source = sample_inputs(store, opts, src, fixed_batch)
    n = next(iter(inputs.values())).shape[0] if inputs else 0
    # The source runs first and is freed before the result is loaded: never two models in memory at once.
    progress("loading", 0.15, f"running the {fmt} model on {n} parity samples ({inputs_source})")
    ref_out = run_checked(src, inputs, "source")

    from modelport.conversion import diagnose

    layers = diagnose.layer_index(src)  # kept for error messages: the source is freed before the result runs
    workdir = store.mkdtemp("convert")
    try:
        progress("converting", 0.2, f"converting {fmt} -> {target}" + (f" (opset {opset})" if target == "onnx" else ""))
        out, notes = produce(src, target, workdir, opset, fixed_batch, onnx2tf_python, onnx2torch_python)
        source_weight_bytes = int(getattr(src, "weight_bytes", 0) or 0)
        src.release()
        del src

        progress("verifying", 0.7, f"comparing source and {target} outputs on {n} samples ({inputs_source})")
        explain = None
        if target == formats.ONNX:
            def explain(first: str) -> str:
                return diagnose.runtime_message(first, _onnx_graph(out), layers, opset)
        try:
            cand = _load_result(out, target, onnx2torch_python)
        except InvalidArgument as e:  # the converted model does not load: name where, when it is ONNX
            if explain is None:
                raise
            raise FailedPrecondition(explain(e.message.split(": ", 1)[-1])) from None
        # Before running: TFLite's XNNPACK delegate hides the DEQUANTIZE ops once tensors are allocated.
        quant = {**quantization.output_quantization(cand, "target"), **quant}  # the source's scale wins
        cand_out = run_checked(cand, inputs, "converted", explain)
        info = cand.info()
        cand.release()
        del cand
        report = parity.compare_outputs(ref_out, cand_out, rtol, atol, inputs_source=inputs_source, samples=n,
                                        quantization=quant, quant_tolerances=quant_tolerances)
        noise = ""
        if not report.passed and fmt in (formats.KERAS, formats.H5):  # is the source itself unstable?
            from modelport.conversion import source_noise

            progress("verifying", 0.8, "outside tolerance: running the source in float64 to measure its own noise")
            noise = source_noise.measure_and_rejudge(lambda: load_model(path, fmt, job.trust_remote_code),
                                                     source_weight_bytes, report, inputs, ref_out, cand_out,
                                                     rtol, atol)
        parity.enforce(report, opts.allow_mismatch, noise)
        if noise:
            notes[source_noise.DETAIL_KEY] = noise

        progress("storing", 0.9, "storing the converted model")
        if target == formats.SAVEDMODEL:
            stored = store.put_dir(out, media.SAVEDMODEL)
        elif target == formats.ONNX:  # one folder artifact when the weights are external data
            stored = store.put_onnx(out / "model.onnx" if out.is_dir() else out)
        else:
            stored = store.put_file(out, media.BY_FORMAT[target])
        info.size_bytes = stored.size
        info.details.update(notes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    return ConvertResult(artifact=ArtifactRef(digest=stored.digest, size=stored.size, media_type=stored.media_type),
                         info=info, parity=report, source_info=source_info, seconds=time.perf_counter() - t0)


def inspect_model(store: ArtifactStore, digest: str, trust_remote_code: bool = False,
                  progress: Progress = _noop) -> ModelInfo:
    """ModelInfo of a stored model (format from content)."""
    from modelport.conversion.models import load_model

    art = store.stat(digest)
    fmt = formats.detect_format(art.path)
    progress("loading", 0.1, f"loading the {fmt} model")
    info = load_model(source_path(store, digest, fmt), fmt, trust_remote_code).info()
    info.size_bytes = art.size
    return info
