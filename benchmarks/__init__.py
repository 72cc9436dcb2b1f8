"""kiln's benchmarks: `python -m benchmarks.run` (the runner) and bench_load.py."""
