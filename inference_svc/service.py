"""The inference service: wires its servicers into the shared runtime."""

from __future__ import annotations

from modelport.runtime.server import Registration, Service

from inference_svc.settings import InferenceSettings


class InferenceService(Service):
    name = "inference"

    def __init__(self, settings: InferenceSettings):
        super().__init__(settings)

    def registrations(self) -> list[Registration]:
        return []
