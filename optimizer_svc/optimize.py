"""One optimize job, run in a worker process: load, build each candidate, measure, rank, store.

``optimize(progress, store, job, origin, work)`` takes an ``OptimizeJob`` (every referenced artifact
already in the local store) and returns an ``OptimizeResult`` (records of ``modelport.job_records``;
``optimizer_svc.worker`` is the entry point that translates the protobuf request and result).
Stages reported: loading, optimizing:<technique>, measuring, storing. A technique that fails
becomes a candidate with a note; the job fails only on a bad request (InvalidArgument) or when
every explicitly requested technique failed. The worker runs with ``TF_USE_LEGACY_KERAS=1`` so
TFMOT works; TensorFlow is imported only for Keras inputs. This module never imports grpc or protobuf.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelport import cpuinfo, media
from modelport.datasets import load_npz, validate_samples
from modelport.errors import FailedPrecondition, InvalidArgument, ModelportError
from modelport.job_records import AccuracyBudget, ArtifactRef, CandidateReport, OptimizeJob, OptimizeResult
from modelport.model_code import check_model_code
from modelport.store import ArtifactStore, disk_full_error
from modelport.techniques import KERAS_TECHNIQUES, ONNX_TECHNIQUES, TFLITE_TECHNIQUES
from optimizer_svc import int8_search as IS
from optimizer_svc import measure as M
from optimizer_svc import onnx_techniques as OT
from optimizer_svc import selection
from optimizer_svc.admission import admit_plan
from optimizer_svc.llm_job import optimize_generation
from optimizer_svc.llm_techniques import is_generation_archive
from optimizer_svc.technique_options import NEEDS_TRAIN, parse_options, plan

log = logging.getLogger("modelport.optimizer.job")

def sniff_format(path: Path, parse: bool = True) -> str:
    """onnx | keras (a .keras zip or an HDF5 file); InvalidArgument for anything else.

    Runs in the optimizer's sniffer process before a job is queued (``optimizer_svc.sniff``) and again
    in the worker; never in the service process. With ``parse=False`` an ONNX file is only told apart by
    its header.
    """
    if is_generation_archive(path) or (path.name == "model.onnx" and (path.parent / "generation.json").is_file()):
        return "generation"  # the archive, or its model.onnx once unpacked (see _model_path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras"
    if len(head) >= 8 and head[4:8] == b"TFL3":
        raise InvalidArgument("the model is a TFLite flatbuffer; optimize the Keras or ONNX model it was made from "
                              "(TFLite output: techniques tflite-dynamic, tflite-fp16, tflite-int8)")
    if not parse:
        return "onnx"
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - anything unreadable is the user's input problem
        if isinstance(e, MemoryError) or "alloc failed" in str(e).lower():  # the sniffer's memory bound
            raise MemoryError(str(e)) from None
        raise InvalidArgument("the model is neither ONNX nor a Keras .keras/.h5 file; convert it to ONNX first "
                              "(Converter.Convert) or upload the Keras model") from None
    return "onnx"


class _Spec:
    """A TensorSpec lookalike for modelport.datasets.validate_samples."""

    def __init__(self, name: str, dtype: str, shape: list[int]):
        self.name, self.dtype, self.shape = name, dtype, shape


def onnx_input_specs(model) -> list[_Spec]:
    """The graph inputs (not initializers) of an ONNX model: a path, or a ModelProto already loaded."""
    import onnx
    from onnx import helper

    m = onnx.load(str(model), load_external_data=False) if isinstance(model, (str, Path)) else model
    inits = {i.name for i in m.graph.initializer}
    specs = []
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        specs.append(_Spec(vi.name, dtype, shape))
    return specs


def load_dataset(path: Path | None, specs: list[_Spec], role: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs (validated against the model) and optional ``y`` labels of one NPZ dataset."""
    if path is None:
        return {}, None
    try:
        arrays = load_npz(path)
        labels = arrays.pop("y", None)
        inputs = validate_samples(arrays, specs)
    except InvalidArgument as e:
        raise InvalidArgument(f"{role}: {e.message}", e.details) from None
    n = next(iter(inputs.values())).shape[0]
    if labels is not None:
        if labels.ndim == 0 or labels.shape[0] != n:
            raise InvalidArgument(f"{role}: array 'y' has shape {tuple(labels.shape)} but the inputs have {n} samples; "
                                  f"'y' needs shape ({n},) (class ids) or ({n}, classes)")
        if labels.dtype.kind not in "iufb":
            raise InvalidArgument(f"{role}: array 'y' has dtype {labels.dtype} but must be numeric (int class ids "
                                  "or float targets)")
    return inputs, labels


