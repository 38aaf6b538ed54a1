"""`python -m optimizer_svc` / `modelport-optimizer`: run the optimizer service."""

from __future__ import annotations

import sys

from modelport.runtime.server import run_service
from optimizer_svc.service import OptimizerService
from optimizer_svc.settings import OptimizerSettings


def main(argv: list[str] | None = None) -> int:
    return run_service(OptimizerService, OptimizerSettings, argv, prog="modelport-optimizer")


if __name__ == "__main__":
    sys.exit(main())
