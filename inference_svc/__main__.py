"""`python -m inference_svc` / `modelport-inference`: run the inference service."""

from __future__ import annotations

import sys

from inference_svc.service import InferenceService
from inference_svc.settings import InferenceSettings
from modelport.runtime.server import run_service


def main(argv: list[str] | None = None) -> int:
    return run_service(InferenceService, InferenceSettings, argv, prog="modelport-inference")


if __name__ == "__main__":
    sys.exit(main())
