"""Benchmark harness for the gateway: ``python -m tests.bench`` (not collected by pytest)."""