def _has_labels(path: Path) -> bool:
    """Whether an NPZ holds a 'y' array (True when unreadable: load_dataset reports that properly)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "y" in getattr(z, "files", ["y"])
    except Exception:  # noqa: BLE001
        return True


def _model_path(store: ArtifactStore, digest: str) -> Path:
    """The model file to optimize: the artifact itself, or for an ONNX folder artifact (external data) the
    ``model.onnx`` of its folder, unpacked once in the store (tools read the data beside it, in place)."""
    from modelport.archive import is_tar

    path = store.path(digest)
    if not is_tar(path):
        return path
    try:
        return store.onnx_model(digest)
    except InvalidArgument:
        raise InvalidArgument("the model is a tar archive without an ONNX model (a SavedModel?); convert it to "
                              "ONNX first (Converter.Convert) or upload the Keras model") from None


def _ref(store: ArtifactStore, path: Path, media_type: str, origin: str) -> ArtifactRef:
    art = store.put_onnx(path) if media.is_onnx(media_type) else store.put_file(path, media_type)
    return ArtifactRef(digest=art.digest, size=art.size, media_type=art.media_type, origin=origin)


def _report(technique: str, fmt: str, m: M.Measurement, details: dict[str, str]) -> CandidateReport:
    return CandidateReport(
        technique=technique, format=fmt, size_bytes=m.size_bytes, gzip_size_bytes=m.gzip_size_bytes,
        latency_p50_ms=m.latency_p50_ms, latency_p90_ms=m.latency_p90_ms, accuracy=m.accuracy,
        agreement=m.agreement, max_abs_diff=m.max_abs_diff,
        details={**m.details, **{k: str(v) for k, v in details.items()}})


def _failed(technique: str, status: str, note: str) -> CandidateReport:
    return CandidateReport(technique=technique, accuracy=math.nan, agreement=math.nan, max_abs_diff=math.nan,
                           note=note, details={"status": status})


def optimize(progress, store: ArtifactStore, job: OptimizeJob, origin: str, work: Path,
             int8_search_s: float = 60.0) -> OptimizeResult:
    """Run one optimize job in ``work`` (see the module docstring); ``int8_search_s`` bounds the int8-static
    recipe search."""
    t_start = time.monotonic()
    opts = parse_options(dict(job.options))
    goal = job.goal
    out_format = (job.output_format or "onnx").lower()
    if out_format not in ("onnx", "tflite"):
        raise InvalidArgument(f"output_format {job.output_format!r} is not supported; use onnx or tflite")
    progress("loading", 0.01, "reading the model")
    model_path = _model_path(store, job.model.digest)
    fmt = sniff_format(model_path)
    # The plan admitted trust_remote_code only on a server that allows it (modelport.trust); model and
    # student are checked for code before any loader sees them.
    trusted = bool(job.trust_remote_code)
    if fmt == "keras":
        check_model_code(model_path, "keras", trusted)
    if job.student is not None:
        check_model_code(store.path(job.student.digest), "keras", trusted)
    if fmt == "generation":  # an exported causal LM: weight-only techniques, measured in tokens/s
        return optimize_generation(progress, store, job, opts, origin, work)

    def data_path(ref: ArtifactRef | None) -> Path | None:
        return store.path(ref.digest) if ref is not None else None

    cal_p, train_p, eval_p = data_path(job.calibration_data), data_path(job.train_data), data_path(job.eval_data)
    the_plan = plan(list(job.techniques), fmt, has_train=train_p is not None,
                    has_inputs=any(p is not None for p in (cal_p, train_p, eval_p)),
                    has_student=job.student is not None)

    needs_labels = [t for t in the_plan.run if t in NEEDS_TRAIN]
    if needs_labels and train_p is not None and not _has_labels(train_p):
        if not the_plan.auto:
            raise InvalidArgument(f"train_data has no 'y' array: {', '.join(needs_labels)} fine-tune on labels; add "
                                  f"'y' (class ids of shape (N,) or one-hot (N, classes)) to the NPZ")
        for t in needs_labels:
            the_plan.run.remove(t)
            the_plan.skipped.append((t, f"{t} fine-tunes on labels and train_data has no 'y' array"))
    # Memory admission (optimizer_svc.admission): under auto what cannot fit is skipped, with the reason.
    memory_note = admit_plan(the_plan, fmt, store.path(job.model.digest))
    source = None
    if fmt == "keras":
        from modelport.conversion.onnx_export import keras_model_to_onnx
        from optimizer_svc.keras_techniques import KerasSource

        progress("loading", 0.03, "loading the Keras model as tf-keras (TFMOT needs it) and converting it to ONNX")
        source = KerasSource(model_path, work / "source", trusted)
        if source.baseline_onnx is not None:
            baseline_path = source.baseline_onnx
        else:
            baseline_path = work / "baseline.onnx"
            keras_model_to_onnx(source.model, baseline_path)
        if source.model is None:  # tf-keras cannot rebuild it: only the ONNX techniques apply
            keras_only = [t for t in the_plan.run if t not in ONNX_TECHNIQUES]
            if keras_only and not the_plan.auto:
                raise InvalidArgument(source.rebuild_error)
            for t in keras_only:
                the_plan.run.remove(t)
                the_plan.skipped.append((t, source.rebuild_error))
    else:
        baseline_path = model_path
    import onnx

    from modelport.conversion.hub_models import feature_outputs
    from modelport.conversion.models import onnx_int_ranges

    graph = onnx.load(str(baseline_path), load_external_data=False)  # read once for all three
    specs = onnx_input_specs(graph)
    # integer inputs inside their valid ranges (token ids below the vocabulary, keras_hub's masks), for samples
    int_ranges = onnx_int_ranges(graph, specs)
    # a keras_hub backbone's sequence_output / pooled_output: features, judged by cosine, not by a top-1 class
    features = feature_outputs([o.name for o in graph.graph.output])
    del graph
    input_names = [s.name for s in specs]
    cal_x, _ = load_dataset(cal_p, specs, "calibration_data")
    train_x, train_y = load_dataset(train_p, specs, "train_data")
    eval_x, eval_y = load_dataset(eval_p, specs, "eval_data")
    if not eval_x:  # agreement with the baseline on whatever inputs we have
        eval_x = cal_x or train_x
        if not eval_x:
            from modelport.datasets import generate_inputs

            eval_x = generate_inputs(specs, num_samples=64, seed=0, int_ranges=int_ranges)
    rep_x = cal_x or train_x or eval_x

    from modelport.providers import choose

    choice = choose(job.execution_provider or "cpu")
    providers = choice.providers
    threads = max(0, int(job.threads))
    mopts = dict(warmup=int(opts["measure.warmup"]), repeats=int(opts["measure.repeats"]),
                 batch_size=int(opts["measure.batch_size"]), features=features if any(features) else None)

    export_note = {}
    if (source is not None and source.baseline_onnx is not None and source.model is not None
            and any(t not in ONNX_TECHNIQUES for t in the_plan.run)):
        progress("measuring", 0.06, "comparing the Keras 3 and tf-keras exports of the input model")
        baseline_path, export_note = _faster_export(source, baseline_path, work, eval_x, providers, threads, mopts)

    progress("measuring", 0.08, "measuring the baseline")
    base_run = M.onnx_runner(baseline_path, providers, threads)
    bm = M.measure(baseline_path, base_run, eval_x, eval_y, None, **mopts)
    reference = bm.outputs
    baseline = _report("baseline", "onnx", bm, {"input_format": fmt, "execution_provider": choice.primary,
                                                 "threads": str(threads or "default")})
    baseline.agreement, baseline.max_abs_diff = 1.0, 0.0
    baseline.details["cosine"] = "1.000000"
    # Every ratio in this result was measured on this CPU: the deploy report compares these flags with
    # the inference service's (modelport.cpuinfo.compare).
    baseline.details["cpu_flags"] = cpuinfo.format_flags(cpuinfo.relevant_flags())
    baseline.details.update(export_note)
    baseline.details.update(memory_note)
    if choice.warnings:
        baseline.note = "; ".join(choice.warnings)
    if export_note.get("baseline_export") == "tf-keras":
        baseline.note = "; ".join(filter(None, [baseline.note, export_note["baseline_export_note"]]))
    if fmt == "onnx":
        baseline.artifact = job.model

    ctx = _MeasureContext(base_run, eval_x, eval_y, reference, providers, threads, mopts)
    candidates: list[CandidateReport] = [_failed(t, "skipped", why) for t, why in the_plan.skipped]
    built: dict[str, Path] = {}
    n = len(the_plan.run)
    train = None
    if train_x:
        from optimizer_svc.keras_techniques import TrainSet

        train = TrainSet([train_x[k] for k in input_names], train_y)
    elif "distill" in the_plan.run and rep_x:
        # Distillation learns the teacher's outputs: unlabeled calibration/eval inputs suffice.
        from optimizer_svc.keras_techniques import TrainSet

        train = TrainSet([rep_x[k] for k in input_names], None)
    for i, tech in enumerate(the_plan.run):
        frac = 0.1 + 0.8 * i / max(n, 1)
        progress(f"optimizing:{tech}", frac, f"building the {tech} candidate ({i + 1}/{n})")
        t0 = time.monotonic()
        try:
            if tech == "int8-static":
                path, cfmt, details = _int8_static_search(
                    baseline_path, work, opts, rep_x, ctx, baseline, job.budget, int8_search_s,
                    lambda msg, frac=frac, tech=tech: progress(f"optimizing:{tech}", frac, msg))
            else:
                path, cfmt, details = _build(tech, baseline_path, work, opts, rep_x, input_names, source, train,
                                             store.path(job.student.digest) if job.student is not None else None,
                                             out_format)
            progress("measuring", frac + 0.6 / max(n, 1), f"measuring {tech}")
            run = (M.onnx_runner(path, providers, threads) if cfmt == "onnx"
                   else M.tflite_runner(path, input_names, threads))
            # Under auto a Conv-heavy int8-dynamic is probed first (an explicit request gets its full measurement).
            stopped = (_conv_integer_probe(tech, path, run, ctx, details, float(opts["int8-dynamic.quick_stop"]))
                       if tech == "int8-dynamic" and the_plan.auto else None)
            if stopped is not None:
                candidates.append(stopped)
                continue
            m = M.measure(path, run, eval_x, eval_y, reference, baseline_run=base_run, **mopts)
            details["build_seconds"] = f"{time.monotonic() - t0:.1f}"
            c = _report(tech, cfmt, m, details)
            built[tech] = path
        except ModelportError as e:
            if e.details.get("reason") == "disk_full":
                raise
            c = _failed(tech, "failed", f"failed: {e.message}")
        except Exception as e:  # noqa: BLE001 - one technique's failure must not sink the job
            full = disk_full_error(e)
            if full is not None:  # a full disk is no property of this technique: no candidate could be stored
                raise full from None
            log.exception("technique %s failed", tech)
            c = _failed(tech, "failed", f"failed: {type(e).__name__}: {str(e)[:300]}")
        candidates.append(c)

    if out_format == "onnx" and "tflite-int8" in built:
        c = _tflite_int8_as_onnx(built, candidates, baseline, baseline_path, work, ctx, job.budget, progress)
        if c is not None:
            candidates.append(c)

    # Measure the baseline's latency again after the candidates and keep the faster run: drift
    # (thermal, other load) then cannot make a candidate look faster than the baseline really is.
    p50_again, p90_again = M.latency(base_run, {k: v[:mopts["batch_size"]] for k, v in eval_x.items()},
                                     mopts["warmup"], mopts["repeats"])
    if p50_again < baseline.latency_p50_ms:
        baseline.latency_p50_ms, baseline.latency_p90_ms = p50_again, p90_again
    if not the_plan.auto and the_plan.run and not built:
        raise FailedPrecondition("every requested technique failed: " +
                                 "; ".join(f"{c.technique}: {c.note}" for c in candidates if c.note))
    ranked, chosen, reason = selection.rank(
        baseline, candidates, goal=goal, max_drop=job.budget.max_drop, relative=job.budget.relative,
        auto=the_plan.auto, min_gain=float(opts["auto.min_gain"]) if the_plan.auto else 0.0,
        output_format=out_format)

    progress("storing", 0.95, "storing the candidates")
    for c in ranked:
        if c.technique in built:
            c.artifact = _ref(store, built[c.technique], media.BY_FORMAT[c.format], origin)
    if fmt == "keras":
        baseline.artifact = _ref(store, baseline_path, media.ONNX, origin)
    elif baseline.artifact is not None and not baseline.artifact.origin:
        baseline.artifact = dataclasses.replace(baseline.artifact, origin=origin)
    return selection.result(baseline, ranked, chosen, reason + f" ({time.monotonic() - t_start:.0f}s)")


def _faster_export(source, keras3_onnx: Path, work: Path, eval_x: dict[str, np.ndarray], providers: list,
                   threads: int, mopts: dict) -> tuple[Path, dict[str, str]]:
    """The baseline ONNX for a Keras 3 input whose Keras techniques run on the tf-keras rebuild.

    Those candidates are exported from the tf-keras model, whose ONNX graph can differ from the
    Keras 3 export's (other op lowering) and run faster or slower for that reason alone. The plain
    tf-keras export (no technique) is measured against the Keras 3 export, paired; when it computes
    the same outputs and wins every paired round it becomes the baseline, so no technique is
    credited with a speed-up that came from the export. Returns the baseline path and details.
    """
    from modelport.conversion.onnx_export import keras_model_to_onnx

    alt = work / "baseline_tf_keras.onnx"
    try:
        keras_model_to_onnx(source.fresh(), alt)
    except Exception as e:  # noqa: BLE001 - the Keras 3 export stays the baseline
        log.warning("tf-keras export of the input model failed (%s); keeping the Keras 3 export", e)
        return keras3_onnx, {"baseline_export": "keras3"}
    if [s.name for s in onnx_input_specs(alt)] != [s.name for s in onnx_input_specs(keras3_onnx)]:
        return keras3_onnx, {"baseline_export": "keras3"}
    k3, tfk = M.onnx_runner(keras3_onnx, providers, threads), M.onnx_runner(alt, providers, threads)
    ref, got = M.predict(k3, eval_x), M.predict(tfk, eval_x)
    same = len(ref) == len(got) and all(a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=1e-5)
                                        for a, b in zip(ref, got, strict=False))
    if not same:
        return keras3_onnx, {"baseline_export": "keras3",
                             "baseline_export_note": "the tf-keras export's outputs differ; not used"}
    feed = {k: v[:mopts["batch_size"]] for k, v in eval_x.items()}
    alt50, _, k350, wins = M.paired_latency(tfk, k3, feed, mopts["warmup"], mopts["repeats"], M.PAIRED_ROUNDS)
    ratio = f"{alt50 / k350:.3f}" if k350 > 0 else "nan"
    details = {"baseline_export_ratio": ratio, "baseline_export_rounds_faster": f"{wins}/{M.PAIRED_ROUNDS}"}
    if wins == M.PAIRED_ROUNDS:
        return alt, {"baseline_export": "tf-keras", **details,
                     "baseline_export_note": f"the tf-keras export runs at {ratio}x the Keras 3 export's latency; "
                                             "it is the baseline so the Keras techniques are compared like for like"}
    return keras3_onnx, {"baseline_export": "keras3", **details}


def _build(tech: str, baseline: Path, work: Path, opts: dict, rep_x: dict[str, np.ndarray], input_names: list[str],
           source, train, student: Path | None, out_format: str) -> tuple[Path, str, dict[str, str]]:
    """Build one candidate (int8-static: ``_int8_static_search``); returns (file, format, details)."""
    out = work / tech.replace(":", "_") / "model.onnx"  # a folder each: external data lands as model.onnx.data
    out.parent.mkdir(parents=True, exist_ok=True)
    if tech == "graph":
        return out, "onnx", OT.graph_optimize(baseline, out, str(opts["graph.level"]))
    if tech == "fp16":
        return out, "onnx", OT.fp16(baseline, out)
    if tech == "int8-dynamic":
        return out, "onnx", OT.int8_dynamic(baseline, out, bool(opts["int8-dynamic.per_channel"]))
    from optimizer_svc import keras_techniques as KT

    KT.seed(0)  # same request, same fine-tune

    if tech in TFLITE_TECHNIQUES:
        mode = tech.split("-", 1)[1]
        tfl = out.with_suffix(".tflite")
        d = KT.to_tflite(source.fresh(), tfl, mode, [rep_x[k] for k in input_names], int(opts["int8-static.samples"]))
        d.update(KT.tflite_int8_facts(tfl))
        return tfl, "tflite", d
    assert tech in KERAS_TECHNIQUES
    if tech == "distill":
        model, d = KT.distill(source, train, opts, student, work)
    else:
        fn = {"prune": KT.prune, "prune-2:4": KT.prune_2_4, "cluster": KT.cluster, "qat": KT.qat}[tech]
        model, d = fn(source, train, opts)
    if out_format == "tflite":
        tfl = out.with_suffix(".tflite")
        d.update(KT.to_tflite(model, tfl, "float"))
        return tfl, "tflite", d
    from modelport.conversion.onnx_export import keras_model_to_onnx

    keras_model_to_onnx(model, out)
    d.update(_onnx_weight_facts(out))
    if tech == "qat":
        d.update(OT.int8_facts(out))
    return out, "onnx", d


@dataclass
class _MeasureContext:
    """What measuring a candidate against the baseline needs (shared by the loop and the searches)."""

    base_run: M.Runner
    eval_x: dict[str, np.ndarray]
    eval_y: np.ndarray | None
    reference: list[np.ndarray]
    providers: list
    threads: int
    mopts: dict

    def measure(self, path: Path, fmt: str = "onnx", input_names: list[str] | None = None) -> M.Measurement:
        run = (M.onnx_runner(path, self.providers, self.threads) if fmt == "onnx"
               else M.tflite_runner(path, input_names or list(self.eval_x), self.threads))
        return M.measure(path, run, self.eval_x, self.eval_y, self.reference, baseline_run=self.base_run,
                         **self.mopts)


def _quality(m: M.Measurement) -> float:
    """What ``select.quality`` reads from a report: accuracy when measured, else agreement."""
    return m.accuracy if not math.isnan(m.accuracy) else m.agreement


def _int8_static_search(baseline_path: Path, work: Path, opts: dict, rep_x: dict[str, np.ndarray],
                        ctx: _MeasureContext, baseline: CandidateReport, budget: AccuracyBudget, search_s: float,
                        note) -> tuple[Path, str, dict[str, str]]:
    """int8-static: the recipe search (``optimizer_svc.int8_search``) on this machine; the winner's file."""
    def evaluate(path: Path) -> IS.Evaluation:
        m = ctx.measure(path)
        return IS.Evaluation(float(m.details.get("latency_ratio_paired", "nan")), _quality(m),
                             float(m.details.get("cosine", "nan")))

    feed = {k: v[:ctx.mopts["batch_size"]] for k, v in ctx.eval_x.items()}

    def probe(path: Path) -> float:
        c50, b50 = M.quick_latency(M.onnx_runner(path, ctx.providers, ctx.threads), ctx.base_run, feed, QUICK_RUNS)
        return c50 / b50 if b50 > 0 else math.inf

    pins = IS.Pins(types=str(opts["int8-static.types"]), per_channel=str(opts["int8-static.per_channel"]),
                   fmt=str(opts["int8-static.format"]), method=str(opts["int8-static.method"]))
    res = IS.search(baseline_path, work / "int8-static", rep_x, int(opts["int8-static.samples"]), evaluate,
                    selection.quality(baseline), selection.allowed_drop(baseline, budget.max_drop, budget.relative),
                    search_s, pins=pins, note=note, probe=probe)
    if res.best.path is None:
        raise FailedPrecondition("every int8-static recipe failed: " + "; ".join(t.summary() for t in res.trials))
    return res.best.path, "onnx", res.details()


