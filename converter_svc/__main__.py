"""`python -m converter_svc` / `modelport-converter`: run the converter service."""

from __future__ import annotations

import sys

from converter_svc.service import ConverterService
from converter_svc.settings import ConverterSettings
from modelport.runtime.server import run_service


def main(argv: list[str] | None = None) -> int:
    return run_service(ConverterService, ConverterSettings, argv, prog="modelport-converter")


if __name__ == "__main__":
    sys.exit(main())
