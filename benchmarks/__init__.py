"""The tools a maintainer re-runs on a GPU (benchmarks/README.md): run each from the repository
root as ``python -m benchmarks.NAME``."""
