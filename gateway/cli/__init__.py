"""The ``modelport`` gateway CLI: up, deploy, convert, optimize, infer, generate, models, status, bench.

Every command that talks to the services goes through ``modelport.Client``. Service addresses
come from the global flags (``modelport --inference HOST:PORT deploy ...``), the environment
(``MODELPORT_CONVERTER_ADDR``, ``MODELPORT_OPTIMIZER_ADDR``, ``MODELPORT_INFERENCE_ADDR``), a
config file, or the defaults ``modelport up`` uses. Exit codes: 0 ok, 1 a stage/RPC failed,
2 bad usage or an invalid spec. One module per command group registers its commands on ``app``.
"""

from __future__ import annotations

import sys

from gateway.cli import convert, deploy, generate, serving, up  # noqa: F401 - importing registers the commands
from gateway.cli.app import app
from gateway.cli.serving import read_inputs

__all__ = ["app", "main", "read_inputs"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``modelport``)."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="modelport")
