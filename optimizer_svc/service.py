"""The optimizer service: a job service (shared worker pool, job cache, settings) with the optimizer's plan."""

from __future__ import annotations

from modelport.runtime.job_service import JobService
from modelport.runtime.server import Registration
from modelport.v1 import optimizer_pb2, optimizer_pb2_grpc
from optimizer_svc.servicer import OptimizerServicer
from optimizer_svc.settings import OptimizerSettings

OPTIMIZER_SERVICE = optimizer_pb2.DESCRIPTOR.services_by_name["Optimizer"].full_name


class OptimizerService(JobService):
    name = "optimizer"
    settings: OptimizerSettings
    # TFMOT needs tf-keras, a process-wide choice: every optimizer worker runs with it.
    worker_env = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    worker_preload = ("numpy", "onnx", "onnxruntime")
    tool_packages = ("onnxruntime", "onnx", "tensorflow", "tf-keras", "tensorflow-model-optimization", "tf2onnx")
    job_version = "2"  # bump when optimizer code changes results (invalidates cached jobs)
    result_field = "optimize_result"
    sniff_job = "optimizer_svc.sniff:sniff"
    sniff_preload = ("onnx", "optimizer_svc.sniff")

    def registrations(self) -> list[Registration]:
        return [Registration(optimizer_pb2_grpc.add_OptimizerServicer_to_server, OptimizerServicer(self),
                             OPTIMIZER_SERVICE)]

    def mutating_methods(self) -> set[str]:
        return {f"/{OPTIMIZER_SERVICE}/Optimize"}
