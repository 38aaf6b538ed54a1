"""`python -m gateway.cli`: the gateway CLI (same as the `modelport` console script)."""

from gateway.cli import main

main()
