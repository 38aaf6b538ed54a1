"""The one protobuf <-> job-record translation (modelport.runtime.job_codec): no drift, lossless, requests mapped."""

from __future__ import annotations

import dataclasses
import math

import pytest
from google.protobuf import descriptor_pool

from modelport import job_records as R
from modelport.errors import FailedPrecondition
from modelport.runtime import job_codec
from modelport.runtime.job_events import error_event
from modelport.v1 import artifacts_pb2, converter_pb2, jobs_pb2, optimizer_pb2


@pytest.mark.parametrize("full_name", sorted(job_codec.RECORDS))
def test_every_record_has_exactly_its_message_fields(full_name):
    fields = descriptor_pool.Default().FindMessageTypeByName(full_name).fields_by_name
    assert [f.name for f in dataclasses.fields(job_codec.RECORDS[full_name])] == list(fields)


def test_request_records_cover_every_request_field():
    renamed = {"samples": "samples_digest"}
    parity = [renamed.get(n, n) for n in converter_pb2.ParityOptions.DESCRIPTOR.fields_by_name]
    assert parity == [f.name for f in dataclasses.fields(R.ParityOptions)]
    convert = [{"source": "source_digest"}.get(n, n) for n in converter_pb2.ConvertRequest.DESCRIPTOR.fields_by_name]
    assert sorted(convert) == sorted(f.name for f in dataclasses.fields(R.ConvertJob))
    assert sorted(optimizer_pb2.OptimizeRequest.DESCRIPTOR.fields_by_name) == sorted(
        f.name for f in dataclasses.fields(R.OptimizeJob))


def _convert_result() -> R.ConvertResult:
    spec = R.TensorSpec("x", "FP32", (-1, 4))
    info = R.ModelInfo(format="onnx", inputs=[spec], outputs=[R.TensorSpec("y", "INT64", ())], opset=17,
                       producer="tf2onnx 1.16", size_bytes=1234, parameter_count=99, details={"nodes": "7"})
    out = R.OutputParity(name="y", max_abs_diff=1e-6, allclose=True, top1_agreement=-1.0, cosine=1.0, top_k=5,
                         quant_zero_point=-128, passed=True, judged_by="allclose")
    report = R.ParityReport(outputs=[out], passed=True, rtol=1e-3, atol=1e-4, samples=8, inputs_source="generated")
    return R.ConvertResult(artifact=R.ArtifactRef("sha256:ab", 1234, "application/onnx", "converter:1"), info=info,
                           parity=report, source_info=R.ModelInfo(format="keras"), seconds=2.5)


def test_a_convert_result_survives_the_wire_unchanged():
    result = _convert_result()
    wire = jobs_pb2.ConvertResult.FromString(job_codec.convert_result_bytes(result))
    assert wire.artifact.digest == "sha256:ab" and list(wire.info.inputs[0].shape) == [-1, 4]
    assert wire.parity.outputs[0].quant_zero_point == -128 and wire.info.details["nodes"] == "7"
    assert job_codec.from_message(wire) == result


def test_an_optimize_result_keeps_nan_and_leaves_absent_artifacts_unset():
    failed = R.CandidateReport(technique="qat", accuracy=math.nan, note="failed: x", details={"status": "failed"})
    base = R.CandidateReport(technique="baseline", artifact=R.ArtifactRef("sha256:cd", 10), latency_p50_ms=1.5,
                             within_budget=True, chosen=True)
    result = R.OptimizeResult(artifact=base.artifact, chosen_technique="baseline", baseline=base,
                              candidates=[failed], reason="no candidate could be built")
    wire = jobs_pb2.OptimizeResult.FromString(job_codec.optimize_result_bytes(result))
    assert not wire.candidates[0].HasField("artifact") and math.isnan(wire.candidates[0].accuracy)
    assert wire.baseline.chosen and wire.artifact.digest == "sha256:cd"
    back = job_codec.from_message(wire)
    assert back.candidates[0].artifact is None and back.baseline == base and back.reason == result.reason


def test_requests_become_jobs():
    req = converter_pb2.ConvertRequest(
        source=artifacts_pb2.ArtifactRef(digest="sha256:src"), target_format="tflite", opset=15, fixed_batch_size=4,
        trust_remote_code=True, parity=converter_pb2.ParityOptions(samples=artifacts_pb2.ArtifactRef(digest="sha256:np"),
                                                                   rtol=0.01, min_cosine=0.5))
    job = job_codec.convert_job(req)
    assert job == R.ConvertJob("sha256:src", "tflite", 15, R.ParityOptions(samples_digest="sha256:np", rtol=0.01,
                                                                           min_cosine=0.5), True, 4)
    oreq = optimizer_pb2.OptimizeRequest(
        model=artifacts_pb2.ArtifactRef(digest="sha256:m", size=3, media_type="application/onnx"),
        techniques=["auto"], goal=optimizer_pb2.GOAL_SIZE, budget=optimizer_pb2.AccuracyBudget(max_drop=0.02),
        eval_data=artifacts_pb2.ArtifactRef(digest="sha256:e"), options={"auto.min_gain": "0.05"}, threads=2)
    ojob = job_codec.optimize_job(oreq)
    assert ojob.model == R.ArtifactRef("sha256:m", 3, "application/onnx") and ojob.techniques == ("auto",)
    assert ojob.goal == "size" and ojob.budget == R.AccuracyBudget(0.02, False) and ojob.threads == 2
    assert ojob.eval_data == R.ArtifactRef("sha256:e") and ojob.calibration_data is None and ojob.student is None
    assert dict(ojob.options) == {"auto.min_gain": "0.05"}
    assert job_codec.optimize_job(optimizer_pb2.OptimizeRequest(model=oreq.model)).goal == "latency"


def test_a_failed_parity_report_reaches_the_job_error():
    report = _convert_result().parity
    ev = error_event("job", "verifying", FailedPrecondition("parity check failed", payload=report))
    assert ev.error.code == "FAILED_PRECONDITION" and ev.error.HasField("parity")
    assert job_codec.from_message(ev.error.parity) == report
    assert not error_event("job", "loading", FailedPrecondition("x")).error.HasField("parity")
