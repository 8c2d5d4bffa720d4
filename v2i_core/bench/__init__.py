"""Benchmarks run by `v2i bench ...`."""