QUICK_RUNS = 3


def _conv_integer_probe(tech: str, path: Path, run: M.Runner, ctx: _MeasureContext, details: dict[str, str],
                        stop_ratio: float) -> CandidateReport | None:
    """A dynamic-INT8 model whose convolutions became ConvInteger is timed quickly first.

    onnxruntime runs ConvInteger without the fused, blocked kernels FP32 convolutions get (and
    quantizes every activation at run time), so on Conv-heavy graphs dynamic INT8 is usually several
    times slower than the baseline. A few interleaved runs tell that apart from a model worth the full
    measurement; when the probe's ratio is ``stop_ratio`` (option ``int8-dynamic.quick_stop``) or more
    the row says so and the full measurement is skipped. None means: measure it fully.
    """
    convs, matmuls = int(details.get("conv_integer_ops", "0")), int(details.get("matmul_integer_ops", "0"))
    if convs == 0 or convs < matmuls:
        return None
    feed = {k: v[:ctx.mopts["batch_size"]] for k, v in ctx.eval_x.items()}
    c50, b50 = M.quick_latency(run, ctx.base_run, feed, QUICK_RUNS)
    ratio = c50 / b50 if b50 > 0 else math.nan
    if not ratio >= stop_ratio:
        details["quick_probe_ratio"] = f"{ratio:.3f}"
        return None
    c = _failed(tech, "stopped", f"measured quickly: {ratio:.2f}x the baseline's latency over {QUICK_RUNS} "
                                 f"interleaved runs (at {stop_ratio:g}x or more a model is not measured further); "
                                 f"{convs} convolution(s) became ConvInteger: dynamic INT8 pays on MatMul-heavy "
                                 "models, int8-static suits convolutions")
    c.format = "onnx"
    c.size_bytes = path.stat().st_size
    c.latency_p50_ms = c50
    c.details.update(details)
    c.details.update({"measurement": "quick", "latency_ratio_quick": f"{ratio:.4f}",
                      "baseline_latency_p50_ms_quick": f"{b50:.6f}"})
    return c


