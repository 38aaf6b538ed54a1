"""modelport benchmarks: each ``bench_<name>.py`` writes a section under ``benchmarks/results/``;
``python -m benchmarks.run_all`` runs them all and assembles ``BENCHMARKS.md``."""
