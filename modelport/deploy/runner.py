"""The deploy runner: upload → convert → optimize → verify → load → smoke test, through ``Client``.

``run_pipeline(client, spec)`` chains the stages over the three services, speaking to them only
through ``modelport.Client`` (no stubs, no protobuf built here), and returns a ``DeployReport``;
a failing stage raises ``StageFailed`` carrying the partial report. A keras_hub causal LM (or decoder
backbone) goes the same stages on the generation path (``modelport.deploy.generation``): converted to the
KV-cache step, weight-only optimized, loaded as a decoupled model, smoke-tested by streaming a generation.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelport import media
from modelport.deploy.generation import causal_lm_of, parse_ids, smoke_generation
from modelport.deploy.report import DeployReport, Progress, StageFailed, StageReport
from modelport.deploy.spec import DeploySpec, read_npz
from modelport.dtypes import to_numpy_dtype
from modelport.errors import FailedPrecondition, ModelportError
from modelport.techniques import KERAS_SOURCE_TECHNIQUES as KERAS_TECHNIQUES

STAGES = ("upload", "convert", "optimize", "verify", "load", "smoke")
SMOKE_MAX_SAMPLES = 2048  # the smoke test runs at most this many eval rows through the served model


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _parity_summary(p) -> str:
    if p is None or not p.samples:
        return ""
    worst = max((o.max_abs_diff for o in p.outputs), default=0.0)
    top1 = [o.top1_agreement for o in p.outputs if o.top1_agreement >= 0]
    s = f"{'passed' if p.passed else 'FAILED'}: max|diff| {worst:.2e} on {p.samples} samples"
    if top1:
        s += f", top-1 {min(top1) * 100:.1f}%"
    return s


def _generation_parity(p) -> str:
    out = p.outputs[0] if p.outputs else None
    if out is None or not p.samples:
        return ""
    if not p.passed:
        return f"FAILED: {p.inputs_source}"
    return f"greedy tokens equal keras_hub generate(): {p.samples} of {p.samples}"


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


class _Runner:
    def __init__(self, client, spec: DeploySpec, progress: Progress | None):
        self.client = client
        self.spec = spec
        self.progress = progress or Progress()
        self.report = DeployReport(name=spec.name or "model", model=str(spec.model), target=spec.target)
        self.tmp = tempfile.TemporaryDirectory(prefix="modelport-deploy-")
        self.refs: dict[str, Any] = {}
        self.eval_arrays: dict[str, np.ndarray] | None = None
        self.lm = None  # a keras_hub causal LM: deployed on the generation path (modelport.deploy.generation)
        self.cached_jobs: set[str] = set()  # job stages whose result the service returned from its cache

    # one stage: time it, report it, turn any error into StageFailed
    def stage(self, name: str, fn: Callable[[StageReport], None]) -> None:
        rep = self.report.stage(name)
        self.progress.start(name)
        t0 = time.perf_counter()
        try:
            fn(rep)
            rep.status = rep.status if rep.status == "skipped" else "ok"
        except StageFailed:
            raise
        except ModelportError as e:  # the Client's errors (ClientError) and the runner's own
            self._fail(rep, e.status, e.message, t0)
        except ValueError as e:
            self._fail(rep, "INVALID_ARGUMENT", str(e), t0)
        except (OSError, KeyError) as e:
            self._fail(rep, "INVALID_ARGUMENT", f"{type(e).__name__}: {e}", t0)
        finally:
            rep.seconds = time.perf_counter() - t0
        self.progress.finish(name, rep)

    def _fail(self, rep: StageReport, code: str, message: str, t0: float) -> None:
        rep.status = "failed"
        rep.seconds = time.perf_counter() - t0
        rep.detail = f"{code}: {message}"
        self.report.failed_stage = rep.stage
        self.report.error = {"stage": rep.stage, "code": code, "message": message}
        self.progress.finish(rep.stage, rep)
        self.report.seconds = sum(s.seconds for s in self.report.stages)
        raise StageFailed(rep.stage, code, message, self.report)

    def on_job(self, stage: str):
        def cb(ev) -> None:
            if ev.cached:
                self.cached_jobs.add(stage)
            self.progress.update(stage, ev.progress, f"{ev.stage}: {ev.message}" if ev.message else ev.stage)
        return cb

    # ---- stages ----
    def upload(self, rep: StageReport) -> None:
        spec = self.spec
        self.lm = causal_lm_of(spec.model) if spec.generation != "off" else None
        if spec.generation == "on" and self.lm is None:
            raise FailedPrecondition(f"generation: on needs a keras_hub causal LM or decoder backbone saved as .keras "
                                     f"(e.g. GPT2CausalLM, LlamaCausalLM, GPT2Backbone); {spec.model.name} is not one")
        if self.lm is not None:
            self.report.target = "generation"
        self.eval_arrays = read_npz(spec.eval) if spec.eval and self.lm is None else None
        # a SavedModel folder or an ONNX model with external data travels as one archive artifact (streamed)
        files = [("model", spec.model, None)]
        for key in ("calib", "eval", "train"):
            p = getattr(spec, key)
            if p is not None:
                files.append((key, p, media.NPZ))
        if self.eval_arrays is not None:  # the converter verifies against the original on real rows
            rows = {k: v[: spec.parity_samples] for k, v in self.eval_arrays.items() if k != "y"}
            parity = Path(self.tmp.name) / "parity.npz"
            np.savez(parity, **rows)
            files.append(("parity", parity, media.NPZ))
        stored = []
        for key, p, mt in files:
            self.progress.update("upload", 0.0, f"{key}: {p.name}")
            label = f"{key}: {p.name}"
            # a rerun (after a crash, say) sends nothing the converter's store already holds
            ref = self.client.find_uploaded(p, media_type=mt, service="converter")
            if ref is not None:
                stored.append(key)
            else:
                ref = self.client.upload(
                    p, media_type=mt, service="converter",
                    progress=lambda done, total, label=label: self.progress.transfer("upload", done, total, label))
            self.refs[key] = ref
        model = self.refs["model"]
        rep.format = model.media_type.rsplit(".", 1)[-1].removesuffix("+tar")
        rep.size_bytes = model.size
        rep.cached = len(stored) == len(files)
        rep.detail = f"{model.digest[:19]}… to converter" + (f" ({', '.join(stored)} already stored)" if stored else "")
        rep.data = {k: {"digest": r.digest, "size": r.size, "media_type": r.media_type} for k, r in self.refs.items()}
        if self.lm is not None:
            rep.detail += f"; {self.lm.describe()}: deployed for generation"
            rep.data["generation"] = {"class": self.lm.class_name, "task": self.lm.task}

    def convert(self, rep: StageReport) -> None:
        spec = self.spec
        res = self.client.convert(self.refs["model"], "generation" if self.lm else spec.target, opset=spec.opset,
                                  parity_samples=self.refs.get("parity"), num_samples=spec.parity_samples,
                                  trust_remote_code=spec.trust_remote_code, on_event=self.on_job("convert"))
        self.convert_result = res
        self.final_ref = res.artifact
        rep.format = res.info.format or spec.target
        rep.size_bytes = res.artifact.size
        rep.parity = _parity_summary(res.parity)
        rep.cached = "convert" in self.cached_jobs
        rep.detail = ("cached result; " if rep.cached else "") + f"from {res.source_info.format or '?'}" + (f", opset {res.info.opset}" if res.info.opset else "")
        rep.data = {
            "artifact": res.artifact.digest,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in res.info.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in res.info.outputs],
            "parity": [{"output": o.name, "max_abs_diff": o.max_abs_diff, "max_rel_diff": o.max_rel_diff,
                        "allclose": o.allclose, "top1_agreement": o.top1_agreement} for o in res.parity.outputs],
            "parity_passed": res.parity.passed,
            "source_format": res.source_info.format,
        }
        if self.lm is not None:
            d = res.info.details
            rep.parity = _generation_parity(res.parity)
            rep.detail = ("cached result; " if rep.cached else "") + (f"{d.get('architecture', self.lm.task)} KV-cache step: {d.get('num_layers')} layers, "
                          f"{d.get('num_kv_heads')} kv heads x {d.get('head_dim')}, context {d.get('max_context')}"
                          + (f" (from {d['wrapped_backbone']})" if d.get("wrapped_backbone") else ""))
            rep.data["generation"] = dict(d)

    def optimize(self, rep: StageReport) -> None:
        spec = self.spec
        techniques = spec.techniques
        self.optimize_result = None
        if not techniques:
            rep.status = "skipped"
            rep.detail = "--optimize none"
            rep.format = self.report.stage("convert").format
            rep.size_bytes = self.final_ref.size
            return
        keras_source = self.convert_result.source_info.format in ("keras", "h5", "savedmodel") and self.lm is None
        # auto on a Keras source gets the original, so TFMOT/TFLite candidates compete too
        use_source = keras_source and (techniques == ["auto"] or bool(KERAS_TECHNIQUES & set(techniques)))
        model = self.refs["model"] if use_source else self.final_ref
        res = self.client.optimize(
            model, techniques, goal=spec.goal, max_accuracy_drop=spec.max_accuracy_drop, relative=spec.relative_drop,
            calibration_data=self.refs.get("calib") or self.refs.get("eval"), train_data=self.refs.get("train"),
            eval_data=self.refs.get("eval"), execution_provider=spec.ep, options=spec.options,
            output_format="onnx", on_event=self.on_job("optimize"))
        self.optimize_result = res
        self.final_ref = res.artifact
        chosen = next((c for c in res.candidates if c.chosen), res.baseline)
        rep.format = chosen.format or "onnx"
        rep.size_bytes = res.artifact.size or chosen.size_bytes
        rep.latency_ms = _finite(chosen.latency_p50_ms)
        rep.accuracy = _finite(chosen.accuracy)
        rep.cached = "optimize" in self.cached_jobs
        rep.detail = ("cached result; " if rep.cached else "") + \
            f"chose {res.chosen_technique or 'baseline'}: {res.reason}".strip()
        base = res.baseline

        def row(c) -> dict[str, Any]:
            return {"technique": c.technique, "format": c.format, "size_bytes": c.size_bytes,
                    "gzip_size_bytes": c.gzip_size_bytes, "latency_p50_ms": c.latency_p50_ms,
                    "latency_p90_ms": c.latency_p90_ms, "accuracy": c.accuracy, "agreement": c.agreement,
                    "max_abs_diff": c.max_abs_diff, "within_budget": c.within_budget, "chosen": c.chosen,
                    "note": c.note, **({"tokens_per_s": _number(c.details.get("tokens_per_s")),
                                        "ms_per_token": _number(c.details.get("ms_per_token"))} if self.lm else {})}

        rep.data = {"input": "original model" if use_source else ("generation step" if self.lm else "converted onnx"),
                    "chosen": res.chosen_technique, "reason": res.reason, "baseline": row(base),
                    "candidates": [row(c) for c in res.candidates]}
        if base.latency_p50_ms and chosen.latency_p50_ms:
            rep.data["speedup"] = base.latency_p50_ms / chosen.latency_p50_ms
        if base.size_bytes and chosen.size_bytes:
            rep.data["size_ratio"] = chosen.size_bytes / base.size_bytes

    def verify(self, rep: StageReport) -> None:
        spec = self.spec
        cr = self.convert_result
        checks = []
        if cr.parity.samples and self.lm is not None:
            if not cr.parity.passed:
                raise FailedPrecondition(f"greedy decoding from the exported step differs from keras_hub generate() "
                                         f"({cr.parity.inputs_source})")
            checks.append(_generation_parity(cr.parity))
        elif cr.parity.samples:
            if not cr.parity.passed:
                raise FailedPrecondition(f"the converted model disagrees with the original "
                                         f"({_parity_summary(cr.parity)})")
            checks.append(f"onnx vs original: {_parity_summary(cr.parity)}")
        rep.parity = "; ".join(checks)
        res = self.optimize_result
        if res is not None:
            chosen = next((c for c in res.candidates if c.chosen), res.baseline)
            base = res.baseline
            acc, base_acc = _finite(chosen.accuracy), _finite(base.accuracy)
            if acc is not None and base_acc is not None:
                drop = base_acc - acc
                limit = spec.max_accuracy_drop * (base_acc if spec.relative_drop else 1.0)
                rep.accuracy = acc
                checks.append(f"accuracy {acc:.4f} vs baseline {base_acc:.4f} (drop {drop:+.4f}, budget {limit:.4f})")
                if drop > limit + 1e-9:
                    raise FailedPrecondition(f"{res.chosen_technique} drops accuracy by {drop:.4f} > budget {limit:.4f}; "
                                             "raise --max-accuracy-drop or choose other techniques")
            elif chosen.technique != "baseline" and chosen.agreement > 0:
                metric = chosen.details.get("agreement_metric")  # a backbone's features: by cosine
                what = ("greedy-token agreement with the FP32 step" if self.lm else
                        f"agreement with baseline ({metric})" if metric else "top-1 agreement with baseline")
                checks.append(f"{what} {chosen.agreement * 100:.1f}%")
                if 1.0 - chosen.agreement > spec.max_accuracy_drop + 1e-9:
                    raise FailedPrecondition(f"{res.chosen_technique} agrees with the baseline on only "
                                             f"{chosen.agreement * 100:.1f}% of samples (budget {spec.max_accuracy_drop})")
            rep.latency_ms = _finite(chosen.latency_p50_ms)
        served = media.GENERATION if self.lm is not None else None
        if self.final_ref.media_type and not media.is_onnx(self.final_ref.media_type) \
                and self.final_ref.media_type != served:
            raise FailedPrecondition(f"the chosen model is {self.final_ref.media_type}, but the "
                                     "inference service serves ONNX; choose ONNX techniques or --optimize none")
        rep.parity = "; ".join(checks) or "no samples"
        rep.format = "generation" if self.lm else "onnx"
        rep.size_bytes = self.final_ref.size
        rep.data = {"checks": checks}

    def load(self, rep: StageReport) -> None:
        spec = self.spec
        batching = spec.batching.model_dump() if spec.batching is not None else None
        if self.lm is not None and batching is not None:  # the generation engine batches decode steps itself
            self.report.warnings.append("batching settings do not apply to a generation model: concurrent generations "
                                        "share decode steps (continuous batching, up to generation.json max_batch)")
            batching = None
        resp = self.client.load_model(spec.name, self.final_ref, version=spec.version, execution_provider=spec.ep,
                                      batching=batching, keep_versions=spec.keep_versions)
        m = resp.model
        self.report.version = m.version
        self.report.execution_provider = m.execution_provider
        self.report.endpoint = f"{self.client.inference} (model {m.name}, version {m.version})"
        self.report.warnings += list(resp.warnings)
        if self.optimize_result is not None:  # the ranking holds on a CPU with the same flags only
            from modelport import cpuinfo

            warning = cpuinfo.serving_warning(self.optimize_result.baseline.details.get("cpu_flags"),
                                              self.client.server_metadata().extensions)
            self.report.warnings += [warning] if warning else []
        rep.format = "generation" if self.lm else "onnx"
        rep.size_bytes = self.final_ref.size
        rep.detail = f"{m.name} v{m.version} {m.state} on {m.execution_provider}"
        if self.lm is not None:
            rep.detail += "; decoupled: tokens stream over ModelStreamInfer (modelport generate, tritonclient)"
        rep.data = {"name": m.name, "version": m.version, "state": m.state, "digest": self.final_ref.digest,
                    "execution_provider": m.execution_provider, "warnings": list(resp.warnings)}

    def smoke(self, rep: StageReport) -> None:
        if self.lm is not None:
            return self.smoke_generation(rep)
        spec = self.spec
        meta = self.client.model_metadata(spec.name, self.report.version)
        labels = None
        if self.eval_arrays is not None:
            arrays = {k: v for k, v in self.eval_arrays.items() if k != "y"}
            labels = self.eval_arrays.get("y")
            if set(arrays) == {"x"} and len(meta.inputs) == 1:
                arrays = {meta.inputs[0].name: arrays["x"]}
            dtypes = {t.name: t.datatype for t in meta.inputs}
            arrays = {k: v.astype(to_numpy_dtype(dtypes[k])) if dtypes.get(k, "BYTES") != "BYTES" else v
                      for k, v in arrays.items()}
        else:
            from modelport.conversion.hub_models import named_input_ranges

            rng = np.random.default_rng(0)
            shapes = {t.name: [4 if i == 0 and d < 0 else max(int(d), 1) for i, d in enumerate(t.shape)]
                      for t in meta.inputs}
            ranges = named_input_ranges(shapes)  # a keras_hub masked LM's mask_positions inside the sequence
            arrays = {}
            for t in meta.inputs:
                dt = to_numpy_dtype(t.datatype)
                arrays[t.name] = (rng.random(shapes[t.name]).astype(dt) if dt.kind == "f"
                                  else rng.integers(*ranges.get(t.name, (0, 2)), shapes[t.name]).astype(dt))
        n = min(len(next(iter(arrays.values()))), SMOKE_MAX_SAMPLES)
        arrays = {k: v[:n] for k, v in arrays.items()}
        labels = labels[:n] if labels is not None else None
        batch = 64  # requests stay within the model's max batch size when batching is configured
        if spec.batching is not None and spec.batching.max_batch_size > 0:
            batch = min(batch, spec.batching.max_batch_size)
        outs: list[dict[str, np.ndarray]] = []
        lat = []
        for i in range(0, n, batch):
            t0 = time.perf_counter()
            outs.append(self.client.infer(spec.name, {k: v[i:i + batch] for k, v in arrays.items()},
                                          version=self.report.version))
            lat.append((time.perf_counter() - t0) * 1000)
        merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        for k, v in merged.items():
            if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                raise FailedPrecondition(f"output {k} holds NaN or Inf on the smoke inputs")
        rep.latency_ms = float(np.median(lat))
        rep.format = "onnx"
        rep.detail = f"{n} samples in {len(lat)} request(s); outputs " + ", ".join(
            f"{k}{list(v.shape)}" for k, v in merged.items())
        rep.data = {"samples": n, "requests": len(lat), "outputs": {k: list(v.shape) for k, v in merged.items()}}
        if labels is not None and len(merged) >= 1:
            probs = next(iter(merged.values()))
            if probs.ndim == 2 and probs.shape[0] == len(labels):
                acc = float(np.mean(np.argmax(probs, axis=1) == labels.reshape(-1)))
                rep.accuracy = acc
                rep.data["served_accuracy"] = acc
                opt_acc = self.report.stage("verify").accuracy
                if opt_acc is not None and abs(opt_acc - acc) > 0.02:
                    self.report.warnings.append(
                        f"served accuracy {acc:.4f} differs from the optimizer's measurement {opt_acc:.4f}")

    def smoke_generation(self, rep: StageReport) -> None:
        """Generate over ModelStreamInfer after the converter's parity prompt; the FP32 step must reproduce
        keras_hub's greedy tokens, a quantized one reports how many it shares."""
        d = self.convert_result.info.details
        fp32 = self.final_ref.digest == self.convert_result.artifact.digest
        r = smoke_generation(self.client, self.spec.name, self.report.version, parse_ids(d.get("parity_prompt", "")),
                             parse_ids(d.get("parity_tokens", "")), int(d.get("vocabulary_size", "0") or 0),
                             must_equal=fp32)
        n, ref = len(r["tokens"]), r["reference"]
        rep.format = "generation"
        rep.latency_ms = r["ttft_ms"]
        rep.detail = (f"{n} tokens streamed after a {len(r['prompt'])}-token prompt, first after {r['ttft_ms']:.0f} ms, "
                      f"{r['tokens_per_s']:.1f} tokens/s")
        if ref:
            rep.parity = (f"greedy tokens equal keras_hub generate(): {r['equal_to_keras']} of {len(ref)}"
                          + ("" if fp32 else f" (served {self.optimize_result.chosen_technique})"))
        rep.data = {"samples": 1, "requests": 1, **r}

    def run(self) -> DeployReport:
        t0 = time.perf_counter()
        try:
            for name in STAGES:
                self.stage(name, getattr(self, name))
        finally:
            self.report.seconds = time.perf_counter() - t0
            self.tmp.cleanup()
        self.report.ok = True
        return self.report


def run_pipeline(client, spec: DeploySpec, progress: Progress | None = None) -> DeployReport:
    """Deploy ``spec.model`` through the services ``client`` talks to; raises StageFailed."""
    return _Runner(client, spec, progress).run()