def _tflite_int8_as_onnx(built: dict[str, Path], candidates: list[CandidateReport],
                         baseline: CandidateReport, baseline_path: Path, work: Path, ctx: _MeasureContext,
                         budget: AccuracyBudget, progress) -> CandidateReport | None:
    """When tflite-int8 beat the baseline within budget, its ONNX form as candidate ``tflite-int8-onnx``.

    The inference service serves ONNX, so a TFLite win is deployable only in that form: tf2onnx
    ``from_tflite`` turns the full-integer TFLite into a QDQ graph; on a CPU with INT8 dot products its
    int8 activations become uint8 (exact: zero points shift by 128), onnxruntime's fast path there.
    """
    tfl = next((c for c in candidates if c.technique == "tflite-int8" and c.format == "tflite"), None)
    if tfl is None or tfl.details.get("status"):
        return None
    allowed = selection.allowed_drop(baseline, budget.max_drop, budget.relative)
    drop = selection.quality(baseline) - selection.quality(tfl)
    if not (selection.goal_ratio(tfl, baseline, "latency") < 1.0 and drop <= allowed + 1e-12):
        return None
    tech = "tflite-int8-onnx"
    progress(f"optimizing:{tech}", 0.9, "converting the winning TFLite INT8 model to ONNX (tf2onnx from_tflite)")
    t0 = time.monotonic()
    try:
        from optimizer_svc.keras_techniques import tflite_to_onnx

        out = work / f"{tech}.onnx"
        flags = cpuinfo.relevant_flags()
        details = tflite_to_onnx(built["tflite-int8"], out, baseline_path, work / tech,
                                 uint8_activations=cpuinfo.is_x86(flags) and cpuinfo.has_int8_dot(flags))
        details.update(OT.int8_facts(out))
        progress("measuring", 0.92, f"measuring {tech}")
        m = ctx.measure(out)
        details["build_seconds"] = f"{time.monotonic() - t0:.1f}"
        built[tech] = out
        return _report(tech, "onnx", m, details)
    except ModelportError as e:
        return _failed(tech, "failed", f"failed: {e.message}")
    except Exception as e:  # noqa: BLE001 - the TFLite candidate still stands
        log.exception("%s failed", tech)
        return _failed(tech, "failed", f"failed: {type(e).__name__}: {str(e)[:300]}")


def _onnx_weight_facts(path: Path) -> dict[str, str]:
    """Zero fraction and the most distinct values of the exported weight matrices/kernels."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    arrays = [numpy_helper.to_array(t) for t in m.graph.initializer if len(t.dims) >= 2]
    arrays = [a for a in arrays if a.dtype.kind == "f" and a.size >= 16]
    if not arrays:
        return {}
    zeros = sum(int((a == 0).sum()) for a in arrays)
    total = sum(a.size for a in arrays)
    return {"onnx_weight_sparsity": f"{zeros / total:.4f}",
            "onnx_max_unique_per_weight": str(max(len(np.unique(a)) for a in arrays))}
