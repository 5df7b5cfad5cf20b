"""Benchmarks (run by hand, not timed tests): ``python -m bench.<name>``."""
