"""Benchmarks of the aggregator daemon: they print figures, they are not timed tests.

    python -m bench                 everything with sane defaults, then a summary table
    python -m bench.ingest [--redis] [--duration 20] [--connections 64] [--threads 2]
    python -m bench.memory [--messages 1000000]
"""
