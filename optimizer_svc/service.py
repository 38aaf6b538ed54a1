"""The optimizer service: wires its servicers into the shared runtime."""

from __future__ import annotations

from modelport.runtime.server import Registration, Service

from optimizer_svc.settings import OptimizerSettings


class OptimizerService(Service):
    name = "optimizer"

    def __init__(self, settings: OptimizerSettings):
        super().__init__(settings)

    def registrations(self) -> list[Registration]:
        return []
