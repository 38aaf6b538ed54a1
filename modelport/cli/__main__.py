"""`python -m modelport.cli`: the gateway CLI (same as the `modelport` console script)."""

from modelport.cli import main

main()
