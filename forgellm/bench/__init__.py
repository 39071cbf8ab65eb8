"""Benchmarks of forgellm: offline latency and throughput, online serving load, and their reports.

Subcommands live in forgellm.cli.bench; this package holds the measurements they run.
"""
