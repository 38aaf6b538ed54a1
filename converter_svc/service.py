"""The converter service: wires its servicers into the shared runtime."""

from __future__ import annotations

from modelport.runtime.server import Registration, Service

from converter_svc.settings import ConverterSettings


class ConverterService(Service):
    name = "converter"

    def __init__(self, settings: ConverterSettings):
        super().__init__(settings)

    def registrations(self) -> list[Registration]:
        return []
