"""Protobuf <-> job records (``modelport.job_records``): the one translation of converter and optimizer jobs.

Requests become ``ConvertJob`` / ``OptimizeJob`` (refs the request left empty become ``None``, the goal
enum a word); results and reports map field for field by name, both ways (``to_message``,
``from_message``), so a record and its message cannot drift apart unnoticed (tests/test_job_codec.py).
Only the services' edges (servicers, plans, worker entry points, the job event stream) use it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from google.protobuf.message import Message

from modelport import job_records as R
from modelport.v1 import artifacts_pb2, converter_pb2, jobs_pb2, optimizer_pb2

GOALS = {optimizer_pb2.GOAL_UNSPECIFIED: "latency", optimizer_pb2.GOAL_LATENCY: "latency",
         optimizer_pb2.GOAL_SIZE: "size"}
"""The optimizer's goal enum as the word the domain uses (an unknown value means latency)."""

# The record of each message (results and reports: mapped by field name).
RECORDS: dict[str, type] = {
    artifacts_pb2.ArtifactRef.DESCRIPTOR.full_name: R.ArtifactRef,
    jobs_pb2.TensorSpec.DESCRIPTOR.full_name: R.TensorSpec,
    jobs_pb2.ModelInfo.DESCRIPTOR.full_name: R.ModelInfo,
    jobs_pb2.OutputParity.DESCRIPTOR.full_name: R.OutputParity,
    jobs_pb2.ParityReport.DESCRIPTOR.full_name: R.ParityReport,
    jobs_pb2.ConvertResult.DESCRIPTOR.full_name: R.ConvertResult,
    jobs_pb2.CandidateReport.DESCRIPTOR.full_name: R.CandidateReport,
    jobs_pb2.OptimizeResult.DESCRIPTOR.full_name: R.OptimizeResult,
}


def to_message(record: Any, message: Message) -> Message:
    """Fill ``message`` (a fresh instance of the record's message type) from ``record``; returns it."""
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        fd = message.DESCRIPTOR.fields_by_name[f.name]
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            getattr(message, f.name).update(value)
        elif fd.message_type is not None and fd.is_repeated:
            for item in value:
                to_message(item, getattr(message, f.name).add())
        elif fd.message_type is not None:
            if value is not None:
                getattr(message, f.name).CopyFrom(to_message(value, type(getattr(message, f.name))()))
        elif fd.is_repeated:
            getattr(message, f.name).extend(value)
        else:
            setattr(message, f.name, value)
    return message


def from_message(message: Message) -> Any:
    """The record of ``message`` (its type in ``RECORDS``); an unset sub-message becomes ``None``."""
    cls = RECORDS[message.DESCRIPTOR.full_name]
    values = {}
    for f in dataclasses.fields(cls):
        fd = message.DESCRIPTOR.fields_by_name[f.name]
        value = getattr(message, f.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            values[f.name] = dict(value)
        elif fd.message_type is not None and fd.is_repeated:
            values[f.name] = [from_message(v) for v in value]
        elif fd.message_type is not None:
            values[f.name] = from_message(value) if message.HasField(f.name) else None
        elif fd.is_repeated:
            values[f.name] = tuple(value)
        else:
            values[f.name] = value
    return cls(**values)


def _ref(ref: artifacts_pb2.ArtifactRef) -> R.ArtifactRef | None:
    return R.ArtifactRef(ref.digest, ref.size, ref.media_type, ref.origin) if ref.digest else None


def convert_job(request: converter_pb2.ConvertRequest) -> R.ConvertJob:
    """The job of a ConvertRequest."""
    p = request.parity
    parity = R.ParityOptions(
        samples_digest=p.samples.digest, num_samples=p.num_samples, rtol=p.rtol, atol=p.atol,
        allow_mismatch=p.allow_mismatch, seed=p.seed, quant_max_steps=p.quant_max_steps,
        quant_mean_steps=p.quant_mean_steps, min_cosine=p.min_cosine, min_topk_agreement=p.min_topk_agreement)
    return R.ConvertJob(source_digest=request.source.digest, target_format=request.target_format,
                        opset=request.opset, parity=parity, trust_remote_code=request.trust_remote_code,
                        fixed_batch_size=request.fixed_batch_size)


def optimize_job(request: optimizer_pb2.OptimizeRequest) -> R.OptimizeJob:
    """The job of an OptimizeRequest (its model ref kept whole: the baseline reports it)."""
    m = request.model
    return R.OptimizeJob(
        model=R.ArtifactRef(m.digest, m.size, m.media_type, m.origin), techniques=tuple(request.techniques),
        goal=GOALS.get(request.goal, "latency"),
        budget=R.AccuracyBudget(request.budget.max_drop, request.budget.relative),
        calibration_data=_ref(request.calibration_data), train_data=_ref(request.train_data),
        eval_data=_ref(request.eval_data), execution_provider=request.execution_provider, threads=request.threads,
        options=dict(request.options), student=_ref(request.student), output_format=request.output_format,
        trust_remote_code=request.trust_remote_code)


def convert_result_bytes(result: R.ConvertResult) -> bytes:
    return to_message(result, jobs_pb2.ConvertResult()).SerializeToString()


def optimize_result_bytes(result: R.OptimizeResult) -> bytes:
    return to_message(result, jobs_pb2.OptimizeResult()).SerializeToString()


def model_info_bytes(info: R.ModelInfo) -> bytes:
    return to_message(info, jobs_pb2.ModelInfo()).SerializeToString()


def parity_report(report: R.ParityReport) -> jobs_pb2.ParityReport:
    return to_message(report, jobs_pb2.ParityReport())
