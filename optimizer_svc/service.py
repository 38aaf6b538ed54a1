"""The optimizer service: wires its servicers into the shared runtime."""

from __future__ import annotations

from modelport.runtime.server import Registration, Service
from modelport.v1 import optimizer_pb2, optimizer_pb2_grpc
from optimizer_svc.job_spec import OptimizeJobs
from optimizer_svc.servicer import OptimizerServicer
from optimizer_svc.settings import OptimizerSettings

OPTIMIZER_SERVICE = optimizer_pb2.DESCRIPTOR.services_by_name["Optimizer"].full_name


class OptimizerService(Service):
    name = "optimizer"

    def __init__(self, settings: OptimizerSettings):
        super().__init__(settings)
        self.jobs = OptimizeJobs(self)

    def registrations(self) -> list[Registration]:
        return [Registration(optimizer_pb2_grpc.add_OptimizerServicer_to_server, OptimizerServicer(self.jobs),
                             OPTIMIZER_SERVICE)]

    def mutating_methods(self) -> set[str]:
        return {f"/{OPTIMIZER_SERVICE}/Optimize"}

    async def startup(self) -> None:
        await self.jobs.pool.start(warm=self.settings.warm_workers)

    async def shutdown(self) -> None:
        await self.jobs.pool.close()
